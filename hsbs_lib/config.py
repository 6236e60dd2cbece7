"""Run configuration: dataclasses, YAML files and dotted ``key=value`` overrides.

A config is resolved in layers, each overriding the one before:

1. the dataclass defaults below;
2. a recipe: one YAML file (``--config FILE``; it may first ``include:`` others), or a composition
   ``--data D --method M`` of ``configs/datasets/D.yaml`` then ``configs/methods/M.yaml`` (the method
   file wins where both set a key; a full recipe ``configs/D_M.yaml``, where one is shipped, replaces the
   two, see :func:`recipe_files`), then, where the dataset has one, its training recipe
   ``configs/recipes/D_course.yaml`` (or the one ``--recipe NAME`` names: ``configs/recipes/D_NAME.yaml``),
   which wins over both: a dataset's schedule, width and augmentation found by measurement on that dataset;
3. overrides such as ``train.epochs=5 data.root=/data/RAF-DB model.options.lambda_hst=10``.

Every value is coerced to its field's type, wherever it comes from: ``train.lr=3e-4`` is a float (YAML 1.1
would read a string), ``data.root=/path/to/copy`` is a string as written (no quoting needed), and a value
that cannot be coerced is refused with one message naming the key, the value and the expected type;
:func:`validate_config` refuses values outside the range any run can use (``train.batch_size=0``). The
resolved config is saved next to every run, so a run can always be reproduced from its own directory.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from hsbs_lib.outputs import write_text_atomic


@dataclass
class DataConfig:
    """Which data, at which size, through which input pipeline."""

    name: str = "synthfer"            # any registered dataset: synthfer, rafdb, fer2013, ferplus, affectnet, sfew, ...
    root: str | None = None           # dataset root; falls back to $HSBS_DATA
    train_split: str = "train"
    test_split: str = "test"          # scored once, for the checkpoint selected on the validation split
    # Which split selects best.pt: "auto" (the dataset's own validation split when it has one that
    # shares nothing with the test split, else "holdout"), "holdout" (a stratified, seeded share of
    # the training split), a split name, or "none" (best.pt is the last epoch).
    val_split: str = "auto"
    val_fraction: float = 0.1         # the hold-out's share of every class
    val_seed: int = 0                 # fixed across training seeds, so every seed sees the same hold-out
    max_train_per_class: int | None = None   # a fixed-budget training set: at most this many per class
    num_classes: int = 7
    input_size: int = 64
    # SynthFER only: rendered in memory, deterministic from (seed, index)
    n_train: int = 4000
    n_val: int = 1000
    n_test: int = 1000
    synth_seed: int = 0
    synth_balanced: bool = False
    # adapters
    skip_bad: bool = False
    options: dict[str, Any] = field(default_factory=dict)   # adapter-specific (fold, label_mode, ...)
    cache_dir: str | None = None      # uint8 cache; default $HSBS_CACHE, else ~/.cache/hsbs
    # input pipeline: "device" slices a cached uint8 tensor and augments whole batches on the device,
    # "loader" uses a DataLoader with per-sample transforms, "auto" picks device when the split fits.
    pipeline: str = "auto"
    device_cache_max_gb: float = 4.0
    workers: int = 0
    augment: str = "standard"         # none | flip | standard | strong | clcl (CCLLS's recipe; MFER's is none) | fer
    # fields of the preset replaced, e.g. {erase: 0} or {zoom: null} (data/pipeline/transforms.py, AugmentSpec)
    augment_options: dict[str, Any] = field(default_factory=dict)
    erase_scale: list[float] | None = None   # RandomErasing area range [low, high] replacing the preset's
    sampler: str = "none"             # none | balanced (WeightedRandomSampler)


@dataclass
class ModelConfig:
    """Which registered model, on which backbone, with which method options."""

    name: str = "hsbs"
    backbone: str = "resnet18"
    pretrained: str | None = None     # None, "imagenet" (local torch cache only) or a path
    # standard | no_maxpool (output stride 16) | pooled (stride-1 7x7 conv + max-pool, stride 16) |
    # small (3x3 stride 1, stride 8) | auto (by data.input_size:
    # pooled up to AUTO_STEM_MAX_INPUT px, standard above)
    stem: str = "standard"
    backbone_width: int = 64          # channels of layer1 (64 = torchvision; 32 = the SynthFER demo scale)
    # Start every residual block as the identity (its last BatchNorm's scale at 0; Goyal et al. 2017):
    # from scratch only, a pretrained file's values are kept.
    zero_init_residual: bool = False
    options: dict[str, Any] = field(default_factory=dict)   # method switches, e.g. hst, bsa, lambda_hst


@dataclass
class TrainConfig:
    """The recipe: optimisation, schedule, precision, reproducibility and logging."""

    trainer: str = "engine"           # engine | reference (plain torchvision ResNet-18 loop, hsbs_lib.engine.reference)
    epochs: int = 8
    batch_size: int = 64
    eval_batch_size: int = 256
    optimizer: str = "adamw"          # adamw | adam | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False            # SGD with Nesterov momentum (train.optimizer=sgd)
    scheduler: str = "cosine"         # cosine | exponential | step | none
    gamma: float = 0.9                # exponential decay per epoch
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    class_weighted_loss: bool = False
    # Mixup (Zhang et al. 2018) / CutMix (Yun et al. 2019): Beta(alpha, alpha) mixing of image pairs and
    # their labels, 0 = off; with both on, each batch takes one of the two at random.
    mixup: float = 0.0
    cutmix: float = 0.0
    # An exponential moving average of the weights (decay per step, 0 = off): validation, best.pt and the
    # final report use the averaged weights.
    ema: float = 0.0
    # Test-time augmentation of the final report (best.pt scored once): none | flip | tencrop.
    tta: str = "none"
    grad_clip: float | None = None
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    # Arithmetic of the forward pass: auto (follows train.amp) | fp32 | bf16 (autocast, CUDA or CPU) |
    # fp16 (autocast with a torch.amp.GradScaler, CUDA or CPU); docs/TRAINING_OPTIONS.md.
    precision: str = "auto"
    amp: bool = True                  # with precision=auto: bf16 autocast on CUDA, fp32 on CPU; false: fp32
    accumulate: int = 1               # micro-batches per optimiser step (gradient accumulation)
    channels_last: bool = True
    compile: bool | str = False       # true: torch.compile of the step (model and loss terms) | reduce-overhead: CUDA graphs
    seed: int = 0
    deterministic: bool = False
    max_steps_per_epoch: int | None = None
    # End this sitting after this epoch, the schedule still spanning train.epochs; --resume continues the run
    # (a long recipe trained in several sittings, or the first epochs of a recipe, as hsbs bench's plateau count).
    stop_after_epoch: int | None = None
    log_every: int = 10
    tensorboard: bool = False
    record_intensity: bool = False    # learning intensity (mean |grad|) at layer1..layer4 per epoch
    progress: bool = True
    threads: int | None = None        # torch.set_num_threads on CPU


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/default"
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def data_root(self) -> str | None:
        """The data root from the config, else $HSBS_DATA (None for SynthFER is fine)."""
        return self.data.root or os.environ.get("HSBS_DATA")


class ConfigValueError(ValueError):
    """A config value that cannot be coerced to its field's type."""


