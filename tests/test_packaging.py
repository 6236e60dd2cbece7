"""The set-up files agree with each other and the CLI is wired."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]} | {_name(r) for r in project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict) and "pip" in item)
    listed = {_name(r) for r in pip_section}
    assert declared == listed, f"only in pyproject: {declared - listed}; only in environment.yml: {listed - declared}"


def test_opencv_is_the_headless_build_only():
    text = (ROOT / "pyproject.toml").read_text() + (ROOT / "environment.yml").read_text()
    assert "opencv-python-headless<5" in text
    assert not re.search(r"opencv-python(?!-headless)", text), "opencv-python beside the headless build clashes on cv2"


def test_makefile_pins_torch_and_ci_calls_make_test():
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.14.1" in makefile and "torchvision==0.29.1" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_cli_lists_every_subcommand(capsys):
    from hsbs_lib.cli import COMMANDS, main

    assert main([]) == 2
    help_text = capsys.readouterr().out
    for name in COMMANDS:
        assert name in help_text
