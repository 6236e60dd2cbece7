"""Bad input, tried as a careless user would: one table of cases, each with the outcome it must have.

Every case runs the ``hsbs`` command in-process. A refused case must exit non-zero with one line on stderr
that contains the expected phrase (no traceback) and must write nothing: no new run folder, and the
trained run it points at keeps every file byte for byte. An accepted case must exit 0 and store the
values it names in the new run's config.yaml.

Placeholders in a case's arguments: ``{run}`` is a finished one-epoch run (a module fixture, copied for
every case), ``{yaml}`` the case's YAML text written to a file, ``{recipe}`` the SynthFER baseline recipe.
A case's ``prepare`` changes the copied run first (a checkpoint edited as a foreign one could be).
"""
from __future__ import annotations

import hashlib
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hsbs_lib import bench
from hsbs_lib.bench import run_fuzz
from hsbs_lib.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "configs/synthfer_baseline.yaml")
# A run small enough for the table to take seconds: 28 training images of 33 px, an 8-channel ResNet.
TINY = ["train.progress=false", "train.threads=1", "data.n_train=28", "data.n_val=14", "data.n_test=14",
        "data.input_size=33", "model.backbone_width=8", "train.batch_size=14", "train.epochs=1"]
NEW_RUN = "runs/new"
MESSAGE_CHARS = 600          # a refusal is a sentence, however long the value it names


@dataclass(frozen=True)
class Case:
    """``args`` for ``hsbs``; ``status`` 0 (accepted) or the refusal's exit status; ``says``: a phrase the
    one-line refusal must contain; ``stores``: dotted keys and the values config.yaml must hold; ``prepare``,
    ``written`` and ``then``: see their comments."""

    name: str
    args: tuple[str, ...]
    status: int = 1
    says: str = ""
    yaml_text: str | None = None
    stores: dict = field(default_factory=dict)
    prepare: Callable[[Path], None] | None = None     # changes the copy of the trained run first
    written: str = NEW_RUN                            # the run folder an accepted case writes
    then: Callable[[Path], None] | None = None        # more checks on that folder, once accepted


def edit_run_config(run: Path, **values) -> None:
    """Edit the run's config.yaml by hand: ``lr=0.05`` sets train.lr."""
    stored = yaml.safe_load((run / "config.yaml").read_text())
    stored["train"].update(values)
    (run / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))


def drop_metrics(run: Path, *, history: bool = True) -> None:
    """Delete the run's metrics.csv; ``history=False`` also strips the history from last.pt (an older run)."""
    (run / "metrics.csv").unlink()
    if not history:
        state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
        state["metrics"].pop("history")
        torch.save(state, run / "last.pt")


def _edit_model(run: Path) -> None:
    stored = yaml.safe_load((run / "config.yaml").read_text())
    stored["model"]["backbone_width"] = 16
    (run / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))


def metrics_epochs(run: Path) -> None:
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["1", "2"], rows


def train(*overrides: str, config: str = "{recipe}") -> tuple[str, ...]:
    return ("train", "--config", config, "--out", NEW_RUN, *TINY, *overrides)


