"""``hsbs bench``: numbers, not timed tests.

Every figure printed here is measured in the same process, one after the other, and methods are
reported as ratios to the baseline measured in the same run, because shared machines are noisy.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn

from hsbs_lib.cli import main as hsbs_main
from hsbs_lib.config import config_path, load_config, load_yaml, repo_root, resolved_stem
from hsbs_lib.data.datasets import load_dataset
from hsbs_lib.data.pipeline.cache import cache_split
from hsbs_lib.data.pipeline.loaders import DeviceBatchLoader, SampleBatchLoader, labels_of
from hsbs_lib.data.synthfer import render_synthfer, write_rafdb_layout
from hsbs_lib.data.labels import class_names
from hsbs_lib.engine.build import build_model, build_splits, resolve_device
from hsbs_lib.engine.compare import load_plan, load_plan_config
from hsbs_lib.engine.cost import _fake_targets, _sync, count_macs, count_parameters
from hsbs_lib.engine.op_count import StepOps, step_op_counts
from hsbs_lib.engine.train import ModelWithLoss, build_optimizer, compile_step, fit, unwrap_to_step_module
from hsbs_lib.extras import require
from hsbs_lib.models.backbones import stage_sizes
from hsbs_lib.models.registry import create_model, list_models, model_option_defaults


@dataclass
class ModelCost:
    name: str
    parameters: int
    macs: int
    train_images_per_s: float
    infer_images_per_s: float


def model_cost(name: str, *, input_size: int = 64, backbone: str = "resnet18", device: str = "cpu",
               batch_size: int = 32, steps: int = 5, options: dict | None = None) -> ModelCost:
    """Parameters, MACs and training / inference images/s of one registered model."""
    return compare_model_costs({name: options or {}}, input_size=input_size, backbone=backbone, device=device,
                               batch_size=batch_size, steps=steps)[0]


def compare_model_costs(models: dict[str, dict], *, input_size: int = 64, backbone: str = "resnet18",
                        device: str = "cpu", batch_size: int = 32, steps: int = 8, warmup: int = 2,
                        amp: bool = True, compile: bool | str = False) -> list[ModelCost]:
    """Training and inference speed of several registered models (name -> options such as ``stem``,
    ``backbone_width`` and method switches), measured by :func:`time_interleaved`."""
    built = {}
    for name, options in models.items():
        torch.manual_seed(0)
        built[name] = (create_model(name, num_classes=7, backbone=backbone, input_size=input_size, **options),
                       input_size)
    return time_interleaved(built, device=device, batch_size=batch_size, steps=steps, warmup=warmup, amp=amp,
                            compile=compile)


def time_interleaved(models: dict[str, tuple[nn.Module, int]], *, device: str = "cpu", batch_size: int = 32,
                     steps: int = 8, warmup: int = 2, amp: bool = True, compile: bool | str = False) -> list[ModelCost]:
    """Speeds of ``models`` (label -> (model, input size)), their steps interleaved, the fastest step kept.

    Round r times one training step (forward, every loss term, backward, SGD step) and one eval forward
    (batch ``2 * batch_size``) of every model in turn, so a machine that slows down for a while slows
    every model alike; each model's speed is its fastest step over ``steps`` rounds, the least disturbed.
    ``amp``: bf16 autocast on CUDA, as training uses by default (``train.amp``); ignored on CPU.
    ``compile``: the training step compiled as ``train.compile`` does (true or reduce-overhead); the first three
    rounds, which compile and record it, are then not timed.
    """
    device = torch.device(device)
    use_amp = amp and device.type == "cuda"
    states = {}
    for label, (model, size) in models.items():
        model = model.to(device).to(memory_format=torch.channels_last)
        x_train = torch.randn(batch_size, 3, size, size, device=device).to(memory_format=torch.channels_last)
        x_eval = torch.randn(2 * batch_size, 3, size, size, device=device).to(memory_format=torch.channels_last)
        step_module = compile_step(ModelWithLoss(model), compile, device, warn=False)
        states[label] = (step_module, torch.optim.SGD(model.parameters(), lr=1e-4), x_train, x_eval, size)
    targets = _fake_targets(batch_size, 7, device)
    if compile:
        warmup = max(warmup, 3)
    best = {label: [math.inf, math.inf] for label in states}

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp)

    def train_step(step_module, optimizer, x_train, _):
        step_module.train()
        with autocast():
            loss = sum(step_module(x_train, targets)[1].values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def eval_step(step_module, _, __, x_eval):
        model = unwrap_to_step_module(step_module).model
        model.eval()
        with autocast():
            model(x_eval)

    for round_index in range(warmup + steps):
        for label, (step_module, optimizer, x_train, x_eval, _) in states.items():
            for slot, step in enumerate((train_step, eval_step)):
                _sync(device)
                start = time.perf_counter()
                step(step_module, optimizer, x_train, x_eval)
                _sync(device)
                if round_index >= warmup:
                    best[label][slot] = min(best[label][slot], time.perf_counter() - start)
    models = {label: unwrap_to_step_module(state[0]).model for label, state in states.items()}
    return [ModelCost(label, count_parameters(models[label]), count_macs(models[label], size), batch_size / best[label][0],
                      2 * batch_size / best[label][1]) for label, (_, _, _, _, size) in states.items()]


#: (label, input px, stem, width) of the candidate scales for CPU teaching runs
SCALES = (("ResNet-18, standard stem", 64, "standard", 64),
          ("ResNet-18, no max-pool", 64, "no_maxpool", 64),
          ("ResNet-18 at half width, no max-pool", 64, "no_maxpool", 32),
          ("ResNet-18 at half width, no max-pool (the demo until 2026-12-07)", 65, "no_maxpool", 32),
          ("ResNet-18 at half width, pooled stem (the demo)", 65, "pooled", 32),
          ("ResNet-18, standard stem", 112, "standard", 64),
          ("ResNet-18, standard stem", 128, "standard", 64),
          ("ResNet-18, standard stem", 48, "standard", 64),
          ("ResNet-18, no max-pool", 48, "no_maxpool", 64),
          ("ResNet-18, small-input stem", 48, "small", 64),
          # finer teachers at about the demo's cost: a quarter-width network with fewer strides or a larger input
          ("ResNet-18 at quarter width, small-input stem", 65, "small", 16),
          ("ResNet-18 at quarter width, no max-pool", 97, "no_maxpool", 16),
          ("ResNet-18 at half width, no max-pool", 97, "no_maxpool", 32))


def scale_table(*, device: str = "cpu", batch_size: int = 64, steps: int = 4) -> str:
    """Training speed of the plain baseline at each candidate scale (steps interleaved, fastest kept),
    as a ratio to the first scale, with the layer4 grid each gives HST's teacher."""
    models = {}
    for index, (label, size, stem, width) in enumerate(SCALES):
        torch.manual_seed(0)
        models[str(index)] = (create_model("baseline", stem=stem, backbone_width=width), size)
    costs = time_interleaved(models, device=device, batch_size=batch_size, steps=steps)
    reference = costs[0].train_images_per_s
    lines = ["| backbone | input | stem | width | layer4 grid | params (M) | train img/s | cost vs first |",
             "|---|---|---|---|---|---|---|---|"]
    for (label, size, stem, width), cost in zip(SCALES, costs):
        grid = stage_sizes(size, stem=stem)[-1]
        lines.append(f"| {label} | {size} px | {stem} | {width} | {grid}x{grid} | {cost.parameters / 1e6:.2f} | "
                     f"{cost.train_images_per_s:.0f} | {reference / cost.train_images_per_s:.2f}x |")
    return "\n".join(lines)


