"""Small conveniences for the notebooks: where runs live, smoke-sized recipes, train-or-load.

Notebooks stay thin by calling these; they hold no logic a script would not also want.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from torch import nn

from hsbs_lib.config import Config, config_path, load_config, repo_root, same_recipe  # noqa: F401 (notebooks)
from hsbs_lib.data.synthfer import sample_parameters
from hsbs_lib.engine.build import resolve_device, trained_same_recipe  # noqa: F401 (notebooks)
from hsbs_lib.engine.checkpoint import is_shipped_name, load_checkpoint, load_model_from_checkpoint
from hsbs_lib.engine.train import fit

# Sizes that let every notebook finish in well under two minutes on 2 CPU cores.
SMOKE_OVERRIDES = ("data.n_train=320", "data.n_val=160", "data.n_test=160", "train.batch_size=32", "train.progress=false")


def runs_dir() -> Path:
    """Where notebook runs are written: $HSBS_RUNS, else runs/ at the repository root."""
    return Path(os.environ.get("HSBS_RUNS") or repo_root() / "runs")


def notebook_figures_dir() -> Path:
    """Where notebooks save their figures: figures/ inside the runs folder, never the committed figures/
    (which only `make figures` writes)."""
    return runs_dir() / "figures"


def recipe(name: str, overrides: Sequence[str] = (), *, smoke: bool = False, epochs: int | None = None,
           seed: int | None = None, device: str | None = None, out: str | Path | None = None) -> Config:
    """Load configs/NAME.yaml with notebook-friendly overrides (smoke sizes, epochs, seed, device)."""
    items = list(SMOKE_OVERRIDES) if smoke else []
    if epochs is not None:
        items.append(f"train.epochs={epochs}")
    if seed is not None:
        items.append(f"train.seed={seed}")
    if device is not None:
        items.append(f"train.device={device}")
    items += list(overrides)
    config = load_config(config_path(name), items)
    if smoke and config.data.name == "synthfer":
        config.data.n_val = every_class_size(config, "val", config.data.n_val)
        config.data.n_test = every_class_size(config, config.data.test_split, config.data.n_test)
    config.out = str(out or runs_dir() / (config.name or Path(name).stem))
    return config


def every_class_size(config: Config, split: str, n: int) -> int:
    """The smallest size >= n at which the first images of a SynthFER split hold every class.

    SynthFER draws labels independently per image, so a small SMOKE split can miss a 2 % class (the
    first 64 test images of seed 0 hold no fear face), which leaves a confusion row empty and a recall NaN.
    Labels are cheap to draw without rendering, so the split is grown until every class appears.
    """
    d = config.data
    labels = sample_parameters(np.arange(max(16 * n, 2000)), seed=d.synth_seed, split=split,
                               balanced=d.synth_balanced, num_classes=d.num_classes)["label"]
    first_seen = [int(np.argmax(labels == k)) for k in range(d.num_classes) if (labels == k).any()]
    if len(first_seen) < d.num_classes:
        return n
    return max(n, max(first_seen) + 1)


@dataclass
class TrainedRun:
    """A trained model in eval mode, its checkpoint dictionary and its run folder (None when loaded)."""

    model: nn.Module
    checkpoint: dict
    run_dir: Path | None

    @property
    def classes(self) -> list[str]:
        return list(self.checkpoint["classes"])


def train_or_load(config: Config, *, checkpoint: str | Path | None = None, reuse: bool = True,
                  device: str = "cpu") -> TrainedRun:
    """Load ``checkpoint`` (a file, or a shipped model's name such as ``"fer2013"``) when given; else reuse
    ``config.out/best.pt`` when it was trained with exactly this config (and ``reuse``); else train.

    Returns the best epoch's model on ``device`` in eval mode.
    """
    if checkpoint:
        model, meta = load_model_from_checkpoint(checkpoint, device=device)
        # a shipped model's name (CKPT = "fer2013") has no run folder
        return TrainedRun(model, meta, None if is_shipped_name(checkpoint) else Path(checkpoint).parent)
    best = Path(config.out) / "best.pt"
    if not (reuse and best.is_file() and trained_same_recipe(load_checkpoint(best)["config"], config)):
        fit(config)
    model, meta = load_model_from_checkpoint(best, device=device)
    return TrainedRun(model, meta, Path(config.out))