class _YAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that ``3e-4`` and ``1e3`` are floats (YAML 1.2; YAML 1.1 reads strings)."""


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


#: The most nodes a YAML document may hold once its aliases are expanded: a recipe holds about a hundred,
#: a "billion laughs" alias bomb of a few lines expands to billions (and is refused before it is built).
YAML_EXPANSION_LIMIT = 10_000
#: The most characters of a value an error message repeats.
SHOWN_VALUE_CHARS = 80


class YAMLBoundError(yaml.MarkedYAMLError):
    """A YAML document whose aliases expand beyond :data:`YAML_EXPANSION_LIMIT` nodes, refer to themselves,
    or nest too deeply to read."""


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes ``root`` stands for once every alias is expanded, counted without expanding them
    (each node's size is counted once and reused); a node that contains itself raises YAMLBoundError."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:                      # iterative: a deep document must not exhaust Python's stack
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = ([item for pair in node.value for item in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if not children_done:
            if key in open_nodes:
                raise YAMLBoundError(None, None, "an alias refers to a node that contains it", node.start_mark)
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(key)
        sizes[key] = 1 + sum(sizes[id(child)] for child in children)
        if sizes[key] > YAML_EXPANSION_LIMIT:
            raise YAMLBoundError(None, None, f"aliases expand to more than {YAML_EXPANSION_LIMIT:,} values "
                                             f"(an alias bomb?)", node.start_mark)
    return sizes[id(root)]


def load_yaml(text: str) -> Any:
    """YAML as the configs read it (see :class:`_YAMLLoader`), bounded: a document whose aliases expand to
    more than :data:`YAML_EXPANSION_LIMIT` values, or that refers to itself, raises :class:`YAMLBoundError`
    (a ``yaml.YAMLError``) before any value is built."""
    loader = _YAMLLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except RecursionError:
        raise YAMLBoundError(None, None, "nested too deeply to read", None) from None
    finally:
        loader.dispose()


def shown(value: Any, limit: int = SHOWN_VALUE_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (a pasted file must not become the
    message)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}... ({len(text):,} characters)"


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: what went wrong and where (line and column, 1-based)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    problem = problem if len(problem) <= 2 * SHOWN_VALUE_CHARS else f"{problem[:2 * SHOWN_VALUE_CHARS]}..."
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def read_yaml_file(path: Path, what: str = "config file") -> Any:
    """The YAML document in ``path``; a file that is not UTF-8 or not YAML is a one-line ConfigValueError."""
    try:
        return load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigValueError(f"{what} {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except yaml.YAMLError as error:
        raise ConfigValueError(f"{what} {path} is not valid YAML: {yaml_problem(error)}") from None


def _parse_value(text: str, key: str = "") -> Any:
    """YAML scalar parsing, so ``epochs=5`` is an int and ``pretrained=null`` is None."""
    if text == "":
        return ""
    try:
        return load_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigValueError(f"config key '{key}': cannot read the value {shown(text)} ({yaml_problem(error)})") from None


_NULL_WORDS = ("null", "Null", "NULL", "~", "None")
_TRUE_WORDS, _FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every field of a config dataclass."""
    return typing.get_type_hints(cls)