def method_ratio_table(costs: list[ModelCost], reference: str = "baseline") -> str:
    """Markdown table with absolute numbers and ratios to the reference model."""
    base = next(c for c in costs if c.name == reference)
    lines = ["| model | params (M) | MACs (G) | train img/s | train cost vs baseline | infer img/s | "
             "infer cost vs baseline |", "|---|---|---|---|---|---|---|"]
    for c in costs:
        lines.append(f"| {c.name} | {c.parameters / 1e6:.2f} | {c.macs / 1e9:.3f} | {c.train_images_per_s:.1f} | "
                     f"{base.train_images_per_s / c.train_images_per_s:.2f}x | {c.infer_images_per_s:.1f} | "
                     f"{base.infer_images_per_s / c.infer_images_per_s:.2f}x |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- operator calls

#: the methods whose training step ``--sections ops`` counts, each from its demo recipe configs/synthfer_NAME.yaml
OPS_METHODS = ("baseline", "hsbs", "clcl", "phanet", "mfer")


def training_step_ops(config, *, batch_size: int = 16) -> StepOps:
    """Outermost aten operator calls of one CPU training step of ``config``'s model, loss terms and optimiser
    (:func:`hsbs_lib.engine.op_count.step_op_counts`) on a fixed random batch at the recipe's input size."""
    torch.manual_seed(0)
    classes = class_names(config.data.num_classes)
    model = build_model(config, classes, load_pretrained=False)
    model.configure_criterion(label_smoothing=config.train.label_smoothing)
    optimizer = build_optimizer(model, config.train, fused=True)   # the step a GPU takes (FUSED_BY_DEFAULT_ON)
    size = config.data.input_size
    images = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    return step_op_counts(ModelWithLoss(model), optimizer, images, _fake_targets(batch_size, len(classes), "cpu"))


def ops_table(counts: dict[str, StepOps], reference: str = "baseline") -> str:
    """Markdown table of operator calls per phase and the total's ratio to ``reference``'s."""
    base = counts[reference].total
    lines = ["| model | forward and loss terms | backward | optimiser | total | vs baseline |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {label} | {ops.phase('forward')} | {ops.phase('backward')} | {ops.phase('optimizer')} | {ops.total} | "
              f"{ops.total / base:.2f}x |" for label, ops in counts.items()]
    return "\n".join(lines)


def added_operators(ops: StepOps, reference: StepOps, top: int = 8) -> str:
    """The operators a step calls more often than ``reference``'s, commonest first: "mul +34, div +29, ..."."""
    extra = ops.operators()
    extra.subtract(reference.operators())
    shown_ = [f"{name.removeprefix('aten::')} {count:+d}" for name, count in extra.most_common(top) if count > 0]
    return ", ".join(shown_) or "none"


def benchmark_ops(methods: tuple[str, ...] = OPS_METHODS, *, batch_size: int = 16, parts: bool = True) -> str:
    """The ``ops`` section: operator calls of one training step of every method's demo recipe, as ratios to the
    baseline's, then (``parts``) each method's rows of configs/ablation_METHOD.yaml, so the calls every part adds
    can be read off, and the operators each method adds to the baseline's step."""
    counts = {name: training_step_ops(load_config(config_path(f"synthfer_{name}")), batch_size=batch_size)
              for name in methods}
    optimizer = build_optimizer(nn.Linear(1, 1), load_config(config_path("synthfer_baseline")).train, fused=True)
    setting = ", ".join(f"{key}={optimizer.defaults[key]}" for key in ("foreach", "fused") if key in optimizer.defaults)
    lines = [f"one training step of configs/synthfer_METHOD.yaml at batch {batch_size}, CPU; optimiser "
             f"{type(optimizer).__name__} ({setting}) for every method", "", ops_table(counts)]
    if not parts:
        return "\n".join(lines)
    lines += ["", "Operators added to the baseline's step (calls, commonest first):", ""]
    lines += [f"- {name}: {added_operators(ops, counts['baseline'])}" for name, ops in counts.items() if name != "baseline"]
    for name in methods:
        path = config_path(f"ablation_{name}")
        if not Path(path).is_file():
            continue
        plan = load_plan(path)
        rows = {"baseline": counts["baseline"]}
        for row, overrides in plan.rows.items():
            config = load_plan_config(plan, [*plan.overrides, *overrides])
            if config.model.name == name:
                rows[row] = training_step_ops(config, batch_size=batch_size)
        lines += ["", f"{name}: the rows of {Path(path).relative_to(repo_root())}", "", ops_table(rows)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- SynthFER

def benchmark_rendering(n: int = 4000, size: int = 64, *, repeats: int = 3) -> float:
    """Images per second rendered by :func:`render_synthfer`: best of ``repeats`` after a full warm-up
    (the first call pays for allocating the working arrays and the noise bank)."""
    render_synthfer(np.arange(n), size=size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        render_synthfer(np.arange(n), size=size)
        best = min(best, time.perf_counter() - start)
    return n / best



# ---------------------------------------------------------------------------------------------- input pipelines

def benchmark_pipelines(*, size: int = 112, device: str | torch.device = "cpu", n: int = 1024, batch_size: int = 64,
                        augment: str = "standard", workers: int = 0, epochs: int = 2) -> str:
    """Images per second of the input pipelines, as a small Markdown table, on ``n`` JPEG files.

    The files are SynthFER faces written at 100 px in the RAF-DB basic layout (RAF-DB's aligned size) into
    a temporary folder. Three ways to feed ``epochs`` training epochs at ``size`` px with the ``augment``
    preset, each timed over whole epochs, augmentation and the copy to ``device`` included:

    * decode every epoch: a DataLoader that reads and decodes every JPEG in every epoch, per-sample v2;
    * uint8 cache, loader: the same DataLoader over the cached uint8 split (no decoding);
    * uint8 cache, device: one uint8 tensor on the device, batches sliced there and augmented as batches.

    The cache is built once before timing (it is built once per dataset, then memory-mapped by every
    later run); its one-off build time is reported on its own line.
    """
    device = torch.device(device)
    common = dict(batch_size=batch_size, shuffle=True, augment=augment, drop_last=True)
    with tempfile.TemporaryDirectory(prefix="hsbs-bench-") as folder:
        root = write_rafdb_layout(Path(folder) / "rafdb", n_train=n, n_test=0, size=100)
        files = load_dataset("rafdb", root, "train")
        started = time.perf_counter()
        cached = cache_split(files, size, cache_dir=Path(folder) / "cache")
        build_seconds = time.perf_counter() - started
        candidates = {
            f"decode every epoch (JPEG files, DataLoader, per-sample v2, {workers} workers)":
                lambda: SampleBatchLoader(files, size=size, workers=workers, **common),
            f"uint8 cache, loader (DataLoader, per-sample v2, {workers} workers)":
                lambda: SampleBatchLoader(cached, size=size, workers=workers, **common),
            "uint8 cache, device (one uint8 tensor, batched augmentation)":
                lambda: DeviceBatchLoader(cached, device=device, **common),
        }
        speeds = {}
        for name, make in candidates.items():
            if device.type == "cuda":   # the first batch on a GPU loads kernels; it is not the pipeline's speed
                next(iter(make()))
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            loader = make()
            seen = 0
            for epoch in range(epochs):
                loader.set_epoch(epoch)
                for images, _ in loader:
                    images = images.to(device)
                    seen += images.shape[0]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            speeds[name] = seen / (time.perf_counter() - started)
    reference = next(iter(speeds.values()))
    lines = ["| pipeline | images/s | vs decoding |", "|---|---:|---:|"]
    lines += [f"| {name} | {speed:,.0f} | {speed / reference:.1f}x |" for name, speed in speeds.items()]
    lines.append(f"| (one-off: building the uint8 cache of {n} files) | {n / build_seconds:,.0f} | |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- notebooks

def benchmark_notebooks(paths: list[Path], *, smoke: bool = True, timeout: int = 1200,
                        on_row: Callable[[str], None] | None = None) -> str:
    """Seconds each notebook takes top to bottom, as a Markdown table: with ``smoke`` (SMOKE=1, what the test
    suite runs) or at its full budget (SMOKE=0, what a student runs).

    Each runs in a fresh kernel with its runs in a temporary folder, one after the other; ``on_row`` gets
    each row as soon as its notebook ends (a full-budget pass takes long). A notebook that fails or runs
    past ``timeout`` seconds gets its row with what happened instead of a time.
    """
    # Deferred: nbclient and nbformat come with the lab extra (pip install "hsbs_lib[lab]").
    nbformat = require("nbformat", "hsbs bench --sections notebooks")
    NotebookClient = require("nbclient", "hsbs bench --sections notebooks").NotebookClient

    setting = "SMOKE=1" if smoke else "full budget"
    lines = [f"| notebook | seconds ({setting}) |", "|---|---:|"]
    saved = {key: os.environ.get(key) for key in ("SMOKE", "HSBS_RUNS", "HSBS_NO_PROGRESS")}
    with tempfile.TemporaryDirectory(prefix="hsbs-bench-notebooks-") as folder:
        try:
            os.environ.update(SMOKE="1" if smoke else "0", HSBS_NO_PROGRESS="1")
            for path in paths:
                os.environ["HSBS_RUNS"] = str(Path(folder) / path.stem)
                notebook = nbformat.read(path, as_version=4)
                client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                        resources={"metadata": {"path": str(path.parent)}})
                started = time.perf_counter()
                try:
                    client.execute()
                    row = f"| {path.stem} | {time.perf_counter() - started:.0f} |"
                except Exception as error:   # one failing notebook must not lose the rows already timed
                    row = f"| {path.stem} | failed after {time.perf_counter() - started:.0f} s: {type(error).__name__} |"
                lines.append(row)
                if on_row is not None:
                    on_row(row)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return "\n".join(lines)


def prior_entropy(labels: np.ndarray, num_classes: int) -> float:
    """Cross-entropy (nats) of always predicting the training prior: the majority-class plateau's level."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    prior = counts[counts > 0] / counts.sum()
    return float(-(prior * np.log(prior)).sum())


def plateau_level(labels: np.ndarray, num_classes: int, sampler: str = "none") -> float:
    """The training cross-entropy of the best constant prediction: the prior's entropy, or, when a balanced
    sampler draws every class present equally often, the entropy of that uniform draw."""
    if sampler == "balanced":
        return float(math.log(len(np.unique(np.asarray(labels)))))
    return prior_entropy(labels, num_classes)


@dataclass
class PlateauRun:
    """One short training of :func:`plateau_escape`: its training cross-entropy per epoch against the
    majority-class level, and whether it left that level."""

    size: int
    seed: int
    ce: list[float]
    plateau: float
    val_mca: float
    seconds: float
    threshold: float

    @property
    def escaped(self) -> bool:
        return bool(self.ce) and self.ce[-1] < self.threshold * self.plateau


def plateau_escape(*, recipe: str = "synthfer_baseline", sizes=(65, 129), seeds=(0, 1, 2, 3, 4), epochs: int = 2,
                   overrides=(), threshold: float = 0.85, on_run: Callable | None = None) -> list[PlateauRun]:
    """Train the first ``epochs`` of ``recipe`` (its schedule unchanged) at each input size and seed.

    A run *left* the majority-class plateau when its last epoch's mean training cross-entropy is below
    ``threshold`` times the prior's entropy (the cross-entropy of always predicting the class frequencies).
    Runs go to a temporary folder."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="hsbs-plateau-") as folder:
        for size in sizes:
            for seed in seeds:
                config = load_config(config_path(recipe), [
                    *overrides, f"data.input_size={size}", f"train.stop_after_epoch={epochs}", f"train.seed={seed}",
                    "train.progress=false", "train.record_intensity=false"])
                config.out = str(Path(folder) / f"{size}px_seed{seed}")
                plateau = plateau_level(labels_of(build_splits(config).train), config.data.num_classes,
                                        config.data.sampler)
                started = time.perf_counter()
                result = fit(config)
                run = PlateauRun(size, seed, [float(row["loss/ce"]) for row in result.history], plateau,
                                 float(result.history[-1].get("val/mean_class_accuracy", math.nan)),
                                 time.perf_counter() - started, threshold)
                runs.append(run)
                if on_run is not None:
                    on_run(run)
    return runs


def plateau_table(runs: list[PlateauRun]) -> str:
    """Per input size: how many seeds left the plateau, and each seed's last cross-entropy / plateau level."""
    lines = ["| input | left the plateau | last-epoch training CE / majority-class level, per seed | "
             "validation MCA, per seed | seconds per run |", "|---|---|---|---|---|"]
    for size in sorted({run.size for run in runs}):
        rows = [run for run in runs if run.size == size]
        ratios = ", ".join(f"{run.ce[-1]:.2f}/{run.plateau:.2f}" for run in rows)
        mca = ", ".join(f"{100 * run.val_mca:.1f}" for run in rows)
        seconds = np.mean([run.seconds for run in rows])
        lines.append(f"| {size} px | {sum(run.escaped for run in rows)} of {len(rows)} | {ratios} | {mca} | "
                     f"{seconds:.0f} |")
    return "\n".join(lines)


@dataclass
class RecipeTime:
    """The first epochs of a dataset's training recipe, timed, and the whole schedule extrapolated."""

    name: str
    epochs: int                  # the recipe's schedule
    epoch_seconds: list[float]   # training + validation of each measured epoch (metrics.csv's time/epoch_s)
    wall_seconds: float          # the measured sitting from start to end (cache, checkpoints and all)
    threads: int

    @property
    def minutes(self) -> float:
        """The whole schedule: the measured epochs' mean times the recipe's epochs."""
        return float(np.mean(self.epoch_seconds)) * self.epochs / 60


def recipe_time(data: str, method: str = "baseline", recipe: str | None = None, *, epochs: int = 1,
                overrides=()) -> RecipeTime:
    """Train the first ``epochs`` of ``--data DATA --method METHOD [--recipe NAME]`` on the real data (its
    ``data.root`` or $HSBS_DATA) in a temporary folder and extrapolate the epoch time to the whole schedule."""
    config = load_config(None, [*overrides, f"train.stop_after_epoch={epochs}", "train.progress=false"],
                         data=data, method=method, recipe=recipe)
    with tempfile.TemporaryDirectory(prefix="hsbs-recipe-time-") as folder:
        config.out = str(Path(folder) / "run")
        started = time.perf_counter()
        result = fit(config)
        wall = time.perf_counter() - started
    return RecipeTime(config.name, config.train.epochs, [float(row["time/epoch_s"]) for row in result.history], wall,
                      torch.get_num_threads())


# ---------------------------------------------------------------------------------------------- fuzz
# Random bad input for the commands (issue 28): malformed YAML recipes and comparison plans, label-file lines,
# csv rows and option values. Every case must end in a clean run or a refusal of one line (argparse's usage
# line and its error for a bad option), never a traceback, and must write nothing outside its output folder.

_FUZZ_KEYS = ("train.lr", "train.epochs", "train.batch_size", "train.eval_batch_size", "train.weight_decay",
              "train.momentum", "train.ema", "train.tta", "train.label_smoothing", "train.grad_clip", "train.seed",
              "data.input_size", "data.num_classes", "data.val_fraction", "data.n_train", "data.augment",
              "data.options", "data.erase_scale", "model.name", "model.backbone", "model.backbone_width",
              "model.options.dropout", "model.options.lambda_hst", "model.stem", "train.device", "out", "name",
              "train.nope")


def _fuzz_scalar(rng: random.Random) -> str:
    """A YAML scalar or small value, mostly wrong for whatever key receives it."""
    choices = [
        lambda: str(rng.choice([0, -1, 1, 7, 2**31, 10**12, -10**9, 3])),
        lambda: rng.choice(["3e-4", "1e400", "-1e-9", "nan", ".inf", "-.inf", "0x1F", "0o17", "1_000", "1.5"]),
        lambda: rng.choice(["null", "~", "true", "no", "on", "yes", "''", '""', "[]", "{}", "[1, 2]", "{a: 1}"]),
        lambda: rng.choice(["abc", "é", "²", "\u202e", "a: b", "- x", "&a 1", "*a", "!!binary aGk=",
                            "!!python/object:os.system ls", "!!str 3", "!!float x", "%x", "@x", "`x`"]),
        lambda: "x" * rng.choice([300, 5000, 60000]),
        lambda: "[" * rng.choice([5, 200, 5000]) + "1" + "]" * rng.choice([0, 5, 200]),
        lambda: _fuzz_bomb(rng.randint(2, 12)),
        lambda: "".join(rng.choice("{}[]:,&*!|>'\"#%@` -?\t\n") for _ in range(rng.randint(1, 20))),
    ]
    return rng.choice(choices)()


def _fuzz_bomb(levels: int) -> str:
    anchors = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    anchors += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "{" + ", ".join(anchors) + "}"


def _fuzz_yaml(rng: random.Random) -> bytes:
    """A recipe file, damaged: wrong values, unknown keys, bad indentation, tabs, aliases, tags, bad bytes."""
    lines = []
    for _ in range(rng.randint(0, 8)):
        section, _, name = rng.choice(_FUZZ_KEYS).rpartition(".")
        if section:
            lines += [f"{section.split('.')[0]}:", f"  {'.'.join(section.split('.')[1:] + [name])}: {_fuzz_scalar(rng)}"]
        else:
            lines.append(f"{name}: {_fuzz_scalar(rng)}")
    damage = rng.randint(0, 9)
    if damage == 0 and lines:
        lines[rng.randrange(len(lines))] = " " * rng.randint(1, 3) + lines[rng.randrange(len(lines))]
    elif damage == 1:
        lines.insert(0, rng.choice(["include: " + _fuzz_scalar(rng), "include: [../nowhere.yaml]", "include: .",
                                    "- a list", "just a string", "---", "%YAML 1.1\n---", "? complex key"]))
    elif damage == 2:
        lines.append("train:\n\tlr: 0.1")
    elif damage == 3:
        lines.append(f"bomb: {_fuzz_bomb(rng.randint(3, 10))}\ntrain:\n  lr: *a{rng.randint(1, 2)}")
    elif damage == 4:
        lines.append("train: &t\n  lr: 0.1\n  extra: *t")
    elif damage == 5:
        lines.append("train:\n  lr: 0.1\ntrain:\n  lr: 0.2")
    text = "\n".join(lines) + rng.choice(["\n", "", "\n---\nsecond: doc\n"])
    data = text.encode("utf-8", "surrogatepass")
    if damage == 6:
        data = rng.choice([b"\xff\xfe", b"\xef\xbb\xbf", b""]) + data + rng.choice([b"\x00", b"\xc3", b"\x80\x81", b""])
    elif damage == 7:
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    return data


def _fuzz_label_line(rng: random.Random, names: list[str]) -> str:
    """One line of a RAF-DB partition list, often broken."""
    name = rng.choice(names + ["train_x.jpg", "test_y.jpg", "other.jpg", "../../etc/passwd", "/etc/passwd",
                               "train_\u00e9.jpg", "train_00001.jpg/../..", "", "\x00"])
    label = rng.choice(["1", "4", "7", "0", "8", "-1", "²", "٣", "1.0", "nan", "", "99999999999999999999", "a"])
    return rng.choice([f"{name} {label}", name, f"{name} {label} extra", f"{name}\t{label}", f"  {name}   {label}  ",
                       label, "\ufeff" + name + " " + label, f"{name} {label}" * rng.randint(1, 3)])


def _fuzz_csv_row(rng: random.Random) -> str:
    """One row of AffectNet's training.csv, often broken: paths out of the root, codes out of range."""
    path = rng.choice(["1/a.jpg", "2/b.jpg", "/etc/passwd", "../../secret.jpg", "1/../../x.jpg", "C:\\x.jpg",
                       "\\\\server\\x.jpg", "", "1/missing.jpg", "1", "1/a.jpg\x00", '"1/a.jpg']) 
    code = rng.choice(["0", "6", "7", "8", "10", "11", "-1", "1.5", "nan", "inf", "", "x", "1e3"])
    fields = [path, "0", "0", "10", "10", "1;2", code, "0.1", "-0.2"]
    if rng.random() < 0.2:
        fields = fields[:rng.randint(0, 8)]
    return ",".join(fields)


#: A SynthFER run small enough to train in seconds, for the fuzz's predict and eval options.
FUZZ_RUN = ("train.progress=false", "train.threads=1", "data.n_train=28", "data.n_val=14", "data.n_test=14",
            "data.input_size=33", "model.backbone_width=8", "train.batch_size=14", "train.epochs=1")
_FUZZ_NUMBERS = ("0", "-1", "-0.6", "0.2", "1000", "1e400", "nan", "inf", "-inf", "1000000000000", "abc", "", "3.5",
                 "²", "0x10", "1_0")


def _fuzz_command_options(rng: random.Random, command: str) -> list[str]:
    """Random options of ``hsbs predict`` or ``hsbs eval`` (after the input and --checkpoint)."""
    if command == "predict":
        choices = [["--margin", rng.choice(_FUZZ_NUMBERS)], ["--no-detect"], ["--format", rng.choice(["jsonl", "x"])],
                   ["--device", rng.choice(["cpu", "auto", "cuda:99", "tpu", ""])], ["--attention"]]
    else:
        choices = [["--batch-size", rng.choice(_FUZZ_NUMBERS)], ["--tta", rng.choice(["flip", "tencrop", "x"])],
                   ["--split", rng.choice(["train", "val", "nope", "", "../x"])],
                   ["--device", rng.choice(["cpu", "cuda:99", "x"])],
                   [f"{rng.choice(['data.n_test', 'data.input_size', 'train.eval_batch_size', 'data.pipeline', 'x'])}"
                    f"={rng.choice(_FUZZ_NUMBERS)}"]]
    return [item for _ in range(rng.randint(1, 3)) for item in rng.choice(choices)]


def fuzz_cases(count: int, seed: int, folder: Path, checkpoint: Path | None = None
               ) -> Iterator[tuple[str, list[str], Path]]:
    """``count`` seeded cases (kind, hsbs arguments, the case's folder), made one at a time: the case's files
    are written under ``CASE/inputs`` and its command writes under ``CASE/out``. A recipe that reads cleanly
    ends at a data root that does not exist (one line), so no case trains. With a ``checkpoint`` (a small
    SynthFER run's best.pt), ``hsbs predict`` and ``hsbs eval`` options are tried on it too."""
    rng = random.Random(seed)
    kinds = ("recipe", "override", "plan", "labels", "csv", "folders", "check option",
             *(("predict option", "eval option") if checkpoint is not None else ()))
    raf_names = [f"train_{i:05d}.jpg" for i in range(1, 5)] + [f"test_{i:04d}.jpg" for i in range(1, 3)]

    def copy_of(name: str, images: list[str]) -> Path:
        """A dataset folder of empty image files (--no-decode: listed images only need to exist)."""
        root = inputs / name
        for image in images:
            (root / image).parent.mkdir(parents=True, exist_ok=True)
            (root / image).touch()
        return root

    for index in range(count):
        case = folder / f"case{index}"
        inputs, out = case / "inputs", case / "out"
        inputs.mkdir(parents=True)
        stop = ["data.name=imagefolder", f"data.root={inputs / 'no_data_here'}", f"data.cache_dir={out / 'cache'}"]
        kind = rng.choice(kinds)
        run_out = str(out / "run")
        if kind == "recipe":
            recipe = inputs / "recipe.yaml"
            recipe.write_bytes(_fuzz_yaml(rng))
            yield (kind, ["train", "--config", str(recipe), "--out", run_out, *stop], case)
        elif kind == "override":
            overrides = [f"{rng.choice(_FUZZ_KEYS)}={_fuzz_scalar(rng)}" for _ in range(rng.randint(1, 3))]
            yield (kind, ["train", "--out", run_out, *overrides, *stop], case)
        elif kind == "plan":
            plan = inputs / "plan.yaml"
            body = (_fuzz_yaml(rng) if rng.random() < 0.5 else
                    f"base: {rng.choice(['{data: synthfer}', 'nowhere.yaml', '5', '[a]', '{data: x, y: 1}'])}\n"
                    f"rows:\n  a: {{{rng.choice(_FUZZ_KEYS)}: {_fuzz_scalar(rng)}}}\n"
                    f"  b: {rng.choice(['[train.lr=1]', '5', 'null', '{}', '[x]'])}\n".encode("utf-8", "surrogatepass"))
            plan.write_bytes(body)
            yield (kind, ["compare", "--config", str(plan), "--out", run_out, "--no-speed", "--seeds", "0", *stop],
                   case)
        elif kind == "labels":
            lines = [f"{name} {rng.randint(1, 7)}" for name in raf_names]
            lines += [_fuzz_label_line(rng, raf_names) for _ in range(rng.randint(1, 8))]
            rng.shuffle(lines)
            raf = copy_of("raf", [f"Image/aligned/{name[:-4]}_aligned.jpg" for name in raf_names])
            label_file = raf / "EmoLabel" / "list_patition_label.txt"
            label_file.parent.mkdir()
            encoding = rng.choice(["utf-8", "utf-8", "utf-16", "latin-1"])
            label_file.write_bytes("\n".join(lines).encode(encoding, "replace"))
            yield (kind, ["check", "rafdb", str(raf), "--no-decode"], case)
        elif kind == "csv":
            header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
            rows = ["1/a.jpg,0,0,10,10,1;2,1,0,0"] + [_fuzz_csv_row(rng) for _ in range(rng.randint(1, 6))]
            affectnet = copy_of("affectnet", ["Manually_Annotated_Images/1/a.jpg",
                                                      "Manually_Annotated_Images/2/b.jpg"])
            (affectnet / "training.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8", errors="replace")
            yield (kind, ["check", "affectnet", str(affectnet), "--split", "train", "--no-decode"], case)
        elif kind == "folders":
            root = inputs / "folders"
            for _ in range(rng.randint(1, 6)):
                split = rng.choice(["train", "test", "val", "x"])
                folder_name = rng.choice(["anger", "happy", "Happiness", "7", "²", "contempt", "x", "", ".hidden"])
                image = root / split / folder_name / rng.choice(["a.jpg", "b.png", "c.txt", "d.JPG", ".e.jpg"])
                image.parent.mkdir(parents=True, exist_ok=True)
                image.touch()
                link = image.parent / f"link{rng.randrange(100)}.jpg"
                if not link.exists() and not link.is_symlink() and rng.random() < 0.5:
                    link.symlink_to(rng.choice([link, image, inputs / "nowhere.jpg", image.parent, root]))
            root.mkdir(exist_ok=True)
            yield (kind, ["check", "imagefolder", str(root), "--no-decode",
                          *(["--split", rng.choice(["train", "test", "x"])] if rng.random() < 0.5 else [])], case)
        elif kind == "predict option":
            image = inputs / "face.png"
            Image.fromarray(np.full((40, 40, 3), rng.randrange(256), np.uint8)).save(image)
            overlay = ["--save-overlay", str(out / "overlays")] if rng.random() < 0.3 else []
            yield (kind, ["predict", str(image), "--checkpoint", str(checkpoint), *overlay,
                          *_fuzz_command_options(rng, "predict")], case)
        elif kind == "eval option":
            yield (kind, ["eval", "--checkpoint", str(checkpoint), "--out", str(out / "eval.json"),
                          *_fuzz_command_options(rng, "eval")], case)
        else:
            option = rng.choice(["--num-classes", "--option", "--split"])
            value = rng.choice([_fuzz_scalar(rng), f"aligned={_fuzz_scalar(rng)}", f"x={_fuzz_scalar(rng)}", "9", ""])
            raf = copy_of("raf", [f"train/{rng.choice(['anger', 'happy', '3', 'x'])}/a.jpg"])
            yield (kind, ["check", "rafdb", str(raf), "--no-decode", option, value], case)


@dataclass
class FuzzResult:
    cases: int
    by_kind: dict[str, int]
    clean: int              # exit 0
    refused: int            # exit 1 with one line (or hsbs check's report), or exit 2 with argparse's usage and error
    problems: list[str]     # "kind: arguments: what went wrong" for every traceback, long message or stray write


def _files_under(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file() and not path.is_symlink()}


def run_fuzz(count: int = 1000, seed: int = 0, folder: str | os.PathLike | None = None,
             checkpoint: str | os.PathLike | None = None) -> FuzzResult:
    """Run :func:`fuzz_cases` through ``hsbs`` in this process, each from its own folder (removed after it);
    see :class:`FuzzResult`. The ``checkpoint``'s folder must come out of every case as it went in."""
    with contextlib.ExitStack() as stack:
        work = Path(folder) if folder is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        result = FuzzResult(0, {}, 0, 0, [])
        previous = os.getcwd()
        logging.disable(logging.WARNING)            # a command's warnings are not its errors
        try:
            run = Path(checkpoint).parent if checkpoint is not None else None
            for kind, argv, case in fuzz_cases(count, seed, work, None if checkpoint is None else Path(checkpoint)):
                result.cases += 1
                result.by_kind[kind] = result.by_kind.get(kind, 0) + 1
                os.chdir(case)                      # a relative path a command writes lands here, and is seen
                around = set(os.listdir(work))
                before = {**_files_under(case), **(_files_under(run) if run is not None else {})}
                problem, code, stdout, stderr = _run_case(argv)
                after = {path: stamp for path, stamp in
                         {**_files_under(case), **(_files_under(run) if run is not None else {})}.items()
                         if not path.startswith(str(case / "out") + os.sep)}
                stray = sorted({*(path for path in after if path not in before),
                                *(path for path in before if path in after and after[path] != before[path]),
                                *(str(work / name) for name in set(os.listdir(work)) - around)})
                if not problem and stray:
                    problem = f"wrote outside its output folder: {stray[:3]}"
                if problem:
                    result.problems.append(f"{kind}: {' '.join(argv)[:200]}: {problem}")
                elif code == 0:
                    result.clean += 1
                else:
                    result.refused += 1
                os.chdir(work)
                shutil.rmtree(case, ignore_errors=True)
        finally:
            logging.disable(logging.NOTSET)
            os.chdir(previous)
    return result


def _run_case(argv: list[str]) -> tuple[str, int, str, str]:
    """``hsbs ARGV`` in this process: (what went wrong or "", exit status, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    problem = ""
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = hsbs_main(argv)
            except SystemExit as exit_:
                code = int(exit_.code or 0)
    except Exception as error:                      # noqa: BLE001 - a traceback is what the fuzz looks for
        return f"traceback: {traceback.format_exception_only(error)[-1].strip()[:300]}", -1, "", ""
    out, err = stdout.getvalue(), stderr.getvalue()
    lines = [line for line in err.splitlines() if line.strip()]
    if "Traceback" in err:
        problem = "traceback on stderr"
    elif code == 1 and not lines and argv[0] == "check" and "bad entries" in out:
        pass                                        # hsbs check's report of a copy's bad entries
    elif code == 1 and (len(lines) != 1 or len(lines[0]) > 600):
        problem = f"{len(lines)}-line, {len(err):,}-character refusal: {err[:300]!r}"
    elif code == 2 and not (lines and "error:" in lines[-1]):
        problem = f"exit 2 without an argparse error: {err[:300]!r}"
    elif code not in (0, 1, 2):
        problem = f"exit status {code}"
    return problem, code, out, err


def fuzz_table(result: FuzzResult, seed: int) -> str:
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(result.by_kind.items()))
    lines = [f"{result.cases} cases (seed {seed}: {kinds}): {result.clean} clean, {result.refused} refused in one "
             f"line, {len(result.problems)} problems (tracebacks, long messages, writes outside the output folder)"]
    return "\n".join(lines + [f"  {problem}" for problem in result.problems[:20]])


# ---------------------------------------------------------------------------------------------- CLI
BENCH_SECTIONS = ("render", "pipeline", "models")   # the default; "scales", "ops", ... run only when asked for


#: How often each command is started by :func:`cli_startup_table` (the fastest run counts).
CLI_REPEATS = 5


def cli_startup_seconds(argv: list[str], repeats: int = CLI_REPEATS) -> float:
    """The fastest of ``repeats`` wall times of ``python -m hsbs_lib.cli ARGV`` in a fresh interpreter."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hsbs_lib.cli", *argv], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - started)
    return min(times)


def cli_startup_table(repeats: int = CLI_REPEATS) -> str:
    """Seconds from starting ``hsbs`` to its exit for ``--help``, ``--version`` and ``check --help``, beside
    the time of importing torch alone, as a Markdown table."""
    rows = [("hsbs --help", ["--help"]), ("hsbs --version", ["--version"]), ("hsbs check --help", ["check", "--help"]),
            ("hsbs train --help (imports torch)", ["train", "--help"])]
    lines = ["| command | seconds |", "|---|---:|"]
    lines += [f"| `{label}` | {cli_startup_seconds(argv, repeats):.2f} |" for label, argv in rows]
    started = []
    for _ in range(repeats):
        begin = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=False)
        started.append(time.perf_counter() - begin)
    lines.append(f"| `python -c \"import torch\"` | {min(started):.2f} |")
    return "\n".join(lines)


