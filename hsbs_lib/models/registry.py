"""A timm-style registry: ``register_model``, ``create_model``, ``list_models``.

The method modules register themselves when imported; ``hsbs_lib.models`` imports them all, and Python
imports that package before this module, so the built-in models are always listed.
"""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from hsbs_lib.config import shown

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    """Class or factory decorator: ``@register_model("hsbs")``."""

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is already registered")
        _MODELS[name] = factory
        return factory

    return decorator


def unregister_model(name: str) -> None:
    """Remove ``name`` from the registry (a test that registers a stand-in model cleans up with this)."""
    _MODELS.pop(name, None)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODELS)


def get_model_factory(name: str) -> Callable[..., nn.Module]:
    """The class or function registered under ``name`` (to inspect its options)."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {shown(name)}; available: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


# Constructor arguments that are not method options (set from config.model's own fields or by the engine).
_NOT_OPTIONS = {"self", "num_classes", "backbone", "pretrained", "stem", "backbone_width", "input_size",
                "train_epochs"}


def model_option_defaults(name: str) -> dict:
    """The options of model ``name`` with their default values, e.g. {"hst": True, "lambda_hst": None, ...}."""
    parameters = inspect.signature(get_model_factory(name)).parameters.values()
    return {p.name: p.default for p in parameters if p.name not in _NOT_OPTIONS and p.default is not p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def create_model(name: str, num_classes: int = 7, backbone: str = "resnet18", pretrained: str | None = None,
                 *, input_size: int | None = None, train_epochs: int | None = None, **options) -> nn.Module:
    """Build a registered model.

    Args:
        name: one of :func:`list_models` (baseline, hsbs, clcl, phanet, mfer).
        num_classes: 7 (RAF-DB order) or 8 (plus contempt).
        backbone: resnet18, resnet34, resnet50, convnext_tiny or convnext_base.
        pretrained: None, ``"imagenet"`` (torchvision weights from the local torch cache) or a path to a
            local checkpoint (face-pretrained ResNet-18 files with ``module.`` prefixes are accepted).
        input_size: the image size, passed on to models whose head geometry depends on it (CLCL's MSR);
            ignored by the others.
        train_epochs: the run's number of epochs (train.epochs), passed on to models whose schedule is a share
            of training (HSBS's ``hst_start_fraction``); ignored by the others.
        **options: method switches, e.g. ``hst=False`` or ``stem="no_maxpool"``.
    """
    factory = get_model_factory(name)
    if input_size is not None and "input_size" in inspect.signature(factory).parameters:
        options.setdefault("input_size", input_size)
    if train_epochs is not None and "train_epochs" in inspect.signature(factory).parameters:
        options.setdefault("train_epochs", train_epochs)
    return factory(num_classes=num_classes, backbone=backbone, pretrained=pretrained, **options)
