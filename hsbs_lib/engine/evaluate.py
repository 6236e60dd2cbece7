"""Evaluation: logits, metrics, checkpoints, and the ``hsbs eval`` command.

``data`` may be a loader (DeviceBatchLoader, SampleBatchLoader, or any iterable of
``(images, targets)`` batches), a cached split (``.images`` uint8 (N, 3, S, S)) or a FERDataset.
Models are evaluated in eval mode, one batch at a time; every model is batch-independent there, so the
batch size does not change the result.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from hsbs_lib.config import check_input_size, validate_config
from hsbs_lib.data.labels import class_names
from hsbs_lib.data.pipeline.loaders import (DeviceBatchLoader, SampleBatchLoader, choose_pipeline, is_cached_split,
                                            make_loader, split_nbytes)
from hsbs_lib.data.pipeline.transforms import TTA_MODES, tta_views
from hsbs_lib.engine.build import build_dataset, select_device
from hsbs_lib.engine.checkpoint import SHIPPED_FOLDER, load_model_from_checkpoint, resolve_checkpoint
from hsbs_lib.engine.log import progress_bar
from hsbs_lib.engine.runs import checkpoint_data_config
from hsbs_lib.engine.metrics import classification_metrics, format_metrics
from hsbs_lib.outputs import OutputFolder, output_for, write_text_atomic

log = logging.getLogger("hsbs_lib.engine")


def as_eval_loader(data: Any, *, batch_size: int = 256, device: str | torch.device = "cpu",
                   normalization: dict | None = None, input_size: int | None = None):
    """An in-order, unaugmented loader over ``data`` (a loader passes through)."""
    if is_cached_split(data):
        return DeviceBatchLoader(data, batch_size=batch_size, device=device, normalization=normalization)
    if hasattr(data, "load_image"):
        size = input_size or int(data.load_image(0).shape[0])
        return SampleBatchLoader(data, size=size, batch_size=batch_size, normalization=normalization)
    return data


@torch.no_grad()
def predict_logits(model: nn.Module, data: Any, *, device: str | torch.device = "cpu", batch_size: int = 256,
                   normalization: dict | None = None, input_size: int | None = None,
                   amp_dtype: torch.dtype | None = None, progress: bool = False, tta: str = "none"
                   ) -> dict[str, Tensor]:
    """Run ``model`` over ``data`` in eval mode.

    Returns CPU tensors: ``logits`` (N, K) float32, ``labels`` (N,), ``features`` (N, C), ``index`` (N,).
    ``tta``: test-time augmentation (:func:`~hsbs_lib.data.pipeline.transforms.tta_views`); with more than
    one view the logits are the log of the views' mean softmax, and the features those of the plain image.
    """
    device = torch.device(device)
    loader = as_eval_loader(data, batch_size=batch_size, device=device, normalization=normalization,
                            input_size=input_size)
    model.eval()
    memory_format = torch.channels_last if _is_channels_last(model) else torch.contiguous_format
    collected: dict[str, list[Tensor]] = {"logits": [], "labels": [], "features": [], "index": []}
    for images, targets in progress_bar(loader, enabled=progress, desc="eval"):
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            output = model(images)
            logits = output.logits.float()
            views = tta_views(images, tta)[1:]
            if views:
                probabilities = logits.softmax(dim=1)
                for view in views:
                    probabilities += model(view.contiguous(memory_format=memory_format)).logits.float().softmax(dim=1)
                logits = (probabilities / (1 + len(views))).log()
        collected["logits"].append(logits.cpu())
        collected["features"].append(output.features.float().cpu())
        collected["labels"].append(targets["label"].cpu())
        collected["index"].append(targets["index"].cpu())
    return {key: torch.cat(values) if values else torch.empty(0) for key, values in collected.items()}


def _is_channels_last(model: nn.Module) -> bool:
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def evaluate(model: nn.Module, data: Any, *, device: str | torch.device = "cpu", batch_size: int = 256,
             classes: Sequence[str] | None = None, normalization: dict | None = None,
             input_size: int | None = None, amp_dtype: torch.dtype | None = None, progress: bool = False,
             tta: str = "none") -> dict:
    """Accuracy, mean_class_accuracy, macro_f1, per_class_recall (by class name), confusion_matrix, n.

    ``tta``: none | flip | tencrop, test-time augmentation (see :func:`predict_logits`)."""
    predictions = predict_logits(model, data, device=device, batch_size=batch_size, normalization=normalization,
                                 input_size=input_size, amp_dtype=amp_dtype, progress=progress, tta=tta)
    num_classes = predictions["logits"].shape[1] if predictions["logits"].dim() == 2 else model.num_classes
    classes = tuple(classes or getattr(data, "classes", None) or class_names(num_classes))
    return classification_metrics(predictions["labels"].numpy(), predictions["logits"].argmax(dim=1).numpy(),
                                  classes)


def evaluation_report(metrics: dict, *, checkpoint: str | os.PathLike, dataset: str, split: str,
                      classes: Sequence[str], epoch: int | None = None, selected_on: str | None = None,
                      validation: dict | None = None, tta: str = "none", note: str | None = None) -> dict:
    """The eval.json content: where the numbers come from (the scored split, the split that selected the
    checkpoint and its metrics there, the test-time augmentation), then the metrics."""
    report = {"checkpoint": str(checkpoint), "dataset": dataset, "split": split, "epoch": epoch, "tta": tta}
    if note:
        report["note"] = note
    if selected_on is not None:
        report["selected_on"] = selected_on
    if validation:
        report["validation"] = validation
    return {**report, "classes": list(classes), **metrics}


def write_json(values: dict, path: str | os.PathLike, *, outputs: OutputFolder | None = None) -> Path:
    """Write ``values`` as JSON atomically; through ``outputs`` (checked and recorded) when given."""
    text = json.dumps(values, indent=2) + "\n"
    if outputs is not None:
        return outputs.write_text(Path(path).name, text)
    return write_text_atomic(path, text)


def refuse_other_classes(trained: Sequence[str], data_classes: Sequence[str] | None, checkpoint: Any) -> None:
    """Raise ValueError when the data's class list is not the one the checkpoint was trained on: the model's
    outputs would be read as the wrong classes, and images of a class it never had would go uncounted."""
    if data_classes is None or tuple(data_classes) == tuple(trained):
        return
    extra = [name for name in data_classes if name not in trained]
    missing = [name for name in trained if name not in data_classes]
    difference = "; ".join(part for part in (
        f"the data adds {', '.join(extra)}" if extra else "", f"the data lacks {', '.join(missing)}" if missing else "",
        "" if extra or missing else "the data orders them differently") if part)
    raise ValueError(f"{checkpoint} was trained on {len(trained)} classes ({', '.join(trained)}) but the data has "
                     f"{len(data_classes)} ({difference}); evaluate on the same classes, e.g. "
                     f"data.num_classes={len(trained)}")


def evaluate_checkpoint(path: str | os.PathLike, *, data: Any = None, split: str | None = None,
                        device: str = "auto", out: str | os.PathLike | None = None,
                        overrides: Sequence[str] = (), batch_size: int | None = None, tta: str = "none",
                        force: bool = False) -> dict:
    """Evaluate a checkpoint on ``data`` or on a split of its own (or overridden) data config.

    ``overrides`` change the data section (``data.root=/x`` or ``root=/x``); a path stored in the checkpoint
    is used only when the user gives none (and is logged). The report is written to ``out`` (default:
    ``eval_SPLIT.json`` beside the checkpoint, never the training run's own ``eval.json``) and returned;
    entries ``data.skip_bad=true`` left out are listed in it (``skipped``) and on screen. ``tta``: none | flip |
    tencrop, test-time augmentation. The report follows the output rule (:mod:`hsbs_lib.outputs`): it never
    replaces the checkpoint, nor a file an earlier ``hsbs eval`` did not write (``force``), checked before
    any work.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"--tta must be one of {', '.join(TTA_MODES)}, got '{tta}'")
    path = resolve_checkpoint(path, default="best.pt")
    if out is not None:   # an --out the rule refuses is refused before the checkpoint is even read
        output_for(out, "eval", force=force, reads=[path])[0].check([Path(out).name])
    device = select_device(device)
    model, checkpoint = load_model_from_checkpoint(path, device=device)
    # The user's data settings win over the checkpoint's stored paths and sizes (see checkpoint_data_config).
    config = checkpoint_data_config(checkpoint["config"],
                                    [item if item.startswith("data.") else f"data.{item}" for item in overrides],
                                    source=f"checkpoint {path}")
    validate_config(config)     # data.n_test=0, a non-positive batch size ...: one line before any work
    # The model was trained at this size and normalisation; the data must follow it.
    config.data.input_size = int(checkpoint["input_size"])
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size expects at least 1 image, got {batch_size}")
    check_input_size(config.data.input_size, batch_size=batch_size or config.train.eval_batch_size,
                     width=config.model.backbone_width, name=f"checkpoint {path}'s stored input_size",
                     batch_name="--batch-size")
    own_data = data is None
    if own_data:
        split = split or config.data.test_split
    # The training run's eval.json holds its validation scores, which hsbs compare reads: never replace it.
    # A shipped model's report goes to the current folder, never into the installed package.
    beside = Path.cwd() / f"eval_{path.stem}" if path.parent == SHIPPED_FOLDER else path.parent / "eval"
    report_path = Path(out) if out else beside.with_name(f"{beside.name}_{split or 'given'}.json")
    outputs, report_name = output_for(report_path, "eval", force=force, reads=[path])
    outputs.check([report_name])
    if own_data:
        data = build_dataset(config, split)
    refuse_other_classes(checkpoint["classes"], getattr(data, "classes", None), path)
    skipped: list = []
    if is_cached_split(data) or hasattr(data, "load_image"):
        pipeline = choose_pipeline(config.data.pipeline, split_nbytes(data, config.data.input_size),
                                   config.data.device_cache_max_gb)
        config.train.eval_batch_size = batch_size or config.train.eval_batch_size
        data = make_loader(data, config, train=False, device=device, pipeline=pipeline,
                           normalization=checkpoint["normalization"])
        skipped = list(getattr(data, "skipped", []))
    classes = checkpoint["classes"]
    problem = one_class_only(data, classes, split or config.data.test_split)
    if problem:
        log.warning("%s: its accuracy, mean class accuracy and F1 say nothing of the other classes", problem)
    metrics = evaluate(model, data, device=device, classes=classes,
                       normalization=checkpoint["normalization"], input_size=config.data.input_size, tta=tta)
    report = evaluation_report(metrics, checkpoint=path, dataset=config.data.name, split=split or "given",
                               classes=classes, epoch=checkpoint.get("epoch"), tta=tta)
    if skipped:
        report["skipped"] = [str(entry) for entry in skipped]
        shown = "\n".join(f"  {entry}" for entry in report["skipped"][:10])
        more = f"\n  ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        log.warning(f"left out {len(skipped)} bad entries (data.skip_bad=true), listed in the report:\n{shown}{more}")
    write_json(report, report_path, outputs=outputs)
    report["report_path"] = str(report_path)
    return report


