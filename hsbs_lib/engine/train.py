"""Training: ``fit(config)`` and the readable pieces it is made of.

``fit`` builds the data, the model (from the registry, by name), the optimiser and the schedule, then
alternates :func:`train_one_epoch` and :func:`~hsbs_lib.engine.evaluate.evaluate`, writing into the run
directory ``config.out``:

* ``config.yaml``: the resolved config;
* ``metrics.csv``: one row per epoch (columns in :mod:`hsbs_lib.engine.log`);
* ``last.pt`` after every epoch, ``best.pt`` for the epoch with the best *validation* mean class accuracy
  (FER test sets are imbalanced and plain accuracy rewards the majority class). The validation split is
  the dataset's own when it has one, else a stratified, seeded hold-out of the training split
  (``data.val_split``, see :func:`build_splits`); the test split is never looked at during training;
* ``skipped.txt``: with ``data.skip_bad=true``, every bad entry left out of any split and why (also
  listed on screen); without it a bad entry stops the run before training, naming each one;
* ``eval.json``: the metrics of ``best.pt`` on the test split, scored once after training, with the split
  that selected it (``selected_on``) and its validation metrics;
* ``tensorboard/`` when ``train.tensorboard`` is on.

The engine knows no method by name: it calls ``out = model(x)``, sums the named terms of
``model.loss(out, targets)``, calls ``model.step_end(step)`` after every optimiser step and logs
``model.epoch_end(epoch)``.

Reproducibility: shuffling, augmentation and the global generator (dropout) are re-seeded from
(seed, epoch) at every epoch, so a run resumed from ``last.pt`` continues exactly as if it had not
stopped. The learning-rate schedule is a function of the step and of ``train.epochs``: extending
``train.epochs`` on resume stretches the cosine horizon to the new number of epochs.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import logging
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from hsbs_lib.constants import STAGE_NAMES
from hsbs_lib.config import (Config, ConfigValueError, TrainConfig, apply_overrides, config_from_dict, dotted_items,
                             load_config, plain_values, read_yaml_file, shown, validate_config)
from hsbs_lib.data.base import BadEntry
from hsbs_lib.data.labels import class_names
from hsbs_lib.engine.build import (build_model, build_splits, model_extra_targets, model_options, resolve_device,
                                   select_device)
from hsbs_lib.engine.checkpoint import (build_checkpoint, load_checkpoint, non_finite_entries, resolve_checkpoint,
                                        restore_rng_state, save_checkpoint)
from hsbs_lib.engine.distributed import (DistributedContext, all_reduce_sums, barrier, cleanup_distributed,
                                         init_distributed, sync_buffers, wrap_model)
from hsbs_lib.engine.evaluate import evaluate, evaluation_report, one_class_only, write_json
from hsbs_lib.engine.reference import train_reference
from hsbs_lib.engine.run_folder import (RUN_MARKER, RunFolderBusyError, claim_run_folder, refuse_another_run,
                                        write_run_config)
from hsbs_lib.data.pipeline.loaders import STREAM_GLOBAL, STREAM_MIX, build_loaders, derive_seed, epoch_generator
from hsbs_lib.data.pipeline.transforms import BatchMix
from hsbs_lib.engine.ema import ema_model
from hsbs_lib.engine.log import MetricsLog, format_epoch, progress_bar, progress_enabled
from hsbs_lib.models.base import ModelOutput
from hsbs_lib.models.registry import model_option_defaults
from hsbs_lib.outputs import write_text_atomic

log = logging.getLogger("hsbs_lib.engine")

INTENSITY_LAYERS = STAGE_NAMES


class NonFiniteLossError(FloatingPointError):
    """Training diverged: the loss became NaN or infinite, exploded (:class:`LossExplosionMonitor`), or the
    weights turned non-finite. The message names the step or epoch and the last good checkpoint."""


class LossExplosionMonitor:
    """Flags a training loss above ``factor`` times the running median of the last ``window`` losses.

    The median is floored at ``floor`` so that a loss near zero followed by an ordinary one is not
    taken for an explosion; nothing is flagged before ``min_history`` steps.
    """

    def __init__(self, factor: float = 1e4, window: int = 200, min_history: int = 10, floor: float = 1e-2):
        self.factor, self.min_history, self.floor = factor, min_history, floor
        self.history: collections.deque[float] = collections.deque(maxlen=window)

    def exceeded(self, loss: float) -> float | None:
        """Record ``loss``; return the running median when ``loss`` exploded past it, else None."""
        if len(self.history) >= self.min_history:
            median = float(np.median(self.history))
            if loss > self.factor * max(median, self.floor):
                return median
        self.history.append(loss)
        return None


@dataclass
class RunResult:
    """What :func:`fit` returns.

    model: the last epoch's weights (plain module, eval mode); ``best.pt`` holds the best epoch's.
    history: the metrics.csv rows; final: validation metrics of the last epoch; best: eval.json (best.pt
    scored once on the test split).
    """

    out_dir: Path
    model: nn.Module
    classes: tuple[str, ...]
    history: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    best: dict = field(default_factory=dict)
    best_epoch: int = 0
    pipeline: str = ""

    @property
    def best_checkpoint(self) -> Path:
        return self.out_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.out_dir / "last.pt"


# ---------------------------------------------------------------------------------------------- set-up

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels when asked (slower on CUDA); cuDNN autotuning otherwise.

    ``warn_only``: a few CUDA kernels (adaptive average pooling's backward) have no deterministic
    version; they warn instead of stopping the run. On CPU training is bitwise reproducible either way.
    """
    if deterministic and device.type == "cuda":
        # cuBLAS needs a fixed workspace to be deterministic; must be set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