def _whole_number(text: str) -> int:
    """argparse type of the options that take several numbers: a ``key=value`` override after them would be
    read as one of their values, so it gets a line saying where overrides go."""
    if "=" in text:
        raise argparse.ArgumentTypeError(f"'{text}' is a key=value override, not a number: give overrides before "
                                         f"options that take several values (hsbs bench {text} --seeds 0 1 ...)")
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None


def add_bench_arguments(parser) -> None:
    parser.add_argument("--sections", nargs="+", choices=(*BENCH_SECTIONS, "scales", "ops", "notebooks", "plateau",
                                                            "recipe", "fuzz", "cli"),
                        default=list(BENCH_SECTIONS),
                        help="what to time (default: render pipeline models; 'scales' times the candidate input "
                             "scales of the SynthFER demo, 'ops' counts the operator calls of every method's training step "
                             "(CPU, deterministic), 'notebooks' runs every notebook with SMOKE=1, 'cli' the start-up "
                             "time of hsbs --help)")
    parser.add_argument("--models", nargs="+", default=None, help="registered models (default: all)")
    parser.add_argument("--config", default=None,
                        help="time the models at this recipe's input size, backbone, stem and width (default: "
                             "the SynthFER demo scale of configs/synthfer_baseline.yaml)")
    parser.add_argument("--input-size", type=int, default=None, help="the same as data.input_size=N")
    parser.add_argument("--pipeline-size", type=int, default=112, help="image size for the input-pipeline bench")
    parser.add_argument("--pipeline-epochs", type=int, default=2,
                        help="epochs over the 1024 files per input pipeline (more for a steadier GPU number)")
    parser.add_argument("--backbone", default=None, help="the same as model.backbone=NAME")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="interleaved rounds per model (the fastest counts)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default="false", choices=("false", "true", "reduce-overhead"),
                        help="with --sections models: time the training step compiled as train.compile does")
    parser.add_argument("--options", nargs="*", default=[], metavar="MODEL.KEY=VALUE",
                        help="an option of one timed model, e.g. mfer.depthwise=true (model.options.KEY=VALUE gives "
                             "it to every timed model that has it)")
    parser.add_argument("--notebooks", nargs="+", metavar="NN", default=None,
                        help="with --sections notebooks: only these (e.g. 00 03; default: all)")
    parser.add_argument("--full", action="store_true",
                        help="with --sections notebooks: the full budget (SMOKE=0) instead of SMOKE=1")
    parser.add_argument("--notebook-timeout", type=int, default=3600, help="seconds one notebook may run")
    parser.add_argument("--plateau-recipe", default="synthfer_baseline",
                        help="with --sections plateau: the recipe trained (configs/NAME.yaml)")
    parser.add_argument("--plateau-sizes", type=_whole_number, nargs="+", default=[65, 129],
                        help="with --sections plateau: input sizes (default 65 129)")
    parser.add_argument("--seeds", type=_whole_number, nargs="+", default=[0, 1, 2, 3, 4],
                        help="with --sections plateau: training seeds (default 0-4)")
    parser.add_argument("--plateau-epochs", type=int, default=2, help="with --sections plateau: epochs per run")
    parser.add_argument("--data", default="fer2013", help="with --sections recipe: the dataset (its data.root or "
                                                               "$HSBS_DATA holds the copy)")
    parser.add_argument("--method", default="baseline", help="with --sections recipe: the method")
    parser.add_argument("--recipe", default=None, help="with --sections recipe: the dataset's training recipe "
                                                       "(default: course)")
    parser.add_argument("--recipe-epochs", type=int, default=1, help="with --sections recipe: epochs measured")
    parser.add_argument("--fuzz-count", type=int, default=1000, help="with --sections fuzz: random bad inputs")
    parser.add_argument("--fuzz-seed", type=int, default=0, help="with --sections fuzz: the generator's seed")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides, e.g. data.input_size=112 model.backbone=resnet34 "
                             "model.options.depthwise=true (the models section: the timed models' scale and options), "
                             "train.warmup_epochs=1 data.root=/data/fer2013 (the plateau and recipe sections)")