def _describe_type(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else _describe_type(arg) for arg in args)
    if origin in (list, tuple) or annotation in (list, tuple):
        return "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))


def coerce_value(value: Any, annotation: Any, key: str) -> Any:
    """``value`` as the type ``annotation`` says (int, float, bool, str, Optional, list, dict).

    Strings are converted (``"3e-4"`` -> 3e-4, ``"true"`` -> True), integers widen to floats, integral
    floats narrow to integers; anything else raises :class:`ConfigValueError` naming ``key``.
    """
    if annotation is Any:
        return value
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)

    def refuse() -> ConfigValueError:
        return ConfigValueError(f"config key '{key}' expects {_describe_type(annotation)}, got {shown(value)}")

    if origin in (Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]
        if value is None:
            if len(options) < len(args):
                return None
            raise refuse()
        for option in options:
            try:
                return coerce_value(value, option, key)
            except ConfigValueError:
                continue
        raise refuse()
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        raise refuse()
    if annotation is int:
        if isinstance(value, bool):
            raise refuse()
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip(), 10)
            except ValueError:
                pass
            try:
                value_as_float = float(value)
            except ValueError:
                raise refuse() from None
        else:
            value_as_float = value
        if isinstance(value_as_float, float) and value_as_float.is_integer():
            return int(value_as_float)
        raise refuse()
    if annotation is float:
        if isinstance(value, bool):
            raise refuse()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise refuse() from None
        raise refuse()
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise refuse()
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise refuse()
        item_type = args[0] if args else Any
        items = [coerce_value(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if (origin or annotation) is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise refuse()
        return dict(value)
    return value


def _coerce_text(text: str, annotation: Any, key: str) -> Any:
    """An override's text as the field's type. String fields take the text as written (quotes around it
    are removed), so paths need no quoting; ``null`` clears an optional field."""
    options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    optional = typing.get_origin(annotation) in (Union, types.UnionType) and len(options) == 1
    target = options[0] if optional else annotation
    if target is str:
        stripped = text.strip()
        if optional and stripped in _NULL_WORDS:
            return None
        if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
            return coerce_value(_parse_value(stripped, key), annotation, key)
        return stripped
    return coerce_value(_parse_value(text, key), annotation, key)


def _merge_into(obj: Any, values: dict[str, Any], where: str) -> None:
    """Recursively set dataclass fields from a nested dict, refusing unknown keys, coercing types."""
    known = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in known:
            raise KeyError(f"unknown config key '{where}{key}'; known keys: {', '.join(sorted(known))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigValueError(f"config key '{where}{key}' is a section; expected a mapping, got {shown(value)}")
            _merge_into(current, value, f"{where}{key}.")
            continue
        value = coerce_value(value, _field_types(type(obj))[key], f"{where}{key}")
        if isinstance(current, dict) and isinstance(value, dict):
            current.update(value)
        else:
            setattr(obj, key, value)


def _apply_override(config: Config, parts: list[str], text: str) -> None:
    """Set one dotted key (``train.epochs``, ``data.root``, ``model.options.lambda_hst``) from its text."""
    target, where = config, ""
    for index, part in enumerate(parts):
        known = {f.name: f for f in dataclasses.fields(target)}
        if part not in known:
            raise KeyError(f"unknown config key '{where}{part}'; known keys: {', '.join(sorted(known))}")
        current, rest = getattr(target, part), parts[index + 1:]
        if dataclasses.is_dataclass(current):
            if not rest:
                raise ConfigValueError(f"config key '{where}{part}' is a section; set one of its keys, e.g. "
                                       f"{where}{part}.{dataclasses.fields(current)[0].name}=...")
            target, where = current, f"{where}{part}."
            continue
        key = f"{where}{part}"
        if rest:                      # a key inside a mapping field, e.g. model.options.lambda_hst
            if not isinstance(current, dict):
                raise KeyError(f"unknown config key '{key}.{rest[0]}': '{key}' holds a single value")
            nested: Any = _parse_value(text, f"{key}.{'.'.join(rest)}")
            for name in reversed(rest[1:]):
                nested = {name: nested}
            current[rest[0]] = nested
            return
        value = _coerce_text(text, _field_types(type(target))[part], key)
        if isinstance(current, dict) and isinstance(value, dict):
            current.update(value)
        else:
            setattr(target, part, value)
        return


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply dotted overrides like ``train.epochs=5`` or ``model.options.bsa=false`` in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}' must look like section.key=value, e.g. train.epochs=5")
        dotted, text = item.split("=", 1)
        _apply_override(config, dotted.strip().split("."), text)
    return config


def _positive(value: Any) -> bool:
    return math.isfinite(value) and value > 0


def _not_negative(value: Any) -> bool:
    return math.isfinite(value) and value >= 0


#: the values of ``train.precision`` (auto: bf16 on CUDA when ``train.amp``, else fp32)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# (dotted key, test, what the key expects): the ranges no run can work outside of. ``None`` is allowed
# where the field is optional (it means "off" or "unlimited").
VALUE_RANGES: tuple[tuple[str, Any, str], ...] = (
    ("data.num_classes", lambda v: v in (7, 8), "7 or 8"),
    ("data.input_size", _positive, "a positive number of pixels"),
    ("data.n_train", _positive, "at least 1 image"),
    ("data.n_val", _not_negative, "0 or more images"),
    ("data.n_test", _positive, "at least 1 image (data.test_split=none scores no test split)"),
    ("data.val_fraction", lambda v: 0 < v < 1, "a fraction between 0 and 1"),
    ("data.max_train_per_class", _positive, "at least 1 image per class, or null"),
    ("data.device_cache_max_gb", _not_negative, "0 or more"),
    ("data.workers", _not_negative, "0 or more"),
    ("model.backbone_width", _positive, "a positive number of channels"),
    ("train.epochs", _positive, "at least 1"),
    ("train.batch_size", _positive, "at least 1"),
    ("train.eval_batch_size", _positive, "at least 1"),
    ("train.lr", _positive, "a positive number"),
    ("train.weight_decay", _not_negative, "0 or more"),
    ("train.momentum", _not_negative, "0 or more"),
    ("train.gamma", _positive, "a positive number"),
    ("train.warmup_epochs", _not_negative, "0 or more"),
    ("train.mixup", _not_negative, "a Beta distribution's alpha > 0, or 0 (off)"),
    ("train.cutmix", _not_negative, "a Beta distribution's alpha > 0, or 0 (off)"),
    ("train.ema", lambda v: 0 <= v < 1, "a decay from 0 (off) up to (not including) 1, e.g. 0.999"),
    ("train.tta", lambda v: v in ("none", "flip", "tencrop"), "none, flip or tencrop"),
    ("train.compile", lambda v: v in (True, False, "reduce-overhead"), "true, false or reduce-overhead"),
    ("train.label_smoothing", lambda v: 0 <= v < 1, "a number from 0 up to (not including) 1"),
    ("train.grad_clip", _positive, "a positive number, or null"),
    ("train.precision", lambda v: v in PRECISIONS, "auto, fp32, bf16 or fp16"),
    ("train.accumulate", lambda v: v >= 1, "at least 1 micro-batch per optimiser step"),
    ("train.max_steps_per_epoch", _positive, "at least 1, or null"),
    ("train.stop_after_epoch", _positive, "at least 1, or null"),
    ("train.log_every", _positive, "at least 1"),
    ("train.threads", _positive, "at least 1, or null"),
)


def memory_bytes() -> int | None:
    """The machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _bytes_text(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1024
    return f"{count:,.1f} PiB"


def batch_bytes(input_size: int, batch_size: int = 1, width: int = 64) -> int:
    """A lower bound on the memory one batch takes: its float32 images (B, 3, S, S) and the stem's first
    feature maps (B, width, S/2, S/2); the rest of the network only adds to it."""
    return batch_size * 4 * (3 * input_size ** 2 + width * max(1, input_size // 2) ** 2)


def check_input_size(input_size: int, *, batch_size: int = 1, width: int = 64,
                     name: str = "config key 'data.input_size'", batch_name: str = "config key 'train.batch_size'"
                     ) -> None:
    """Refuse, in one line naming the key, a size or batch whose images alone exceed this machine's memory
    (``data.input_size=100000`` would ask numpy for terabytes and end in an allocation traceback).

    ``name``/``batch_name``: what the message calls the size and the batch size (a config key, or
    ``checkpoint runs/a/best.pt's input_size``).
    """
    available = memory_bytes()
    if available is None:
        return
    one, batch = batch_bytes(input_size, 1, width), batch_bytes(input_size, batch_size, width)
    if one > available:
        raise ConfigValueError(f"{name} = {input_size:,} pixels needs about {_bytes_text(one)} for one image and its "
                               f"first feature maps; this machine has {_bytes_text(available)} of memory")
    if batch > available:
        raise ConfigValueError(f"{batch_name} = {batch_size:,} images of {input_size} pixels needs about "
                               f"{_bytes_text(batch)} for one batch and its first feature maps; this machine has "
                               f"{_bytes_text(available)} of memory")


#: Largest input for which ``model.stem=auto`` keeps a stride-16 stem (layer4 5x5 at 65 px, 6x6 at 96 px);
#: above it the standard stride-32 stem. Measured on the SynthFER recipe (docs/BENCHMARKS.md, "Leaving the
#: majority-class plateau at larger inputs"): what decides whether a seed leaves the majority class within
#: two epochs is the max-pool. Without it (no_maxpool) 0 of 5 seeds left clearly at 65 px and none in the
#: 129 px screens; with it, the standard stem left in 5 of 5 at 129 px, and the pooled stem (the 7x7
#: convolution at stride 1, then the max-pool: no_maxpool's grids) in 5 of 5 at 65 px.
AUTO_STEM_MAX_INPUT = 96


def auto_stem(input_size: int) -> str:
    """The stem ``model.stem=auto`` stands for at ``input_size`` px: pooled up to
    :data:`AUTO_STEM_MAX_INPUT`, standard above."""
    return "pooled" if input_size <= AUTO_STEM_MAX_INPUT else "standard"


def resolved_stem(config: Config) -> str:
    """``config.model.stem``, with ``auto`` replaced by the stem it stands for at ``config.data.input_size``."""
    stem = config.model.stem
    return auto_stem(config.data.input_size) if stem == "auto" else stem


def validate_config(config: Config) -> Config:
    """Refuse values outside the range a run can work with, before any work is done.

    Raises :class:`ConfigValueError` naming the first bad key, its value and what it expects
    (``train.batch_size=0`` would otherwise divide by zero, ``train.epochs=0`` save an untrained "best"), or
    the key whose images would not fit in this machine's memory (:func:`check_input_size`).
    """
    # A run folder records the stem its network has, not "auto": resolved here, after every override.
    config.model.stem = resolved_stem(config)
    for key, allowed, expected in VALUE_RANGES:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is not None and not allowed(value):
            raise ConfigValueError(f"config key '{key}' expects {expected}, got {shown(value)}")
    available = memory_bytes()
    # A ResNet-18 holds 11.2 M weights at width 64, growing with the square of the width; training keeps four
    # float32 copies (weights, gradients, two AdamW moments).
    weights = 11_200_000 * (config.model.backbone_width / 64) ** 2
    if available is not None and 16 * weights > available:
        raise ConfigValueError(f"config key 'model.backbone_width' = {config.model.backbone_width:,} channels makes a "
                               f"ResNet of about {weights:,.0f} weights, {_bytes_text(16 * weights)} with their "
                               f"gradients and optimiser state; this machine has {_bytes_text(available)} of memory")
    for batch_key in ("train.batch_size", "train.eval_batch_size"):
        check_input_size(config.data.input_size, batch_size=getattr(config.train, batch_key.split(".")[1]),
                         width=config.model.backbone_width, batch_name=f"config key '{batch_key}'")
    if config.data.name.lower() == "synthfer" and available is not None:    # rendered into memory, split by split
        for key in ("data.n_train", "data.n_val", "data.n_test"):
            count = getattr(config.data, key.split(".")[1])
            needed = count * 3 * config.data.input_size ** 2
            if needed > available:
                raise ConfigValueError(f"config key '{key}' = {count:,} SynthFER images of {config.data.input_size} "
                                       f"pixels need about {_bytes_text(needed)} in memory; this machine has "
                                       f"{_bytes_text(available)}")
    return config


def _merge_file(config: Config, path: Path, seen: tuple[Path, ...] = ()) -> None:
    """Merge one YAML file into ``config``; its ``include:`` files (relative to it) are merged first."""
    path = path.resolve()
    if path.is_dir():
        raise IsADirectoryError(f"config file {path} is a directory; --config takes a YAML file "
                                f"(configs/synthfer_baseline.yaml)")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found (configs/ holds the recipes)")
    if path in seen:
        raise ValueError(f"config include cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    values = read_yaml_file(path) or {}
    if not isinstance(values, dict):
        raise ConfigValueError(f"config file {path}: expected a mapping of sections (data:, model:, train:) at the "
                               f"top level, got {type(values).__name__}")
    includes = values.pop("include", None) or []
    includes = [includes] if isinstance(includes, str) else includes
    if not isinstance(includes, list) or not all(isinstance(include, str) for include in includes):
        raise ConfigValueError(f"config file {path}: 'include' expects a file name or a list of file names, "
                               f"got {shown(includes)}")
    for include in includes:
        _merge_file(config, path.parent / include, (*seen, path))
    try:
        _merge_into(config, values, "")
    except ConfigValueError as error:      # say which file holds the bad value
        raise ConfigValueError(f"{path}: {error}") from None
    except KeyError as error:
        raise KeyError(f"{path}: {error.args[0]}") from None


# ---------------------------------------------------------------------------------------------- recipes

def repo_root() -> Path:
    """The repository root (the folder holding configs/ and hsbs_lib/), from the root or notebooks/;
    the current folder when run outside a checkout."""
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / "configs").is_dir() and (folder / "hsbs_lib").is_dir():
            return folder
    source_checkout = Path(__file__).resolve().parents[1]
    return source_checkout if (source_checkout / "configs").is_dir() else here


def config_path(name: str) -> Path:
    """configs/NAME.yaml at the repository root."""
    return repo_root() / "configs" / (name if name.endswith(".yaml") else f"{name}.yaml")


def _names(folder: Path) -> str:
    return ", ".join(sorted(path.stem for path in folder.glob("*.yaml"))) or "none"


#: the training recipe a composition takes when --recipe is not given (configs/recipes/DATA_course.yaml)
DEFAULT_RECIPE = "course"


def recipe_files(data: str, method: str, configs: str | os.PathLike | None = None,
                 recipe: str | None = None) -> list[Path]:
    """The YAML files ``--data DATA --method METHOD [--recipe NAME]`` merges, in order.

    ``configs/DATA_METHOD.yaml`` when the repository ships that full recipe (the SynthFER demo recipes,
    tuned per method), else ``configs/datasets/DATA.yaml`` then ``configs/methods/METHOD.yaml``, then the
    dataset's training recipe ``configs/recipes/DATA_NAME.yaml`` (NAME: ``recipe``, default ``course`` where
    the dataset has one).
    """
    configs = Path(configs) if configs is not None else repo_root() / "configs"
    full_recipe = configs / f"{data}_{method}.yaml"
    if full_recipe.is_file():
        if recipe is not None:
            raise ValueError(f"--recipe {recipe}: {full_recipe.name} is a full recipe of its own; --recipe names a "
                             f"dataset's training recipe (configs/recipes/DATA_NAME.yaml: {_names(configs / 'recipes')})")
        return [full_recipe]
    dataset_file, method_file = configs / "datasets" / f"{data}.yaml", configs / "methods" / f"{method}.yaml"
    if not dataset_file.is_file():
        raise FileNotFoundError(f"no dataset recipe {dataset_file}; --data takes one of: "
                                f"{_names(configs / 'datasets')} (and synthfer with the methods of "
                                f"configs/synthfer_*.yaml)")
    if not method_file.is_file():
        raise FileNotFoundError(f"no method recipe {method_file}; --method takes one of: {_names(configs / 'methods')}")
    training_recipe = configs / "recipes" / f"{data}_{recipe or DEFAULT_RECIPE}.yaml"
    if recipe is not None and not training_recipe.is_file():
        known = sorted(path.stem.removeprefix(f"{data}_") for path in (configs / "recipes").glob(f"{data}_*.yaml"))
        raise FileNotFoundError(f"no training recipe {training_recipe}; --recipe for {data} takes one of: "
                                f"{', '.join(known) or 'none (this dataset has no named recipes)'}")
    return [dataset_file, method_file, *([training_recipe] if training_recipe.is_file() else [])]


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                data: str | None = None, method: str | None = None,
                configs: str | os.PathLike | None = None, recipe: str | None = None) -> Config:
    """Defaults, then the recipe, then the overrides.

    The recipe is the YAML file ``path`` (after the files it lists under ``include:``) or the composition
    of ``data`` and ``method`` from the ``configs`` folder (default: the repository's; :func:`recipe_files`);
    a composition is named ``DATA_METHOD`` (``DATA_METHOD_NAME`` with ``recipe``, other than the default) and
    writes to ``runs/<name>`` unless its files or the overrides say otherwise.
    """
    config = Config()
    if recipe is not None and data is None:
        raise ValueError("--recipe names a dataset's training recipe: give it with --data and --method")
    if data is not None or method is not None:
        if path is not None:
            raise ValueError("give a recipe file (--config) or a dataset and a method (--data, --method), not both")
        if data is None or method is None:
            raise ValueError("--data and --method go together, e.g. --data rafdb --method hsbs")
        for file in recipe_files(data, method, configs, recipe):
            _merge_file(config, file)
        suffix = f"_{recipe}" if recipe not in (None, DEFAULT_RECIPE) else ""
        config.name = config.name or f"{data}_{method}{suffix}"
        if config.out == Config.out:
            config.out = f"runs/{config.name}"
    elif path is not None:
        _merge_file(config, Path(path))
    return apply_overrides(config, list(overrides))


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config from its ``to_dict()`` form (as stored in checkpoints)."""
    config = Config()
    values = dict(values)
    model = dict(values.get("model") or {})
    if "small_input" in model:  # checkpoints written before ``stem`` replaced the boolean
        model["stem"] = "small" if model.pop("small_input") else "standard"
        values["model"] = model
    _merge_into(config, values, "")
    return config


def same_recipe(stored: Config | dict[str, Any], wanted: Config, *, option_defaults: dict | None = None) -> bool:
    """True when two configs train the same thing (where a run is written or shown does not count).

    ``option_defaults``: the model's option defaults (``models.registry.model_option_defaults``); an option
    left out on one side then equals the same option set to its default on the other.
    """
    stored = copy.deepcopy(stored.to_dict() if isinstance(stored, Config) else stored)
    wanted_dict = wanted.to_dict()
    for side in (stored, wanted_dict):        # a run records the stem "auto" stood for
        model = side.get("model") or {}
        if model.get("stem") == "auto":
            model["stem"] = auto_stem(int((side.get("data") or {}).get("input_size", DataConfig.input_size)))
    if option_defaults is not None:
        # A stored config went through YAML, which keeps tuples as lists: compare both sides as lists.
        for side in (stored, wanted_dict):
            model = side.setdefault("model", {})
            model["options"] = plain_values({**option_defaults, **(model.get("options") or {})})
    ignore = {"progress", "device", "threads", "stop_after_epoch"}   # machine and sitting settings, not the recipe
    # A key the stored run predates (train.precision, train.accumulate) had its default's meaning.
    defaults = Config().to_dict()
    return all(
        {k: v for k, v in {**defaults[section], **stored.get(section, {})}.items() if k not in ignore}
        == {k: v for k, v in wanted_dict[section].items() if k not in ignore}
        for section in ("data", "model", "train"))


def dotted_items(values: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted key: leaf value} (``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``);
    an empty mapping has no leaves."""
    if not isinstance(values, dict):
        return {prefix: values}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(dotted_items(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def plain_values(value: Any) -> Any:
    """Tuples as lists, recursively (what a YAML round trip gives)."""
    if isinstance(value, dict):
        return {key: plain_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(item) for item in value]
    return value


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (a killed run never leaves half a config.yaml)."""
    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
