"""Outputs never destroy user data; divergence is caught; a checkpoint's stored config is not trusted.

Issue 17, items 11-15 and the default folder of ``hsbs figures``, and issue 28's output rule for every command
that writes (:mod:`hsbs_lib.outputs`), as one table of named cases (``CASES``)
with the expected outcome of each: ``pytest tests/test_bad_output.py`` reports how many were tried and
how many held. Every case runs the command (or the library call) a user would, on tiny settings. Cases
whose outcome starts with "keeps working" guard what must stay allowed; every other case failed before
the fix it tests.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from hsbs_lib.cli import main
from hsbs_lib.config import load_config
from hsbs_lib.engine import checkpoint as checkpoint_module
from hsbs_lib.engine import train as train_module
from hsbs_lib.engine.checkpoint import load_checkpoint, save_checkpoint
from hsbs_lib.engine.runs import load_eval_data, load_run
from hsbs_lib.engine.train import NonFiniteLossError, fit, resume_config
from hsbs_lib.models.baseline import Baseline
from hsbs_lib.models.registry import register_model, unregister_model

from fakes import make_rafdb_basic, write_truncated_jpeg

TINY = ["model.name=baseline", "model.backbone_width=16", "data.input_size=32", "data.n_train=48", "data.n_val=16",
        "data.n_test=16", "train.epochs=1", "train.batch_size=16", "train.progress=false", "train.threads=1",
        "train.device=cpu"]


@dataclass
class Env:
    """What a case works with: a fresh folder, a finished tiny run (copy it before changing it), pytest's
    output capture, log capture and monkeypatch."""

    tmp: Path
    run: Path
    capsys: pytest.CaptureFixture
    caplog: pytest.LogCaptureFixture
    monkeypatch: pytest.MonkeyPatch

    def hsbs(self, *argv: str) -> tuple[int, str, str]:
        """Run the ``hsbs`` command in-process: (exit status, stdout, stderr)."""
        self.capsys.readouterr()
        status = main([str(arg) for arg in argv])
        captured = self.capsys.readouterr()
        return status, captured.out, captured.err

    def copy_run(self, name: str = "copy") -> Path:
        return Path(shutil.copytree(self.run, self.tmp / name))

    def config(self, out: Path, *overrides: str):
        return load_config(None, [*TINY, f"data.cache_dir={self.tmp / 'cache'}", f"out={out}", *overrides])


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to show that nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(err: str, *words: str) -> None:
    assert "Traceback" not in err and err.strip(), err
    for word in words:
        assert word in err, (word, err)


# ------------------------------------------------------------------------------------- 11: exports

def export_onto_its_own_checkpoint(env: Env) -> None:
    run = env.copy_run()
    before = (run / "best.pt").read_bytes()
    status, _, err = env.hsbs("export", "--checkpoint", run / "best.pt", "--out", run / "best.pt")
    assert status == 1 and (run / "best.pt").read_bytes() == before
    one_line_error(err, "replace the checkpoint")
    status, _, err = env.hsbs("export", "--checkpoint", run / "best.pt", "--out", run / "best.pt", "--force")
    assert status == 1 and (run / "best.pt").read_bytes() == before


def export_sidecar_onto_the_model(env: Env) -> None:
    status, _, err = env.hsbs("export", "--checkpoint", env.run / "best.pt", "--out", env.tmp / "model.json")
    assert status == 1 and not (env.tmp / "model.json").exists()
    one_line_error(err, "metadata file would overwrite")


def export_onto_a_foreign_file(env: Env) -> None:
    (env.tmp / "model.pt").write_bytes(b"someone's model")
    status, _, err = env.hsbs("export", "--checkpoint", env.run / "best.pt", "--out", env.tmp / "model.pt")
    assert status == 1 and (env.tmp / "model.pt").read_bytes() == b"someone's model"
    one_line_error(err, "model.pt", "--force")
    assert env.hsbs("export", "--checkpoint", env.run / "best.pt", "--out", env.tmp / "model.pt", "--force")[0] == 0
    assert torch.jit.load(str(env.tmp / "model.pt")) is not None


def export_again_replaces_its_own_export(env: Env) -> None:
    out = env.tmp / "exported.pt"
    assert env.hsbs("export", "--checkpoint", env.run / "best.pt", "--out", out)[0] == 0
    first = out.stat().st_mtime_ns
    assert env.hsbs("export", "--checkpoint", env.run / "best.pt", "--out", out)[0] == 0
    assert out.stat().st_mtime_ns >= first and json.loads(out.with_suffix(".json").read_text())["written_by"]


# --------------------------------------------------------------------------------------- 11: synth

def synth_onto_a_dataset_copy(env: Env) -> None:
    root = env.tmp / "RAF-DB"
    make_rafdb_basic(root)
    before = tree(root)
    status, _, err = env.hsbs("synth", "--out", root, "--n", 4, "--size", 16)
    assert status == 1 and tree(root) == before
    one_line_error(err, str(root), "--overwrite")
    assert env.hsbs("synth", "--out", root, "--n", 4, "--size", 16, "--overwrite")[0] == 0
    assert (root / "synthfer_meta.npz").is_file()


def synth_again_into_its_own_output(env: Env) -> None:
    root = env.tmp / "synth"
    assert env.hsbs("synth", "--out", root, "--n", 4, "--size", 16)[0] == 0
    assert env.hsbs("synth", "--out", root, "--n", 5, "--size", 16, "--seed", 1)[0] == 0
    assert len((root / "EmoLabel" / "list_patition_label.txt").read_text().split()) == 10


# --------------------------------------------------------------------------------------- 11: train

def train_onto_unrelated_files(env: Env) -> None:
    folder = env.tmp / "documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    status, _, err = env.hsbs("train", "--out", folder, *TINY, f"data.cache_dir={env.tmp / 'cache'}")
    assert status == 1 and tree(folder) == {"thesis.tex": b"years of work"}
    one_line_error(err, "thesis.tex", "--overwrite")


def train_onto_another_run(env: Env) -> None:
    run = env.copy_run()
    before = tree(run)
    overrides = [*TINY, f"data.cache_dir={env.tmp / 'cache'}", "train.lr=0.01"]
    status, _, err = env.hsbs("train", "--out", run, *overrides)
    assert status == 1 and tree(run) == before
    one_line_error(err, "another recipe", "train.lr", "--resume")
    assert env.hsbs("train", "--out", run, "--overwrite", *overrides)[0] == 0
    assert load_checkpoint(run / "best.pt")["config"]["train"]["lr"] == 0.01


def failed_start_leaves_nothing_that_refuses_the_corrected_command(env: Env) -> None:
    # A bad option is found while the model is built, after the folder was claimed: nothing may stay behind,
    # or the corrected command would be refused as a run of another recipe.
    folder = env.tmp / "new" / "runs" / "hsbs"
    base = [*TINY, f"data.cache_dir={env.tmp / 'cache'}", "model.name=hsbs"]
    status, _, err = env.hsbs("train", "--out", folder, *base, "model.options.lambda_hst=-5")
    assert status == 1 and not (env.tmp / "new").exists()   # nor the parents it created
    one_line_error(err, "lambda_hst", ">= 0")
    assert env.hsbs("train", "--out", folder, *base, "model.options.lambda_hst=5")[0] == 0
    assert load_config(folder / "config.yaml", []).model.options["lambda_hst"] == 5
    # The same failure over a finished run (with --overwrite) leaves that run as it was, eval.json included.
    run = env.copy_run("finished")
    before = tree(run)
    status, _, err = env.hsbs("train", "--out", run, "--overwrite", *base, "model.options.lambda_hst=-5")
    assert status == 1 and tree(run) == before
    one_line_error(err, "lambda_hst")
    # So does the reference trainer's failure after its data loaded (a batch larger than the split).
    status, _, err = env.hsbs("train", "--out", run, "--overwrite", *TINY, f"data.cache_dir={env.tmp / 'cache'}",
                              "train.trainer=reference", "train.batch_size=100000")
    assert status == 1 and tree(run) == before
    one_line_error(err, "fewer than one batch")
    # Results without checkpoints (deleted to save space; a reference run writes none) are still a run.
    bare = env.copy_run("bare")
    for name in ("last.pt", "best.pt"):
        (bare / name).unlink()
    before = tree(bare)
    status, _, err = env.hsbs("train", "--out", bare, *base, "model.options.lambda_hst=5")
    assert status == 1 and tree(bare) == before
    one_line_error(err, "another recipe")


def killed_run_leaves_no_result_beside_its_new_config(env: Env) -> None:
    run = env.copy_run()
    assert (run / "eval.json").is_file()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    env.monkeypatch.setattr(train_module, "train_one_epoch", killed)
    config = env.config(run, "train.lr=0.01")
    with pytest.raises(KeyboardInterrupt):
        fit(config)
    # hsbs compare reuses a folder holding eval.json and this recipe's config.yaml: the old result must be gone.
    assert load_config(run / "config.yaml", []).train.lr == 0.01
    assert not (run / "eval.json").exists()
    # Nor may the other recipe's checkpoints and metrics stay beside it (hsbs demo would resume its last.pt).
    assert not any((run / name).exists() for name in ("last.pt", "best.pt", "metrics.csv"))


def unreadable_config_in_a_demo_or_compare_folder(env: Env) -> None:
    from hsbs_lib import demo as demo_module
    from hsbs_lib.engine.run_folder import holds_run_of

    started = []
    env.monkeypatch.setattr(demo_module, "fit", lambda config, resume=None: started.append((config.out, resume)))
    recipe = load_config("configs/synthfer_baseline.yaml", [])
    for name, text in (("not_yaml", b"model: [unclosed\n"), ("not_utf8", b"\xff\xfe\x00m\x00"),
                       ("a_list", b"- 1\n- 2\n")):
        root = env.tmp / name
        for run in demo_module.DEMO_RUNS:
            shutil.copytree(env.run, root / run)
            (root / run / "config.yaml").write_bytes(text)
        assert not holds_run_of(root / "demo_baseline", recipe)       # what hsbs compare asks before reusing
        demo_module.ensure_demo_runs(root)                             # no traceback: trained afresh
        assert sorted(started) == sorted((str(root / run), None) for run in demo_module.DEMO_RUNS)
        started.clear()
    assert holds_run_of(env.run, load_config(env.run / "config.yaml", []))


def second_writer_is_locked_out(env: Env) -> None:
    run = env.copy_run()
    # A live process (this one) holds the lock, as a first `hsbs train` would.
    (run / ".hsbs-run.lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    before = (run / "last.pt").read_bytes()
    status, _, err = env.hsbs("train", "--resume", run, "train.epochs=2")
    assert status == 1 and (run / "last.pt").read_bytes() == before
    one_line_error(err, "in use by process", str(os.getpid()))
    # hsbs compare (and hsbs demo) meet the same lock through the trainer, and say so in one line too.
    plan = env.tmp / "plan.yaml"
    plan.write_text(f"base: configs/synthfer_baseline.yaml\nout: {env.tmp / 'cmp'}\nrows:\n  baseline: {{}}\n")
    (env.tmp / "cmp" / "baseline" / "seed0").mkdir(parents=True)
    (env.tmp / "cmp" / "baseline" / "seed0" / ".hsbs-run.lock").write_text((run / ".hsbs-run.lock").read_text())
    status, _, err = env.hsbs("compare", "--config", plan, "--seeds", "0", "--no-speed", *TINY)
    assert status == 1
    one_line_error(err, "in use by process", str(os.getpid()))


def stale_lock_of_a_dead_process_is_taken_over(env: Env) -> None:
    run = env.copy_run()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / ".hsbs-run.lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    assert env.hsbs("train", "--resume", run, "train.epochs=2")[0] == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2 and not (run / ".hsbs-run.lock").exists()


# ------------------------------------------------------------------------------------- 12: overlays

def overlays_of_inputs_sharing_a_stem(env: Env) -> None:
    image = np.full((32, 32, 3), 120, np.uint8)
    for path in (env.tmp / "a" / "face.png", env.tmp / "b" / "face.png", env.tmp / "a" / "face.jpg"):
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(path)
    out = env.tmp / "overlays"
    status, _, _ = env.hsbs("predict", "--checkpoint", env.run / "best.pt", "--no-detect", "--save-overlay", out,
                            env.tmp / "a", env.tmp / "b")
    assert status == 0 and len(list(out.glob("*.png"))) == 3, sorted(p.name for p in out.iterdir())


# ------------------------------------------------------------------------- 13: interrupted writes

def stale_temporary_checkpoint_is_removed(env: Env) -> None:
    run = env.copy_run()
    leftover = run / ".last.pt.k1ll3d.tmp"        # what a SIGKILL during save_checkpoint leaves
    leftover.write_bytes(b"\0" * 1024)
    fit(resume_config(run, ["train.epochs=2"]), resume=run)
    assert not leftover.exists() and load_checkpoint(run)["epoch"] == 2


def best_is_written_before_last_records_it(env: Env) -> None:
    real_save = train_module.save_checkpoint

    def killed_during_best(path, **parts):
        if Path(path).name == "best.pt":
            raise KeyboardInterrupt("killed while writing best.pt")
        return real_save(path, **parts)

    env.monkeypatch.setattr(train_module, "save_checkpoint", killed_during_best)
    out = env.tmp / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(env.config(out))
    # last.pt must not claim a best epoch whose file is missing
    assert (out / "best.pt").is_file() or not (out / "last.pt").is_file()


# ------------------------------------------------------------------------------------- 14: divergence

class NanGradientsAt(Baseline):
    """A baseline whose loss stays finite while step ``bad_step`` leaves NaN in the weights (sqrt at 0)."""

    def __init__(self, *args, bad_step: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.bad_step, self.steps = bad_step, 0

    def loss(self, output, targets):
        self.steps += 1
        terms = super().loss(output, targets)
        if self.steps == self.bad_step:   # value 0, gradient 0 * inf = NaN
            terms["aux"] = 0.0 * (output.logits - output.logits.detach()).abs().sqrt().sum()
        return terms


class ExplodesAt(Baseline):
    """A baseline whose loss jumps a million-fold (finite) from step ``bad_step`` on."""

    def __init__(self, *args, bad_step: int = 12, **kwargs):
        super().__init__(*args, **kwargs)
        self.bad_step, self.steps = bad_step, 0

    def loss(self, output, targets):
        self.steps += 1
        terms = super().loss(output, targets)
        if self.steps >= self.bad_step:
            terms["aux"] = output.logits.sum() * 0.0 + 1e6
        return terms


def registered(name: str, factory) -> Callable:
    def wrap(case):
        def run(env: Env) -> None:
            register_model(name)(factory)
            try:
                case(env)
            finally:
                unregister_model(name)
        run.__name__ = case.__name__
        return run
    return wrap


@registered("nan_gradients_at", NanGradientsAt)
def non_finite_weights_are_never_saved(env: Env) -> None:
    out = env.tmp / "run"
    # 3 steps an epoch; the last step of epoch 2 leaves NaN weights behind a finite loss.
    config = env.config(out, "model.name=nan_gradients_at", "model.options.bad_step=6", "train.epochs=2",
                        "train.max_steps_per_epoch=3")
    with pytest.raises(NonFiniteLossError, match="non-finite weights") as raised:
        fit(config)
    assert f"{out / 'last.pt'} (epoch 1)" in str(raised.value)
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


@registered("explodes_at", ExplodesAt)
def exploding_loss_is_divergence(env: Env) -> None:
    out = env.tmp / "run"
    config = env.config(out, "model.name=explodes_at", "model.options.bad_step=14", "train.epochs=3",
                        "train.batch_size=4", "train.max_steps_per_epoch=8")
    with pytest.raises(NonFiniteLossError, match="exploded at step 14") as raised:
        fit(config)
    assert f"{out / 'last.pt'} (epoch 1)" in str(raised.value)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


@registered("explodes_at", ExplodesAt)
def divergence_in_the_first_epoch_claims_no_checkpoint(env: Env) -> None:
    out = env.tmp / "run"
    config = env.config(out, "model.name=explodes_at", "model.options.bad_step=11", "train.batch_size=4")
    with pytest.raises(NonFiniteLossError) as raised:
        fit(config)
    assert "No checkpoint was written" in str(raised.value) and not (out / "last.pt").exists()
    # Nothing to continue: the corrected command (here another model) takes the folder without --overwrite.
    status, _, err = env.hsbs("train", "--out", out, *TINY, f"data.cache_dir={env.tmp / 'cache'}")
    assert status == 0, err
    assert load_config(out / "config.yaml", []).model.name == "baseline" and (out / "best.pt").is_file()


def full_disk_while_saving(env: Env) -> None:
    run = env.copy_run()
    before = (run / "last.pt").read_bytes()

    def half_written(obj, file, *args, **kwargs):     # what torch.save does when the disk fills up mid-file
        file.write(b"PK" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662")

    env.monkeypatch.setattr(torch, "save", half_written)
    env.monkeypatch.setattr(checkpoint_module.shutil, "disk_usage",
                            lambda folder: SimpleNamespace(total=10**9, used=10**9, free=0))
    status, _, err = env.hsbs("train", "--resume", run, "train.epochs=2")
    assert status == 1
    one_line_error(err, "no space left", str(run / "last.pt"))
    assert (run / "last.pt").read_bytes() == before and not list(run.glob(".*.tmp"))
    # Space freed, the same command continues from the intact last.pt.
    env.monkeypatch.undo()
    assert env.hsbs("train", "--resume", run, "train.epochs=2")[0] == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def save_refuses_non_finite_weights(env: Env) -> None:
    state = load_checkpoint(env.run / "best.pt")
    name = next(key for key, value in state["model"].items() if value.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], math.nan)
    with pytest.raises(ValueError, match=name):
        save_checkpoint(env.tmp / "last.pt", **state)
    assert not list(env.tmp.glob("*.pt*")) and not list(env.tmp.glob(".*.tmp"))


def predict_refuses_a_non_finite_model(env: Env) -> None:
    state = load_checkpoint(env.run / "best.pt")
    running_var = next(key for key in state["model"] if key.endswith("running_var"))
    state["model"][running_var] = torch.full_like(state["model"][running_var], math.nan)
    torch.save(state, env.tmp / "diverged.pt")    # written past the guard, as an old version could
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(env.tmp / "face.png")
    status, out, err = env.hsbs("predict", "--checkpoint", env.tmp / "diverged.pt", "--no-detect", "--format",
                                "jsonl", env.tmp / "face.png")
    assert status == 1 and "NaN" not in out
    one_line_error(err, "non-finite weights", running_var)


# ------------------------------------------------------------------ 15: stored config is not trusted

def stored_run(env: Env, **data: object) -> Path:
    """A copy of the tiny run whose checkpoints claim other data settings (as a foreign checkpoint could)."""
    run = env.copy_run()
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(run / name)
        state["config"]["data"].update(data)
        torch.save(state, run / name)
    return run


def eval_uses_the_users_data_root(env: Env) -> None:
    make_rafdb_basic(env.tmp / "mine")
    run = stored_run(env, name="rafdb", root=str(env.tmp / "stored-elsewhere"))
    env.monkeypatch.setenv("HSBS_DATA", str(env.tmp / "mine"))
    status, out, err = env.hsbs("eval", "--checkpoint", run / "best.pt", "--out", env.tmp / "eval.json")
    assert status == 0, err
    assert json.loads((env.tmp / "eval.json").read_text())["n"] == 3     # the fake copy's 3 test images


def eval_prints_a_stored_root_it_uses(env: Env) -> None:
    make_rafdb_basic(env.tmp / "stored")
    run = stored_run(env, name="rafdb", root=str(env.tmp / "stored"))
    env.monkeypatch.delenv("HSBS_DATA", raising=False)
    with env.caplog.at_level("INFO"):
        status, _, err = env.hsbs("eval", "--checkpoint", run / "best.pt", "--out", env.tmp / "eval.json")
    assert status == 0, err
    assert f"data.root={env.tmp / 'stored'} stored in" in env.caplog.text


def eval_refuses_a_huge_stored_n_test(env: Env) -> None:
    run = stored_run(env, n_test=10**12)
    status, _, err = env.hsbs("eval", "--checkpoint", run / "best.pt", "--out", env.tmp / "eval.json")
    assert status == 1 and not (env.tmp / "eval.json").exists()
    one_line_error(err, "data.n_test=1000000000000")
    assert env.hsbs("eval", "--checkpoint", run / "best.pt", "--out", env.tmp / "eval.json", "data.n_test=16")[0] == 0


def figures_use_the_users_data_root(env: Env) -> None:
    make_rafdb_basic(env.tmp / "mine")
    run = stored_run(env, name="rafdb", root=str(env.tmp / "stored-elsewhere"))
    env.monkeypatch.setenv("HSBS_DATA", str(env.tmp / "mine"))
    data = load_eval_data(load_run(run))
    assert data is not None and len(data.labels) == 3


def figures_default_beside_the_run_not_in_the_checkout(env: Env) -> None:
    from hsbs_lib.viz import figures as figures_module, style

    checkout = env.tmp / "checkout"
    env.monkeypatch.setattr(style, "repo_root", lambda: checkout)     # where the package's figures/ would be
    env.monkeypatch.delenv("HSBS_FIGURES", raising=False)
    env.monkeypatch.setattr(figures_module, "load_eval_data", lambda run, **kw: None)   # metric figures only
    run = env.copy_run()
    status, _, err = env.hsbs("figures", "--run", run, "--formats", "png")
    assert status == 0, err
    assert not checkout.exists() and list((run / "figures").glob("*_curves.png"))


def eval_keeps_the_runs_own_eval_json(env: Env) -> None:
    run = env.copy_run()
    before = (run / "eval.json").read_bytes()        # training's report, with the validation scores compare reads
    status, out, err = env.hsbs("eval", "--checkpoint", run / "best.pt", "--split", "val")
    assert status == 0, err
    assert (run / "eval.json").read_bytes() == before
    assert json.loads((run / "eval_val.json").read_text())["split"] == "val" and "eval_val.json" in out


def eval_refuses_a_range_no_run_can_use(env: Env) -> None:
    status, _, err = env.hsbs("eval", "--checkpoint", env.run / "best.pt", "--out", env.tmp / "eval.json",
                              "data.n_test=0")
    assert status == 1 and not (env.tmp / "eval.json").exists()
    one_line_error(err, "data.n_test")


def eval_lists_what_skip_bad_left_out(env: Env) -> None:
    make_rafdb_basic(env.tmp / "mine")
    bad = sorted((env.tmp / "mine" / "Image" / "aligned").glob("test_*_aligned.jpg"))[0]
    write_truncated_jpeg(bad)
    run = stored_run(env, name="rafdb", root=str(env.tmp / "mine"))
    status, _, err = env.hsbs("eval", "--checkpoint", run / "best.pt", "--out", env.tmp / "eval.json")
    assert status == 1 and bad.name in err and not (env.tmp / "eval.json").exists()   # refused, naming it
    with env.caplog.at_level("WARNING"):
        status, _, err = env.hsbs("eval", "--checkpoint", run / "best.pt", "--out", env.tmp / "eval.json",
                                  "data.skip_bad=true")
    assert status == 0, err
    report = json.loads((env.tmp / "eval.json").read_text())
    assert report["n"] == 2 and len(report["skipped"]) == 1 and bad.name in report["skipped"][0]
    assert bad.name in env.caplog.text


# --------------------------------------------------------------- 28: the output rule, every command

def eval_onto_its_own_checkpoint(env: Env) -> None:
    run = env.copy_run()
    before = tree(run)
    for extra in ((), ("--force",)):          # the file a command reads is never replaced, --force or not
        status, _, err = env.hsbs("eval", "--checkpoint", run / "best.pt", "--out", run / "best.pt", *extra)
        assert status == 1 and tree(run) == before
        one_line_error(err, str(run / "best.pt"), "reads")
        assert len(err.strip().splitlines()) == 1


def eval_onto_the_runs_own_files(env: Env) -> None:
    run = env.copy_run()
    before = tree(run)
    # config.yaml and the eval.json hsbs compare reads were written by hsbs train, not by hsbs eval.
    for name in ("config.yaml", "eval.json", "metrics.csv"):
        status, _, err = env.hsbs("eval", "--checkpoint", run / "best.pt", "--out", run / name)
        assert status == 1 and tree(run) == before, name
        one_line_error(err, str(run / name), "not written by hsbs eval", "--force")
        assert len(err.strip().splitlines()) == 1


def eval_onto_an_unrelated_file(env: Env) -> None:
    notes = env.tmp / "notes.json"
    notes.write_text('{"mine": true}')
    status, _, err = env.hsbs("eval", "--checkpoint", env.run / "best.pt", "--out", notes)
    assert status == 1 and notes.read_text() == '{"mine": true}'
    one_line_error(err, str(notes), "--force")
    assert env.hsbs("eval", "--checkpoint", env.run / "best.pt", "--out", notes, "--force")[0] == 0
    assert json.loads(notes.read_text())["n"] == 16


def eval_again_replaces_only_its_own_unchanged_report(env: Env) -> None:
    run = env.copy_run()
    assert env.hsbs("eval", "--checkpoint", run / "best.pt")[0] == 0
    assert env.hsbs("eval", "--checkpoint", run / "best.pt")[0] == 0      # its own report, replaced
    (run / "eval_test.json").write_text("my notes on the test split\n")   # edited by the user since
    status, _, err = env.hsbs("eval", "--checkpoint", run / "best.pt")
    assert status == 1 and (run / "eval_test.json").read_text() == "my notes on the test split\n"
    one_line_error(err, "eval_test.json", "--force")


def eval_report_write_that_fails_halfway(env: Env) -> None:
    run = env.copy_run()
    assert env.hsbs("eval", "--checkpoint", run / "best.pt")[0] == 0
    before = tree(run)
    real_write_text = Path.write_text

    def half_written(self, text, *args, **kwargs):   # what a full disk does to a report mid-file
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    env.monkeypatch.setattr(Path, "write_text", half_written)
    status, _, err = env.hsbs("eval", "--checkpoint", run / "best.pt")
    env.monkeypatch.undo()
    assert status == 1 and tree(run) == before        # the previous report whole, no temporary left
    one_line_error(err, "No space left")


def photos(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((32, 32, 3), 40 + 30 * i, np.uint8)).save(folder / name)


def predict_overlays_into_the_input_folder(env: Env) -> None:
    folder = env.tmp / "photos"
    photos(folder, "a.png", "a_pred.png", "b.png")     # a_pred.png is a photo, and an input
    before = tree(folder)
    for extra in ((), ("--force",)):
        status, _, err = env.hsbs("predict", "--checkpoint", env.run / "best.pt", "--no-detect",
                                  "--save-overlay", folder, folder, *extra)
        assert status == 1 and tree(folder) == before
        one_line_error(err, str(folder / "a_pred.png"), "reads")
    # Without the clash: the overlays go beside the photos, and a second run neither reads them as photos
    # nor refuses to replace them.
    (folder / "a_pred.png").unlink()
    before = tree(folder)
    for _ in range(2):
        status, _, err = env.hsbs("predict", "--checkpoint", env.run / "best.pt", "--no-detect",
                                  "--save-overlay", folder, folder)
        assert status == 0, err
        assert sorted(p.name for p in folder.glob("*.png")) == ["a.png", "a_pred.png", "b.png", "b_pred.png"]
        assert {name: tree(folder)[name] for name in before} == before


def predict_overlay_onto_a_users_file(env: Env) -> None:
    photos(env.tmp / "in", "face.png")
    out = env.tmp / "out"
    photos(out, "face_pred.png")
    mine = (out / "face_pred.png").read_bytes()
    status, _, err = env.hsbs("predict", "--checkpoint", env.run / "best.pt", "--no-detect", "--save-overlay", out,
                              env.tmp / "in")
    assert status == 1 and (out / "face_pred.png").read_bytes() == mine
    one_line_error(err, str(out / "face_pred.png"), "--force")
    assert env.hsbs("predict", "--checkpoint", env.run / "best.pt", "--no-detect", "--save-overlay", out,
                    env.tmp / "in", "--force")[0] == 0
    assert (out / "face_pred.png").read_bytes() != mine


def export_beside_an_earlier_exports_sidecar(env: Env) -> None:
    folder = env.tmp / "deploy"
    assert env.hsbs("export", "--checkpoint", env.run / "best.pt", "--out", folder / "first.pt")[0] == 0
    # An earlier export's metadata under the name of a user's model does not make the model export's own.
    shutil.copy(folder / "first.json", folder / "model.json")
    (folder / "model.pt").write_bytes(b"someone's model")
    status, _, err = env.hsbs("export", "--checkpoint", env.run / "best.pt", "--out", folder / "model.pt")
    assert status == 1 and (folder / "model.pt").read_bytes() == b"someone's model"
    one_line_error(err, str(folder / "model.pt"), "--force")
    # Nor does an export whose file the user replaced since.
    (folder / "first.pt").write_bytes(b"retrained elsewhere")
    status, _, err = env.hsbs("export", "--checkpoint", env.run / "best.pt", "--out", folder / "first.pt")
    assert status == 1 and (folder / "first.pt").read_bytes() == b"retrained elsewhere"
    one_line_error(err, "first.pt", "--force")


def metric_figures_only(env: Env) -> None:
    from hsbs_lib.viz import figures as figures_module

    env.monkeypatch.setattr(figures_module, "load_eval_data", lambda run, **kw: None)


def figures_beside_a_users_file(env: Env) -> None:
    metric_figures_only(env)
    run = env.copy_run("myrun")
    out = env.tmp / "paper"
    out.mkdir()
    (out / "myrun_curves.png").write_bytes(b"my own plot")
    status, _, err = env.hsbs("figures", "--run", run, "--out", out, "--formats", "png")
    assert status == 1 and (out / "myrun_curves.png").read_bytes() == b"my own plot"
    one_line_error(err, str(out / "myrun_curves.png"), "not written by hsbs figures", "--force")
    assert env.hsbs("figures", "--run", run, "--out", out, "--formats", "png", "--force")[0] == 0
    assert (out / "myrun_curves.png").read_bytes().startswith(b"\x89PNG")
    # Its own figures it redraws without --force.
    assert env.hsbs("figures", "--run", run, "--out", out, "--formats", "png")[0] == 0


def train_onto_a_users_config_yaml(env: Env) -> None:
    project = env.tmp / "project"
    project.mkdir()
    (project / "config.yaml").write_text("model: {name: my_net}\ntrain: {lr: 3}\n")   # a config.yaml, not a run
    before = tree(project)
    status, _, err = env.hsbs("train", "--out", project, *TINY, f"data.cache_dir={env.tmp / 'cache'}")
    assert status == 1 and tree(project) == before
    one_line_error(err, "config.yaml", "not a training run", "--overwrite")


def train_records_its_run_and_resumes_one_from_before_manifests(env: Env) -> None:
    from hsbs_lib.outputs import MANIFEST_NAME, OutputFolder

    run = env.copy_run()
    recorded = OutputFolder(run, "train").manifest()
    assert {name for name, entry in recorded.items() if entry["command"] == "train"} >= {
        "config.yaml", "best.pt", "last.pt", "metrics.csv", "eval.json"}
    (run / MANIFEST_NAME).unlink()           # a run written before runs kept a manifest
    assert env.hsbs("train", "--resume", run, "train.epochs=2")[0] == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2 and OutputFolder(run, "train").written_by_me("last.pt")


def output_names_leading_out_of_the_folder(env: Env) -> None:
    from hsbs_lib.outputs import OutputFolder, OutputRefused

    outside = env.tmp / "outside"
    outside.mkdir()
    folder = env.tmp / "out"
    folder.mkdir()
    (folder / "link").symlink_to(outside, target_is_directory=True)   # a folder on the way leads outside
    outputs = OutputFolder(folder, "figures", force=True)
    for name in ("../x.png", str(outside / "x.png"), "a/../../x.png", "link/x.png", ".hsbs-outputs.json"):
        with pytest.raises(OutputRefused, match="outside"):
            outputs.write_text(name, "escaped")
    assert not list(outside.iterdir()) and not (env.tmp / "x.png").exists()
    assert outputs.write_text("sub/x.png", "inside").read_text() == "inside"      # a plain subfolder is fine


def compare_plan(env: Env, rows: str, out: Path) -> Path:
    plan = env.tmp / "plan.yaml"
    plan.write_text(f"base: configs/synthfer_baseline.yaml\nout: {out}\nrows:\n{rows}")
    return plan


def compare_beside_a_users_table(env: Env) -> None:
    out = env.tmp / "cmp"
    out.mkdir()
    (out / "comparison.md").write_text("my table")
    plan = compare_plan(env, "  baseline: {}\n", out)
    status, _, err = env.hsbs("compare", "--config", plan, "--seeds", "0", "--no-speed", *TINY)
    assert status == 1 and tree(out) == {"comparison.md": b"my table"}   # refused before any training
    one_line_error(err, str(out / "comparison.md"), "not written by hsbs compare", "--force")


def compare_plan_inside_its_output_folder(env: Env) -> None:
    out = env.tmp / "cmp"
    out.mkdir()
    plan = out / "comparison.md"                  # the plan the command reads, named like its table
    plan.write_text(f"base: configs/synthfer_baseline.yaml\nout: {out}\nrows:\n  baseline: {{}}\n")
    before = tree(out)
    status, _, err = env.hsbs("compare", "--config", plan, "--seeds", "0", "--no-speed", "--force", *TINY)
    assert status == 1 and tree(out) == before
    one_line_error(err, str(plan), "reads", "not even with --force")


def compare_row_leading_out_of_its_folder(env: Env) -> None:
    out = env.tmp / "a" / "b" / "cmp"
    for row in ("../../x", "/tmp/x", ".hidden"):
        plan = compare_plan(env, f"  baseline: {{}}\n  '{row}': {{}}\n", out)
        status, _, err = env.hsbs("compare", "--config", plan, "--seeds", "0", "--no-speed", *TINY)
        assert status == 1 and not (env.tmp / "a").exists() and not (env.tmp / "x").exists()
        one_line_error(err, repr(row), "outside the output folder")


@dataclass(frozen=True)
class Case:
    name: str
    item: int          # issue 17 item
    expected: str      # the outcome the case asserts
    check: Callable[[Env], None]


CASES = [
    Case("export --out onto its own checkpoint", 11, "refused (exit 1), checkpoint unchanged, even with --force",
         export_onto_its_own_checkpoint),
    Case("export --out x.json", 11, "refused: the sidecar would replace the model", export_sidecar_onto_the_model),
    Case("export --out onto a foreign file", 11, "refused without --force; replaced with it", export_onto_a_foreign_file),
    Case("export twice to one path", 11, "keeps working: the earlier export is replaced", export_again_replaces_its_own_export),
    Case("synth --out onto a RAF-DB copy", 11, "refused, copy unchanged; written with --overwrite",
         synth_onto_a_dataset_copy),
    Case("synth twice into one folder", 11, "keeps working: its own output is replaced", synth_again_into_its_own_output),
    Case("train --out onto unrelated files", 11, "refused, files unchanged", train_onto_unrelated_files),
    Case("train --out onto another recipe's run", 11, "refused naming the key; replaced with --overwrite",
         train_onto_another_run),
    Case("train with a bad option, then corrected", 11, "refused naming the key; nothing left behind, so the "
         "corrected command runs and a finished run stays as it was", failed_start_leaves_nothing_that_refuses_the_corrected_command),
    Case("a run killed after replacing another's config", 11, "the replaced run's eval.json is gone, so "
         "compare retrains instead of reusing it", killed_run_leaves_no_result_beside_its_new_config),
    Case("hsbs demo / compare over a run with an unreadable config.yaml", 11, "taken for another recipe's "
         "run and trained afresh, no traceback", unreadable_config_in_a_demo_or_compare_folder),
    Case("a second writer into a locked run", 11, "refused naming the live process", second_writer_is_locked_out),
    Case("a stale lock of a dead process", 11, "taken over, released at the end",
         stale_lock_of_a_dead_process_is_taken_over),
    Case("predict --save-overlay, inputs sharing a stem", 12, "one overlay per input", overlays_of_inputs_sharing_a_stem),
    Case("a temporary file from a killed checkpoint write", 13, "removed by the next run in the folder",
         stale_temporary_checkpoint_is_removed),
    Case("killed while writing the first best.pt", 13, "no last.pt claiming a missing best.pt",
         best_is_written_before_last_records_it),
    Case("NaN weights behind a finite loss", 14, "stopped, nothing non-finite saved, last good last.pt named",
         non_finite_weights_are_never_saved),
    Case("a loss 1e6 times its running median", 14, "stopped as divergence, last good last.pt named",
         exploding_loss_is_divergence),
    Case("divergence in the first epoch", 14, "the message claims no checkpoint", divergence_in_the_first_epoch_claims_no_checkpoint),
    Case("the disk fills up while a checkpoint is written", 14, "one line naming the file, the previous "
         "last.pt intact and resumable", full_disk_while_saving),
    Case("save_checkpoint with NaN weights", 14, "refused, nothing written", save_refuses_non_finite_weights),
    Case("predict with a non-finite checkpoint", 14, "refused, no bare NaN printed", predict_refuses_a_non_finite_model),
    Case("eval: stored data.root vs the user's $HSBS_DATA", 15, "the user's root is used", eval_uses_the_users_data_root),
    Case("eval: stored data.root, user gave none", 15, "used and printed", eval_prints_a_stored_root_it_uses),
    Case("eval: stored data.n_test=1e12", 15, "refused unless the user gives data.n_test",
         eval_refuses_a_huge_stored_n_test),
    Case("figures: stored data.root vs the user's $HSBS_DATA", 15, "the user's root is used",
         figures_use_the_users_data_root),
    Case("eval without --out", 15, "writes eval_SPLIT.json, the run's own eval.json unchanged",
         eval_keeps_the_runs_own_eval_json),
    Case("eval with data.n_test=0", 7, "refused in one line before any work", eval_refuses_a_range_no_run_can_use),
    Case("eval: a bad test image", 1, "refused naming it; with skip_bad=true left out and listed in the report",
         eval_lists_what_skip_bad_left_out),
    Case("figures without --out", 0, "written into RUN/figures, never into the package checkout",
         figures_default_beside_the_run_not_in_the_checkout),
    Case("eval --out onto the checkpoint it reads", 28, "refused in one line, even with --force",
         eval_onto_its_own_checkpoint),
    Case("eval --out onto the run's config.yaml, eval.json, metrics.csv", 28, "refused in one line naming the "
         "file (hsbs train wrote them)", eval_onto_the_runs_own_files),
    Case("eval --out onto an unrelated file", 28, "refused without --force; replaced with it",
         eval_onto_an_unrelated_file),
    Case("eval twice, then the report edited", 28, "keeps working: its own report is replaced; once edited, "
         "refused", eval_again_replaces_only_its_own_unchanged_report),
    Case("eval report write fails halfway", 28, "one line; the previous report whole, no temporary file",
         eval_report_write_that_fails_halfway),
    Case("predict FOLDER --save-overlay FOLDER over an input photo", 28, "refused, even with --force; without "
         "the clash its overlays are written and replaced, never read as photos", predict_overlays_into_the_input_folder),
    Case("predict --save-overlay onto a user's *_pred.png", 28, "refused without --force",
         predict_overlay_onto_a_users_file),
    Case("export beside an earlier export's sidecar", 28, "a user's model.pt (or a replaced export) is refused "
         "without --force", export_beside_an_earlier_exports_sidecar),
    Case("figures --out onto a user's same-named file", 28, "refused without --force; its own figures redrawn",
         figures_beside_a_users_file),
    Case("train --out onto a folder holding a user's config.yaml", 28, "refused: the manifest does not record "
         "it as hsbs train's, and no run's results sit beside it", train_onto_a_users_config_yaml),
    Case("train, then resume a run from before manifests", 28, "keeps working: a run records its files as hsbs "
         "train's, and a run without a manifest is still resumed", train_records_its_run_and_resumes_one_from_before_manifests),
    Case("output names with .., absolute, through a link out", 28, "refused, even with --force; nothing written "
         "outside the folder", output_names_leading_out_of_the_folder),
    Case("compare --out onto a user's comparison.md", 28, "refused before any training", compare_beside_a_users_table),
    Case("compare --config OUT/comparison.md", 28, "refused before training, even with --force: the plan it "
         "reads is never replaced", compare_plan_inside_its_output_folder),
    Case("compare plan row named ../../x", 28, "refused in one line, nothing trained or written",
         compare_row_leading_out_of_its_folder),
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One finished tiny SynthFER run (best.pt, last.pt, config.yaml, metrics.csv, eval.json)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    fit(load_config(None, [*TINY, f"data.cache_dir={out.parent / 'cache'}", f"out={out}"]))
    return out


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_output(case: Case, tiny_run, tmp_path, capsys, caplog, monkeypatch):
    case.check(Env(tmp_path, tiny_run, capsys, caplog, monkeypatch))