def inverse_frequency_weights(labels: np.ndarray, num_classes: int) -> Tensor:
    """(K,) class weights N / (K' n_k), so the weighted mean over training samples is 1; absent classes get 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = labels.size / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def fused_where_supported(parameters: list[Tensor], devices: tuple[str, ...] = ("cpu", "cuda")) -> dict[str, bool]:
    """``{"fused": True}`` when every parameter is a float tensor on one of ``devices`` (torch has fused steps
    for CPU and CUDA), else ``{}``.

    torch's default steps each parameter with several operators (about ten per tensor for AdamW on a CPU);
    the fused kernel steps them all in one operator, with values equal to float rounding (tests/test_compile.py).
    """
    types = {parameter.device.type for parameter in parameters}
    supported = types and types <= set(devices) and all(p.is_floating_point() for p in parameters)
    return {"fused": True} if supported else {}


#: Where training takes the fused optimiser step unless asked otherwise. On a GPU the step's operator count is
#: its cost (kernel launches). On a CPU the default step is kept: fused and default agree to float rounding
#: (about 1e-8 per step), but Adam amplifies such differences in parameters whose gradients are near zero, so a
#: whole run ends elsewhere (the demo baseline's test accuracy 74.8 against 80.0), and the recorded CPU runs
#: (notebooks/reference, docs/BENCHMARKS.md) were made with the default step.
FUSED_BY_DEFAULT_ON = ("cuda",)


def build_optimizer(model: nn.Module, train: TrainConfig, *, fused: bool | None = None) -> torch.optim.Optimizer:
    """The optimiser ``train`` names over ``model``'s trainable parameters. ``fused``: True takes torch's fused
    step where the parameters' device has one, False never; None (the default) only on :data:`FUSED_BY_DEFAULT_ON`."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    devices = FUSED_BY_DEFAULT_ON if fused is None else ("cpu", "cuda") if fused else ()
    fused = fused_where_supported(parameters, devices)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay, **fused)
    if train.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=train.lr, weight_decay=train.weight_decay, **fused)
    if train.optimizer == "sgd":
        if train.nesterov and train.momentum <= 0:
            raise ValueError("train.nesterov=true needs train.momentum > 0")
        return torch.optim.SGD(parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
                               nesterov=train.nesterov, **fused)
    raise ValueError(f"train.optimizer must be adamw, adam or sgd, got '{train.optimizer}'")


def lr_factor(step: int, *, schedule: str, steps_per_epoch: int, epochs: int, warmup_steps: int,
              gamma: float) -> float:
    """Multiplier of the base learning rate before optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps``, then cosine to 0 over the remaining steps, ``gamma ** epoch``
    (exponential), x0.1 at 50 % and 75 % of the epochs (step), or constant (none).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    epoch = step // steps_per_epoch
    if schedule == "cosine":
        remaining = max(1, epochs * steps_per_epoch - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / remaining)))
    if schedule == "exponential":
        return gamma ** epoch
    if schedule == "step":
        return 0.1 ** sum(epoch >= milestone for milestone in (epochs // 2, (3 * epochs) // 4) if milestone > 0)
    if schedule == "none":
        return 1.0
    raise ValueError(f"train.scheduler must be cosine, exponential, step or none, got '{schedule}'")


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, *, steps_per_epoch: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR over :func:`lr_factor` (its state is only the step, so it resumes cleanly)."""
    warmup_steps = round(train.warmup_epochs * steps_per_epoch)
    lr_factor(0, schedule=train.scheduler, steps_per_epoch=1, epochs=1, warmup_steps=0, gamma=1.0)  # validates

    def factor(step: int) -> float:
        return lr_factor(step, schedule=train.scheduler, steps_per_epoch=steps_per_epoch, epochs=train.epochs,
                         warmup_steps=warmup_steps, gamma=train.gamma)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ModelWithLoss(nn.Module):
    """Forward and loss in one module call, so DDP also averages gradients of parameters that only the
    loss uses (learned loss weights, class centres)."""

    wraps_model = True

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, targets: dict[str, Tensor]) -> tuple[ModelOutput, dict[str, Tensor]]:
        output = self.model(images)
        return output, self.model.loss(output, targets)


def total_loss(terms: dict[str, Tensor]) -> Tensor:
    """The sum of the named loss terms (scalars) in float32; a float32 term is not cast, since a cast that
    changes nothing still costs an operator call (one launch on a GPU) per term and step."""
    return torch.stack([value if value.dtype == torch.float32 else value.float() for value in terms.values()]).sum()


class LearningIntensity:
    """Mean |gradient| at the stage outputs ``features/layer1..4``, averaged over an epoch's steps.

    Tensor hooks on the maps every model returns; nothing is kept but one running sum per layer.
    """

    def __init__(self, layers: tuple[str, ...] = INTENSITY_LAYERS):
        self.layers = layers
        self.sums: dict[str, Tensor] = {}
        self.steps = 0

    def watch(self, output: ModelOutput) -> None:
        for name in self.layers:
            stage = output.maps.get(f"features/{name}")
            if stage is not None and stage.requires_grad:
                stage.register_hook(lambda grad, name=name: self._record(name, grad))
        self.steps += 1

    def _record(self, name: str, grad: Tensor) -> None:
        value = grad.detach().abs().float().mean()
        self.sums[name] = self.sums[name] + value if name in self.sums else value

    def totals(self) -> dict[str, float]:
        """Sums (for the cross-rank reduction); divide by ``steps`` for the epoch mean."""
        return {f"intensity/{name}": float(self.sums[name]) for name in self.layers if name in self.sums}


