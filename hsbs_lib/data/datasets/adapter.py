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

from hsbs_lib.config import shown
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


def broken_link(path: Path) -> tuple[str, str] | None:
    """(kind, reason) when ``path`` is a symbolic link that leads nowhere (dangling) or to itself (a loop),
    else None: such an entry is neither a file nor a folder, so a listing would skip it without a word."""
    if not path.is_symlink() or path.exists():
        return None
    try:
        path.resolve(strict=True)
    except FileNotFoundError:
        return "dangling", f"dangling symbolic link to {os.readlink(path)}"
    except (OSError, RuntimeError):      # ELOOP; Python before 3.13 raises RuntimeError for a loop
        return "loop", "symbolic link loop"
    return None


def inside(base: Path, relative: str) -> Path | None:
    """``base / relative`` when that names a path under ``base`` (after ``..`` is resolved, without following
    links, so a copy built of symbolic links still works), else None: an absolute path or one that climbs
    out of the dataset root is never read."""
    text = relative.strip()
    if not text or os.path.isabs(text) or text.startswith(("\\", "/")) or (len(text) > 1 and text[1] == ":"):
        return None
    joined = os.path.normpath(os.path.join(base, text))
    return Path(joined) if os.path.commonpath([joined, os.path.normpath(base)]) == os.path.normpath(base) else None


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
    return ValueError(f"{name}: unknown split {shown(split)}; splits here: {', '.join(present) or 'none'}")


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

    def _bad(self, path, reason: str, kind: str = "") -> None:
        self.report.bad.append(BadEntry(str(path), reason, kind))

    def _broken_links(self, folder: Path) -> None:
        """Report every symbolic link in ``folder`` that leads nowhere or to itself (a listing skips them)."""
        for entry in sorted(folder.iterdir()):
            problem = None if entry.name.startswith(".") else broken_link(entry)
            if problem is not None:
                self._bad(entry, problem[1], problem[0])

    def _images_in(self, folder: Path) -> list[Path]:
        """The image files of ``folder``, its broken symbolic links reported as bad entries."""
        self._broken_links(folder)
        return _image_files(folder)

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
        for stray in self._images_in(split_dir):
            self._bad(stray, "image outside a class folder")
        for class_dir in _subdirs(split_dir):
            files = self._images_in(class_dir)
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

    def _drop_duplicates(self) -> None:
        """An image listed more than once: kept once when every listing gives it the same label (the others
        counted as dropped), a bad entry when the labels differ (no listing is trusted)."""
        labels: dict[str, set[int]] = {}
        for path, label in self.samples:
            labels.setdefault(path, set()).add(label)
        if len(labels) == len(self.samples):
            return
        seen: set[str] = set()
        keep = []
        for index, (path, _) in enumerate(self.samples):
            if len(labels[path]) > 1:
                if path not in seen:
                    names = ", ".join(self.classes[label] for label in sorted(labels[path]))
                    self._bad(path, f"listed {sum(p == path for p, _ in self.samples)} times with different labels "
                                    f"({names})", "conflicting")
            elif path in seen:
                self._drop("listed again with the same label")
            else:
                keep.append(index)
            seen.add(path)
        listed = len(self.samples)
        self.samples = [self.samples[i] for i in keep]
        for name in ("poses", "subjects"):          # the lists parallel to samples
            values = getattr(self, name)
            if values is not None and len(values) == listed:
                setattr(self, name, [values[i] for i in keep])
        if self.soft_labels is not None and len(self.soft_labels) == listed:
            self.soft_labels = self.soft_labels[keep]

    def _finish(self) -> None:
        self._drop_duplicates()
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
