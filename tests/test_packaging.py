"""The set-up files agree with each other and the CLI is wired."""
import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hsbs_lib.cli import COMMANDS
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(extra: str | None = None) -> list[str]:
    project = _project()
    return project["dependencies"] if extra is None else project["optional-dependencies"][extra]


def test_environment_yml_lists_the_same_requirements_as_pyproject():
    # the base install and the dev extra (which holds every other extra), with the same bounds; torch and
    # torchvision at the Makefile's pins
    declared = {_name(r): r.replace(" ", "") for r in _requirements() + _requirements("dev")}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict) and "pip" in item)
    listed = {_name(r): r.replace(" ", "") for r in pip_section}
    assert set(declared) == set(listed), (f"only in pyproject: {set(declared) - set(listed)}; "
                                          f"only in environment.yml: {set(listed) - set(declared)}")
    for name in set(declared) - {"torch", "torchvision"}:
        assert declared[name] == listed[name], f"{name}: {declared[name]} in pyproject, {listed[name]} in environment.yml"
    assert {listed["torch"], listed["torchvision"]} == {"torch==2.14.1", "torchvision==0.29.1"}
    assert "pip install -e . --no-deps" in (ROOT / "environment.yml").read_text()


def test_opencv_is_the_headless_build_only():
    text = (ROOT / "pyproject.toml").read_text() + (ROOT / "environment.yml").read_text()
    assert re.search(r"opencv-python-headless>=[\d.]+,<5", text)
    assert not re.search(r"opencv-python(?!-headless)", text), "opencv-python beside the headless build clashes on cv2"


def test_every_requirement_has_a_lower_bound_and_no_exact_ceiling():
    project = _project()
    for requirement in project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]:
        assert ">=" in requirement, f"{requirement} has no lower bound"
        assert "<=" not in requirement and "==" not in requirement, f"{requirement} blocks patch releases"
    torch_pin = next(r for r in project["dependencies"] if _name(r) == "torch")
    assert "<2.15" in torch_pin       # admits 2.14.2 and keeps the pinned 2.14.1


def test_the_extras_split_what_the_cli_needs_from_the_rest():
    project = _project()
    extras = {name: {_name(r) for r in items} for name, items in project["optional-dependencies"].items()}
    base = {_name(r) for r in project["dependencies"]}
    assert set(extras) == {"lab", "export", "tb", "dev"}
    assert extras["export"] == {"onnx", "onnxscript", "onnxruntime"} and extras["tb"] == {"tensorboard"}
    assert {"jupyterlab", "ipywidgets", "scikit-image"} <= extras["lab"]
    assert extras["dev"] >= extras["lab"] | extras["export"] | extras["tb"] | {"pytest"}
    assert not base & (extras["lab"] | extras["export"] | extras["tb"]), "an extra's package is forced on every install"


def test_makefile_installs_what_each_target_needs():
    makefile = (ROOT / "Makefile").read_text()
    prerequisites = dict(re.findall(r"^([a-z-]+):[ \t]*(.*)$", makefile, flags=re.M))
    assert prerequisites["demo"] == "$(STAMP)"                       # the base install
    assert prerequisites["test"] == "$(VENV)/.installed-dev"
    assert prerequisites["lab"] == "$(VENV)/.installed-lab"
    assert '-m pip install --quiet -e ".[$*]"' in makefile and "-m pip install --quiet -e .\n" in makefile
    assert "--index-url $(TORCH_INDEX)" in makefile


def test_license_and_type_marker_ship_with_the_package():
    project = _project()
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 hsbs_lib authors" in text
    assert (ROOT / "hsbs_lib" / "py.typed").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["hsbs_lib"]


#: Standard-library modules added after Python 3.10: importing one needs the Python that added it.
NEWER_STDLIB = {"tomllib": (3, 11)}