def _parse_model_options(items: list[str]) -> dict[str, dict]:
    options: dict[str, dict] = {}
    for item in items:
        key, value = item.split("=", 1)
        model, option = key.split(".", 1)
        options.setdefault(model, {})[option] = load_yaml(value)
    return options


def bench_model_options(args, names: list[str]) -> dict[str, dict]:
    """model -> options for the models section: each ``model.options.KEY=VALUE`` override goes to every timed
    model that has option KEY (one that none has is refused), then ``--options MODEL.KEY=VALUE`` to MODEL."""
    options: dict[str, dict] = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        if not key.startswith("model.options."):
            continue
        option = key.removeprefix("model.options.")
        takers = [name for name in names if option in model_option_defaults(name)]
        if not takers:
            raise KeyError(f"none of the timed models ({', '.join(names)}) has the option '{option}'")
        for name in takers:
            options.setdefault(name, {})[option] = load_yaml(value)
    for name, given in _parse_model_options(args.options).items():
        options.setdefault(name, {}).update(given)
    return options


def _model_scale(args) -> dict:
    """Input size, backbone, stem and width of the models to time: the recipe's (``--config``, default the
    SynthFER demo recipe) after the ``key=value`` overrides, with ``--input-size`` / ``--backbone`` (older
    spellings of ``data.input_size`` and ``model.backbone``) replacing them when given."""
    scale_overrides = [item for item in args.overrides if not item.startswith("model.options.")]
    config = load_config(args.config or config_path("synthfer_baseline"), scale_overrides)
    config.data.input_size = args.input_size or config.data.input_size    # before the stem: auto follows it
    return {"input_size": config.data.input_size, "backbone": args.backbone or config.model.backbone,
            "model": {"stem": resolved_stem(config), "backbone_width": config.model.backbone_width}}


