"""The ``hsbs`` command itself: lazy start-up, --version, --print-config, -v anywhere, one device default,
out-of-memory as one line, and one spelling (key=value) for every command's settings beside the older flags."""
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

from fakes import make_ckplus, make_ferplus
from hsbs_lib import cli
from hsbs_lib.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _in_fresh_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_help_version_and_check_do_not_import_torch(tmp_path):
    make_ckplus(tmp_path / "ck")
    out = _in_fresh_python(
        "import contextlib, io, sys\n"
        "from hsbs_lib.cli import build_parser, main\n"
        "build_parser([])\n"
        "for argv in (['--help'], ['--version'], ['check', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "print('after help:', 'torch' in sys.modules)\n"
        f"code = main(['check', 'ckplus', {str(tmp_path / 'ck')!r}, '--split', 'test'])\n"
        "print('after check:', 'torch' in sys.modules, code)\n")
    assert "after help: False" in out
    assert "after check: False 0" in out, out
    assert "surprise" in out          # the check did run and printed its table


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.startswith(f"hsbs {version} ")


def test_help_lists_every_subcommand_without_building_their_options(capsys):
    parser = cli.build_parser([])
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in text


@pytest.mark.parametrize("argv, verbose", [
    (["-v", "check", "rafdb", "ROOT"], True),
    (["check", "rafdb", "ROOT", "-v"], True),
    (["check", "-v", "rafdb", "ROOT"], True),
    (["check", "rafdb", "ROOT", "--verbose"], True),
    (["check", "rafdb", "ROOT"], False),
])
def test_verbose_before_or_after_the_subcommand(argv, verbose):
    args = cli.build_parser(["check"]).parse_args(argv)
    assert args.verbose is verbose


def test_every_device_option_defaults_to_auto():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    defaults = {name: action.default for name, sub in commands.items() for action in sub._actions
                if action.dest == "device" and action.option_strings}
    assert set(defaults) >= {"train", "eval", "bench", "predict", "figures", "demo"}
    # train's None means "the config's train.device", whose default is auto as well
    assert {name: value for name, value in defaults.items() if value != "auto"} == {"train": None}
    assert load_config().train.device == "auto"


def test_auto_picks_mps_when_cuda_is_absent(monkeypatch):
    from hsbs_lib.engine.build import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="MPS backend is not available"):
        resolve_device("mps")


def test_print_config_prints_the_resolved_yaml_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", "fer2013", "--method", "baseline", "--out", str(out), "train.epochs=3",
            "--print-config", "train.lr=3e-4"]
    assert cli.main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = load_config(None, ["train.epochs=3", "train.lr=3e-4"], data="fer2013", method="baseline")
    expected.out = str(out)
    assert printed == expected.to_dict()
    assert printed["train"]["epochs"] == 3 and printed["train"]["lr"] == 3e-4
    assert not out.exists()


def test_print_config_refuses_a_value_no_run_can_use(capsys):
    assert cli.main(["train", "--config", "configs/synthfer_baseline.yaml", "--print-config", "train.epochs=0"]) == 1
    assert "train.epochs" in capsys.readouterr().err


