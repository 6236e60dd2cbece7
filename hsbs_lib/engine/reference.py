"""A plain torchvision training loop: the yardstick every recipe of the package is compared with.

``train_reference(config)`` trains ``torchvision.models.resnet18`` (standard stem, torchvision's
initialisation) with nothing of the package but the data: Adam with a one-cycle schedule (peak
``train.lr``, 1e-3 by default), random horizontal flips only, batch ``train.batch_size``, for
``train.epochs``. It reads the same splits as the engine (:func:`~hsbs_lib.engine.build.build_splits`:
the same validation hold-out, the same training budget ``data.max_train_per_class``), keeps the epoch
with the best validation mean class accuracy, scores the test split once, and writes ``config.yaml``,
``metrics.csv`` and ``eval.json`` in the engine's format, so ``hsbs compare`` tabulates it beside any
recipe (a row with ``train.trainer: reference``). It ignores ``model.*``, the optimiser, schedule, weight
decay and augmentation settings of the config, and says so in eval.json.

If a recipe of the package cannot match this loop on the same data and budget, the recipe is wrong.
"""
from __future__ import annotations

import copy
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from hsbs_lib.config import Config
from hsbs_lib.constants import IMAGENET_NORMALIZATION
from hsbs_lib.data.pipeline.cache import cache_split
from hsbs_lib.engine.build import build_splits
from hsbs_lib.engine.evaluate import write_json
from hsbs_lib.engine.metrics import classification_metrics
from hsbs_lib.engine.run_folder import write_run_config
from hsbs_lib.outputs import atomic_write

RECIPE = ("torchvision resnet18 (standard stem), Adam + OneCycleLR (peak train.lr), random horizontal flip, "
          "cross-entropy; model, optimiser, schedule, weight decay and augmentation settings ignored")


def _tensors(data, size: int, config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, S, S) and labels (N,) of a split (decoded once through the package's cache)."""
    cached = cache_split(data, size, cache_dir=config.data.cache_dir, skip_bad=config.data.skip_bad)
    return torch.from_numpy(np.asarray(cached.images)), torch.from_numpy(np.asarray(cached.labels, dtype=np.int64))


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_NORMALIZATION["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_NORMALIZATION["std"]).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


@torch.no_grad()
def _predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    model.eval()
    return torch.cat([model(_normalise(images[i:i + batch_size])).argmax(dim=1)
                      for i in range(0, len(images), batch_size)]).numpy()


def train_reference(config: Config) -> dict:
    """Train the reference on ``config.data`` into ``config.out``; returns eval.json's content (or the
    validation report when there is no test split)."""
    config = copy.deepcopy(config)
    t, size = config.train, config.data.input_size
    if t.threads:
        torch.set_num_threads(t.threads)
    out = Path(config.out)
    splits = build_splits(config)
    if splits.val is None:
        raise ValueError("the reference selects its epoch on a validation split; data.val_split=none has none")
    train_x, train_y = _tensors(splits.train, size, config)
    val_x, val_y = _tensors(splits.val, size, config)
    classes = tuple(splits.train.classes)

    torch.manual_seed(t.seed)
    model = torchvision.models.resnet18(weights=None, num_classes=len(classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    steps_per_epoch = len(train_x) // t.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_x)} training images are fewer than one batch of {t.batch_size}")
    # Written once the images are decoded and the model built: a start that fails leaves the folder as it was
    # (see hsbs_lib.engine.train).
    out.mkdir(parents=True, exist_ok=True)
    write_run_config(config, out, replace_other_recipe=True)   # a fresh start: no resume here
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=t.lr, total_steps=t.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(t.seed)
    rows, best_score, best_state, best_epoch = [], -math.inf, None, 0
    for epoch in range(t.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        total_loss, correct = 0.0, 0
        for step in range(steps_per_epoch):
            index = order[step * t.batch_size:(step + 1) * t.batch_size]
            images = _normalise(train_x[index])
            flip = torch.rand(len(index), generator=generator) < 0.5
            images[flip] = images[flip].flip(-1)
            logits = model(images)
            loss = F.cross_entropy(logits, train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach()) * len(index)
            correct += int((logits.argmax(dim=1) == train_y[index]).sum())
        seen = steps_per_epoch * t.batch_size
        val = classification_metrics(val_y.numpy(), _predict(model, val_x), classes)
        rows.append({"epoch": epoch + 1, "loss/ce": total_loss / seen, "train/accuracy": correct / seen,
                     **{f"val/{key}": val[key] for key in ("accuracy", "mean_class_accuracy", "macro_f1")},
                     "time/epoch_s": time.perf_counter() - started})
        if val["mean_class_accuracy"] > best_score:
            best_score, best_epoch = val["mean_class_accuracy"], epoch + 1
            best_state = copy.deepcopy(model.state_dict())
            best_validation = {key: val[key] for key in ("accuracy", "mean_class_accuracy", "macro_f1")}
    def write_metrics(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    atomic_write(out / "metrics.csv", write_metrics)
    model.load_state_dict(best_state)
    report = {"trainer": RECIPE, "dataset": config.data.name, "epoch": best_epoch, "selected_on": splits.selection,
              "validation": best_validation}
    if splits.test is None and splits.test_absent:
        # A copy without its test split (FER2013 without PrivateTest): report the validation split, labelled.
        metrics = classification_metrics(val_y.numpy(), _predict(model, val_x), classes)
        report = {**report, "split": splits.val_name, "note": f"{splits.test_absent}; these are validation numbers",
                  "classes": list(classes), **metrics}
        write_json(report, out / "eval.json")
        return report
    if splits.test is None:
        return {**report, "split": "none", **best_validation}
    test_x, test_y = _tensors(splits.test, size, config)
    metrics = classification_metrics(test_y.numpy(), _predict(model, test_x), classes)
    report = {**report, "split": config.data.test_split, "classes": list(classes), **metrics}
    write_json(report, out / "eval.json")
    return report
