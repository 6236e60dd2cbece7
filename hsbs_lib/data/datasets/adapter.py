"""What every file-based adapter shares: the base class and the helpers that read a copy on disk.

An adapter indexes one split of a user's copy (existence and labels only, no decoding) into
``samples`` with canonical labels. Bad entries (missing images, unknown classes, labels out of range,
malformed lines) are collected in ``dataset.report.bad``; unless ``skip_bad=True`` any of them raises
``BadDatasetError`` listing all. Entries a dataset's protocol excludes (FERPlus unknown/not-a-face
majorities, AffectNet codes 8..10, contempt in a 7-class run) are not bad: they are dropped and counted in
``dataset.dropped``.
"""
from __future__ import annotations

import codecs
import csv
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from hsbs_lib.data.base import BadDatasetError, BadEntry, FERDataset
from hsbs_lib.data.images import decode_image, is_image_file
from hsbs_lib.data.labels import canonical_name

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


def ascii_number(text: str) -> int | None:
    """The integer written in ASCII digits ``0-9``, else None: ``'²'`` and ``'٣'`` pass ``str.isdigit`` but
    are not labels."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def text_encoding(path: Path) -> str:
    """How to read a label file: by its byte-order mark (UTF-16 from Windows Notepad's "Unicode", UTF-8
    with a BOM), as UTF-16 when NUL bytes fill every other byte (UTF-16 without a mark), else UTF-8."""
    with open(path, "rb") as handle:
        start = handle.read(4096)
    if start[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return "utf-16"
    if b"\0" in start:
        even, odd = start[0::2], start[1::2]
        if odd and odd.count(0) > len(odd) // 2:
            return "utf-16-le"     # ASCII text in UTF-16: the high bytes are NUL
        if even and even.count(0) > len(even) // 2:
            return "utf-16-be"
    return "utf-8-sig"


def open_text(path: Path, **options):
    """A label file opened for reading as text in the encoding :func:`text_encoding` finds."""
    return open(path, encoding=text_encoding(path), **options)


def not_text_error(path: Path, error: UnicodeDecodeError, line: int | None = None) -> ValueError:
    """One readable error for a label file that is not UTF-8 (or UTF-16 with a BOM) text."""
    where = f" (line {line})" if line else ""
    return ValueError(f"{path}: cannot read as UTF-8 text{where}: {error.reason}; save it as UTF-8 "
                      f"(UTF-16 with a byte-order mark is read too)")


def _read_csv(path: Path, required: tuple[str, ...]) -> tuple[dict[str, int], Iterator[tuple[int, list[str]]]]:
    """A csv file with a header: (column index by lower-case name, lazy (line number, fields) rows).

    Rows are streamed, so the 290 MB fer2013.csv is never held as text in memory.
    """
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))   # FER2013 pixel fields are ~9 kB
    handle = open_text(path, newline="")
    reader = csv.reader(handle)
    try:
        header = next(reader, None)
    except UnicodeDecodeError as error:
        handle.close()
        raise not_text_error(path, error, 1) from None
    columns = {field.strip().lower(): i for i, field in enumerate(header or [])}
    missing = [column for column in required if column.lower() not in columns]
    if missing:
        handle.close()
        raise ValueError(f"{path}: expected a header with columns {', '.join(required)}, "
                         f"found {', '.join(header) if header else 'an empty file'}")

    def rows() -> Iterator[tuple[int, list[str]]]:
        with handle:
            try:
                for row in reader:
                    if row:
                        yield reader.line_num, row
            except UnicodeDecodeError as error:
                raise not_text_error(path, error, reader.line_num + 1) from None

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
        code = ascii_number(folder)
        if code is not None:
            if digit_table is None:
                return None, (f"numeric class folder {folder!r} has no meaning for {self.name}; "
                              f"name class folders by expression (angry, happy, ...)")
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

    @classmethod
    def splits_on_disk(cls, root: Path) -> list[str]:
        """The split names this copy holds; the common layout is one ``<split>/<class>/`` folder each."""
        return [folder.name for folder in _subdirs(root)]

    def __repr__(self) -> str:
        dropped = f", dropped={sum(self.dropped.values())}" if self.dropped else ""
        skipped = f", skipped={self.report.skipped}" if self.report.skipped else ""
        return (f"{type(self).__name__}(split={self.split!r}, n={len(self)}, root={self.root!r}, "
                f"classes={len(self.classes)}{skipped}{dropped})")
