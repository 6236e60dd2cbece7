"""FER2013 (``fer2013.csv`` or image folders) and FERPlus (``fer2013new.csv`` votes over the same pixels)."""
from __future__ import annotations

import warnings
from itertools import zip_longest
from pathlib import Path

import numpy as np

from hsbs_lib.data.datasets.adapter import FileDataset, _child, _describe, _read_csv, _unknown_split, ascii_number
from hsbs_lib.data.datasets.registry import register_dataset
from hsbs_lib.data.labels import canonical_name

# FER2013's emotion codes -> canonical class names (the order is translated by name, never by position).
FER2013_CODES: dict[int, str] = {0: "anger", 1: "disgust", 2: "fear", 3: "happiness", 4: "sadness",
                                 5: "surprise", 6: "neutral"}
FERPLUS_VOTE_COLUMNS: tuple[str, ...] = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust",
                                         "fear", "contempt", "unknown", "NF")
FER2013_SIDE = 48
_FER2013_USAGE = {"train": "Training", "training": "Training", "test": "PrivateTest",
                  "privatetest": "PrivateTest", "val": "PublicTest", "valid": "PublicTest",
                  "validation": "PublicTest", "publictest": "PublicTest"}


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



def _usage_splits(csv_path: Path) -> list[str]:
    """The splits a FER2013-style csv holds, from its Usage column."""
    columns, rows = _read_csv(csv_path, ("Usage",))
    usages = {row[columns["usage"]].strip() for _, row in rows if len(row) > columns["usage"]}
    return [split for split, usage in (("train", "Training"), ("publictest", "PublicTest"),
                                       ("privatetest", "PrivateTest")) if usage in usages]


def _holds_usage(csv_path: Path, split: str) -> bool:
    """Whether a FER2013-style csv has rows of ``split``'s Usage (a split name it does not know: True, so
    that reading it says what is wrong)."""
    usage = _FER2013_USAGE.get(str(split).lower())
    held = {"train": "Training", "publictest": "PublicTest", "privatetest": "PrivateTest"}
    return usage is None or usage in {held[key] for key in _usage_splits(csv_path)}


@register_dataset("fer2013", aliases=("fer-2013",))
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

    @classmethod
    def splits_on_disk(cls, root: Path) -> list[str]:
        csv_path = _fer2013_csv(root)
        return _usage_splits(csv_path) if csv_path is not None else list(_fer2013_folder_splits(root))

    @classmethod
    def split_present(cls, root: Path, split: str) -> bool:
        """Whether this copy holds ``split`` (``test`` is PrivateTest, ``val`` PublicTest): a fer2013.csv
        without PrivateTest rows, or an export without a test folder, has no test split."""
        csv_path = _fer2013_csv(Path(root))
        if csv_path is not None:
            return _holds_usage(csv_path, split)
        folders = _fer2013_folder_splits(Path(root))
        if not folders:
            return True              # no copy here at all: the adapter says what it expected
        wanted = {"test": ("test", "privatetest"), "val": ("val", "publictest")}.get(str(split).lower())
        return any(name in folders for name in wanted or (str(split).lower(),))

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
                self._bad(where, f"malformed row: {len(row)} fields, expected {len(columns)}", "malformed")
                continue
            row_usage = row[columns["usage"]].strip()
            if row_usage not in ("Training", "PublicTest", "PrivateTest"):
                self._bad(where, f"unknown Usage {row_usage!r} (expected Training, PublicTest or PrivateTest)")
                continue
            if row_usage != usage:
                continue
            code = row[columns["emotion"]].strip()
            if ascii_number(code) not in FER2013_CODES:
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


@register_dataset("ferplus", aliases=("fer+", "fer2013plus"))
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

    @classmethod
    def splits_on_disk(cls, root: Path) -> list[str]:
        votes_csv = _child(root, "fer2013new.csv", want_dir=False)
        return _usage_splits(votes_csv) if votes_csv is not None else []

    @classmethod
    def split_present(cls, root: Path, split: str) -> bool:
        votes_csv = _child(Path(root), "fer2013new.csv", want_dir=False)
        return votes_csv is None or _holds_usage(votes_csv, split)

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
