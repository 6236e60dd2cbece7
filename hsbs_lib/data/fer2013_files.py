"""Write grey faces in FER2013's two distributed layouts: ``fer2013.csv`` and the class-folder export; find
and sample a student's own copy (``$FER2013_ROOT``).

Used to turn in-memory faces (a ``.npz`` of FER2013's training split, a subset of it) into files that the
``fer2013`` adapter reads exactly as it reads a user's download, so real-face tests and benchmarks go
through the same code path. Labels are given by *class name* and written as FER2013's own codes or
folder names, so a source whose classes are ordered differently (the alphabetical folder order
angry, disgust, fear, happy, neutral, sad, surprise puts neutral at 4, the csv code for sad) cannot be
silently shifted.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from hsbs_lib.config import repo_root
from hsbs_lib.data.datasets import load_dataset
from hsbs_lib.data.datasets.fer2013 import FER2013_CODES
from hsbs_lib.data.labels import canonical_name

#: FER2013's csv codes (the ``emotion`` column) by canonical class name: the adapter's table, inverted.
FER2013_CODE_OF = {name: code for code, name in FER2013_CODES.items()}
#: The folder names of the common image export, by canonical class name.
FER2013_FOLDER_OF = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happiness": "happy",
                     "sadness": "sad", "surprise": "surprise", "neutral": "neutral"}
USAGES = ("Training", "PublicTest", "PrivateTest")


def _canonical(names: Sequence[str]) -> list[str]:
    resolved = []
    for name in names:
        canonical = canonical_name(str(name))
        if canonical not in FER2013_CODE_OF:
            raise ValueError(f"class name {name!r} is not one of FER2013's seven expressions")
        resolved.append(canonical)
    return resolved


def _grey_faces(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 3:
        images = images.mean(axis=-1).round().astype(np.uint8)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 grey faces (N, H, W), got {images.dtype} {images.shape}")
    return images


def write_fer2013_csv(path: str | Path, images: np.ndarray, class_of: Sequence[str],
                      usage: Sequence[str] | str = "Training") -> Path:
    """``fer2013.csv`` (emotion, pixels, Usage) for uint8 faces (N, 48, 48) and their class names.

    ``usage``: one of Training / PublicTest / PrivateTest for every row, or a sequence of them.
    """
    images = _grey_faces(images)
    names = _canonical(class_of)
    usages = [usage] * len(images) if isinstance(usage, str) else list(usage)
    if not len(images) == len(names) == len(usages):
        raise ValueError(f"{len(images)} images, {len(names)} class names and {len(usages)} usages differ")
    unknown = sorted(set(usages) - set(USAGES))
    if unknown:
        raise ValueError(f"unknown Usage {unknown}; FER2013 uses {', '.join(USAGES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        for image, name, row_usage in zip(images, names, usages):
            writer.writerow([FER2013_CODE_OF[name], " ".join(map(str, image.reshape(-1).tolist())), row_usage])
    return path


def write_fer2013_folders(root: str | Path, split: str, images: np.ndarray, class_of: Sequence[str],
                          stems: Sequence[str] | None = None) -> list[Path]:
    """``root/<split>/<folder>/<stem>.png`` (the common export: angry, disgust, ..., surprise folders)."""
    images = _grey_faces(images)
    names = _canonical(class_of)
    stems = list(stems) if stems is not None else [f"{split}_{i:05d}" for i in range(len(images))]
    if not len(images) == len(names) == len(stems):
        raise ValueError(f"{len(images)} images, {len(names)} class names and {len(stems)} file stems differ")
    written = []
    for image, name, stem in zip(images, names, stems):
        folder = Path(root) / split / FER2013_FOLDER_OF[name]
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{Path(stem).stem}.png"
        Image.fromarray(image, mode="L").save(target)
        written.append(target)
    return written


def stratified_usage(labels: Sequence[int], shares: dict[str, float], *, seed: int = 0) -> list[str]:
    """A Usage per sample: each class split by ``shares`` (e.g. {"Training": 0.9, "PrivateTest": 0.1}), seeded."""
    labels = np.asarray(labels)
    if not np.isclose(sum(shares.values()), 1.0):
        raise ValueError(f"usage shares must sum to 1, got {shares}")
    rng = np.random.default_rng(seed)
    usage = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.round(np.cumsum([0.0, *shares.values()]) * len(members)).astype(int)
        for name, start, stop in zip(shares, bounds[:-1], bounds[1:]):
            usage[members[start:stop]] = name
    return usage.tolist()


def find_fer2013_npz() -> Path | None:
    """The development copy of FER2013's training split (``fer2013_train.npz``), or None.

    ``$HSBS_FER2013_NPZ`` when set, else ``../shared/data/fer2013_train.npz`` beside the repository (where
    development machines keep it). Users have their own fer2013.csv instead; nothing is downloaded.
    """
    candidate = os.environ.get("HSBS_FER2013_NPZ")
    path = Path(candidate) if candidate else repo_root().parent / "shared" / "data" / "fer2013_train.npz"
    return path if path.is_file() else None


def load_fer2013_npz(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Faces uint8 (N, 48, 48) and their canonical class names from a ``.npz`` with ``images``, ``labels``
    and ``classes`` (class names in the file's own order, mapped by name)."""
    with np.load(path) as data:
        images, labels, classes = data["images"], data["labels"], [str(name) for name in data["classes"]]
    return images, _canonical([classes[label] for label in labels])


def student_fer2013_root(root: str | Path | None = None) -> Path | None:
    """A student's own copy of FER2013: ``root`` when given, else ``$FER2013_ROOT``; None when neither is set.

    The copy is Kaggle's ``fer2013.csv`` (the file, or a folder holding it) or the image export with
    ``train/<class>/`` and ``test/<class>/`` folders; a path that does not exist raises FileNotFoundError
    (a typo must not fall back silently).
    """
    candidate = root if root not in (None, "") else os.environ.get("FER2013_ROOT")
    if not candidate:
        return None
    path = Path(candidate).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (FER2013_ROOT should name fer2013.csv or the "
                                "folder with fer2013.csv or train/ and test/)")
    return path


def sample_fer2013_faces(root: str | Path, *, per_class: int = 4, split: str = "train",
                         seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``per_class`` faces of every class of a FER2013 copy, read by the ``fer2013`` adapter.

    Returns uint8 images (N, H, W, 3) and their canonical class names (N,); a class the copy lacks is
    skipped. Only the drawn faces are decoded.
    """
    dataset = load_dataset("fer2013", root, split)
    targets = np.asarray(dataset.targets)
    rng = np.random.default_rng(seed)
    chosen = [index for label in np.unique(targets)
              for index in rng.permutation(np.flatnonzero(targets == label))[:per_class]]
    images = np.stack([dataset.load_image(int(index)) for index in chosen])
    return images, [dataset.classes[int(targets[index])] for index in chosen]
