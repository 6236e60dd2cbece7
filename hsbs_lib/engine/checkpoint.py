"""Checkpoints: one dict of plain tensors and Python values, written atomically, loaded with weights_only.

Keys: ``model`` (state dict), ``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (completed epochs),
``step`` (optimizer steps), ``rng`` (torch CPU/CUDA, numpy and Python states), ``config`` (resolved dict),
``classes`` (label names), ``input_size``, ``normalization`` ({"mean", "std"}), ``metrics``, ``version``.
With ``train.ema`` on, ``model`` holds the averaged weights (what is evaluated and predicted with) and
``raw_model`` the optimiser's own, from which a resumed run continues.
"""
from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import hsbs_lib
from hsbs_lib.config import Config, config_from_dict
from hsbs_lib.engine.build import build_model
from hsbs_lib.models.weights_file import load_weights_file

CHECKPOINT_FORMAT = 1

#: models shipped inside the package (hsbs_lib/shipped/), usable wherever a checkpoint path is taken:
#: name -> (file, one line on what it is). hsbs_lib.engine.shipped writes them and their model cards.
SHIPPED_MODELS: dict[str, tuple[str, str]] = {
    "fer2013": ("fer2013.pt", "a quarter-width ResNet-18 trained on FER2013's Training split by the course "
                              "recipe (configs/recipes/fer2013_course.yaml), selected on PublicTest"),
}
DEFAULT_SHIPPED = "fer2013"
SHIPPED_FOLDER = Path(__file__).resolve().parents[1] / "shipped"


def is_shipped_name(text: str | os.PathLike) -> bool:
    """Whether ``text`` names a shipped model rather than a file (a file of that name in the current folder
    wins)."""
    return str(text) in SHIPPED_MODELS and not Path(text).exists()


def shipped_checkpoint(name: str = DEFAULT_SHIPPED) -> Path:
    """The file of the shipped model ``name``; a one-line FileNotFoundError when it is unknown or missing."""
    if name not in SHIPPED_MODELS:
        raise FileNotFoundError(f"no shipped model named '{name}'; shipped: {', '.join(SHIPPED_MODELS)}")
    path = SHIPPED_FOLDER / SHIPPED_MODELS[name][0]
    if not path.is_file():
        raise FileNotFoundError(f"the shipped model '{name}' should be at {path}, which this installation lacks; "
                                f"reinstall the package from its repository, or pass --checkpoint RUN/best.pt")
    return path


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel, torch.compile or the engine's loss wrapper."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "model") and getattr(model, "wraps_model", False):
            model = model.model
        else:
            return model


def rng_state() -> dict[str, Any]:
    """Every random state the run uses, as tensors and Python values (weights_only-safe)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))


def build_checkpoint(*, model: nn.Module, config: Config | dict, classes, input_size: int, normalization: dict,
                     epoch: int, step: int, optimizer: torch.optim.Optimizer | None = None,
                     scheduler: Any = None, scaler: Any = None, metrics: dict | None = None,
                     raw_model: nn.Module | None = None) -> dict[str, Any]:
    """Assemble the checkpoint dict (see the module docstring for the keys). ``raw_model``: the optimiser's
    weights when ``model`` is their moving average (``train.ema``)."""
    extra = {"raw_model": unwrap_model(raw_model).state_dict()} if raw_model is not None else {}
    return {
        "model": unwrap_model(model).state_dict(),
        **extra,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "step": int(step),
        "rng": rng_state(),
        "config": config.to_dict() if isinstance(config, Config) else dict(config),
        "classes": list(classes),
        "input_size": int(input_size),
        "normalization": {"mean": [float(v) for v in normalization["mean"]],
                          "std": [float(v) for v in normalization["std"]]},
        "metrics": dict(metrics or {}),
        "version": {"hsbs_lib": hsbs_lib.__version__, "format": CHECKPOINT_FORMAT, "torch": str(torch.__version__)},
    }


def non_finite_entries(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict (weights, BatchNorm statistics) holding NaN or inf."""
    return [name for name, value in state.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]


