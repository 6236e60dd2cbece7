"""Adapters for the real FER datasets: every copy on disk becomes one canonical record.

``load_dataset(name, root, split)`` indexes a user's copy (existence and labels only, no decoding) and
returns a :class:`~hsbs_lib.data.base.FERDataset` whose labels follow the canonical order of
:mod:`hsbs_lib.data.labels`. Each dataset's own label order is translated *by name* through an explicit
table below; folder names go through the synonym table, never through their alphabetical order.

Bad entries (missing images, unknown classes, labels out of range, malformed lines) are collected in
``dataset.report.bad``; unless ``skip_bad=True`` any of them raises ``BadDatasetError`` listing all.
Entries a dataset's protocol excludes (FERPlus unknown/not-a-face majorities, AffectNet codes 8..10,
contempt in a 7-class run) are not bad: they are dropped and counted in ``dataset.dropped``.
"""
from __future__ import annotations

import csv
import inspect
import os
import re
import sys
import warnings
from pathlib import Path
from itertools import zip_longest
from typing import Callable, Iterator

import numpy as np

from hsbs_lib.data.base import BadDatasetError, BadEntry, FERDataset
from hsbs_lib.data.images import decode_image, is_image_file
from hsbs_lib.data.labels import canonical_name

DATASET_NAMES: tuple[str, ...] = (
    "rafdb", "fer2013", "ferplus", "affectnet", "sfew", "kdef", "ckplus", "imagefolder", "synthfer")

_NAME_ALIASES = {
    "raf-db": "rafdb", "raf_db": "rafdb", "raf": "rafdb", "fer-2013": "fer2013", "fer+": "ferplus",
    "fer2013plus": "ferplus", "ck+": "ckplus", "ck": "ckplus", "sfew2": "sfew", "sfew2.0": "sfew",
    "image_folder": "imagefolder", "folder": "imagefolder", "synth": "synthfer",
}

# Each dataset's own codes -> canonical class names (the order is translated by name, never by position).
RAF_DIGITS: dict[int, str] = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness",
                              6: "anger", 7: "neutral"}
FER2013_CODES: dict[int, str] = {0: "anger", 1: "disgust", 2: "fear", 3: "happiness", 4: "sadness",
                                 5: "surprise", 6: "neutral"}
AFFECTNET_CODES: dict[int, str] = {0: "neutral", 1: "happiness", 2: "sadness", 3: "surprise", 4: "fear",
                                   5: "disgust", 6: "anger", 7: "contempt"}
AFFECTNET_EXCLUDED: dict[int, str] = {8: "none", 9: "uncertain", 10: "non-face"}
FERPLUS_VOTE_COLUMNS: tuple[str, ...] = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust",
                                         "fear", "contempt", "unknown", "NF")
KDEF_EXPRESSIONS: dict[str, str] = {"AF": "fear", "AN": "anger", "DI": "disgust", "HA": "happiness",
                                    "NE": "neutral", "SA": "sadness", "SU": "surprise"}
# Camera views from full left to full right -> pose bins 0..4.
KDEF_VIEWS: dict[str, int] = {"FL": 0, "HL": 1, "S": 2, "HR": 3, "FR": 4}

FER2013_SIDE = 48
_FER2013_USAGE = {"train": "Training", "training": "Training", "test": "PrivateTest",
                  "privatetest": "PrivateTest", "val": "PublicTest", "valid": "PublicTest",
                  "validation": "PublicTest", "publictest": "PublicTest"}
_FOLD_SPLITS = ("train", "test", "all")


# ----------------------------------------------------------------------------------------- helpers

def _describe(path: Path, limit: int = 12) -> str:
    """What is actually at ``path``, for error messages."""
    if not path.exists():
        return "nothing (the path does not exist)"
    if not path.is_dir():
        return "a file, not a folder"
    names = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in path.iterdir()
                   if not entry.name.startswith("."))
    if not names:
        return "an empty folder"
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _child(parent: Path, *names: str, want_dir: bool = True) -> Path | None:
    """The first entry of ``parent`` matching one of ``names`` case-insensitively, else None."""
    if not parent.is_dir():
        return None
    entries = {entry.name.lower(): entry for entry in parent.iterdir()
               if (entry.is_dir() if want_dir else entry.is_file())}
    for name in names:
        if name.lower() in entries:
            return entries[name.lower()]
    return None


