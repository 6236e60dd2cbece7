"""SynthFER as a dataset: one split rendered in memory, with the region masks beside the images."""
from __future__ import annotations

from typing import Callable

import numpy as np

from hsbs_lib.data.base import FERDataset
from hsbs_lib.data.synthfer.params import POSE_BINS, REGION_NAMES, _split_code
from hsbs_lib.data.synthfer.render import render_synthfer


class SynthFER(FERDataset):
    """SynthFER rendered in memory at construction.

    Attributes besides FERDataset's: ``images`` uint8 (N, S, S, 3), ``masks`` bool (N, 4, S, S)
    (REGION_NAMES), ``intensity`` float32 (N,), ``occluded`` bool (N,), ``poses`` and ``subjects`` lists.
    """

    name = "synthfer"
    needs_root = False
    has_validation_split = True       # its own val split: disjoint subjects, rendered like train and test
    pose_bins = POSE_BINS

    def __init__(self, split: str = "train", n: int = 2000, size: int = 64, seed: int = 0,
                 balanced: bool = False, num_classes: int = 7, transform: Callable | None = None,
                 chunk: int = 1024):
        super().__init__(None, split, num_classes=num_classes, transform=transform)
        _split_code(split)
        self.size, self.seed, self.balanced = size, seed, balanced
        self.images = np.empty((n, size, size, 3), dtype=np.uint8)
        self.masks = np.empty((n, len(REGION_NAMES), size, size), dtype=bool)
        labels, poses, subjects, intensity, occluded = [], [], [], [], []
        for start in range(0, n, chunk):
            out = render_synthfer(np.arange(start, min(n, start + chunk)), size=size, seed=seed, split=split,
                                  balanced=balanced, num_classes=num_classes)
            self.images[start:start + chunk] = out["images"]
            self.masks[start:start + chunk] = out["masks"]
            labels.append(out["labels"])
            poses.append(out["poses"])
            subjects.append(out["subjects"])
            intensity.append(out["intensity"])
            occluded.append(out["occluded"])
        labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self.samples = [(f"synthfer://{split}/seed{seed}/{i:06d}", int(label)) for i, label in enumerate(labels)]
        self.poses = np.concatenate(poses).tolist() if poses else []
        self.subjects = np.concatenate(subjects).tolist() if subjects else []
        self.intensity = np.concatenate(intensity) if intensity else np.zeros(0, np.float32)
        self.occluded = np.concatenate(occluded) if occluded else np.zeros(0, bool)

    @classmethod
    def splits_on_disk(cls, root=None) -> list[str]:
        return ["train", "test"]

    def load_image(self, index: int) -> np.ndarray:
        return self.images[index]

    def __repr__(self) -> str:
        return (f"SynthFER(split={self.split!r}, n={len(self)}, size={self.size}, seed={self.seed}, "
                f"balanced={self.balanced}, classes={len(self.classes)})")
