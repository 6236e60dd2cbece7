"""Finished runs, read back: the model and metrics of a run directory, its test images, its predictions.

A run directory is what :func:`hsbs_lib.engine.train.fit` writes (config.yaml, metrics.csv, best.pt,
last.pt, eval.json). :func:`load_run` rebuilds its model from the checkpoint; :func:`load_eval_data`
rebuilds a sample of its test split (SynthFER re-rendered with its region masks and poses, other data read
from its root); :func:`predict_batches` runs the model over inputs made by :func:`model_inputs`. Figures,
notebooks and ``hsbs figures`` all start here.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from hsbs_lib.config import Config, apply_overrides, config_from_dict
from hsbs_lib.constants import IMAGENET_NORMALIZATION
from hsbs_lib.data.pipeline.transforms import model_inputs  # noqa: F401 (the conversion every caller uses)
from hsbs_lib.data.synthfer import REGION_NAMES
from hsbs_lib.engine.build import build_dataset
from hsbs_lib.engine.checkpoint import load_model_from_checkpoint
from hsbs_lib.engine.log import read_intensity, read_metrics

log = logging.getLogger(__name__)

DEFAULT_NORMALIZATION = IMAGENET_NORMALIZATION
# Paths a checkpoint's config may carry, and the environment variable that is the user's own setting.
STORED_PATHS = {"root": "HSBS_DATA", "cache_dir": "HSBS_CACHE"}
MAX_STORED_N_TEST = 100_000   # SynthFER test images a checkpoint may ask for without the user saying so


def checkpoint_data_config(stored: dict, overrides: Sequence[str] = (), *, source: str = "the checkpoint") -> Config:
    """The config stored in a checkpoint, with the user's data settings taking precedence.

    ``overrides`` are ``data.key=value`` strings. A stored ``data.root`` or ``data.cache_dir`` is used
    only when the user set neither the key nor its environment variable ($HSBS_DATA, $HSBS_CACHE), and is
    then logged; a stored SynthFER ``n_test`` above :data:`MAX_STORED_N_TEST` is refused (ValueError)
    unless the user gives ``data.n_test``. A checkpoint is data, not instructions.
    """
    config = config_from_dict(stored)
    given = {item.split("=", 1)[0].strip().removeprefix("data.") for item in overrides}
    for key, variable in STORED_PATHS.items():
        value = getattr(config.data, key)
        if key in given or value is None:
            continue
        if os.environ.get(variable):
            setattr(config.data, key, None)   # the user's $HSBS_DATA / $HSBS_CACHE wins
        else:
            log.info("using data.%s=%s stored in %s (give data.%s=... or $%s to use another)",
                     key, value, source, key, variable)
    apply_overrides(config, list(overrides))
    if config.data.name == "synthfer" and "n_test" not in given and config.data.n_test > MAX_STORED_N_TEST:
        raise ValueError(f"{source} asks for data.n_test={config.data.n_test} SynthFER test images (more than "
                         f"{MAX_STORED_N_TEST}); give data.n_test=N to evaluate on N images")
    return config


@dataclass
class RunArtifacts:
    """What the figures need from one run: its model, label names, input format and logged metrics."""

    name: str
    model: nn.Module | None
    classes: list[str]
    input_size: int
    normalization: dict = field(default_factory=lambda: dict(DEFAULT_NORMALIZATION))
    config: dict = field(default_factory=dict)
    metrics: dict[str, list] | None = None
    intensity: dict[str, list] = field(default_factory=dict)


@dataclass
class EvalData:
    """A test sample: images uint8 (N, S, S, 3), labels (N,), optional region masks (N, R, S, S) bool
    and pose bins (N,)."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    poses: np.ndarray | None = None
    region_names: Sequence[str] = REGION_NAMES


def load_run(directory: str | Path, *, checkpoint: str = "best.pt", device: str = "cpu") -> RunArtifacts:
    """Read a run directory written by the engine: the checkpoint (``best.pt``, else ``last.pt``) and
    metrics.csv (optional)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"run directory {directory} not found")
    candidates = [directory / checkpoint, directory / "last.pt"]
    path = next((candidate for candidate in candidates if candidate.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {directory} (looked for {checkpoint} and last.pt)")
    model, state = load_model_from_checkpoint(path, device=device)
    metrics_path = directory / "metrics.csv"
    return RunArtifacts(
        name=directory.name, model=model, classes=list(state["classes"]), input_size=int(state["input_size"]),
        normalization=dict(state.get("normalization") or DEFAULT_NORMALIZATION), config=dict(state.get("config") or {}),
        metrics=read_metrics(metrics_path) if metrics_path.is_file() else None,
        intensity=read_intensity(metrics_path) if metrics_path.is_file() else {})


def load_eval_data(run: RunArtifacts, *, max_samples: int = 512, overrides: Sequence[str] = ()) -> EvalData | None:
    """Up to ``max_samples`` test images of the run's data, resized to the run's input size.

    SynthFER is re-rendered from the stored seed (its first N test images, with region masks and poses);
    other datasets are read from their root (evenly spaced images, since folder-ordered test sets are
    sorted by class). ``overrides`` (``data.key=value``) are the user's data settings, which take
    precedence over the run's (:func:`checkpoint_data_config`). Returns None when the data is not
    available here: then only the metric figures are drawn.
    """
    stored = {**run.config, "data": {**(run.config.get("data") or {})}}
    if stored["data"].get("name", "synthfer") == "synthfer":
        # rendering is deterministic per (seed, index), so fewer images are a prefix of the full test set
        stored["data"]["n_test"] = min(int(stored["data"].get("n_test", max_samples)), max_samples)
    config = checkpoint_data_config(stored, overrides, source=f"run {run.name}")
    try:
        dataset = build_dataset(config, config.data.test_split)
    except (FileNotFoundError, ValueError, KeyError, OSError) as error:
        log.warning("test data of %s not available (%s); drawing metric figures only", run.name, error)
        return None
    total = len(dataset)
    if total == 0:
        return None
    if hasattr(dataset, "images"):
        index = np.arange(min(total, max_samples))
        images = np.asarray(dataset.images)[index]
    else:
        index = np.unique(np.linspace(0, total - 1, min(total, max_samples)).round().astype(int))
        images = np.stack([_resized(dataset.load_image(int(i)), run.input_size) for i in index])
    if images.shape[1:3] != (run.input_size, run.input_size):
        images = np.stack([_resized(image, run.input_size) for image in images])
    masks = getattr(dataset, "masks", None)
    poses = [dataset.poses[i] for i in index] if len(getattr(dataset, "poses", []) or []) == total else []
    known_poses = bool(poses) and all(p is not None and int(p) >= 0 for p in poses)
    return EvalData(images=images, labels=np.asarray(dataset.targets)[index],
                    masks=np.asarray(masks)[index] if masks is not None else None,
                    poses=np.asarray(poses, dtype=int) if known_poses else None)


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (size, size, 3) with the eval pipeline's antialiased bilinear resize."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return TF.resize(tensor, [size, size], antialias=True).permute(1, 2, 0).numpy()


@torch.no_grad()
def predict_batches(model: nn.Module, inputs: Tensor, *, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode logits (N, K) and pooled features (N, C), batch by batch; the training flag is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, features = [], []
    try:
        for start in range(0, len(inputs), batch_size):
            output = model(inputs[start:start + batch_size].to(device))
            logits.append(output.logits.float().cpu())
            features.append(output.features.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(features).numpy()