def _subdirs(path: Path) -> list[Path]:
    return sorted(entry for entry in path.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _image_files(path: Path) -> list[Path]:
    return sorted(entry for entry in path.iterdir() if entry.is_file() and is_image_file(entry.name))


def _resolve_root(name: str, root: str | os.PathLike | None) -> Path:
    if root is None:
        root = os.environ.get("HSBS_DATA")
        if not root:
            raise FileNotFoundError(f"{name}: no dataset root given; pass root=... (or data.root=... / "
                                    f"--root) or set the HSBS_DATA environment variable")
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{name}: dataset root {path} does not exist")
    return path


def _unknown_split(name: str, split: str, present: list[str]) -> ValueError:
    return ValueError(f"{name}: unknown split {split!r}; splits here: {', '.join(present) or 'none'}")


def _pixels_to_grey(text: str) -> tuple[np.ndarray | None, str]:
    """FER2013 'pixels' field -> (48, 48) uint8, or (None, reason)."""
    # np.fromstring's text mode is ~3x faster than str.split for the 2304 numbers of a row; it
    # signals an unparsable token with a DeprecationWarning, turned into an error here.
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            values = np.fromstring(text, dtype=np.int64, sep=" ")
        except (DeprecationWarning, ValueError):
            return None, "pixels field holds something other than integers"
    if values.size != FER2013_SIDE * FER2013_SIDE:
        return None, f"pixels field has {values.size} values, expected {FER2013_SIDE * FER2013_SIDE} (48x48)"
    if values.min() < 0 or values.max() > 255:
        return None, f"pixel values outside 0..255 ({values.min()}..{values.max()})"
    return values.astype(np.uint8).reshape(FER2013_SIDE, FER2013_SIDE), ""


def _read_csv(path: Path, required: tuple[str, ...]) -> tuple[dict[str, int], Iterator[tuple[int, list[str]]]]:
    """A csv file with a header: (column index by lower-case name, lazy (line number, fields) rows).

    Rows are streamed, so the 290 MB fer2013.csv is never held as text in memory.
    """
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))   # FER2013 pixel fields are ~9 kB
    handle = open(path, newline="", encoding="utf-8-sig")
    reader = csv.reader(handle)
    header = next(reader, None)
    columns = {field.strip().lower(): i for i, field in enumerate(header or [])}
    missing = [column for column in required if column.lower() not in columns]
    if missing:
        handle.close()
        raise ValueError(f"{path}: expected a header with columns {', '.join(required)}, "
                         f"found {', '.join(header) if header else 'an empty file'}")

    def rows() -> Iterator[tuple[int, list[str]]]:
        with handle:
            for row in reader:
                if row:
                    yield reader.line_num, row

    return columns, rows()


# ------------------------------------------------------------------------------------- base adapter

class FileDataset(FERDataset):
    """Adapter base: images decoded from files, bad entries collected, excluded entries counted.

    Subclasses fill ``self.samples`` (and ``poses``/``subjects``/``soft_labels`` where known) while
    calling :meth:`_bad` and :meth:`_drop`, then call :meth:`_finish`.
    """

    name = "dataset"

    def __init__(self, root: Path, split: str, *, num_classes: int = 7, transform: Callable | None = None,
                 skip_bad: bool = False):
        super().__init__(root, split, num_classes, transform)
        self.skip_bad = skip_bad
        self.dropped: dict[str, int] = {}

    def load_image(self, index: int) -> np.ndarray:
        """Decode sample ``index`` as a uint8 (H, W, 3) RGB array (ImageDecodeError if broken)."""
        return decode_image(self.samples[index][0])

    def _bad(self, path, reason: str) -> None:
        self.report.bad.append(BadEntry(str(path), reason))

    def _drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def _class_label(self, class_name: str) -> int | None:
        """Canonical label of a canonical class name, counting contempt as dropped in 7-class runs."""
        if class_name not in self.classes:
            self._drop(f"{class_name} (not in the {self.num_classes} classes)")
            return None
        return self.classes.index(class_name)

    def _folder_class(self, folder: str, digit_table: dict[int, str] | None) -> tuple[str | None, str]:
        """Canonical class name of a class folder, or (None, reason it is unusable)."""
        if folder.strip().isdigit():
            if digit_table is None:
                return None, (f"numeric class folder {folder!r} has no meaning for {self.name}; "
                              f"name class folders by expression (angry, happy, ...)")
            code = int(folder)
            if code not in digit_table:
                return None, (f"class folder {folder!r} out of range "
                              f"{min(digit_table)}..{max(digit_table)} for {self.name}")
            return digit_table[code], ""
        class_name = canonical_name(folder)
        if class_name is None:
            return None, f"unknown class name {folder!r} (expected one of {', '.join(self.classes)} or a synonym)"
        return class_name, ""

    def _scan_class_folders(self, split_dir: Path, digit_table: dict[int, str] | None = None) -> list[Path]:
        """Index ``split_dir/<class>/*``; returns the files kept (parallel to the samples added)."""
        kept = []
        for stray in _image_files(split_dir):
            self._bad(stray, "image outside a class folder")
        for class_dir in _subdirs(split_dir):
            files = _image_files(class_dir)
            class_name, reason = self._folder_class(class_dir.name, digit_table)
            if class_name is None:
                self._bad(class_dir, f"{reason}; {len(files)} images not used")
                continue
            for path in files:
                label = self._class_label(class_name)
                if label is not None:
                    self.samples.append((str(path), label))
                    kept.append(path)
        return kept

    def _finish(self) -> None:
        if self.report.bad:
            if not self.skip_bad:
                raise BadDatasetError(self.report)
            self.report.skipped = len(self.report.bad)
        if not self.samples and not self.report.bad and not self.dropped:
            raise ValueError(f"{self.name}: found no images for split {self.split!r} under {self.root}")

    def __repr__(self) -> str:
        dropped = f", dropped={sum(self.dropped.values())}" if self.dropped else ""
        skipped = f", skipped={self.report.skipped}" if self.report.skipped else ""
        return (f"{type(self).__name__}(split={self.split!r}, n={len(self)}, root={self.root!r}, "
                f"classes={len(self.classes)}{skipped}{dropped})")


