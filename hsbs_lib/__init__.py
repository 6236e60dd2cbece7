"""hsbs_lib: facial expression recognition you can read.

Public nouns: create_model, list_models, load_dataset, fit, evaluate, predict. They are imported on
first use, so ``import hsbs_lib`` stays cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "create_model": "hsbs_lib.models.registry",
    "list_models": "hsbs_lib.models.registry",
    "load_dataset": "hsbs_lib.data.datasets",
    "fit": "hsbs_lib.engine.train",
    "evaluate": "hsbs_lib.engine.evaluate",
    "predict": "hsbs_lib.inference",
    "load_config": "hsbs_lib.config",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'hsbs_lib' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + __all__)
