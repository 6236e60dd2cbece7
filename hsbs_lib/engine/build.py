"""Builders shared by training, evaluation, figures and commands: the device, the model, the data splits.

``build_model(config, classes)`` creates the registered model of ``config.model``; ``build_dataset(config,
split)`` reads one split of ``config.data``; ``build_splits(config)`` returns the train, validation and test
data of a run (the validation split selects checkpoints; the test split is scored once).
"""
from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hsbs_lib.config import Config, ModelConfig, check_input_size, coerce_value, resolved_stem, same_recipe, shown
from hsbs_lib.data.datasets import dataset_adapter, load_dataset
from hsbs_lib.data.splits import holdout_split, per_class_subset
from hsbs_lib.engine.distributed import DistributedContext
from hsbs_lib.models.backbones import zero_init_residual_
from hsbs_lib.models.registry import create_model, get_model_factory, model_option_defaults


def mps_available() -> bool:
    """True when torch has Apple's Metal (MPS) backend and this machine can use it."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``mps`` when Apple's Metal backend is, else ``cpu``;
    ``cpu``, ``mps``, ``cuda`` and ``cuda:N`` as given. Any other name, or a device this machine does not have,
    is a one-line ValueError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if not isinstance(name, str) or not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise ValueError(f"--device (train.device) expects auto, cpu, cuda, cuda:N or mps, got {shown(name)}")
    if name == "mps" and not mps_available():
        raise ValueError("device 'mps' requested but Apple's MPS backend is not available; use --device cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}' requested but CUDA is not available; use --device cpu")
        index, count = int(name.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise ValueError(f"device '{name}' requested but this machine has {count} GPU"
                             f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
    return name


def select_device(name: str = "auto", context: DistributedContext | None = None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Under torchrun, CUDA means this rank's local GPU."""
    device = torch.device(resolve_device(name))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}' requested but CUDA is not available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", context.local_rank if context else torch.cuda.current_device())
    return device


def model_options(model: ModelConfig) -> dict[str, Any]:
    """``model.options`` checked against the model's constructor: every key must be one of its options, and
    each value is coerced to the option's annotated type (``model.options.dropout=1e-1`` is a float).

    Raises KeyError for an unknown model or option, ConfigValueError for a value of the wrong type.
    """
    factory = get_model_factory(model.name)
    function = factory.__init__ if inspect.isclass(factory) else factory
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    known = model_option_defaults(model.name)
    unknown = sorted(set(model.options) - set(known))
    if unknown and not takes_any:
        raise KeyError(f"unknown model option 'model.options.{unknown[0]}' for model '{model.name}'; its options are: "
                       f"{', '.join(sorted(known)) or 'none'}")
    try:
        hints = typing.get_type_hints(function)
    except (NameError, TypeError):   # annotations that do not resolve: pass the values as written
        hints = {}
    return {key: coerce_value(value, hints.get(key, Any), f"model.options.{key}")
            for key, value in model.options.items()}


def model_extra_targets(config: Config) -> dict[str, str]:
    """The training targets beyond the labels that ``config.model``'s loss reads, each with the option asking for
    it (the model's ``extra_targets``, e.g. {"region_bits": "model.options.hst_teacher=mask"}); {} for most."""
    ask = getattr(get_model_factory(config.model.name), "extra_targets", None)
    return ask(model_options(config.model)) if ask is not None else {}


def build_model(config: Config, classes, *, load_pretrained: bool = True) -> nn.Module:
    """The registered model ``config.model.name`` for ``classes`` (pretrained files only when asked)."""
    m = config.model
    check_input_size(config.data.input_size, width=m.backbone_width)   # a model sized for it could not run anyway
    model = create_model(m.name, num_classes=len(classes), backbone=m.backbone,
                         pretrained=m.pretrained if load_pretrained else None, stem=resolved_stem(config),
                         backbone_width=m.backbone_width,
                         input_size=config.data.input_size, train_epochs=config.train.epochs, **model_options(m))
    if m.zero_init_residual and not m.pretrained:
        zero_init_residual_(model.backbone)
    return model


def trained_same_recipe(stored: Config | dict, wanted: Config) -> bool:
    """A stored run's config trains what ``wanted`` asks for; model options written out at their default
    value count as left out (a recipe file that spells out HSBS's defaults reuses a run that did not)."""
    name = (stored.model.name if isinstance(stored, Config) else (stored.get("model") or {}).get("name"))
    try:
        defaults = model_option_defaults(wanted.model.name) if name == wanted.model.name else None
    except KeyError:
        defaults = None
    return same_recipe(stored, wanted, option_defaults=defaults)