class _FoldMixin:
    """Subject-independent k-fold splits for datasets shipped as one pool (KDEF, CK+)."""

    def _select_fold(self, fold: int, n_folds: int) -> None:
        if self.split not in _FOLD_SPLITS:
            raise _unknown_split(self.name, self.split, list(_FOLD_SPLITS))
        if not 0 <= fold < n_folds:
            raise ValueError(f"{self.name}: fold must be in 0..{n_folds - 1}, got {fold}")
        if self.split == "all" or not self.samples:
            return
        from sklearn.model_selection import GroupKFold
        if len(set(self.subjects)) < n_folds:
            raise ValueError(f"{self.name}: {len(set(self.subjects))} subjects cannot fill {n_folds} "
                             f"subject-independent folds")
        folds = list(GroupKFold(n_splits=n_folds).split(np.zeros(len(self.samples)), groups=self.subjects))
        train_index, test_index = folds[fold]
        keep = sorted(train_index if self.split == "train" else test_index)
        self.samples = [self.samples[i] for i in keep]
        self.subjects = [self.subjects[i] for i in keep]
        if self.poses is not None:
            self.poses = [self.poses[i] for i in keep]


# -------------------------------------------------------------------------------------------- RAF-DB

class RAFDB(FileDataset):
    """RAF-DB basic: ``EmoLabel/list_patition_label.txt`` + ``Image/aligned|original/``, or
    ``train/<class>/`` and ``test/<class>/`` (or ``valid/``) folders with names or RAF digits 1..7."""

    name = "rafdb"
    LABEL_FILES = ("EmoLabel/list_patition_label.txt", "EmoLabel/list_partition_label.txt")

    def __init__(self, root, split="train", *, num_classes=7, transform=None, skip_bad=False,
                 aligned: bool = True):
        super().__init__(root, split, num_classes=num_classes, transform=transform, skip_bad=skip_bad)
        self.aligned = aligned
        root = Path(root)
        label_file = next((root / name for name in self.LABEL_FILES if (root / name).is_file()), None)
        if label_file is not None:
            self._index_label_file(root, label_file)
        elif _child(root, "train") is not None:
            self._index_folders(root)
        else:
            raise FileNotFoundError(
                f"rafdb: expected EmoLabel/list_patition_label.txt under {root} (or train/<class>/ and "
                f"test/<class>/ folders); found: {_describe(root)}")
        self._finish()

    @staticmethod
    def folder_splits(root: Path) -> dict[str, Path]:
        found = {}
        for split, names in (("train", ("train",)), ("test", ("test", "valid", "val", "validation"))):
            folder = _child(root, *names)
            if folder is not None:
                found[split] = folder
        return found

    def _index_folders(self, root: Path) -> None:
        folders = self.folder_splits(root)
        split = "test" if self.split in ("val", "valid", "validation") else self.split
        if split not in folders:
            raise _unknown_split(self.name, self.split, list(folders))
        self._scan_class_folders(folders[split], digit_table=RAF_DIGITS)

    def _index_label_file(self, root: Path, label_file: Path) -> None:
        prefix = {"train": "train_", "test": "test_", "val": "test_", "valid": "test_",
                  "validation": "test_"}.get(self.split)
        if prefix is None:
            raise _unknown_split(self.name, self.split, ["train", "test"])
        image_dir = root / "Image" / ("aligned" if self.aligned else "original")
        if not image_dir.is_dir():
            other = "aligned=False (Image/original/)" if self.aligned else "aligned=True (Image/aligned/)"
            raise FileNotFoundError(
                f"rafdb: expected {image_dir.relative_to(root)}/ under {root}; found Image/: "
                f"{_describe(root / 'Image')}. Pass {other} to use the other image set.")
        on_disk = set(os.listdir(image_dir))
        relative = label_file.relative_to(root)
        with open(label_file, encoding="utf-8-sig") as handle:
            for line_number, line in enumerate(handle, start=1):
                fields = line.split()
                where = f"{relative} line {line_number}"
                if not fields:
                    continue
                if len(fields) != 2:
                    self._bad(f"{label_file}:{line_number}", f"malformed line {line.strip()!r}: expected 'NAME LABEL'")
                    continue
                file_name, code = fields
                if not file_name.startswith(("train_", "test_")):
                    self._bad(f"{label_file}:{line_number}", f"image name {file_name!r} has neither a train_ nor a test_ prefix")
                    continue
                if not file_name.startswith(prefix):
                    continue
                stem, extension = os.path.splitext(file_name)
                image_name = f"{stem}_aligned{extension}" if self.aligned else file_name
                image_path = image_dir / image_name
                if not code.isdigit() or int(code) not in RAF_DIGITS:
                    self._bad(image_path, f"label {code!r} out of range 1..7 ({where})")
                    continue
                if image_name not in on_disk:
                    self._bad(image_path, f"listed in {where} but missing")
                    continue
                label = self._class_label(RAF_DIGITS[int(code)])
                if label is not None:
                    self.samples.append((str(image_path), label))


