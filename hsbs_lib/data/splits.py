"""Validation hold-outs and subsets of a split, as views that share the parent's files and pixels.

Most FER benchmarks ship a train and a test split only (RAF-DB, AffectNet, SFEW), and papers often
select their best epoch on the test split. Here every choice is made on a validation split: the
dataset's own when it has one (SynthFER's ``val``, FER2013's PublicTest) and otherwise a stratified,
seeded hold-out of the training split made by :func:`holdout_split`, grouped by subject when the
dataset knows its subjects (KDEF, CK+), so no person appears on both sides.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from hsbs_lib.data.base import FERDataset


class SplitView(FERDataset):
    """The samples ``indices`` of ``parent``, re-indexed 0..n-1; images are read through the parent.

    Per-sample attributes (``samples``, ``poses``, ``soft_labels``, ``subjects`` and, for in-memory data
    such as SynthFER, ``images`` and ``masks``) are sliced; ``split`` names the view, e.g.
    ``train-holdout-val``, so caches of the view and of the parent never mix.
    """

    def __init__(self, parent: FERDataset, indices: Sequence[int], split: str):
        super().__init__(parent.root, split, parent.num_classes, parent.transform)
        self.name = parent.name
        self.parent = parent
        self.pose_bins = getattr(parent, "pose_bins", None)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.classes = parent.classes
        self.samples = [parent.samples[i] for i in self.indices]
        if parent.poses is not None:
            self.poses = [parent.poses[i] for i in self.indices]
        if parent.soft_labels is not None:
            self.soft_labels = np.asarray(parent.soft_labels)[self.indices]
        if parent.subjects is not None:
            self.subjects = [parent.subjects[i] for i in self.indices]
        for name in ("images", "masks"):   # in-memory pixels (SynthFER, FER2013 csv)
            values = getattr(parent, name, None)
            if values is not None:
                setattr(self, name, np.asarray(values)[self.indices])
        self.report = parent.report
        self.skip_bad = getattr(parent, "skip_bad", False)

    def load_image(self, index: int) -> np.ndarray:
        return self.parent.load_image(int(self.indices[index]))


def holdout_indices(labels: Sequence[int], *, fraction: float = 0.1, seed: int = 0,
                    groups: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) sorted index arrays: ``fraction`` of each class held out, the same for a given seed.

    Without ``groups``, each class contributes round(fraction * n_k) samples (at least one when it has
    two or more), drawn by a generator seeded with ``seed``. With ``groups`` (subject ids), whole groups
    are held out: groups in a seeded random order until ``fraction`` of the samples is reached (FER
    subjects show every expression, so the classes stay close to their shares).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_fraction must be between 0 and 1, got {fraction}")
    if len(labels) < 2:
        raise ValueError(f"cannot hold out a validation set from {len(labels)} training sample(s)")
    rng = np.random.default_rng(seed)
    if groups is not None:
        groups = np.asarray([str(group) for group in groups])
        unique = np.unique(groups)
        if unique.size < 2:
            raise ValueError("cannot hold out whole subjects: the training split has only one")
        held_groups, count = [], 0
        for group in rng.permutation(unique)[:-1]:       # at least one subject stays in training
            if count >= fraction * len(labels):
                break
            held_groups.append(group)
            count += int((groups == group).sum())
        mask = np.isin(groups, held_groups)
        return np.flatnonzero(~mask), np.flatnonzero(mask)
    held = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(fraction * len(members)))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        else:
            count = 0
        held.extend(rng.permutation(members)[:count])
    val = np.sort(np.asarray(held, dtype=np.int64))
    if val.size == 0:
        raise ValueError(f"cannot hold out a validation split from {len(labels)} training images: no class has "
                         f"two; pass data.val_split=none to train without validation")
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


def holdout_split(dataset: FERDataset, *, fraction: float = 0.1, seed: int = 0) -> tuple[SplitView, SplitView]:
    """A stratified, seeded (train, val) partition of ``dataset`` (grouped by subject when it has subjects)."""
    train, val = holdout_indices(dataset.targets, fraction=fraction, seed=seed, groups=dataset.subjects)
    tag = f"{dataset.split}-holdout{int(round(100 * fraction))}-seed{seed}"
    return SplitView(dataset, train, f"{tag}-train"), SplitView(dataset, val, f"{tag}-val")


def per_class_subset(dataset: FERDataset, max_per_class: int, *, seed: int = 0) -> SplitView:
    """At most ``max_per_class`` samples of every class (a seeded draw), e.g. a fixed-budget training set."""
    if max_per_class < 1:
        raise ValueError(f"data.max_train_per_class must be at least 1, got {max_per_class}")
    labels = np.asarray(dataset.targets, dtype=np.int64)
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == label))[:max_per_class]
                                   for label in np.unique(labels)] or [np.zeros(0, np.int64)]))
    return SplitView(dataset, keep, f"{dataset.split}-max{max_per_class}-seed{seed}")