def run_bench(args) -> int:
    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    precision = ", bf16 autocast" if device.startswith("cuda") else ""
    print(f"# hsbs bench on {where}, torch {torch.__version__}{precision}")
    if "render" in args.sections:
        torch_threads = torch.get_num_threads()
        print(f"\n## SynthFER rendering\n{benchmark_rendering(n=4000, size=64):,.0f} images/s at 64 px "
              f"(numpy, this process; torch threads {torch_threads})")
    if "pipeline" in args.sections:
        print(f"\n## Input pipelines at {args.pipeline_size} px")
        print(benchmark_pipelines(size=args.pipeline_size, device=device, epochs=args.pipeline_epochs))
    if "models" in args.sections:
        names = args.models or list_models()
        if "baseline" not in names:
            names = ["baseline", *names]
        options = bench_model_options(args, names)
        scale = _model_scale(args)
        models = {name: {**scale["model"], **options.get(name, {})} for name in names}
        compiled = {"false": False, "true": True}.get(args.compile, args.compile)
        costs = compare_model_costs(models, input_size=scale["input_size"], backbone=scale["backbone"], device=device,
                                    batch_size=args.batch_size, steps=args.steps, compile=compiled)
        described = ", ".join(f"{key} {value}" for key, value in scale["model"].items())
        how = f", train.compile={args.compile}" if compiled else ""
        print(f"\n## Models at {scale['input_size']} px, {scale['backbone']} ({described}){how}, batch {args.batch_size}, "
              f"{args.steps} interleaved rounds (cost = baseline images/s / model images/s, fastest step of each)")
        print(method_ratio_table(costs))
    if "scales" in args.sections:
        print(f"\n## Candidate scales for CPU runs: the baseline's training step, batch {args.batch_size}")
        print(scale_table(device=device, batch_size=args.batch_size, steps=max(2, args.steps // 2)))
    if "ops" in args.sections:
        print("\n## Operator calls per training step (outermost aten operators, torch.profiler)")
        print(benchmark_ops(batch_size=args.batch_size), flush=True)
    if "plateau" in args.sections:
        print(f"\n## Leaving the majority-class plateau: {args.plateau_recipe}, {args.plateau_epochs} epochs, "
              f"seeds {' '.join(map(str, args.seeds))}{', ' + ' '.join(args.overrides) if args.overrides else ''}")
        print("(left = last epoch's training cross-entropy below 0.85 x the prior's entropy)", flush=True)

        def show(run: PlateauRun) -> None:
            print(f"  {run.size} px seed {run.seed}: training CE per epoch "
                  f"{' '.join(f'{value:.3f}' for value in run.ce)} (plateau {run.plateau:.3f}), "
                  f"validation MCA {100 * run.val_mca:.1f}, {run.seconds:.0f} s: "
                  f"{'left' if run.escaped else 'STAYED'}", flush=True)

        runs = plateau_escape(recipe=args.plateau_recipe, sizes=args.plateau_sizes, seeds=args.seeds,
                              epochs=args.plateau_epochs, overrides=args.overrides, on_run=show)
        print(plateau_table(runs))
    if "recipe" in args.sections:
        timed = recipe_time(args.data, args.method, args.recipe, epochs=args.recipe_epochs, overrides=args.overrides)
        print(f"\n## Training time of {timed.name} ({args.recipe or 'course'} recipe) on {where}")
        print(f"epochs measured: {' '.join(f'{value:.1f}' for value in timed.epoch_seconds)} s each (training and "
              f"validation; {timed.wall_seconds:.0f} s for the sitting, data cache and checkpoints included)")
        print(f"whole schedule: {timed.epochs} epochs x {np.mean(timed.epoch_seconds):.1f} s = "
              f"{timed.minutes:.1f} minutes of training (plus the final report's test-time augmentation)")
    if "fuzz" in args.sections:
        print("\n## Fuzz: random bad recipes, plans, label lines, csv rows and options through hsbs", flush=True)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            trained = Path(folder) / "trained"      # a small run for the predict and eval options
            logging.disable(logging.INFO)           # its epoch lines are not the section's
            with contextlib.redirect_stdout(io.StringIO()):
                hsbs_main(["train", "--config", str(config_path("synthfer_baseline")), "--out", str(trained),
                           *FUZZ_RUN])
            logging.disable(logging.NOTSET)
            result = run_fuzz(args.fuzz_count, args.fuzz_seed, Path(folder) / "cases", checkpoint=trained / "best.pt")
        print(fuzz_table(result, args.fuzz_seed))
        print(f"({time.perf_counter() - started:.0f} s)")
    if "cli" in args.sections:
        print(f"\n## Start-up of the command line (best of {CLI_REPEATS} runs each, this machine)")
        print(cli_startup_table())
    if "notebooks" in args.sections:
        notebooks = sorted((repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))
        if args.notebooks:
            notebooks = [path for path in notebooks if path.stem[:2] in args.notebooks]
        setting = "at their full budget" if args.full else "with SMOKE=1 (the test suite's setting)"
        print(f"\n## Notebooks {setting}, on {where}")
        print(f"| notebook | seconds ({'full budget' if args.full else 'SMOKE=1'}) |\n|---|---:|", flush=True)
        benchmark_notebooks(notebooks, smoke=not args.full, timeout=args.notebook_timeout,
                            on_row=lambda row: print(row, flush=True))
    return 0