# ------------------------------------------------------------------------------------------ FER2013

def _fer2013_csv(root: Path) -> Path | None:
    if root.is_file() and root.suffix.lower() == ".csv":
        return root
    for candidate in (root / "fer2013.csv", root / "fer2013" / "fer2013.csv"):
        if candidate.is_file():
            return candidate
    return None


def _fer2013_folder_splits(root: Path) -> dict[str, Path]:
    found = {}
    for split, names in (("train", ("train", "training")), ("test", ("test",)),
                         ("val", ("val", "valid", "validation")), ("publictest", ("publictest",)),
                         ("privatetest", ("privatetest",))):
        folder = _child(root, *names)
        if folder is not None:
            found[split] = folder
    return found


class FER2013(FileDataset):
    """FER2013 as ``fer2013.csv`` (emotion, pixels, Usage) or as image folders.

    Splits: ``train`` = Training; ``test`` = PrivateTest (the usual reported test set; a ``test/``
    folder when the export has one); ``val`` = PublicTest; ``publictest``/``privatetest`` by name.
    """

    name = "fer2013"
    has_validation_split = True       # PublicTest (csv) or a val/ or PublicTest/ folder

    def __init__(self, root, split="train", *, num_classes=7, transform=None, skip_bad=False):
        super().__init__(root, split, num_classes=num_classes, transform=transform, skip_bad=skip_bad)
        root = Path(root)
        self._grey: np.ndarray | None = None
        csv_path = _fer2013_csv(root)
        if csv_path is not None:
            self._index_csv(csv_path)
        else:
            folders = _fer2013_folder_splits(root)
            if not folders:
                raise FileNotFoundError(
                    f"fer2013: expected fer2013.csv or train/<class>/ and test/<class>/ folders "
                    f"(PublicTest/, PrivateTest/ also accepted) under {root}; found: {_describe(root)}")
            folder = self._pick_folder(folders)
            self._scan_class_folders(folder, digit_table=FER2013_CODES)
        self._finish()

    def _pick_folder(self, folders: dict[str, Path]) -> Path:
        fallbacks = {"test": ("test", "privatetest"), "val": ("val", "publictest"),
                     "valid": ("val", "publictest"), "validation": ("val", "publictest"),
                     "training": ("train",)}
        for key in fallbacks.get(self.split, (self.split,)):
            if key in folders:
                return folders[key]
        raise _unknown_split(self.name, self.split, list(folders))

    def _index_csv(self, csv_path: Path) -> None:
        usage = _FER2013_USAGE.get(self.split)
        if usage is None:
            raise _unknown_split(self.name, self.split, ["train", "test (PrivateTest)", "val (PublicTest)",
                                                          "publictest", "privatetest"])
        columns, rows = _read_csv(csv_path, ("emotion", "pixels", "Usage"))
        pixels = []
        for line_number, row in rows:
            where = f"{csv_path}:{line_number}"
            if len(row) != len(columns):
                self._bad(where, f"malformed row: {len(row)} fields, expected {len(columns)}")
                continue
            row_usage = row[columns["usage"]].strip()
            if row_usage not in ("Training", "PublicTest", "PrivateTest"):
                self._bad(where, f"unknown Usage {row_usage!r} (expected Training, PublicTest or PrivateTest)")
                continue
            if row_usage != usage:
                continue
            code = row[columns["emotion"]].strip()
            if not code.isdigit() or int(code) not in FER2013_CODES:
                self._bad(where, f"emotion {code!r} out of range 0..6")
                continue
            grey, reason = _pixels_to_grey(row[columns["pixels"]])
            if grey is None:
                self._bad(where, reason)
                continue
            label = self._class_label(FER2013_CODES[int(code)])
            if label is not None:
                self.samples.append((where, label))
                pixels.append(grey)
        self._grey = (np.stack(pixels) if pixels else
                      np.zeros((0, FER2013_SIDE, FER2013_SIDE), np.uint8))

    @property
    def images(self) -> np.ndarray | None:
        """csv copies only: every image in memory as a read-only uint8 (N, 48, 48, 3) view."""
        if self._grey is None:
            return None
        return np.broadcast_to(self._grey[..., None], self._grey.shape + (3,))

    def load_image(self, index: int) -> np.ndarray:
        if self._grey is None:
            return super().load_image(index)
        return np.repeat(self._grey[index][:, :, None], 3, axis=2)


