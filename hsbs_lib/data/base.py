"""The record every adapter yields, and the dataset base class (torchvision conventions)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from hsbs_lib.data.labels import class_names


@dataclass
class BadEntry:
    """One unusable entry of a dataset copy: the file (or line) and why."""

    path: str
    reason: str
    kind: str = ""      # a key of BAD_KINDS, counted by kind; "" for any other problem

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


#: The kinds of bad entry counted on a line of their own (``hsbs check`` and a refused training run):
#: kind -> (one, several).
BAD_KINDS: dict[str, tuple[str, str]] = {
    "malformed": ("malformed line", "malformed lines"),
    "conflicting": ("image listed with conflicting labels", "images listed with conflicting labels"),
    "outside": ("path outside the dataset root", "paths outside the dataset root"),
    "dangling": ("dangling symbolic link", "dangling symbolic links"),
    "loop": ("symbolic link loop", "symbolic link loops"),
}


def count_by_kind(entries: list[BadEntry]) -> str:
    """``'2 malformed lines, 1 dangling symbolic link, 3 other'``: the entries counted by kind, in one line."""
    counts = {kind: sum(entry.kind == kind for entry in entries) for kind in BAD_KINDS}
    other = len(entries) - sum(counts.values())
    parts = [f"{count} {BAD_KINDS[kind][count != 1]}" for kind, count in counts.items() if count]
    return ", ".join(parts + ([f"{other} other"] if other else []))


@dataclass
class DatasetReport:
    """Counts and bad entries found while indexing one split."""

    dataset: str
    root: str
    split: str
    bad: list[BadEntry] = field(default_factory=list)
    skipped: int = 0

    def summary(self) -> str:
        lines = [f"{self.dataset} [{self.split}] at {self.root}: {len(self.bad)} bad entries"
                 + (f" ({count_by_kind(self.bad)})" if self.bad else "")
                 + (f", {self.skipped} skipped" if self.skipped else "")]
        lines += [f"  {entry}" for entry in self.bad]
        return "\n".join(lines)


class BadDatasetError(ValueError):
    """Raised when a split has bad entries and ``skip_bad`` was not requested."""

    def __init__(self, report: DatasetReport):
        self.report = report
        super().__init__(report.summary() + "\nFix these entries or pass skip_bad=True (data.skip_bad=true; hsbs check lists them).")


class FERDataset:
    """Base class of every adapter: a map-style dataset (``len`` and ``ds[i]``), which torch's DataLoader
    takes as it is. It imports no torch, so that ``hsbs check`` starts without it.

    Attributes (torchvision conventions):
        classes: canonical label names in label order.
        samples: list of (source path, canonical label).
        targets: list of canonical labels.
        poses: optional list of pose bins (-1 where unknown).
        pose_bins: how many yaw bins ``poses`` uses (bin 0 and bin P - 1 mirror each other), or None.
        soft_labels: optional (N, K) float32 label distributions (FERPlus votes).
        subjects: optional list of subject ids (for subject-independent folds).
        report: the bad entries found while indexing.

    ``ds[i]`` returns ``(transform(image), target)`` with ``image`` a uint8 HxWx3 numpy array and
    ``target = {"label": int, "pose": int?, "soft_label": Tensor?, "index": int}``.
    """

    name: str = "dataset"
    #: True when the source ships a validation split distinct from its test split (FER2013's PublicTest);
    #: elsewhere "val" is often another name for the test split, and validation is held out of train.
    has_validation_split: bool = False
    #: False for a source that is generated rather than read from a copy on disk (SynthFER).
    needs_root: bool = True
    #: The number of yaw bins of ``poses`` (a horizontal flip maps bin p to P - 1 - p); None when the
    #: source has no pose labels or does not say.
    pose_bins: int | None = None

    def __init__(self, root: str | None, split: str, num_classes: int = 7,
                 transform: Callable | None = None):
        self.root = str(root) if root is not None else None
        self.split = split
        self.num_classes = num_classes
        self.classes: tuple[str, ...] = class_names(num_classes)
        self.transform = transform
        self.samples: list[tuple[str, int]] = []
        self.poses: list[int] | None = None
        self.soft_labels: np.ndarray | None = None
        self.subjects: list[str] | None = None
        self.report = DatasetReport(self.name, str(root), split)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    @classmethod
    def splits_on_disk(cls, root) -> list[str]:
        """The split names a copy at ``root`` holds (what ``dataset_splits`` and ``hsbs check`` report)."""
        raise NotImplementedError(f"{cls.__name__} does not say which splits a copy holds")

    def load_image(self, index: int) -> np.ndarray:
        """Decode sample ``index`` as a uint8 (H, W, 3) RGB array."""
        raise NotImplementedError

    def target(self, index: int) -> dict:
        target = {"label": self.samples[index][1], "index": index}
        if self.poses is not None:
            target["pose"] = self.poses[index]
        if self.soft_labels is not None:
            import torch   # here, not at the top: indexing and checking a copy need no torch

            target["soft_label"] = torch.from_numpy(self.soft_labels[index])
        return target

    def __getitem__(self, index: int):
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.target(index)

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.classes)
        for label in self.targets:
            counts[label] += 1
        return counts

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, n={len(self)}, root={self.root!r}, "
                f"classes={len(self.classes)})")
