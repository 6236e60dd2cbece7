"""The dataset registry: ``@register_dataset("name")`` on an adapter class makes ``load_dataset("name")`` work.

An adapter is a :class:`~hsbs_lib.data.base.FERDataset` subclass whose ``__init__(root, split, *,
num_classes, transform, skip_bad, **options)`` indexes one split of a copy on disk, and whose classmethod
``splits_on_disk(root)`` names the splits that copy holds. Keyword options of ``__init__`` beyond those
are the dataset's own (``fold``, ``label_mode``, ...); ``load_dataset`` accepts exactly these. A source
that is generated rather than read (SynthFER) sets ``needs_root = False`` and takes no ``root``.
"""
from __future__ import annotations

from typing import Callable

from hsbs_lib.config import shown
from hsbs_lib.data.base import FERDataset

ADAPTERS: dict[str, type[FERDataset]] = {}
_ALIASES: dict[str, str] = {}


def register_dataset(name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[type], type]:
    """Class decorator: serve ``name`` (and its common spellings ``aliases``) with the decorated adapter."""

    def decorator(adapter: type[FERDataset]) -> type[FERDataset]:
        taken = [key for key in (name, *aliases) if key in ADAPTERS or key in _ALIASES]
        if taken:
            raise ValueError(f"dataset name(s) {', '.join(taken)} already registered")
        ADAPTERS[name] = adapter
        _ALIASES.update({alias: name for alias in aliases})
        return adapter

    return decorator


def unregister_dataset(name: str) -> None:
    """Remove ``name`` and its aliases (tests that register a toy adapter clean up with this)."""
    ADAPTERS.pop(name, None)
    for alias in [alias for alias, target in _ALIASES.items() if target == name]:
        del _ALIASES[alias]


def list_datasets() -> list[str]:
    """Names accepted by ``load_dataset``, in registration order."""
    return list(ADAPTERS)


def canonical_dataset_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in ADAPTERS:
        raise ValueError(f"unknown dataset {shown(name)}; known: {', '.join(ADAPTERS)}")
    return key


def dataset_adapter(name: str) -> type[FERDataset]:
    """The adapter class registered under ``name`` (or one of its aliases)."""
    return ADAPTERS[canonical_dataset_name(name)]