def build_dataset(config: Config, split: str) -> Any:
    """One split of ``config.data`` through ``load_dataset`` (SynthFER is rendered, others read from disk)."""
    d = config.data
    if d.name == "synthfer":
        n = {d.train_split: d.n_train, d.test_split: d.n_test}.get(split, d.n_val)
        return load_dataset("synthfer", None, split=split, num_classes=d.num_classes, n=n, size=d.input_size,
                            seed=d.synth_seed, balanced=d.synth_balanced, **d.options)
    return load_dataset(d.name, config.data_root(), split, num_classes=d.num_classes, skip_bad=d.skip_bad,
                        **d.options)


NO_SPLIT = ("none", "null", "")


@dataclass
class Splits:
    """The three splits of a run and how the validation split was made (``selection``, for reports).

    ``test_absent``: why there is no test split although the recipe names one (a FER2013 copy without
    PrivateTest); the run then reports the validation split, labelled. ``val_name``: the validation split's name.
    """

    train: Any
    val: Any
    test: Any
    selection: str
    test_absent: str | None = None
    val_name: str = "val"


def build_splits(config: Config) -> Splits:
    """Train, validation and test data for ``config.data``.

    ``data.val_split``: ``auto`` uses the dataset's own validation split when it has one that shares no
    image with the test split (SynthFER ``val``, FER2013/FERPlus PublicTest, an ImageFolder ``val/``), else a
    hold-out; ``holdout`` takes ``data.val_fraction`` of every class of the training split (seed
    ``data.val_seed``, whole subjects when the dataset knows them); a split name reads that split (refused
    when it shares images with the test split); ``none`` trains without validation. ``max_train_per_class``
    then caps the training set (a fixed budget).
    """
    d = config.data
    train = build_dataset(config, d.train_split)
    test, test_absent = None, None
    if str(d.test_split).lower() not in NO_SPLIT:
        if _split_absent(config, d.test_split):
            test_absent = f"{d.name}: this copy has no {d.test_split} split"
        else:
            test = build_dataset(config, d.test_split)
    mode = str(d.val_split).strip().lower()
    val, selection, val_name = None, "none (best.pt is the last epoch)", "val"
    if mode == "auto":
        val = _own_validation_split(config, test)
        mode = "holdout" if val is None else "own"
        if val is not None:
            selection, val_name = f"{d.name} {val.split} split", str(val.split)
    if mode == "holdout":
        train, val = holdout_split(train, fraction=d.val_fraction, seed=d.val_seed)
        selection, val_name = (f"hold-out of the {d.train_split} split ({100 * d.val_fraction:g}% of every class, "
                               f"seed {d.val_seed}, {len(val)} images)"), "holdout"
    elif mode not in ("own", *NO_SPLIT):
        val_name = str(d.val_split)
        val = build_dataset(config, d.val_split)
        shared = _shared_images(val, test)
        if shared:
            raise ValueError(f"data.val_split={d.val_split} shares {shared} images with the test split "
                             f"'{d.test_split}': selecting on it would select on the test set; use "
                             f"data.val_split=holdout")
        selection = f"{d.name} {d.val_split} split"
    if d.max_train_per_class:
        train = per_class_subset(train, int(d.max_train_per_class), seed=d.val_seed)
    return Splits(train, val, test, selection, test_absent, val_name)


def _split_absent(config: Config, split: str) -> bool:
    """True when the dataset's copy says it holds no ``split`` at all (FER2013 without PrivateTest); a split
    that is present but unreadable is left to fail where it is read, with its own message."""
    if config.data.name == "synthfer":
        return False
    root = config.data_root()
    adapter = dataset_adapter(config.data.name)
    return root is not None and hasattr(adapter, "split_present") and not adapter.split_present(Path(root), split)


def _shared_images(first: Any, second: Any) -> int:
    """How many source paths two datasets have in common (0 when either is missing)."""
    if first is None or second is None:
        return 0
    return len({path for path, _ in first.samples} & {path for path, _ in second.samples})


def _own_validation_split(config: Config, test: Any) -> Any:
    """The dataset's own validation split, or None when it has none distinct from the test split."""
    if not dataset_adapter(config.data.name).has_validation_split:
        return None
    try:
        val = build_dataset(config, "val")
    except (ValueError, FileNotFoundError, KeyError):
        return None
    return None if len(val) == 0 or _shared_images(val, test) else val