class FERPlus(FER2013):
    """FERPlus: ``fer2013new.csv`` votes over the FER2013 pixels (same row order as ``fer2013.csv``).

    ``label_mode="majority"``: the most voted emotion (rows whose top vote is unknown/NF, tied, or
    outside the label set are dropped). ``label_mode="soft"``: also ``.soft_labels`` (N, K) float32,
    the vote distribution over the K canonical classes; ``samples`` carry its arg-max.
    """

    name = "ferplus"

    def __init__(self, root, split="train", *, num_classes=7, transform=None, skip_bad=False,
                 label_mode: str = "majority", fer2013_csv: str | None = None):
        if label_mode not in ("majority", "soft"):
            raise ValueError(f"ferplus: label_mode must be 'majority' or 'soft', got {label_mode!r}")
        FileDataset.__init__(self, root, split, num_classes=num_classes, transform=transform, skip_bad=skip_bad)
        self.label_mode = label_mode
        root = Path(root)
        votes_csv = _child(root, "fer2013new.csv", want_dir=False)
        if votes_csv is None:
            raise FileNotFoundError(f"ferplus: expected fer2013new.csv under {root}; found: {_describe(root)}")
        pixels_csv = Path(fer2013_csv).expanduser() if fer2013_csv else _fer2013_csv(root)
        if pixels_csv is None or not pixels_csv.is_file():
            raise FileNotFoundError(
                f"ferplus: needs the FER2013 pixels: expected fer2013.csv under {root} next to fer2013new.csv, "
                f"or pass fer2013_csv=PATH (got {fer2013_csv}); found: {_describe(root)}")
        self._index_votes(votes_csv, pixels_csv)
        self._finish()

    def _index_votes(self, votes_csv: Path, pixels_csv: Path) -> None:
        usage = _FER2013_USAGE.get(self.split)
        if usage is None:
            raise _unknown_split(self.name, self.split, ["train", "test (PrivateTest)", "val (PublicTest)",
                                                          "publictest", "privatetest"])
        vote_columns, vote_rows = _read_csv(votes_csv, ("Usage",) + FERPLUS_VOTE_COLUMNS)
        pixel_columns, pixel_rows = _read_csv(pixels_csv, ("pixels", "Usage"))
        # canonical index of each vote column (None for unknown/NF, and contempt in 7-class runs)
        targets = [self.classes.index(canonical_name(c)) if canonical_name(c) in self.classes else None
                   for c in FERPLUS_VOTE_COLUMNS]
        grey_images, distributions = [], []
        for vote, pixel in zip_longest(vote_rows, pixel_rows):
            if vote is None or pixel is None:
                raise ValueError(f"ferplus: {votes_csv} and {pixels_csv} have different numbers of rows; "
                                 f"they must list the same images in the same order")
            (vote_line, vote_row), (pixel_line, pixel_row) = vote, pixel
            where = f"{pixels_csv}:{pixel_line}"
            if len(vote_row) != len(vote_columns):
                self._bad(f"{votes_csv}:{vote_line}", f"malformed row: {len(vote_row)} fields, expected {len(vote_columns)}")
                continue
            if vote_row[vote_columns["usage"]].strip() != usage:
                continue
            try:
                votes = np.array([float(vote_row[vote_columns[c.lower()]]) for c in FERPLUS_VOTE_COLUMNS])
            except ValueError:
                self._bad(f"{votes_csv}:{vote_line}", "vote counts are not numbers")
                continue
            if (votes < 0).any():
                self._bad(f"{votes_csv}:{vote_line}", "negative vote count")
                continue
            distribution = self._votes_to_distribution(votes, targets)
            if distribution is None:
                continue
            grey, reason = (_pixels_to_grey(pixel_row[pixel_columns["pixels"]])
                            if len(pixel_row) == len(pixel_columns) else (None, "malformed row"))
            if grey is None:
                self._bad(where, reason)
                continue
            self.samples.append((where, int(np.argmax(distribution))))
            grey_images.append(grey)
            distributions.append(distribution)
        self._grey = (np.stack(grey_images) if grey_images else
                      np.zeros((0, FER2013_SIDE, FER2013_SIDE), np.uint8))
        if self.label_mode == "soft":
            self.soft_labels = (np.stack(distributions).astype(np.float32) if distributions else
                                np.zeros((0, self.num_classes), np.float32))

    def _votes_to_distribution(self, votes: np.ndarray, targets: list[int | None]) -> np.ndarray | None:
        """(10,) votes -> (K,) label distribution, or None when the row is dropped (and counted)."""
        top = votes.max()
        if top <= 0:
            self._drop("no votes")
            return None
        winners = [FERPLUS_VOTE_COLUMNS[i] for i in np.flatnonzero(votes == top)]
        if "unknown" in winners or "NF" in winners:
            self._drop("majority unknown/NF")
            return None
        if any(targets[FERPLUS_VOTE_COLUMNS.index(w)] is None for w in winners):
            self._drop(f"majority {winners[0]} (not in the {self.num_classes} classes)")
            return None
        distribution = np.zeros(self.num_classes, np.float64)
        if self.label_mode == "majority":
            if len(winners) > 1:
                self._drop("tied majority")
                return None
            distribution[targets[FERPLUS_VOTE_COLUMNS.index(winners[0])]] = 1.0
            return distribution
        for count, target in zip(votes, targets):
            if target is not None:
                distribution[target] += count
        return distribution / distribution.sum()