def test_out_of_memory_is_one_line_naming_the_settings(monkeypatch, capsys):
    import hsbs_lib.data.checks as checks

    def run_out_of_memory(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)\nmore")

    monkeypatch.setattr(checks, "run_check", run_out_of_memory)
    assert cli.main(["check", "rafdb", "ROOT"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for key in ("train.batch_size", "train.accumulate", "data.device_cache_max_gb", "Tried to allocate 2.00 GiB"):
        assert key in err
    with pytest.raises(torch.OutOfMemoryError):        # -v shows the traceback
        cli.main(["check", "rafdb", "ROOT", "-v"])


def test_another_runtime_error_is_not_taken_for_out_of_memory(monkeypatch):
    import hsbs_lib.data.checks as checks

    monkeypatch.setattr(checks, "run_check", lambda args: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        cli.main(["check", "rafdb", "ROOT"])


# ------------------------------------------------------------------------- one spelling, old flags as aliases

def test_check_settings_as_key_value_or_as_flags(tmp_path, capsys):
    make_ckplus(tmp_path / "ck")
    assert cli.main(["check", "ckplus", str(tmp_path / "ck"), "--num-classes", "8", "--no-decode",
                     "--option", "n_folds=3", "--option", "fold=1", "--split", "test"]) == 0
    flags = capsys.readouterr().out
    assert cli.main(["check", "ckplus", str(tmp_path / "ck"), "--no-decode", "--split", "test",
                     "data.num_classes=8", "data.options.n_folds=3", "options.fold=1"]) == 0
    assert capsys.readouterr().out == flags
    assert "contempt" in flags
    make_ferplus(tmp_path / "fp")
    assert cli.main(["check", "ferplus", str(tmp_path / "fp"), "--option", "label_mode=soft"]) == 0
    soft = capsys.readouterr().out
    assert cli.main(["check", "ferplus", str(tmp_path / "fp"), "data.options.label_mode=soft"]) == 0
    assert capsys.readouterr().out == soft


@pytest.mark.parametrize("item, message", [("data.input_size=64", "data.num_classes=7|8"),
                                           ("data.num_classes=9", "expects 7 or 8"),
                                           ("fold", "expected key=value")])
def test_check_refuses_a_setting_it_does_not_use(tmp_path, capsys, item, message):
    assert cli.main(["check", "rafdb", str(tmp_path), item]) == 1
    assert message in capsys.readouterr().err


def test_eval_root_and_data_flags_are_data_root_and_data_name(monkeypatch, capsys):
    import hsbs_lib.engine.evaluate as evaluate

    seen = []

    def fake_evaluate(path, **kwargs):
        seen.append(sorted(kwargs["overrides"]))
        raise ValueError("stop")

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", fake_evaluate)
    cli.main(["eval", "--checkpoint", "r/best.pt", "--root", "/d/raf", "--data", "rafdb", "skip_bad=true"])
    cli.main(["eval", "--checkpoint", "r/best.pt", "data.root=/d/raf", "data.name=rafdb", "skip_bad=true"])
    assert seen[0] == seen[1] == ["data.name=rafdb", "data.root=/d/raf", "skip_bad=true"]


def test_bench_scale_and_options_as_key_value_or_as_flags():
    from hsbs_lib.bench import _model_scale, bench_model_options

    parser = cli.build_parser(["bench"])
    flags = parser.parse_args(["bench", "--models", "mfer", "--input-size", "97", "--backbone", "resnet34",
                               "--options", "mfer.depthwise=false"])
    spelled = parser.parse_args(["bench", "data.input_size=97", "model.backbone=resnet34",
                                 "model.options.depthwise=false", "--models", "mfer"])
    assert _model_scale(flags) == _model_scale(spelled)
    assert _model_scale(spelled)["input_size"] == 97 and _model_scale(spelled)["backbone"] == "resnet34"
    names = ["baseline", "mfer"]
    assert bench_model_options(flags, names) == bench_model_options(spelled, names) == {"mfer": {"depthwise": False}}
    nobody = parser.parse_args(["bench", "model.options.no_such_option=1"])
    with pytest.raises(KeyError, match="no_such_option"):
        bench_model_options(nobody, names)


def test_bench_cli_section_prints_start_up_seconds():
    from hsbs_lib.bench import cli_startup_table

    table = cli_startup_table(repeats=1)
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows][:2] == ["hsbs --help", "hsbs --version"]
    for row in rows:
        assert float(row.rsplit("|", 2)[1]) > 0


def test_bench_says_where_an_override_goes_when_a_list_option_swallows_it(capsys):
    parser = cli.build_parser(["bench"])
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--sections", "plateau", "--seeds", "0", "1", "train.threads=1"])
    error = capsys.readouterr().err
    assert "'train.threads=1' is a key=value override, not a number: give overrides before" in error
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--seeds", "x"])
    assert "'x' is not a whole number" in capsys.readouterr().err
    fine = parser.parse_args(["bench", "train.threads=1", "--sections", "plateau", "--seeds", "0", "1"])
    assert fine.seeds == [0, 1] and fine.overrides == ["train.threads=1"]