def save_checkpoint(path: str | os.PathLike, **parts: Any) -> Path:
    """Write ``parts`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``.

    A crash or an error mid-write leaves the previous file untouched; a kill mid-write leaves a
    ``.NAME.*.tmp`` file that the next run in the folder removes (:mod:`hsbs_lib.engine.run_folder`).
    Non-finite model weights are refused (ValueError): a diverged model never replaces a good file.
    """
    path = Path(path)
    broken = non_finite_entries(parts.get("model") or {})
    if broken:
        raise ValueError(f"refusing to write {path}: the model holds non-finite values in {', '.join(broken[:3])}"
                         + (" ..." if len(broken) > 3 else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(parts, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        # A full disk reaches torch.save as "RuntimeError: ... unexpected pos"; say what it is, while
        # the partial file still holds the space that shows it.
        full = isinstance(error, Exception) and disk_is_full(path.parent)
        Path(temporary).unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, f"could not write {path}: no space left on the disk holding "
                                        f"{path.parent} (the previous {path.name}, if any, is intact); "
                                        "free some space and run the command again") from error
        raise
    return path


def disk_is_full(folder: str | os.PathLike, margin_bytes: int = 16 * 2**20) -> bool:
    """Whether the file system holding ``folder`` has less than ``margin_bytes`` left for this user."""
    try:
        return shutil.disk_usage(folder).free < margin_bytes
    except OSError:
        return False


def resolve_checkpoint(path: str | os.PathLike, default: str = "last.pt") -> Path:
    """Accept a checkpoint file, a run directory (then ``RUN/<default>``) or a shipped model's name."""
    if is_shipped_name(path):
        return shipped_checkpoint(str(path))
    path = Path(path)
    if path.is_dir():
        path = path / default
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint on CPU with ``weights_only=True``; errors name the file."""
    path = resolve_checkpoint(path)
    checkpoint = load_weights_file(path, "checkpoint")
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"{path} is not an hsbs_lib checkpoint (no 'model' key)")
    return checkpoint


def describe_checkpoint(checkpoint: dict[str, Any]) -> str:
    """What a checkpoint says it is, in words: method, backbone, classes and input size (``?`` where it
    does not say)."""
    config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    classes = checkpoint.get("classes")
    classes = (f"{len(classes)} classes ({', '.join(map(str, classes))})" if isinstance(classes, (list, tuple))
               else "classes ?")
    size = checkpoint.get("input_size", "?")
    return (f"method {model.get('name', '?')}, backbone {model.get('backbone', '?')}, {classes}, "
            f"input size {size}")


def _some(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def load_model_from_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                               ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from the stored config and classes, load its weights, put it in eval mode.

    A checkpoint that cannot be rebuilt (no stored config, classes or input size; a config that does not
    read) or whose weights do not fit the model its config describes (another method's weights, keys
    missing or extra, other shapes) is refused with one ValueError saying what the checkpoint is."""
    path = resolve_checkpoint(path)
    checkpoint = load_checkpoint(path)
    missing = [key for key in ("config", "classes", "input_size") if key not in checkpoint]
    if missing or not isinstance(checkpoint["config"], dict) or not isinstance(checkpoint["model"], dict):
        what = (f"stores no {' or '.join(missing)}" if missing
                else "holds no config and weights as hsbs train writes them")
        raise ValueError(f"checkpoint {path} ({describe_checkpoint(checkpoint)}) {what}, so its model cannot be "
                         "rebuilt; give a best.pt or last.pt written by hsbs train")
    try:
        config = config_from_dict(checkpoint["config"])
        model = build_model(config, checkpoint["classes"], load_pretrained=False)
    except (ValueError, KeyError, TypeError) as error:
        reason = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise ValueError(f"checkpoint {path} ({describe_checkpoint(checkpoint)}): its stored config does not "
                         f"build a model ({str(reason).splitlines()[0]})") from None
    try:
        result = model.load_state_dict(checkpoint["model"], strict=False)
        problems = [f"{len(result.missing_keys)} weight(s) missing ({_some(result.missing_keys)})"
                    if result.missing_keys else "",
                    f"{len(result.unexpected_keys)} unexpected weight(s) ({_some(result.unexpected_keys)})"
                    if result.unexpected_keys else ""]
        problem = "; ".join(part for part in problems if part)
    except RuntimeError as error:     # shapes that differ: "size mismatch for head.weight: ..."
        lines = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        problem = (f"{len(lines)} weight(s) of another shape ({_some(lines, 1)})" if lines
                   else str(error).splitlines()[0])
    if problem:
        raise ValueError(f"checkpoint {path} ({describe_checkpoint(checkpoint)}): its weights do not fit the model "
                         f"its config describes: {problem}; it was edited, or its weights come from another "
                         "method or width") from None
    return model.to(device).eval(), checkpoint