# ----------------------------------------------------------------------------------------- AffectNet

_AFFECTNET_SPLIT_DIRS = {"train": ("train_set", "train", "training"),
                         "val": ("val_set", "val", "validation", "valid", "test_set", "test")}


class AffectNet(FileDataset):
    """AffectNet as ``Manually_Annotated_Images/`` + ``training.csv``/``validation.csv``, or as
    ``train_set/`` and ``val_set/`` with ``images/N.jpg`` and ``annotations/N_exp.npy`` (or
    ``*_exp.npy`` next to the images). The validation set is the test set (``test``/``val``)."""

    name = "affectnet"

    def __init__(self, root, split="train", *, num_classes=7, transform=None, skip_bad=False):
        super().__init__(root, split, num_classes=num_classes, transform=transform, skip_bad=skip_bad)
        root = Path(root)
        which = {"train": "train", "training": "train", "test": "val", "val": "val", "valid": "val",
                 "validation": "val"}.get(self.split)
        if which is None:
            raise _unknown_split(self.name, self.split, ["train", "val (= test)"])
        image_dir = _child(root, "Manually_Annotated_Images")
        if image_dir is not None:
            csv_name = "training.csv" if which == "train" else "validation.csv"
            csv_path = (_child(root, csv_name, want_dir=False)
                        or _child(root / "Manually_Annotated_file_lists", csv_name, want_dir=False))
            if csv_path is None:
                raise FileNotFoundError(f"affectnet: expected {csv_name} under {root} (or under "
                                        f"Manually_Annotated_file_lists/); found: {_describe(root)}")
            self._index_csv(image_dir, csv_path)
        else:
            split_dir = _child(root, *_AFFECTNET_SPLIT_DIRS[which])
            if split_dir is None or _child(split_dir, "images") is None:
                raise FileNotFoundError(
                    f"affectnet: expected Manually_Annotated_Images/ with training.csv/validation.csv, or "
                    f"{_AFFECTNET_SPLIT_DIRS[which][0]}/images/ with annotations/*_exp.npy, under {root}; "
                    f"found: {_describe(root)}")
            self._index_npy(split_dir)
        self._finish()

    def _add(self, image_path: Path, code: int) -> None:
        if code in AFFECTNET_EXCLUDED:
            self._drop(f"expression {code} ({AFFECTNET_EXCLUDED[code]})")
            return
        label = self._class_label(AFFECTNET_CODES[code])
        if label is not None:
            self.samples.append((str(image_path), label))

    @staticmethod
    def _parse_code(text: str) -> int | None:
        text = text.strip()
        try:
            value = float(text)
        except ValueError:
            return None
        return int(value) if value.is_integer() and 0 <= value <= 10 else None

    def _index_csv(self, image_dir: Path, csv_path: Path) -> None:
        columns, rows = _read_csv(csv_path, ("subDirectory_filePath", "expression"))
        for line_number, row in rows:
            where = f"{csv_path}:{line_number}"
            if len(row) != len(columns):
                self._bad(where, f"malformed row: {len(row)} fields, expected {len(columns)}")
                continue
            image_path = image_dir / row[columns["subdirectory_filepath"]].strip()
            code = self._parse_code(row[columns["expression"]])
            if code is None:
                self._bad(image_path, f"expression {row[columns['expression']]!r} out of range 0..10 (line {line_number})")
                continue
            if not image_path.is_file():
                self._bad(image_path, f"listed in {csv_path.name} line {line_number} but missing")
                continue
            self._add(image_path, code)

    def _index_npy(self, split_dir: Path) -> None:
        images = _child(split_dir, "images")
        annotations = _child(split_dir, "annotations")
        for image_path in _image_files(images):
            candidates = [images / f"{image_path.stem}_exp.npy"]
            if annotations is not None:
                candidates.insert(0, annotations / f"{image_path.stem}_exp.npy")
            annotation = next((c for c in candidates if c.is_file()), None)
            if annotation is None:
                self._bad(image_path, f"no {image_path.stem}_exp.npy annotation")
                continue
            try:
                raw = np.load(annotation, allow_pickle=False)
                code = self._parse_code(str(raw.item() if raw.size == 1 else raw))
            except (ValueError, OSError, EOFError) as error:
                self._bad(annotation, f"unreadable annotation: {error}")
                continue
            if code is None:
                self._bad(image_path, f"expression {raw!r} in {annotation.name} out of range 0..10")
                continue
            self._add(image_path, code)


# ------------------------------------------------------------------------------------- SFEW, folders