def edited_checkpoint(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """A ``prepare`` that edits the run's best.pt (and adds a face photo for predict)."""
    def prepare(run: Path) -> None:
        state = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
        edit(state)
        torch.save(state, run / "best.pt")
        Image.fromarray(np.full((33, 33, 3), 100, np.uint8)).save(run / "face.png")
    return prepare


def other_method(state: dict) -> None:       # a baseline's weights under an HSBS config
    state["config"]["model"]["name"] = "hsbs"


def extra_key(state: dict) -> None:
    state["model"]["extra_head.weight"] = torch.zeros(3)


def missing_key(state: dict) -> None:
    del state["model"][next(name for name in state["model"] if name.endswith("weight"))]


def no_config(state: dict) -> None:
    del state["config"]


def wider_weights(state: dict) -> None:       # weights of a wider network, the config left as it was
    name = next(name for name, value in state["model"].items() if value.dim() == 4)
    state["model"][name] = torch.zeros(2 * state["model"][name].shape[0], *state["model"][name].shape[1:])


EVAL = ("eval", "--checkpoint", "{run}/best.pt", "--out", f"{NEW_RUN}/eval.json")
PREDICT = ("predict", "--checkpoint", "{run}/best.pt", "--no-detect", "{run}/face.png")
EXPORT = ("export", "--checkpoint", "{run}/best.pt", "--out", f"{NEW_RUN}/model.pt")
DESCRIBED = "(method baseline, backbone resnet18, 7 classes (surprise"   # what the one line says it is


def alias_bomb(levels: int = 9) -> str:
    """A "billion laughs" YAML flow mapping: 9 ** levels strings from a few hundred characters."""
    anchors = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    anchors += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "{" + ", ".join(anchors) + "}"


# Placeholders are filled with str.format: the braces of YAML flow mappings are doubled.
BOMB = alias_bomb().replace("{", "{{").replace("}", "}}")


CASES = [
    # 6. values coerced by the field's type, scientific notation included; what cannot be is refused
    Case("lr in scientific notation", train("train.lr=3e-4", "train.weight_decay=5e-4"), status=0,
         stores={"train.lr": 3e-4, "train.weight_decay": 5e-4}),
    Case("lr in scientific notation in a user's file", train(config="{yaml}"), status=0,
         yaml_text=f"include: {RECIPE}\ntrain:\n  lr: 3e-4\n  weight_decay: 5E-4\n",
         stores={"train.lr": 3e-4, "train.weight_decay": 5e-4}),
    Case("model option in scientific notation", train("model.options.dropout=1e-1"), status=0,
         stores={"model.options": {"dropout": 0.1}}),
    Case("epochs not a number", train("train.epochs=abc"), says="'train.epochs' expects an integer, got 'abc'"),
    Case("epochs not whole", train("train.epochs=1.5"), says="'train.epochs' expects an integer, got 1.5"),
    Case("lr not a number in a user's file", train(config="{yaml}"), yaml_text="train:\n  lr: fast\n",
         says="'train.lr' expects a number, got 'fast'"),
    Case("model option of the wrong type", train("model.options.dropout=abc"),
         says="'model.options.dropout' expects a number, got 'abc'"),
    Case("override that is not valid YAML", train("train.lr=[3e-4"), says="'train.lr': cannot read the value"),
    # 7. ranges checked before any work; YAML syntax and shape errors in one line
    Case("batch size 0", train("train.batch_size=0"), says="'train.batch_size' expects at least 1, got 0"),
    Case("batch size negative", train("train.batch_size=-4"), says="'train.batch_size' expects at least 1, got -4"),
    Case("epochs 0", train("train.epochs=0"), says="'train.epochs' expects at least 1, got 0"),
    Case("epochs negative", train("train.epochs=-1"), says="'train.epochs' expects at least 1, got -1"),
    Case("no training images", train("data.n_train=0"), says="'data.n_train' expects at least 1 image, got 0"),
    Case("learning rate not finite", train("train.lr=nan"), says="'train.lr' expects a positive number, got nan"),
    Case("hold-out fraction of 1", train("data.val_fraction=1"), says="'data.val_fraction' expects a fraction"),
    Case("nine classes", train("data.num_classes=9"), says="'data.num_classes' expects 7 or 8, got 9"),
    Case("unknown model option", train("model.options.typo=3"),
         says="unknown model option 'model.options.typo' for model 'baseline'; its options are: dropout"),
    Case("unknown model option in a user's file", train(config="{yaml}"),
         yaml_text="model:\n  name: hsbs\n  options:\n    lambda_hts: 500\n",
         says="unknown model option 'model.options.lambda_hts' for model 'hsbs'"),
    Case("YAML syntax error", train(config="{yaml}"), yaml_text="train:\n  lr: [3e-4\n", says="is not valid YAML"),
    Case("YAML bad indentation", train(config="{yaml}"), yaml_text="train:\n  lr: 0.1\n epochs: 2\n",
         says="is not valid YAML"),
    Case("YAML list at the top", train(config="{yaml}"), yaml_text="- train\n- data\n",
         says="expected a mapping of sections (data:, model:, train:) at the top level, got list"),
    Case("YAML scalar at the top", train(config="{yaml}"), yaml_text="3e-4\n",
         says="at the top level, got float"),
    Case("YAML section given a value", train(config="{yaml}"), yaml_text="train: 5\n",
         says="'train' is a section; expected a mapping, got 5"),
    Case("YAML include not a file name", train(config="{yaml}"), yaml_text="include: 5\n",
         says="'include' expects a file name or a list of file names, got 5"),
    Case("config file not UTF-8", train(config="{yaml}"), yaml_text="train:\n  lr: 0.1 \udcff\n",
         says="is not UTF-8 text"),
    # issue 28, rule 2: bounded input. An alias bomb is refused before it is built, in one short line.
    Case("YAML alias bomb as train.lr", train(f"train.lr={BOMB}"),
         says="'train.lr': cannot read the value"),
    Case("YAML alias bomb names the expansion budget", train(f"train.lr={BOMB}"),
         says="aliases expand to more than 10,000 values"),
    Case("YAML alias bomb in a user's file", train(config="{yaml}"),
         yaml_text=f"bomb: {alias_bomb()}\ntrain:\n  lr: 0.1\n", says="aliases expand to more than 10,000 values"),
    Case("YAML alias that contains itself", train(config="{yaml}"), yaml_text="model:\n  options: &o {dropout: *o}\n",
         says="an alias refers to a node that contains it"),
    Case("YAML nested too deeply", train(f"train.lr={'[' * 20000}"), says="nested too deeply to read"),
    Case("a long value is cut in the message", train(f"train.lr={'x' * 5000}"),
         says="'train.lr' expects a number, got 'xxxx"),
    Case("data.input_size beyond this machine's memory", train("data.input_size=100000"),
         says="config key 'data.input_size' = 100,000 pixels needs about"),
    Case("batch size beyond this machine's memory", train("train.batch_size=1000000000000"),
         says="config key 'train.batch_size' = 1,000,000,000,000 images of 33 pixels needs about"),
    Case("backbone width beyond this machine's memory", train("model.backbone_width=1000000"),
         says="config key 'model.backbone_width' = 1,000,000 channels makes a ResNet of about"),
    Case("SynthFER images beyond this machine's memory", train("data.n_train=1000000000000"),
         says="config key 'data.n_train' = 1,000,000,000,000 SynthFER images of 33 pixels need about"),
    Case("eval batch size beyond this machine's memory", train("train.eval_batch_size=1000000000000"),
         says="config key 'train.eval_batch_size' = 1,000,000,000,000 images"),
    # 8. overrides before and after --out
    Case("overrides after --out", ("train", "--config", "{recipe}", *TINY[:-1], "--out", NEW_RUN, "train.epochs=1",
                                   "train.lr=3e-4"), status=0, stores={"train.epochs": 1, "train.lr": 3e-4}),
    Case("overrides on both sides of two options", ("train", "train.lr=2e-3", "--config", "{recipe}", *TINY,
                                                    "--out", NEW_RUN, "train.lr=3e-4", "--device", "cpu",
                                                    "train.weight_decay=0"), status=0,
         stores={"train.lr": 3e-4, "train.weight_decay": 0.0, "train.device": "cpu"}),
    Case("an unknown option is still refused", train("--epochs", "2"), status=2),
    # 9. resuming must keep the model and the data the run was trained on
    Case("resume with another input size", ("train", "--resume", "{run}", "train.epochs=2", "data.input_size=65"),
         says="cannot resume with data.input_size=65; the run was trained with data.input_size=33"),
    Case("resume with another model", ("train", "--resume", "{run}", "train.epochs=2", "model.name=hsbs"),
         says="cannot resume with model.name='hsbs'"),
    Case("resume with another backbone", ("train", "--resume", "{run}", "model.backbone=resnet34"),
         says="cannot resume with model.backbone='resnet34'"),
    Case("resume with another stem", ("train", "--resume", "{run}", "model.stem=standard"),
         says="cannot resume with model.stem='standard'"),
    Case("resume with another method option", ("train", "--resume", "{run}", "model.options.dropout=0.5"),
         says="cannot resume with model.options.dropout=0.5; the run was trained with model.options.dropout=0.0"),
    Case("resume with more classes", ("train", "--resume", "{run}", "data.num_classes=8"),
         says="cannot resume with data.num_classes=8"),
    Case("resume with other images", ("train", "--resume", "{run}", "data.synth_seed=1"),
         says="cannot resume with data.synth_seed=1"),
    Case("resume with another dataset", ("train", "--resume", "{run}", "data.name=rafdb"),
         says="cannot resume with data.name='rafdb'"),
    # issue 28, rule 5: a resume takes neither a hand edit nor a lost history silently
    Case("resume after config.yaml was edited by hand", ("train", "--resume", "{run}", "train.epochs=2"),
         prepare=lambda run: edit_run_config(run, lr=0.05, weight_decay=0.5),
         says="config.yaml has changed since last.pt was saved (edited by hand, or written by a sitting that saved no "
              "epoch): train.lr=0.05 (last.pt: 0.001), train.weight_decay=0.5"),
    Case("resume with the hand edit taken", ("train", "--resume", "{run}", "--edited-config", "train.epochs=2"),
         status=0, prepare=lambda run: edit_run_config(run, lr=0.05), written="run",
         stores={"train.lr": 0.05, "train.epochs": 2}),
    Case("resume overriding the edited key", ("train", "--resume", "{run}", "train.epochs=2", "train.lr=0.002"),
         status=0, prepare=lambda run: edit_run_config(run, lr=0.05), written="run", stores={"train.lr": 0.002}),
    Case("resume of a hand edit of a model key is still refused", ("train", "--resume", "{run}", "--edited-config"),
         prepare=lambda run: edit_run_config(run, epochs=2) or _edit_model(run),
         says="cannot resume with model.backbone_width=16; the run was trained with model.backbone_width=8"),
    Case("--edited-config without --resume", train("--edited-config"), says="--edited-config goes with --resume"),
    Case("resume after metrics.csv was deleted rebuilds it", ("train", "--resume", "{run}", "train.epochs=2"),
         status=0, prepare=drop_metrics, written="run", stores={"train.epochs": 2}, then=metrics_epochs),
    Case("resume after metrics.csv was deleted, no history kept", ("train", "--resume", "{run}", "train.epochs=2"),
         prepare=lambda run: drop_metrics(run, history=False),
         says="metrics.csv is missing and"),
    Case("comparison plan not valid YAML", ("compare", "--config", "{yaml}", "--out", NEW_RUN, "--no-speed"),
         yaml_text="base: {data: synthfer}\nrows: [baseline\n", says="comparison config"),
    Case("comparison plan not UTF-8", ("compare", "--config", "{yaml}", "--out", NEW_RUN, "--no-speed"),
         yaml_text="rows:\n  a: \udcff\n", says="is not UTF-8 text"),
    Case("--config a directory", ("train", "--config", "{run}", "--out", NEW_RUN), says="is a directory"),
    Case("compare --config a directory", ("compare", "--config", "{run}", "--out", NEW_RUN, "--no-speed"),
         says="is a directory"),
    Case("comparison plan with an alias bomb in a row", ("compare", "--config", "{yaml}", "--out", NEW_RUN,
                                                         "--no-speed"),
         yaml_text=f"base: {{data: synthfer}}\nbomb: {alias_bomb()}\nrows:\n  a: {{train.lr: *a8}}\n",
         says="aliases expand to more than 10,000 values"),
    Case("comparison plan rows not a mapping", ("compare", "--config", "{yaml}", "--out", NEW_RUN, "--no-speed"),
         yaml_text="base: {data: synthfer}\nrows: [baseline, hsbs]\n", says="rows must be a mapping"),
    Case("choose among runs that were never trained", ("choose", "--config", "{yaml}", "--out", NEW_RUN),
         yaml_text=f"base: {RECIPE}\nout: runs/none\nrows:\n  baseline: {{model.name: baseline}}\n"
                   "  hsbs: {model.name: hsbs}\n", says="needs every candidate's finished run"),
    Case("confirmation plan run on a seed that chose its row", ("compare", "--config", "{yaml}", "--seeds", "1",
                                                                "--out", NEW_RUN, "--no-speed"),
         yaml_text=f"base: {RECIPE}\nrows:\n  baseline: {{model.name: baseline}}\n  hsbs: {{model.name: hsbs}}\n"
                   "selection: {plan: v.yaml, seeds: [0, 1], metric: validation mean_class_accuracy, "
                   "candidates: 4, chosen: hsbs}\n", says="seeds [1] chose its row"),
    Case("figures of a mistyped run folder", ("figures", "--run", NEW_RUN, "--out", f"{NEW_RUN}/figures"),
         says=f"run directory {NEW_RUN} not found"),
    Case("synth at a size it cannot draw", ("synth", "--out", NEW_RUN, "--n", "4", "--size", "8"),
         says="at least 16 pixels, got 8"),
    # 10. evaluation on another class set
    Case("eval with a batch beyond this machine's memory", ("eval", "--checkpoint", "{run}/best.pt", "--batch-size",
                                                              "1000000000000", "--out", f"{NEW_RUN}/eval.json"),
         says="--batch-size = 1,000,000,000,000 images of 33 pixels needs about"),
    Case("eval with a negative batch size", ("eval", "--checkpoint", "{run}/best.pt", "--batch-size", "-5",
                                             "--out", f"{NEW_RUN}/eval.json"),
         says="--batch-size expects at least 1 image, got -5"),
    Case("train on a device that does not exist", train("--device", "tpu"),
         says="--device (train.device) expects auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    Case("train on a GPU this machine lacks", train("train.device=cuda:99"), says="device 'cuda:99' requested but"),
    Case("eval on an empty device name", ("eval", "--checkpoint", "{run}/best.pt", "--device", "",
                                          "--out", f"{NEW_RUN}/eval.json"),
         says="--device (train.device) expects auto, cpu, cuda, cuda:N or mps, got ''"),
    Case("eval of a 7-class checkpoint on 8 classes", ("eval", "--checkpoint", "{run}/best.pt", "data.num_classes=8",
                                                       "--out", f"{NEW_RUN}/eval.json"),
         says="was trained on 7 classes (surprise, fear, disgust, happiness, sadness, anger, neutral) but the data "
              "has 8 (the data adds contempt)"),
    # 28, rule 4. a checkpoint that does not fit says what it is, in one line, on every command that loads one
    Case("eval of another method's checkpoint", EVAL, prepare=edited_checkpoint(other_method),
         says="(method hsbs, backbone resnet18, 7 classes (surprise"),
    Case("predict of another method's checkpoint", PREDICT, prepare=edited_checkpoint(other_method),
         says="its weights do not fit the model its config describes"),
    Case("eval of a checkpoint with an extra key", EVAL, prepare=edited_checkpoint(extra_key),
         says="1 unexpected weight(s) (extra_head.weight)"),
    Case("export of a checkpoint with a missing key", EXPORT, prepare=edited_checkpoint(missing_key),
         says="1 weight(s) missing (backbone.conv1.weight)"),
    Case("predict of a checkpoint with weights of another shape", PREDICT, prepare=edited_checkpoint(wider_weights),
         says="1 weight(s) of another shape (size mismatch for backbone.conv1.weight"),
    Case("eval of a checkpoint without a stored config", EVAL, prepare=edited_checkpoint(no_config),
         says="stores no config"),
    Case("figures (the notebooks' loader) of a checkpoint with an extra key",
         ("figures", "--run", "{run}", "--out", f"{NEW_RUN}/figures"), prepare=edited_checkpoint(extra_key),
         says=DESCRIBED),
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished one-epoch SynthFER baseline run (config.yaml, last.pt, best.pt, metrics.csv, eval.json)."""
    folder = tmp_path_factory.mktemp("trained")
    assert main(["train", "--config", RECIPE, "--out", str(folder / "run"), *TINY,
                 f"data.cache_dir={folder / 'cache'}"]) == 0
    return folder / "run"


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def stored_value(values: dict, dotted: str):
    for part in dotted.split("."):
        values = values[part]
    return values


def run_hsbs(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exit_:          # argparse refuses by exiting
        return int(exit_.code)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, trained_run: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HSBS_CACHE", str(trained_run.parent / "cache"))
    run = shutil.copytree(trained_run, tmp_path / "run")
    if case.prepare is not None:
        case.prepare(run)
    yaml_file = tmp_path / "user.yaml"
    if case.yaml_text is not None:
        yaml_file.write_bytes(case.yaml_text.encode("utf-8", "surrogateescape"))
    args = [arg.format(run=run, yaml=yaml_file, recipe=RECIPE) for arg in case.args]
    before = fingerprint(run)
    capsys.readouterr()

    status = run_hsbs(args)

    err = capsys.readouterr().err
    assert status == case.status, err
    if case.status == 0:
        stored = yaml.safe_load((tmp_path / case.written / "config.yaml").read_text())
        for key, value in case.stores.items():
            assert stored_value(stored, key) == value, key
        if case.then is not None:
            case.then(tmp_path / case.written)
        return
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    if case.status == 1:
        assert len(lines) == 1 and case.says in lines[0], err
        assert len(lines[0]) <= MESSAGE_CHARS, f"a {len(lines[0]):,}-character message: {lines[0][:300]}"
    assert not (tmp_path / NEW_RUN).exists(), "a refused command wrote a run folder"
    assert fingerprint(run) == before, "a refused command changed the trained run's files"


# issue 28, rule 6: random bad input (hsbs bench --sections fuzz runs the same generator at 1,000 cases)
FUZZ_CASES = 60


def test_random_bad_input_ends_in_one_line_or_a_clean_run(trained_run, tmp_path):
    """Seeded random recipes, plans, label lines, csv rows and option values (predict and eval options on the
    trained run's best.pt): each ends in a clean run or a one-line refusal, never a traceback, and writes
    nothing outside its output folder."""
    result = run_fuzz(FUZZ_CASES, seed=28, folder=tmp_path / "fuzz", checkpoint=trained_run / "best.pt")
    assert not result.problems, "\n".join(result.problems)
    assert result.cases == FUZZ_CASES == result.clean + result.refused
    assert len(result.by_kind) == 9, result.by_kind          # every kind of input was tried


def _long_message(argv):
    print("x" * 1000, file=sys.stderr)
    return 1


def _stray_write(argv):
    Path("stray.txt").write_text("not in the output folder")
    return 0


@pytest.mark.parametrize("command, problem", [(lambda argv: 1 / 0, "traceback: ZeroDivisionError"),
                                              (_long_message, "1-line, 1,001-character refusal"),
                                              (_stray_write, "wrote outside its output folder")],
                         ids=["traceback", "long message", "stray write"])
def test_the_fuzz_sees_what_it_looks_for(command, problem, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "hsbs_main", command)
    result = run_fuzz(3, seed=0, folder=tmp_path / "fuzz")
    assert len(result.problems) == 3 and all(problem in line for line in result.problems), result.problems
