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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hsbs_lib.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "configs/synthfer_baseline.yaml")
# A run small enough for the table to take seconds: 28 training images of 33 px, an 8-channel ResNet.
TINY = ["train.progress=false", "train.threads=1", "data.n_train=28", "data.n_val=14", "data.n_test=14",
        "data.input_size=33", "model.backbone_width=8", "train.batch_size=14", "train.epochs=1"]
NEW_RUN = "runs/new"


@dataclass(frozen=True)
class Case:
    """``args`` for ``hsbs``; ``status`` 0 (accepted) or the refusal's exit status; ``says``: a phrase the
    one-line refusal must contain; ``stores``: dotted keys and the values config.yaml must hold."""

    name: str
    args: tuple[str, ...]
    status: int = 1
    says: str = ""
    yaml_text: str | None = None
    stores: dict = field(default_factory=dict)
    prepare: Callable[[Path], None] | None = None


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
    Case("comparison plan not valid YAML", ("compare", "--config", "{yaml}", "--out", NEW_RUN, "--no-speed"),
         yaml_text="base: {data: synthfer}\nrows: [baseline\n", says="comparison config"),
    Case("comparison plan not UTF-8", ("compare", "--config", "{yaml}", "--out", NEW_RUN, "--no-speed"),
         yaml_text="rows:\n  a: \udcff\n", says="is not UTF-8 text"),
    Case("comparison plan rows not a mapping", ("compare", "--config", "{yaml}", "--out", NEW_RUN, "--no-speed"),
         yaml_text="base: {data: synthfer}\nrows: [baseline, hsbs]\n", says="rows must be a mapping"),
    Case("figures of a mistyped run folder", ("figures", "--run", NEW_RUN, "--out", f"{NEW_RUN}/figures"),
         says=f"run directory {NEW_RUN} not found"),
    Case("synth at a size it cannot draw", ("synth", "--out", NEW_RUN, "--n", "4", "--size", "8"),
         says="at least 16 pixels, got 8"),
    # 10. evaluation on another class set
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
        stored = yaml.safe_load((tmp_path / NEW_RUN / "config.yaml").read_text())
        for key, value in case.stores.items():
            assert stored_value(stored, key) == value, key
        return
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    if case.status == 1:
        assert len(lines) == 1 and case.says in lines[0], err
    assert not (tmp_path / NEW_RUN).exists(), "a refused command wrote a run folder"
    assert fingerprint(run) == before, "a refused command changed the trained run's files"

