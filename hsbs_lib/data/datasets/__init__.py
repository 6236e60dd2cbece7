"""Dataset adapters: every copy on disk becomes one canonical record.

``load_dataset(name, root, split)`` indexes a user's copy (existence and labels only, no decoding) and
returns a :class:`~hsbs_lib.data.base.FERDataset` whose labels follow the canonical order of
:mod:`hsbs_lib.data.labels`. Each dataset's own label order is translated *by name* through an explicit
table in its module; folder names go through the synonym table, never through their alphabetical order.

One module per source, each registering its adapter (:mod:`~hsbs_lib.data.datasets.registry`) and owning
its split rules (``splits_on_disk``): ``rafdb``, ``fer2013`` (with FERPlus), ``affectnet``, ``folders``
(SFEW, KDEF, CK+, any ``<split>/<class>/`` copy) and ``synthfer``. Shared reading helpers and the file
adapter base class live in ``adapter``. Adding a dataset is adding one such module and importing it below.
"""
from __future__ import annotations

import inspect
import os
from typing import Callable

from hsbs_lib.data.base import FERDataset
from hsbs_lib.data.datasets.adapter import FileDataset, _describe, _resolve_root
from hsbs_lib.data.datasets.affectnet import AFFECTNET_CODES, AFFECTNET_EXCLUDED, AffectNet
from hsbs_lib.data.datasets.fer2013 import FER2013, FER2013_CODES, FERPLUS_VOTE_COLUMNS, FERPlus
from hsbs_lib.data.datasets.folders import CKPlus, ImageFolderFER, KDEF, KDEF_EXPRESSIONS, KDEF_VIEWS, SFEW
from hsbs_lib.data.datasets.rafdb import RAF_DIGITS, RAFDB
from hsbs_lib.data.datasets.registry import (ADAPTERS, canonical_dataset_name, dataset_adapter, list_datasets,
                                             register_dataset, unregister_dataset)
from hsbs_lib.data.datasets.synthfer import SynthFER

#: The built-in sources, in the order the modules above register them.
DATASET_NAMES: tuple[str, ...] = tuple(ADAPTERS)

__all__ = ["ADAPTERS", "AFFECTNET_CODES", "AFFECTNET_EXCLUDED", "AffectNet", "CKPlus", "DATASET_NAMES", "FER2013",
           "FER2013_CODES", "FERPLUS_VOTE_COLUMNS", "FERPlus", "FileDataset", "ImageFolderFER", "KDEF",
           "KDEF_EXPRESSIONS", "KDEF_VIEWS", "RAFDB", "RAF_DIGITS", "SFEW", "SynthFER", "canonical_dataset_name",
           "dataset_adapter", "dataset_splits", "list_datasets", "load_dataset", "register_dataset",
           "unregister_dataset"]

# Arguments every adapter takes; anything else an adapter's __init__ accepts is one of its options.
_COMMON_ARGUMENTS = ("self", "root", "split", "num_classes", "transform", "skip_bad")


def load_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train", *,
                 num_classes: int = 7, transform: Callable | None = None, skip_bad: bool = False,
                 **options) -> FERDataset:
    """Index one split of a dataset copy and return a FERDataset with canonical labels.

    Args:
        name: one of :func:`list_datasets` (common spellings such as ``raf-db`` or ``ck+`` accepted).
        root: the dataset folder; ``None`` reads ``$HSBS_DATA`` (ignored for ``synthfer``).
        split: ``train``/``test``/``val`` and the dataset's own names (see docs/DATASETS.md).
        num_classes: 7 (canonical) or 8 (adds contempt).
        transform: applied to the uint8 (H, W, 3) image in ``__getitem__``.
        skip_bad: skip bad entries (counted in ``report.skipped``) instead of raising BadDatasetError.
        options: adapter options: rafdb ``aligned``; ferplus ``label_mode``, ``fer2013_csv``;
            kdef/ckplus ``fold``, ``n_folds``; synthfer ``n``, ``size``, ``seed``, ``balanced``.
    """
    key = canonical_dataset_name(name)
    split = str(split).lower()
    adapter = ADAPTERS[key]
    accepted = [p for p in inspect.signature(adapter.__init__).parameters if p not in _COMMON_ARGUMENTS]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{key}: unknown option(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(accepted) or 'none'}")
    if num_classes not in (7, 8):
        raise ValueError(f"num_classes must be 7 or 8, got {num_classes}")
    if not adapter.needs_root:
        return adapter(split=split, num_classes=num_classes, transform=transform, **options)
    return adapter(_resolve_root(key, root), split, num_classes=num_classes, transform=transform,
                   skip_bad=skip_bad, **options)


def dataset_splits(name: str, root: str | os.PathLike | None = None) -> list[str]:
    """The split names ``load_dataset`` can read from this copy (KDEF and CK+: ``all``, folds come
    from the ``fold``/``n_folds`` options with ``train``/``test``)."""
    key = canonical_dataset_name(name)
    adapter = ADAPTERS[key]
    if not adapter.needs_root:
        return adapter.splits_on_disk(None)
    root = _resolve_root(key, root)
    splits = adapter.splits_on_disk(root)
    if not splits:
        adapter(root, "train")      # raises the adapter's own "expected ... found ..." error
        raise ValueError(f"{key}: no splits found under {root}; found: {_describe(root)}")
    return splits