class SFEW(FileDataset):
    """SFEW 2.0: ``Train/<Class>/`` and ``Val/<Class>/`` (``test`` and ``val`` read ``Val/``)."""

    name = "sfew"

    def __init__(self, root, split="train", *, num_classes=7, transform=None, skip_bad=False):
        super().__init__(root, split, num_classes=num_classes, transform=transform, skip_bad=skip_bad)
        root = Path(root)
        folders = {key: folder for key, names in (("train", ("train",)), ("val", ("val", "valid", "validation")))
                   if (folder := _child(root, *names)) is not None}
        if not folders:
            raise FileNotFoundError(f"sfew: expected Train/<Class>/ and Val/<Class>/ under {root}; "
                                    f"found: {_describe(root)}")
        key = {"test": "val", "valid": "val", "validation": "val"}.get(self.split, self.split)
        if key not in folders:
            raise _unknown_split(self.name, self.split, list(folders))
        self._scan_class_folders(folders[key])
        self._finish()


class ImageFolderFER(FileDataset):
    """Any ``<root>/<split>/<class>/*`` copy; classes by name through the synonym table."""

    name = "imagefolder"
    has_validation_split = True       # a val/ (valid/, validation/) folder beside test/
    _ALIASES = {"val": ("val", "valid", "validation"), "valid": ("valid", "val", "validation"),
                "validation": ("validation", "val", "valid")}

    def __init__(self, root, split="train", *, num_classes=7, transform=None, skip_bad=False):
        super().__init__(root, split, num_classes=num_classes, transform=transform, skip_bad=skip_bad)
        root = Path(root)
        present = [folder.name for folder in _subdirs(root)]
        if not present:
            raise FileNotFoundError(f"imagefolder: expected <split>/<class>/ folders under {root}; "
                                    f"found: {_describe(root)}")
        folder = _child(root, *self._ALIASES.get(self.split.lower(), (self.split,)))
        if folder is None:
            raise _unknown_split(self.name, self.split, present)
        self._scan_class_folders(folder)
        self._finish()


# ------------------------------------------------------------------------------------- KDEF and CK+

_KDEF_CODE = re.compile(r"^(?P<session>[AB])(?P<subject>[FM]\d{2})(?P<expression>[A-Z]{2})"
                        r"(?P<view>FL|HL|S|HR|FR)$", re.IGNORECASE)


class KDEF(_FoldMixin, FileDataset):
    """KDEF: ``KDEF/<session+id>/<code>.JPG`` with codes like ``AF01ANS``: expression from letters 5-6,
    pose bin from letters 7-8 (FL=0, HL=1, S=2, HR=3, FR=4). One pool, split into subject-independent
    folds: ``split="train"|"test"`` with ``fold=k`` of ``n_folds``; ``split="all"`` for everything.
    The subject is the person (``F01``), shared by sessions A and B."""

    name = "kdef"

    def __init__(self, root, split="train", *, num_classes=7, transform=None, skip_bad=False,
                 fold: int = 0, n_folds: int = 5):
        super().__init__(root, split, num_classes=num_classes, transform=transform, skip_bad=skip_bad)
        root = Path(root)
        base = _child(root, "KDEF") or root
        self.poses, self.subjects = [], []
        found_any = False
        for folder, _, names in sorted(os.walk(base)):
            for file_name in sorted(names):
                if not is_image_file(file_name):
                    continue
                found_any = True
                path = Path(folder) / file_name
                match = _KDEF_CODE.match(Path(file_name).stem)
                if match is None:
                    self._bad(path, "file name is not a KDEF code like AF01ANS.JPG")
                    continue
                expression = match["expression"].upper()
                if expression not in KDEF_EXPRESSIONS:
                    self._bad(path, f"unknown KDEF expression code {expression!r} "
                                    f"(expected {', '.join(KDEF_EXPRESSIONS)})")
                    continue
                label = self._class_label(KDEF_EXPRESSIONS[expression])
                if label is not None:
                    self.samples.append((str(path), label))
                    self.poses.append(KDEF_VIEWS[match["view"].upper()])
                    self.subjects.append(match["subject"].upper())
        if not found_any:
            raise FileNotFoundError(f"kdef: expected KDEF/<session+id>/<code>.JPG (e.g. KDEF/AF01/AF01ANS.JPG) "
                                    f"under {root}; found: {_describe(root)}")
        self._select_fold(fold, n_folds)
        self._finish()


_CK_SUBJECT = re.compile(r"^(S\d+)[_-]", re.IGNORECASE)


