"""Run configuration: dataclasses, YAML files and dotted ``key=value`` overrides.

A config is resolved in three steps: the dataclass defaults, then a YAML file (which may first
``include:`` others, e.g. a dataset file and a method file), then overrides such as
``train.epochs=5 model.options.lambda_hst=500``. The resolved config is saved next to every run, so a
run can always be reproduced from its own directory.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class DataConfig:
    """Which data, at which size, through which input pipeline."""

    name: str = "synthfer"            # synthfer, rafdb, fer2013, ferplus, affectnet, sfew, kdef, ckplus, imagefolder
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
    augment: str = "standard"         # none | flip | standard | strong
    sampler: str = "none"             # none | balanced (WeightedRandomSampler)


@dataclass
class ModelConfig:
    """Which registered model, on which backbone, with which method options."""

    name: str = "hsbs"
    backbone: str = "resnet18"
    pretrained: str | None = None     # None, "imagenet" (local torch cache only) or a path
    stem: str = "standard"            # standard | no_maxpool (output stride 16) | small (3x3 stride 1, stride 8)
    backbone_width: int = 64          # channels of layer1 (64 = torchvision; 32 = the SynthFER demo scale)
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
    scheduler: str = "cosine"         # cosine | exponential | step | none
    gamma: float = 0.9                # exponential decay per epoch
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    class_weighted_loss: bool = False
    grad_clip: float | None = None
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    amp: bool = True                  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    max_steps_per_epoch: int | None = None
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


def _parse_value(text: str) -> Any:
    """YAML scalar parsing, so ``epochs=5`` is an int and ``pretrained=null`` is None."""
    return yaml.safe_load(text) if text != "" else ""


def _merge_into(obj: Any, values: dict[str, Any], where: str) -> None:
    """Recursively set dataclass fields from a nested dict, refusing unknown keys."""
    known = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in known:
            raise KeyError(f"unknown config key '{where}{key}'; known keys: {', '.join(sorted(known))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise TypeError(f"config key '{where}{key}' is a section; expected a mapping, got {value!r}")
            _merge_into(current, value, f"{where}{key}.")
        elif isinstance(current, dict) and isinstance(value, dict):
            current.update(value)
        else:
            setattr(obj, key, value)


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply dotted overrides like ``train.epochs=5`` or ``model.options.bsa=false`` in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}' must look like section.key=value, e.g. train.epochs=5")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        nested: dict[str, Any] = {parts[-1]: _parse_value(text)}
        for part in reversed(parts[:-1]):
            nested = {part: nested}
        _merge_into(config, nested, "")
    return config


def _merge_file(config: Config, path: Path, seen: tuple[Path, ...] = ()) -> None:
    """Merge one YAML file into ``config``; its ``include:`` files (relative to it) are merged first."""
    path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found (configs/ holds the recipes)")
    if path in seen:
        raise ValueError(f"config include cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise TypeError(f"{path}: expected a mapping at the top level, got {type(values).__name__}")
    includes = values.pop("include", [])
    for include in [includes] if isinstance(includes, str) else includes:
        _merge_file(config, path.parent / include, (*seen, path))
    _merge_into(config, values, f"{path.name}: ")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (after the files it lists under ``include:``), then the overrides."""
    config = Config()
    if path is not None:
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


def same_recipe(stored: Config | dict[str, Any], wanted: Config) -> bool:
    """True when two configs train the same thing (where a run is written or shown does not count)."""
    stored = stored.to_dict() if isinstance(stored, Config) else stored
    wanted_dict = wanted.to_dict()
    ignore = {"progress", "device"}
    return all(
        {k: v for k, v in stored.get(section, {}).items() if k not in ignore}
        == {k: v for k, v in wanted_dict[section].items() if k not in ignore}
        for section in ("data", "model", "train"))


def save_config(config: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
