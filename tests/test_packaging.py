"""The set-up files agree with each other and the CLI is wired."""
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
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


def test_gpu_report_refuses_an_unknown_part_and_writes_nothing(tmp_path):
    out = tmp_path / "report"
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_report.sh"), str(out)],
                            env={**os.environ, "PART": "speed"}, capture_output=True, text=True)
    assert result.returncode == 2 and "PART must be bench, runs or all, not 'speed'" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_gpu_report_runs_part_trains_and_tabulates_on_a_cpu(tmp_path):
    # The GPU script's orchestration as a dry run: one seed of the 225 px HST comparison, two steps per run.
    env = {**os.environ, "PART": "runs", "DEVICE": "cpu", "METHODS": "", "HST_SEEDS": "0", "DEADLINE": "600",
           "HSBS": f"{sys.executable} -m hsbs_lib.cli",
           "EXTRA": "train.epochs=1 train.max_steps_per_epoch=2 train.batch_size=16 data.n_train=64 data.n_val=32 "
                    "data.n_test=32 train.threads=1"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_report.sh"), str(tmp_path / "report")], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = (tmp_path / "report" / "steps.md").read_text()
    for step in ("hst225_baseline_0 | 0 |", "hst225_hsbs_0 | 0 |", "table_hst225 | 0 |"):
        assert step in steps, steps
    table = (tmp_path / "report" / "runs" / "hst225" / "comparison.md").read_text()
    assert "| hsbs | 1 |" in table and "layer3 energy / pointing / ring" in table