def precision_policy(train: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, Any]:
    """(autocast dtype or None, ``torch.amp.GradScaler`` or None) for ``train.precision`` on ``device``.

    ``auto`` keeps the meaning ``train.amp`` always had: bf16 autocast on CUDA when ``train.amp`` is on, fp32
    otherwise (and on CPU). ``bf16`` autocasts on CUDA and on CPU alike; ``fp16`` autocasts and scales the loss
    with a GradScaler (torch has both for CPU too: it runs there, for checking the fp16 path, see
    docs/TRAINING_OPTIONS.md); ``fp32`` is full precision. An explicit precision overrides ``train.amp``.
    """
    precision = train.precision
    if precision == "auto":
        precision = "bf16" if train.amp and device.type == "cuda" else "fp32"
    if precision == "fp32":
        return None, None
    if precision == "bf16":
        return torch.bfloat16, None
    if precision == "fp16":
        return torch.float16, torch.amp.GradScaler(device.type)
    raise ValueError(f"train.precision must be auto, fp32, bf16 or fp16, got '{train.precision}'")


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, *, scaler: Any = None,
                   grad_clip: float | None = None) -> bool:
    """Step ``optimizer`` on the gradients accumulated in ``model``; return whether the step was taken.

    With a ``scaler`` (fp16) the gradients are unscaled before ``grad_clip`` clips their norm, and a step
    whose gradients hold inf or NaN is skipped (the weights and the optimiser state stay as they were) while
    the scaler halves its scale, as ``torch.amp.GradScaler`` does; training continues with the next batch.
    """
    if scaler is not None and grad_clip:
        scaler.unscale_(optimizer)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is None:
        optimizer.step()
        return True
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale      # a skipped step lowers the scale; a taken one keeps or grows it


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` (bf16 or fp16) on ``device`` when given; a no-op context otherwise."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def move_batch(images: Tensor, targets: dict[str, Tensor], device: torch.device, channels_last: bool = False
               ) -> tuple[Tensor, dict[str, Tensor]]:
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, {key: value.to(device, non_blocking=True) for key, value in targets.items()}


# ---------------------------------------------------------------------------------------------- one epoch

def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, *, device: torch.device,
                    epoch: int, scheduler=None, step: int = 0, grad_clip: float | None = None,
                    amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                    record_intensity: bool = False, progress: bool = False, log_every: int = 10,
                    explosion: LossExplosionMonitor | None = None, mix: BatchMix | None = None,
                    mix_generator: torch.Generator | None = None, ema: AveragedModel | None = None,
                    ema_source: nn.Module | None = None, accumulate: int = 1, scaler: Any = None
                    ) -> tuple[dict[str, float], int]:
    """One pass over ``loader``; returns (epoch means, optimizer steps so far).

    ``mix``: mixup / CutMix of every batch (drawn from ``mix_generator``); ``ema``: a moving average updated
    toward ``ema_source`` (the plain model) after every optimiser step.

    ``accumulate``: micro-batches per optimiser step; each one's loss is divided by the number of micro-batches
    in its group, so N equal micro-batches step as one batch N times their size would. The epoch's last group
    may be shorter (its losses divided by its own size) and is stepped at the epoch's end, so no accumulated
    gradient crosses an epoch (or a checkpoint). ``step``, the schedule and ``ema`` count optimiser steps.
    ``scaler``: a ``torch.amp.GradScaler`` (fp16; see :func:`optimizer_step`).

    Raises :class:`NonFiniteLossError` before the backward pass of a non-finite loss, or of a loss that
    ``explosion`` flags.

    ``model`` is a FERModel or a :class:`ModelWithLoss` (possibly inside DDP). The means are
    ``loss/<term>`` for each named term, ``loss/total``, ``train/accuracy`` and, when recorded,
    ``intensity/layerN``; under DDP they are averaged over all ranks.
    """
    if not isinstance(unwrap_to_step_module(model), ModelWithLoss):
        model = ModelWithLoss(model)
    model.train()
    step_end = getattr(unwrap_to_step_module(model).model, "step_end", None)   # the method's per-step hook
    intensity = LearningIntensity() if record_intensity else None
    sums: dict[str, float] = {}
    bar = progress_bar(loader, enabled=progress, desc=f"epoch {epoch + 1}", total=len(loader))
    accumulate, skipped = max(1, int(accumulate)), 0
    for batch, (images, targets) in enumerate(bar):
        images, targets = move_batch(images, targets, device, channels_last)
        if mix is not None:
            images, targets = mix(images, targets, mix_generator)
        group_start = batch - batch % accumulate
        group_size = min(accumulate, len(loader) - group_start)
        steps_now = batch + 1 == group_start + group_size
        # DDP: gradients are averaged across ranks only on the micro-batch that steps.
        holds_sync = not steps_now and isinstance(model, nn.parallel.DistributedDataParallel)
        with (model.no_sync() if holds_sync else contextlib.nullcontext()), autocast(device, amp_dtype):
            output, terms = model(images, targets)
        if intensity is not None:
            intensity.watch(output)
        total = total_loss(terms)
        correct = (output.logits.argmax(dim=1) == targets["label"]).sum()
        # One host sync per step: the loss terms, the finiteness check and the accuracy travel together.
        values = torch.stack([total.detach(), *(v.detach().float() for v in terms.values()), correct.float()]).tolist()
        if not all(math.isfinite(v) for v in values[:-1]):
            named = ", ".join(f"{name}={value:.4g}" for name, value in zip(["total", *terms], values))
            raise NonFiniteLossError(
                f"loss is not finite at step {step + 1} (epoch {epoch + 1}, batch {batch + 1} of {len(loader)}): "
                f"{named}. Training stopped. Lower train.lr, set train.grad_clip, or check the data and the "
                f"loss weights.")
        median = explosion.exceeded(values[0]) if explosion is not None else None
        if median is not None:
            raise NonFiniteLossError(
                f"loss exploded at step {step + 1} (epoch {epoch + 1}, batch {batch + 1} of {len(loader)}): "
                f"total={values[0]:.4g}, more than {explosion.factor:g} times the running median {median:.4g}; "
                f"training diverged and was stopped. Lower train.lr or set train.grad_clip.")
        if batch == group_start:
            optimizer.zero_grad(set_to_none=True)
        scaled = total / group_size if group_size > 1 else total
        with model.no_sync() if holds_sync else contextlib.nullcontext():
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if steps_now:
            taken = optimizer_step(model, optimizer, scaler=scaler, grad_clip=grad_clip)
            skipped += not taken
            if scheduler is not None:
                with warnings.catch_warnings():
                    if not taken:   # the schedule counts steps taken or skipped; torch's order warning does not apply
                        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                    scheduler.step()
            step += 1
            if step_end is not None:
                step_end(step)
            if ema is not None:
                ema.update_parameters(ema_source)

        count = images.shape[0]
        for name, value in zip(["total", *terms], values[:-1]):
            sums[f"loss/{name}"] = sums.get(f"loss/{name}", 0.0) + value * count
        sums["correct"] = sums.get("correct", 0.0) + values[-1]
        sums["count"] = sums.get("count", 0.0) + count
        if progress and (batch % max(1, log_every) == 0 or batch + 1 == len(loader)):
            bar.set_postfix(loss=f"{sums['loss/total'] / sums['count']:.4f}",
                            acc=f"{sums['correct'] / sums['count']:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    if skipped:
        log.info("epoch %d: the fp16 gradient scaler skipped %d optimiser step(s) with inf or NaN gradients "
                 "(scale now %g)", epoch + 1, skipped, scaler.get_scale())
    if intensity is not None:
        sums.update(intensity.totals())
        sums["intensity_steps"] = float(intensity.steps)
    sums = all_reduce_sums(sums, device)
    count = max(sums.pop("count", 0.0), 1.0)
    means = {key: value / count for key, value in sums.items() if key.startswith("loss/") and key != "loss/total"}
    means["loss/total"] = sums.get("loss/total", 0.0) / count
    means["train/accuracy"] = sums.get("correct", 0.0) / count
    steps = max(sums.get("intensity_steps", 0.0), 1.0)
    means.update({key: value / steps for key, value in sums.items() if key.startswith("intensity/")})
    return means, step


def unwrap_to_step_module(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)      # torch.compile's wrapper
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def compile_step(step_module: nn.Module, setting: bool | str, device: torch.device, *, warn: bool = True,
                 backend: str = "inductor") -> nn.Module:
    """The training step's module (a ModelWithLoss, possibly in DDP) as ``train.compile`` asks: as it is (false),
    compiled with torch.compile's default mode (true: the forward and every loss term in one graph, their
    backward in another), or with ``reduce-overhead`` (CUDA graphs: each step replays the recorded kernels, with
    no launch per operator; the training loader drops its last partial batch, so every step has one shape).

    CUDA graphs need a GPU: on another device reduce-overhead says so once (``warn``) and compiles with the
    default mode. The optimiser step is not compiled: the fused step (:func:`build_optimizer`) is one operator.
    ``backend``: torch.compile's backend for the default mode ("aot_eager" captures the same graphs, forward
    and backward, without generating kernels: the tests use it where inductor's code generation is not the
    question).
    """
    if not setting:
        return step_module
    mode = "reduce-overhead" if setting == "reduce-overhead" else None
    if mode is not None and device.type != "cuda":
        if warn:
            log.warning("train.compile=reduce-overhead records CUDA graphs, which need a GPU: on %s the training step "
                        "is compiled with the default mode", device.type)
        mode = None
    return torch.compile(step_module, backend=backend) if mode is None else torch.compile(step_module, mode=mode)


# ---------------------------------------------------------------------------------------------- fit

def fit(config: Config, *, resume: str | os.PathLike | None = None, train_data: Any = None,
        val_data: Any = None, test_data: Any = None, overwrite: bool = False) -> RunResult:
    """Train ``config`` into ``config.out`` and return a :class:`RunResult`.

    Args:
        config: the resolved recipe (see :mod:`hsbs_lib.config`).
        resume: a run directory or checkpoint to continue from (its ``last.pt``); ``config`` is used as
            given, so pass the stored config plus overrides (:func:`resume_config` builds it).
        train_data, val_data, test_data: datasets or cached splits to use instead of ``config.data``
            (notebooks, tests). With ``train_data`` given, only the splits passed are used: without
            ``val_data`` best.pt is the last epoch, without ``test_data`` nothing is scored at the end.
        overwrite: write into ``config.out`` even when it holds files that are not a training run.

    ``config.out`` is locked for the run (a second writer gets :class:`RunFolderBusyError`) and the
    temporary files of a killed checkpoint write are removed first (:mod:`hsbs_lib.engine.run_folder`).
    """
    config = validate_config(copy.deepcopy(config))
    main_process = int(os.environ.get("RANK", "0")) == 0
    if config.train.trainer == "reference":
        with claim_run_folder(config.out, overwrite=overwrite, main_process=main_process):
            report = train_reference(config)
        return RunResult(out_dir=Path(config.out), model=None, classes=tuple(report.get("classes", ())),
                         best=report, best_epoch=int(report["epoch"]), pipeline="reference")
    if config.train.trainer != "engine":
        raise ValueError(f"train.trainer must be engine or reference, got '{config.train.trainer}'")
    config.model.options = model_options(config.model)   # unknown or mistyped options: refused before any work
    device_type = "cuda" if resolve_device(config.train.device).startswith("cuda") else "cpu"
    owns_group = not (dist.is_available() and dist.is_initialized())
    context = init_distributed(device_type)
    try:
        with claim_run_folder(config.out, overwrite=overwrite, main_process=context.is_main):
            return _fit(config, context, resume, train_data, val_data, test_data)
    finally:
        if owns_group:
            cleanup_distributed(context)


def _fit(config: Config, context: DistributedContext, resume, train_data, val_data, test_data) -> RunResult:
    t = config.train
    device = select_device(t.device, context)
    if t.threads and device.type == "cpu":
        torch.set_num_threads(t.threads)
    configure_determinism(t.deterministic, device)
    seed_everything(t.seed)
    checkpoint = load_checkpoint(resume) if resume is not None else None
    out = Path(config.out)
    history = None
    if checkpoint is not None:   # before anything is written: a refused resume leaves the run as it was
        refuse_changed_recipe(config_from_dict(checkpoint["config"]), config, resume)
        history = resumed_history(out, checkpoint, resume)

    test_absent, val_split_name = None, "val"
    if train_data is None:
        splits = build_splits(config)
        train_data, val_data, test_data = splits.train, splits.val, splits.test
        selection, test_absent, val_split_name = splits.selection, splits.test_absent, splits.val_name
        if test_absent and context.is_main:
            log.warning("%s: best.pt is reported on the validation split that selected it (%s), labelled as "
                        "validation numbers", test_absent, selection)
    else:
        selection = "the validation data given to fit" if val_data is not None else "none (best.pt is the last epoch)"
    # Targets the model's loss reads beyond the labels (the region masks of a ground-truth HST teacher): asked
    # of the data now, so data without them is refused before the run folder is touched.
    loaders = build_loaders(config, train_data, test_data, val_data=val_data, device=device, context=context,
                            extra_targets=model_extra_targets(config))
    classes = tuple(loaders.classes) or class_names(config.data.num_classes)
    if checkpoint is not None and tuple(checkpoint["classes"]) != classes:
        raise ValueError(f"{resume}: checkpoint classes {checkpoint['classes']} differ from the data's {classes}")
    for split_name, loader in (("training", loaders.train), ("test", loaders.test)):
        problem = one_class_only(loader, classes, split_name)
        if problem and split_name == "training":
            raise ValueError(f"{problem}: a classifier needs two or more (hsbs check counts a copy's classes)")
        if problem and context.is_main:
            log.warning("%s: its accuracy, mean class accuracy and F1 say nothing of the other classes", problem)

    model = build_model(config, classes, load_pretrained=checkpoint is None).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    class_weights = (inverse_frequency_weights(loaders.train_labels, len(classes))
                     if t.class_weighted_loss else None)
    model.configure_criterion(label_smoothing=t.label_smoothing, class_weights=class_weights)
    optimizer = build_optimizer(model, t)
    steps_per_epoch = max(1, math.ceil(len(loaders.train) / t.accumulate))   # optimiser steps (train.accumulate)
    scheduler = build_scheduler(optimizer, t, steps_per_epoch=steps_per_epoch)

    amp_dtype, scaler = precision_policy(t, device)
    if t.precision == "fp16" and device.type == "cpu" and context.is_main:
        log.warning("train.precision=fp16 on the CPU: torch's CPU autocast and GradScaler run it, to check the fp16 "
                    "path; bf16 (or fp32) is the CPU's precision for real runs")
    start_epoch, step, best_score, best_epoch = 0, 0, -math.inf, 0
    if checkpoint is not None:
        # With train.ema the checkpoint's "model" is the average; the optimiser's weights are "raw_model".
        model.load_state_dict(checkpoint["raw_model"] if "raw_model" in checkpoint else checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        # The schedule may have a new horizon (train.epochs extended): recompute the current rate.
        for group, base_lr, lr_lambda in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base_lr * lr_lambda(scheduler.last_epoch)
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])     # the fp16 loss scale it had reached
        restore_rng_state(checkpoint["rng"])
        start_epoch, step = int(checkpoint["epoch"]), int(checkpoint["step"])
        best_score = float(checkpoint["metrics"].get("best_score", -math.inf))
        best_epoch = int(checkpoint["metrics"].get("best_epoch", 0))
        log.info("resuming %s at epoch %d (step %d)", resume, start_epoch, step)
    averaged = ema_model(model, t.ema) if t.ema else None
    if averaged is not None and checkpoint is not None and "raw_model" in checkpoint:
        averaged.module.load_state_dict(checkpoint["model"])
        averaged.n_averaged.fill_(max(step, 1))      # the average of `step` updates, not a fresh copy
    evaluated = averaged.module if averaged is not None else model     # what validation and best.pt see
    mix = BatchMix(len(classes), mixup=t.mixup, cutmix=t.cutmix) if t.mixup or t.cutmix else None

    # The folder becomes this recipe's run only now, once the data, model and optimiser are built: a start that
    # fails on a bad option or a missing dataset leaves the folder as it was, and the corrected command is
    # not refused as "another recipe". A fresh start over another recipe's run (hsbs train lets one through
    # only with --overwrite; hsbs demo and compare retrain such a folder) removes that run's outputs here,
    # so none of them sits beside the new config.yaml.
    if context.is_main:
        write_run_config(config, out, replace_other_recipe=resume is None)
        report_skipped(loaders.skipped, out)
    step_module = compile_step(wrap_model(ModelWithLoss(model), context, device), t.compile, device,
                               warn=context.is_main)
    # A compiled forward returns the stage outputs as graph outputs, and their hooks see only the gradient
    # that reaches them from outside the graph (None for the baseline): no honest intensity to record.
    record_intensity = t.record_intensity and not t.compile
    if t.record_intensity and t.compile and context.is_main:
        log.warning("train.record_intensity is off under train.compile: the compiled forward hides the gradients "
                    "at the stage outputs (train eagerly to record the learning intensity)")
    progress = progress_enabled(t.progress) and context.is_main
    metrics_log = MetricsLog(out, enabled=context.is_main, tensorboard=t.tensorboard,
                             keep_until=start_epoch if checkpoint is not None else None)
    if history is not None:
        metrics_log.rows = history
        if context.is_main:
            log.warning("%s was missing: rebuilt from %s's history of %d epochs", out / "metrics.csv", resume,
                        len(history))
    parts = dict(config=config, classes=classes, input_size=config.data.input_size,
                 normalization=loaders.normalization)
    evaluation: dict = {}
    explosion = LossExplosionMonitor()
    saved_epoch = start_epoch if checkpoint is not None else 0
    try:
        last_epoch = min(t.epochs, t.stop_after_epoch or t.epochs)
        for epoch in range(start_epoch, last_epoch):
            started = time.perf_counter()
            loaders.train.set_epoch(epoch)
            torch.manual_seed(derive_seed(t.seed, epoch, STREAM_GLOBAL, context.rank))  # dropout and friends
            train_stats, step = train_one_epoch(
                step_module, loaders.train, optimizer, device=device, epoch=epoch, scheduler=scheduler, step=step,
                grad_clip=t.grad_clip, amp_dtype=amp_dtype, channels_last=t.channels_last,
                record_intensity=record_intensity, progress=progress, log_every=t.log_every,
                explosion=explosion, mix=mix,
                mix_generator=epoch_generator(t.seed, epoch, STREAM_MIX, context.rank) if mix else None,
                ema=averaged, ema_source=model, accumulate=t.accumulate, scaler=scaler)
            sync_buffers(model, context)
            if loaders.val is not None:
                evaluation = evaluate(evaluated, loaders.val, device=device, classes=classes, amp_dtype=amp_dtype,
                                      progress=progress)
            row = epoch_row(epoch, step, train_stats, optimizer.param_groups[0]["lr"], evaluation,
                            model.epoch_end(epoch), time.perf_counter() - started)
            # A step can leave NaN in the weights or the BatchNorm statistics with a finite loss: never save them.
            broken = non_finite_entries(model.state_dict())
            if broken:
                raise NonFiniteLossError(
                    f"epoch {epoch + 1} ended with non-finite weights or BatchNorm statistics "
                    f"({', '.join(broken[:3])}{' ...' if len(broken) > 3 else ''}); nothing was saved for it. "
                    "Lower train.lr or set train.grad_clip.")
            metrics_log.log(row)
            if context.is_main:
                log.info(format_epoch(row))
            # Selection looks at the validation split only; without one the latest epoch is kept.
            score = evaluation["mean_class_accuracy"] if loaders.val is not None else float(epoch)
            improved = score > best_score
            if improved:
                best_score, best_epoch = score, epoch + 1
            if context.is_main:
                state = build_checkpoint(model=evaluated, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                         epoch=epoch + 1,
                                         step=step, metrics={**row, "best_score": best_score,
                                                             "best_epoch": best_epoch,
                                                             "history": [dict(r) for r in metrics_log.rows]},
                                         raw_model=model if averaged is not None else None, **parts)
                # best.pt first: last.pt must never name a best epoch whose file was not written.
                if improved:
                    save_checkpoint(out / "best.pt", **state)
                save_checkpoint(out / "last.pt", **state)
            saved_epoch = epoch + 1
            barrier(context)
    except NonFiniteLossError as error:
        raise NonFiniteLossError(f"{error} {_last_good_checkpoint(out, saved_epoch)}") from None
    finally:
        metrics_log.close()

    best_report: dict = {}
    if saved_epoch < t.epochs:
        if context.is_main:
            log.warning("stopped after epoch %d of %d (train.stop_after_epoch); the test split is scored when the run "
                        "ends: continue with hsbs train --resume %s", saved_epoch, t.epochs, out)
    elif (out / "best.pt").is_file():
        if loaders.test is not None:
            best_report = _evaluate_best(out / "best.pt", config, classes, loaders.test, device, amp_dtype, context,
                                         selection=selection, split=config.data.test_split)
        elif test_absent and loaders.val is not None:
            best_report = _evaluate_best(out / "best.pt", config, classes, loaders.val, device, amp_dtype, context,
                                         selection=selection, split=val_split_name,
                                         note=f"{test_absent}; these are validation numbers")
    return RunResult(out_dir=out, model=evaluated.eval(), classes=classes, history=metrics_log.rows,
                     final=evaluation, best=best_report, best_epoch=best_epoch, pipeline=loaders.pipeline)


def report_skipped(skipped: dict[str, list[BadEntry]], out: Path, *, shown: int = 10) -> None:
    """List the bad entries ``data.skip_bad`` left out ({split role: entries}) on screen and in
    ``out/skipped.txt``, one ``[role] path: reason`` line each (an entry shared by two views once)."""
    lines, seen = [], set()
    for role, entries in skipped.items():
        for entry in entries:
            if (entry.path, entry.reason) not in seen:
                seen.add((entry.path, entry.reason))
                lines.append(f"[{role}] {entry.path}: {entry.reason}")
    if not lines:
        return
    path = out / "skipped.txt"
    # surrogateescape: a file name that is not UTF-8 is written back as the bytes it has on disk
    write_text_atomic(path, "\n".join(lines) + "\n", errors="surrogateescape")
    more = [f"  ... and {len(lines) - shown} more"] if len(lines) > shown else []
    log.warning("\n".join([f"skipped {len(lines)} bad entries (data.skip_bad=true), listed in {path}:"]
                          + [f"  {line}" for line in lines[:shown]] + more))


def _last_good_checkpoint(out: Path, saved_epoch: int) -> str:
    """The sentence a divergence message ends with: which checkpoint holds the last good weights."""
    if saved_epoch and (out / "last.pt").is_file():
        return (f"The last good checkpoint is {out / 'last.pt'} (epoch {saved_epoch}); continue from it with "
                f"hsbs train --resume {out} and a lower train.lr.")
    return "No checkpoint was written: the run diverged before its first epoch ended."


def epoch_row(epoch: int, step: int, train_stats: dict, lr: float, evaluation: dict, extra: dict,
              seconds: float) -> dict:
    """One metrics.csv row, columns in a fixed order (see :mod:`hsbs_lib.engine.log`)."""
    row: dict[str, Any] = {"epoch": epoch + 1, "step": step}
    row.update({key: value for key, value in train_stats.items() if key.startswith("loss/") and key != "loss/total"})
    row["loss/total"] = train_stats["loss/total"]
    row["lr"] = lr
    row["train/accuracy"] = train_stats["train/accuracy"]
    if evaluation:
        row.update({f"val/{key}": evaluation[key] for key in ("accuracy", "mean_class_accuracy", "macro_f1")})
    row.update({key: float(value) for key, value in extra.items()})
    row.update({key: value for key, value in train_stats.items() if key.startswith("intensity/")})
    row["time/epoch_s"] = seconds
    return row


def _evaluate_best(path: Path, config: Config, classes, data, device, amp_dtype, context, *,
                   selection: str, split: str, note: str | None = None) -> dict:
    """Score best.pt once on ``data`` (the test loader, or the validation loader of a copy without a test
    split) with ``train.tta`` and write eval.json beside it, saying what selected it and what was scored."""
    checkpoint = load_checkpoint(path)
    model = build_model(config, classes, load_pretrained=False)
    model.load_state_dict(checkpoint["model"])
    metrics = evaluate(model.to(device), data, device=device, classes=classes, amp_dtype=amp_dtype,
                       tta=config.train.tta)
    validation = {key.split("/", 1)[1]: value for key, value in checkpoint["metrics"].items() if key.startswith("val/")}
    report = evaluation_report(metrics, checkpoint=path, dataset=config.data.name, split=split,
                               classes=classes, epoch=checkpoint["epoch"], selected_on=selection,
                               validation=validation, tta=config.train.tta, note=note)
    if context.is_main:
        write_json(report, path.parent / "eval.json")
    return report


# What a resumed run must keep: the keys that decide the model's shape and method, and which images, labels
# and sizes it trains and is scored on. Where the data is read from and how fast (root, cache, pipeline,
# workers), the number of epochs and the machine settings may change.
RESUME_FIXED_KEYS = (
    "model.name", "model.backbone", "model.stem", "model.backbone_width", "model.options",
    "data.name", "data.train_split", "data.test_split", "data.val_split", "data.val_fraction", "data.val_seed",
    "data.max_train_per_class", "data.num_classes", "data.input_size", "data.n_train", "data.n_val",
    "data.n_test", "data.synth_seed", "data.synth_balanced", "data.skip_bad", "data.options", "data.augment", "data.augment_options",
    "data.sampler",
)


def refuse_changed_recipe(stored: Config, wanted: Config, run: str | os.PathLike) -> None:
    """Raise ValueError naming the first of :data:`RESUME_FIXED_KEYS` that ``wanted`` changes from the
    ``stored`` config of ``run``; a model option written out at its default equals one left out."""
    for key in RESUME_FIXED_KEYS:
        section, name = key.split(".")
        old, new = getattr(getattr(stored, section), name), getattr(getattr(wanted, section), name)
        if key == "model.options" and stored.model.name == wanted.model.name:
            defaults = model_option_defaults(wanted.model.name)
            old, new = ({**defaults, **model_options(config.model)} for config in (stored, wanted))
            changed = [option for option in sorted(set(old) | set(new))
                       if plain_values(old.get(option)) != plain_values(new.get(option))]
            if not changed:
                continue
            key, old, new = f"model.options.{changed[0]}", old.get(changed[0]), new.get(changed[0])
        elif plain_values(old) == plain_values(new):
            continue
        raise ValueError(f"{run}: cannot resume with {key}={new!r}; the run was trained with {key}={old!r}. "
                         f"Resuming continues the same model on the same data: start a new run (--out) to change "
                         f"{key}")


# Keys that say where a run is written and how one sitting runs, not what it trains: an edit to them in
# config.yaml is no edit of the recipe.
SITTING_KEYS = ("out", "name", "train.progress", "train.device", "train.threads", "train.stop_after_epoch")


def edited_keys(run_config: str | os.PathLike, stored: Config, overrides: Sequence[str] = ()) -> list[str]:
    """The keys whose value in the run's ``config.yaml`` differs from ``stored`` (the config its last
    checkpoint was trained with), as ``key=VALUE (last.pt: VALUE)``; keys the ``overrides`` set now, and
    :data:`SITTING_KEYS`, do not count. Empty when the file is missing."""
    path = Path(run_config)
    if not path.is_file():
        return []
    on_disk = read_yaml_file(path, "run config")
    if not isinstance(on_disk, dict):
        raise ConfigValueError(f"run config {path}: expected a mapping of sections, got {type(on_disk).__name__}")
    try:
        written = config_from_dict(on_disk)
    except (ConfigValueError, KeyError) as error:
        message = error.args[0] if error.args else error
        raise ConfigValueError(f"run config {path} was edited and no longer reads as a config: {message}") from None
    new, old = dotted_items(plain_values(written.to_dict())), dotted_items(plain_values(stored.to_dict()))
    set_now = tuple(item.split("=", 1)[0].strip() for item in overrides)
    return [f"{key}={shown(new.get(key), 40)} (last.pt: {shown(old.get(key), 40)})"
            for key in sorted(set(new) | set(old))
            if new.get(key) != old.get(key)
            and not any(key == fixed or key.startswith(f"{fixed}.") for fixed in (*SITTING_KEYS, *set_now))]


def resume_config(run: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), *,
                  edited_config: bool = False) -> Config:
    """The config stored in ``run``'s last.pt plus ``overrides``, writing back into the same run directory.

    A ``config.yaml`` that differs from the config of that checkpoint (edited by hand, or written by a sitting
    that saved no epoch) is refused, naming the keys that differ, unless ``edited_config``: then its values are
    the recipe (the model and data keys still cannot change, :func:`refuse_changed_recipe`).
    """
    path = resolve_checkpoint(run)
    config = config_from_dict(load_checkpoint(path)["config"])
    run_config = path.parent / RUN_MARKER
    edited = edited_keys(run_config, config, overrides)
    if edited and not edited_config:
        more = f" and {len(edited) - 4} more" if len(edited) > 4 else ""
        raise ValueError(f"{run_config} has changed since {path.name} was saved (edited by hand, or written by a "
                         f"sitting that saved no epoch): {', '.join(edited[:4])}{more}; resume with --edited-config to "
                         f"train with config.yaml as it is, or pass the values as key=value")
    if edited:
        log.info("resuming with the edits of %s: %s", run_config, ", ".join(edited))
        config = config_from_dict(read_yaml_file(run_config, "run config"))
    config.train.stop_after_epoch = None      # the stored sitting's stop; a new one comes from the overrides
    apply_overrides(config, list(overrides))
    config.out = str(path.parent)
    return config


def resumed_history(out: Path, checkpoint: dict, resume) -> list[dict] | None:
    """The epoch rows a resumed run continues: None when ``out/metrics.csv`` is there (MetricsLog reads it),
    else the history ``checkpoint`` holds; a missing metrics.csv and a checkpoint without history is refused
    (the earlier epochs' rows would be lost without a word)."""
    if (out / "metrics.csv").is_file() or int(checkpoint.get("epoch", 0)) == 0:
        return None
    history = (checkpoint.get("metrics") or {}).get("history")
    if not isinstance(history, list):
        raise ValueError(f"{out / 'metrics.csv'} is missing and {resume} holds no history of its "
                         f"{int(checkpoint['epoch'])} epochs to rebuild it from: put metrics.csv back, or start a new "
                         f"run (--out)")
    return [dict(row) for row in history if isinstance(row, dict) and int(row.get("epoch", 0)) <= checkpoint["epoch"]]


# ---------------------------------------------------------------------------------------------- CLI

def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a full YAML recipe, e.g. configs/synthfer_hsbs.yaml")
    parser.add_argument("--data", help="compose the recipe: configs/datasets/DATA.yaml (rafdb, fer2013, ..., or synthfer)")
    parser.add_argument("--method", help="compose the recipe: configs/methods/METHOD.yaml (baseline, hsbs, clcl, ...)")
    parser.add_argument("--recipe", help="with --data: the dataset's training recipe configs/recipes/DATA_RECIPE.yaml "
                                         "(default: course where the dataset has one; fer2013 also has full)")
    parser.add_argument("--out", help="run directory (default: the config's out)")
    parser.add_argument("--resume", metavar="RUN",
                        help="continue RUN (a run directory or its last.pt) with its stored config plus overrides; "
                             "the model and the data it was trained on cannot change")
    parser.add_argument("--edited-config", action="store_true",
                        help="with --resume: train with RUN/config.yaml as edited by hand since the last checkpoint "
                             "(without it such edits are refused, naming the keys)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the config's train.device)")
    parser.add_argument("--overwrite", "--force", action="store_true",
                        help="write into --out even when it holds another run or files that are not a run")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides such as train.epochs=2 data.n_train=256 model.options.bsa=false")
    parser.epilog = ("Examples: hsbs train --data rafdb --method hsbs data.root=/data/RAF-DB/basic; "
                     "hsbs train --config configs/synthfer_hsbs.yaml --out runs/a train.epochs=1, "
                     "then hsbs train --resume runs/a train.epochs=2. Layers, later wins: defaults, the recipe "
                     "(--config FILE, or configs/datasets/DATA.yaml, configs/methods/METHOD.yaml, then the dataset's "
                     "training recipe configs/recipes/DATA_course.yaml where it has one), key=value. "
                     "Under torchrun: torchrun --nproc_per_node=2 -m hsbs_lib.cli train --data ... --method ...")


def train_config_from_args(args: argparse.Namespace) -> Config:
    """The config ``hsbs train`` runs with these arguments: with ``--resume`` the run's stored config plus the
    overrides, else the recipe's layers; then ``--out`` and ``--device``. Shared with ``--print-config``."""
    if args.resume:
        if args.config or args.data or args.method or args.recipe:
            raise ValueError("--resume continues with the run's stored config; pass changes as key=value")
        config = resume_config(args.resume, args.overrides, edited_config=args.edited_config)
    else:
        if args.edited_config:
            raise ValueError("--edited-config goes with --resume RUN: it takes RUN/config.yaml as edited by hand")
        config = load_config(args.config, args.overrides, data=args.data, method=args.method, recipe=args.recipe)
    if args.out:
        config.out = args.out
    if args.device:
        config.train.device = args.device
    return config


def run_train(args: argparse.Namespace) -> int:
    config = train_config_from_args(args)
    if not args.resume:
        refuse_another_run(config.out, config, overwrite=args.overwrite)
    try:
        result = fit(config, resume=args.resume, overwrite=args.overwrite)
    except (NonFiniteLossError, RunFolderBusyError) as error:
        print(f"hsbs train: {error}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run: {result.out_dir} (input pipeline: {result.pipeline})")
        if result.best:
            print(f"best epoch {result.best_epoch}: accuracy {result.best['accuracy']:.4f}, mean class accuracy "
                  f"{result.best['mean_class_accuracy']:.4f}, macro-F1 {result.best['macro_f1']:.4f}")
            print(f"checkpoints: {result.best_checkpoint}, {result.last_checkpoint}; "
                  f"metrics: {result.out_dir / 'metrics.csv'}; evaluation: {result.out_dir / 'eval.json'}")
    return 0