def _imports(source: str) -> set[str]:
    """Top-level names of the modules ``source`` imports (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    lines = [line for cell in cells if cell["cell_type"] == "code" for line in "".join(cell["source"]).splitlines()]
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def _imported_by() -> dict[str, set[str]]:
    """'package', 'notebooks' and 'tests' -> the top-level modules their files import."""
    return {"package": set().union(*(_imports(p.read_text()) for p in (ROOT / "hsbs_lib").rglob("*.py"))),
            "notebooks": set().union(*(_imports(_notebook_code(p)) for p in (ROOT / "notebooks").rglob("*.ipynb"))),
            "tests": set().union(*(_imports(p.read_text()) for p in (ROOT / "tests").glob("*.py")))}


def test_the_python_requirement_is_met_by_code_and_tests():
    minimum = tuple(int(part) for part in re.search(r">=\s*(\d+)\.(\d+)", _project()["requires-python"]).groups())
    assert sys.version_info[:2] >= minimum, f"this interpreter is older than requires-python {minimum}"
    used = set().union(*_imported_by().values())
    for module, since in NEWER_STDLIB.items():
        if module in used:
            assert minimum >= since, f"{module} needs Python {since}, but requires-python allows {minimum}"
    assert "python=3.11" in (ROOT / "environment.yml").read_text() and minimum <= (3, 11)


def _distributions(module: str) -> set[str]:
    return {name.lower().replace("_", "-") for name in importlib.metadata.packages_distributions().get(module, [])}


def test_every_imported_third_party_package_is_declared():
    from hsbs_lib.extras import OPTIONAL

    project = _project()
    base = {_name(r) for r in project["dependencies"]}
    extras = {name: {_name(r) for r in items} for name, items in project["optional-dependencies"].items()}
    local = {"hsbs_lib", *(path.stem for path in (ROOT / "tests").glob("*.py"))} | set(sys.stdlib_module_names)
    # where each kind of file may find its packages: the package's code in the base install or, for the
    # modules it imports only through hsbs_lib.extras.require, in the extra named there; notebooks in base or
    # lab; tests in base or dev
    allowed = {"package": base, "notebooks": base | extras["lab"], "tests": base | extras["dev"]}
    for kind, modules in _imported_by().items():
        for module in sorted(modules - local):
            distributions = _distributions(module)
            assert distributions, f"{module} (imported by the {kind}) is not installed here, so not declared"
            if kind == "package" and module in OPTIONAL:
                distribution, extra = OPTIONAL[module]
                assert distribution in extras[extra] and distribution in distributions, (module, extra)
                continue
            assert distributions & allowed[kind], (f"{module} (imported by the {kind}) comes from "
                                                    f"{sorted(distributions)}, which pyproject does not declare there")


def test_optional_modules_name_an_extra_that_holds_them():
    from hsbs_lib.extras import OPTIONAL

    extras = {name: {_name(r) for r in items} for name, items in _project()["optional-dependencies"].items()}
    for module, (distribution, extra) in OPTIONAL.items():
        assert distribution in extras[extra], f"{module}: {distribution} is not in the {extra} extra"
        assert distribution in extras["dev"]


def test_a_missing_optional_package_is_one_line_naming_its_extra(monkeypatch, tmp_path, capsys):
    from hsbs_lib.cli import main
    from hsbs_lib.engine.log import MetricsLog
    from hsbs_lib.extras import MissingExtraError, require
    from hsbs_lib.viz.interactive import widgets

    for module in ("onnx", "tensorboard", "ipywidgets"):
        monkeypatch.setitem(sys.modules, module, None)     # import of it now fails as if not installed
    with pytest.raises(MissingExtraError, match=re.escape('pip install "hsbs_lib[export]"')):
        require("onnx", "ONNX export")
    with pytest.raises(MissingExtraError, match=re.escape('pip install "hsbs_lib[tb]"')):
        MetricsLog(tmp_path, enabled=True, tensorboard=True)
    with pytest.raises(MissingExtraError, match=re.escape('pip install "hsbs_lib[lab]"')):
        widgets._widgets()
    assert main(["export", "--checkpoint", "fer2013", "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err == 'hsbs export: error: ONNX export needs onnx, which is not installed: pip install "hsbs_lib[export]"\n'
    assert not (tmp_path / "m.onnx").exists()


def test_a_failing_import_inside_an_installed_package_is_not_taken_for_a_missing_extra(monkeypatch):
    from hsbs_lib.extras import require

    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxscript.broken_part", None)
    with pytest.raises(ModuleNotFoundError):
        require("onnxscript.broken_part", "a test")  # not a key of OPTIONAL's packages: the error passes through


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
    assert result.returncode == 2 and "PART must be bench, runs, compile or all, not 'speed'" in result.stderr
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


def test_every_command_loads_with_the_base_install_alone():
    # Every package of an extra is made unimportable, as in an environment with the base install only;
    # building the full parser imports every subcommand's module.
    code = (
        "import sys\n"
        "from hsbs_lib.extras import OPTIONAL\n"
        "blocked = {*OPTIONAL, 'jupyterlab', 'pytest', 'playwright'}\n"
        "for name in list(sys.modules):\n"
        "    if name.split('.')[0] in blocked:\n"
        "        del sys.modules[name]\n"
        "for name in blocked:\n"
        "    sys.modules[name] = None   # import name now fails as if it were not installed\n"
        "from hsbs_lib.cli import COMMANDS, build_parser\n"
        "parser = build_parser()\n"
        "missing = [c for c, sub in parser._subparsers._group_actions[0].choices.items() if sub.get_default('_missing')]\n"
        "print('loaded', len(COMMANDS) - len(missing), 'of', len(COMMANDS), missing)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"loaded {len(COMMANDS)} of {len(COMMANDS)} []" in result.stdout