def one_class_only(loader, classes: Sequence[str], split_name: str) -> str:
    """``'the training split holds one class only (12 images of happiness, none of the other 6 classes)'``
    when every sample ``loader`` draws from has the same label, else ``''``."""
    labels = loader.sample_labels() if loader is not None and hasattr(loader, "sample_labels") else None
    if labels is None or len(labels) == 0 or len(np.unique(labels)) != 1 or len(classes) < 2:
        return ""
    return (f"the {split_name} split holds one class only ({len(labels)} image{'s' if len(labels) != 1 else ''} of "
            f"{classes[int(labels[0])]}, none of the other {len(classes) - 1} classes)")


# ---------------------------------------------------------------------------------------------- CLI

def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="RUN/best.pt (a run directory means its best.pt)")
    parser.add_argument("--data", help="the same as data.name=NAME: a dataset other than the one the model was "
                                       "trained on")
    parser.add_argument("--root", help="the same as data.root=DIR (default: the checkpoint's, else $HSBS_DATA)")
    parser.add_argument("--split", help="split to evaluate (default: the config's test split)")
    parser.add_argument("--out", help="JSON report path (default: eval_SPLIT.json beside the checkpoint)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --out that hsbs eval did not write (never the checkpoint)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size")
    parser.add_argument("--tta", choices=TTA_MODES, default="none",
                        help="test-time augmentation: flip (the image and its mirror) or tencrop (corner and centre "
                             "crops of 7/8 of the side, and their mirrors), predictions averaged")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="data settings, e.g. data.root=/data/RAF-DB/basic data.options.fold=2 data.skip_bad=true "
                             "(the leading 'data.' may be left out)")


def run_eval(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.name={args.data}")
    if args.root:
        overrides.append(f"data.root={args.root}")
    report = evaluate_checkpoint(args.checkpoint, split=args.split, device=args.device, out=args.out,
                                 overrides=overrides, batch_size=args.batch_size, tta=args.tta,
                                 force=args.force)
    tta = f", test-time augmentation {report['tta']}" if report["tta"] != "none" else ""
    print(f"{report['checkpoint']} on {report['dataset']} [{report['split']}]{tta}")
    print(format_metrics(report, report["classes"]))
    print(f"wrote {report['report_path']}")
    return 0
