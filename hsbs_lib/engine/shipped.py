"""Models shipped inside the package, trained by its own recipes, so that a newcomer sees real-face
predictions, attention maps and Grad-CAM before training anything.

``hsbs predict photo.jpg`` uses :data:`DEFAULT_SHIPPED` when no ``--checkpoint`` is given, and every command or
notebook that takes a checkpoint accepts a shipped model's name in its place (``--checkpoint fer2013``,
``CKPT = "fer2013"``). A shipped file is an ordinary checkpoint (``weights_only`` loadable, the model's
config, classes, input size and normalisation inside) holding only the weights, in half precision, and the
report of its training run; its model card (``NAME.md`` beside it) is written from the same file by
:func:`write_model_card`, so the card cannot say other numbers than the weights carry.

``python -m hsbs_lib.engine.shipped RUN/best.pt --name fer2013`` writes both from a finished run.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path
from typing import Any

from hsbs_lib.engine.checkpoint import (DEFAULT_SHIPPED, SHIPPED_FOLDER, SHIPPED_MODELS, load_checkpoint,
                                        save_checkpoint)

#: the most a shipped file may weigh (the repository keeps it under this)
MAX_SHIPPED_BYTES = 5 * 2**20


def shipped_state(checkpoint: dict[str, Any], report: dict | None = None) -> dict[str, Any]:
    """The parts of a training checkpoint a shipped file keeps: the model's weights in half precision (the
    integer BatchNorm counters as they are), what rebuilds and feeds the model, and its run's report."""
    weights = {key: value.half() if value.is_floating_point() else value
               for key, value in checkpoint["model"].items()}
    kept = {key: checkpoint[key] for key in ("config", "classes", "input_size", "normalization", "epoch", "version")}
    # Where the training machine kept its copy and wrote its run means nothing on a user's machine.
    config = copy.deepcopy(kept["config"])
    config["data"].update(root=None, cache_dir=None)
    config["out"] = f"runs/{config.get('name') or 'shipped'}"
    kept["config"] = config
    report = dict(report or {})
    if "checkpoint" in report:
        report["checkpoint"] = f"{config['out']}/best.pt"
    return {"model": weights, "optimizer": None, "scheduler": None, "scaler": None, "step": checkpoint.get("step", 0),
            "rng": None, **kept, "metrics": {"report": report}}


def write_shipped_model(best: str | os.PathLike, name: str, *, folder: str | os.PathLike = SHIPPED_FOLDER
                        ) -> Path:
    """Write the shipped file ``folder/NAME.pt`` from a finished run's ``best.pt`` (its ``eval.json`` beside it
    is the report the card quotes) and the model card ``folder/NAME.md``; refuses a file over 5 MB."""
    best = Path(best)
    report_path = best.parent / "eval.json"
    if not report_path.is_file():
        raise FileNotFoundError(f"{report_path} not found: ship the best.pt of a finished run (its eval.json "
                                f"holds the numbers the model card quotes)")
    report = json.loads(report_path.read_text())
    state = shipped_state(load_checkpoint(best), report)
    out = Path(folder) / f"{name}.pt"
    save_checkpoint(out, **state)
    if out.stat().st_size > MAX_SHIPPED_BYTES:
        size = out.stat().st_size
        out.unlink()
        raise ValueError(f"{best} makes a {size / 2**20:.1f} MB shipped file, over the {MAX_SHIPPED_BYTES // 2**20} MB "
                         f"the repository keeps: ship a narrower network (model.backbone_width)")
    (Path(folder) / f"{name}.md").write_text(model_card(state, name))
    return out


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "." if text else ""


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def model_card(state: dict[str, Any], name: str) -> str:
    """The model card of a shipped file: data, protocol, numbers, architecture, intended use and licence."""
    config, report = state["config"], state["metrics"]["report"]
    data, model, train = config["data"], config["model"], config["train"]
    parameters = sum(value.numel() for key, value in state["model"].items()
                     if value.is_floating_point() and "running_" not in key)
    recall = report.get("per_class_recall", {})
    scored = report.get("split", "?")
    validation_note = (" These are **validation** numbers: PublicTest selected the checkpoint and is also the split "
                       "reported (the package's copy has no PrivateTest), as in the published PublicTest results."
                       if report.get("note") else "")
    lines = [
        f"# Shipped model `{name}`",
        "",
        _sentence(SHIPPED_MODELS.get(name, ("", ""))[1]),
        "",
        "## Data and protocol",
        "",
        f"- Data: {data['name']} ({data['train_split']} split for training), {data['input_size']}x{data['input_size']} "
        f"grey faces replicated to three channels, {len(state['classes'])} classes in the package's canonical "
        f"order: {', '.join(state['classes'])}.",
        f"- Selection: the checkpoint of epoch {state['epoch']} of {train['epochs']}, chosen on {report.get('selected_on', '?')} "
        f"by mean class accuracy.",
        f"- Reported on: the {scored} split, {report.get('n', '?')} faces, test-time augmentation "
        f"{report.get('tta', 'none')}.{validation_note}",
        "",
        "## Numbers",
        "",
        "| accuracy | mean class accuracy | macro-F1 |",
        "|---|---|---|",
        f"| {_percent(report.get('accuracy', float('nan')))} | {_percent(report.get('mean_class_accuracy', float('nan')))} "
        f"| {_percent(report.get('macro_f1', float('nan')))} |",
        "",
        "Recall per class: " + ", ".join(f"{label} {_percent(value)}" for label, value in recall.items()) + ".",
        "",
        "## Architecture and recipe",
        "",
        f"- `{model['name']}` on `{model['backbone']}`, stem `{model['stem']}`, width {model['backbone_width']} "
        f"({parameters / 1e6:.2f} M parameters), weights stored in half precision (loaded as float32).",
        f"- Trained from scratch: {train['optimizer']}{' (Nesterov)' if train.get('nesterov') else ''}, lr "
        f"{train['lr']:g}, weight decay {train['weight_decay']:g}, {train['scheduler']} schedule, batch "
        f"{train['batch_size']}, augmentation `{data['augment']}`, label smoothing {train.get('label_smoothing', 0):g}, "
        f"EMA {train.get('ema', 0):g}, seed {train['seed']}.",
        "",
        "## Use",
        "",
        f"`hsbs predict photo.jpg` (the default model), `hsbs eval --checkpoint {name} ...`, `CKPT = \"{name}\"` in the "
        "notebooks. Faces are found with OpenCV's Haar cascade and cropped with a margin; the model expects a "
        "roughly frontal, centred face, as in FER2013.",
        "",
        "## Licence and limits",
        "",
        "FER2013 (Goodfellow et al., ICML 2013 Challenges in Representation Learning) is distributed for research; "
        "these weights are derived from it and are shipped for teaching and research only. FER2013's labels are "
        "noisy (human accuracy is about 65 %), its faces are 48 px grey crops of web images, and its classes are "
        "imbalanced (disgust: 1.5 % of the training faces): the model is not fit for decisions about people.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write a shipped model and its card from a finished run's best.pt")
    parser.add_argument("best", help="RUN/best.pt of a finished run (eval.json beside it)")
    parser.add_argument("--name", default=DEFAULT_SHIPPED, choices=list(SHIPPED_MODELS))
    parser.add_argument("--folder", default=str(SHIPPED_FOLDER))
    args = parser.parse_args(argv)
    out = write_shipped_model(args.best, args.name, folder=args.folder)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MB) and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