class CKPlus(_FoldMixin, FileDataset):
    """CK+ face crops: ``<class>/*.png`` (anger, contempt, disgust, fear, happy, sadness, surprise; no
    neutral). Subject from the file prefix (``S005_001_00000011.png``); subject-independent folds as
    for KDEF. With 7 classes the contempt images are dropped and counted."""

    name = "ckplus"

    def __init__(self, root, split="train", *, num_classes=7, transform=None, skip_bad=False,
                 fold: int = 0, n_folds: int = 5):
        super().__init__(root, split, num_classes=num_classes, transform=transform, skip_bad=skip_bad)
        root = Path(root)
        base = self._class_root(root)
        kept_files = self._scan_class_folders(base)
        subjects = [_CK_SUBJECT.match(path.name) for path in kept_files]
        # Folds need a subject for every image: those without one are bad entries.
        for (path, _), match in zip(self.samples, subjects):
            if match is None:
                self._bad(path, "no subject id in the file name (expected a prefix like S005_)")
        self.samples = [sample for sample, match in zip(self.samples, subjects) if match is not None]
        self.subjects = [match.group(1).upper() for match in subjects if match is not None]
        self._select_fold(fold, n_folds)
        self._finish()

    @staticmethod
    def _class_root(root: Path) -> Path:
        def has_class_folders(path: Path) -> bool:
            return any(canonical_name(folder.name) for folder in _subdirs(path))
        if has_class_folders(root):
            return root
        inner = _subdirs(root)
        if len(inner) == 1 and has_class_folders(inner[0]):
            return inner[0]    # a wrapper folder such as CK+48/
        raise FileNotFoundError(f"ckplus: expected <class>/*.png folders (anger, contempt, disgust, fear, "
                                f"happy, sadness, surprise) under {root}; found: {_describe(root)}")


# ------------------------------------------------------------------------------------------ the API

ADAPTERS: dict[str, type[FileDataset]] = {
    "rafdb": RAFDB, "fer2013": FER2013, "ferplus": FERPlus, "affectnet": AffectNet, "sfew": SFEW,
    "kdef": KDEF, "ckplus": CKPlus, "imagefolder": ImageFolderFER,
}


def canonical_dataset_name(name: str) -> str:
    key = name.strip().lower()
    key = _NAME_ALIASES.get(key, key)
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
    return key


def load_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train", *,
                 num_classes: int = 7, transform: Callable | None = None, skip_bad: bool = False,
                 **options) -> FERDataset:
    """Index one split of a dataset copy and return a FERDataset with canonical labels.

    Args:
        name: one of :data:`DATASET_NAMES` (common spellings such as ``raf-db`` or ``ck+`` accepted).
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
    if key == "synthfer":
        from hsbs_lib.data.synthetic import SynthFER
        synth_options = {"n": 2000, "size": 64, "seed": 0, "balanced": False, **options}
        return SynthFER(split=split, num_classes=num_classes, transform=transform, **synth_options)
    adapter = ADAPTERS[key]
    accepted = [p for p in inspect.signature(adapter.__init__).parameters
                if p not in ("self", "root", "split", "num_classes", "transform", "skip_bad")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{key}: unknown option(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(accepted) or 'none'}")
    if num_classes not in (7, 8):
        raise ValueError(f"num_classes must be 7 or 8, got {num_classes}")
    return adapter(_resolve_root(key, root), split, num_classes=num_classes, transform=transform,
                   skip_bad=skip_bad, **options)


def dataset_splits(name: str, root: str | os.PathLike | None = None) -> list[str]:
    """The split names ``load_dataset`` can read from this copy (KDEF and CK+: ``all``, folds come
    from the ``fold``/``n_folds`` options with ``train``/``test``)."""
    key = canonical_dataset_name(name)
    if key == "synthfer":
        return ["train", "test"]
    root = _resolve_root(key, root)
    splits = _splits_on_disk(key, root)
    if not splits:
        ADAPTERS[key](root, "train")      # raises the adapter's own "expected ... found ..." error
        raise ValueError(f"{key}: no splits found under {root}; found: {_describe(root)}")
    return splits


def _splits_on_disk(key: str, root: Path) -> list[str]:
    if key == "rafdb":
        label_file = next((root / n for n in RAFDB.LABEL_FILES if (root / n).is_file()), None)
        if label_file is None:
            return list(RAFDB.folder_splits(root))
        prefixes = {line.split()[0].split("_")[0] for line in label_file.read_text().splitlines() if line.split()}
        return [split for split in ("train", "test") if split in prefixes]
    if key in ("fer2013", "ferplus"):
        csv_path = (_child(root, "fer2013new.csv", want_dir=False) if key == "ferplus" else _fer2013_csv(root))
        if csv_path is None:
            return list(_fer2013_folder_splits(root)) if key == "fer2013" else []
        columns, rows = _read_csv(csv_path, ("Usage",))
        usages = {row[columns["usage"]].strip() for _, row in rows if len(row) > columns["usage"]}
        return [split for split, usage in (("train", "Training"), ("publictest", "PublicTest"),
                                           ("privatetest", "PrivateTest")) if usage in usages]
    if key == "affectnet":
        if _child(root, "Manually_Annotated_Images") is not None:
            return [split for split, csv_name in (("train", "training.csv"), ("val", "validation.csv"))
                    if _child(root, csv_name, want_dir=False)
                    or _child(root / "Manually_Annotated_file_lists", csv_name, want_dir=False)]
        return [split for split, names in _AFFECTNET_SPLIT_DIRS.items() if _child(root, *names)]
    if key == "sfew":
        return [split for split, names in (("train", ("train",)), ("val", ("val", "valid", "validation")))
                if _child(root, *names)]
    if key in ("kdef", "ckplus"):
        return ["all"]
    return [folder.name for folder in _subdirs(root)]
