"""RAF-DB basic: the partition list file with aligned or original images, or train/test class folders."""
from __future__ import annotations

import os
from pathlib import Path

from hsbs_lib.config import shown
from hsbs_lib.data.datasets.adapter import (FileDataset, _child, _describe, _unknown_split, ascii_number, not_text_error,
                                            open_text)
from hsbs_lib.data.datasets.registry import register_dataset

# RAF-DB's own digits -> canonical class names (the order is translated by name, never by position).
RAF_DIGITS: dict[int, str] = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness",
                              6: "anger", 7: "neutral"}


@register_dataset("rafdb", aliases=("raf-db", "raf_db", "raf"))
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

    @classmethod
    def splits_on_disk(cls, root: Path) -> list[str]:
        label_file = next((root / n for n in cls.LABEL_FILES if (root / n).is_file()), None)
        if label_file is None:
            return list(cls.folder_splits(root))
        try:
            with open_text(label_file) as handle:
                prefixes = {line.split()[0].split("_")[0] for line in handle if line.split()}
        except UnicodeDecodeError as error:
            raise not_text_error(label_file, error) from None
        return [split for split in ("train", "test") if split in prefixes]

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
        try:
            self._read_label_file(label_file, relative, prefix, image_dir, on_disk)
        except UnicodeDecodeError as error:
            raise not_text_error(label_file, error) from None

    def _read_label_file(self, label_file: Path, relative: Path, prefix: str, image_dir: Path,
                         on_disk: set[str]) -> None:
        with open_text(label_file) as handle:
            for line_number, line in enumerate(handle, start=1):
                fields = line.split()
                where = f"{relative} line {line_number}"
                if not fields:
                    continue
                # A line belongs to the split its name's prefix says; one that names none is the train split's
                # (every split reads the file: a malformed line is reported once, under one split).
                owner = fields[0].startswith(prefix) or (prefix == "train_" and not fields[0].startswith("test_"))
                if len(fields) != 2:
                    if owner:
                        self._bad(f"{label_file}:{line_number}",
                                  f"malformed line {shown(line.strip())}: expected 'NAME LABEL'", "malformed")
                    continue
                file_name, code = fields
                if not file_name.startswith(("train_", "test_")):
                    if owner:
                        self._bad(f"{label_file}:{line_number}",
                                  f"image name {shown(file_name)} has neither a train_ nor a test_ prefix", "malformed")
                    continue
                if not file_name.startswith(prefix):
                    continue
                stem, extension = os.path.splitext(file_name)
                image_name = f"{stem}_aligned{extension}" if self.aligned else file_name
                image_path = image_dir / image_name
                if ascii_number(code) not in RAF_DIGITS:
                    self._bad(image_path, f"label {code!r} out of range 1..7 ({where})")
                    continue
                if image_name not in on_disk:
                    self._bad(image_path, f"listed in {where} but missing")
                    continue
                label = self._class_label(RAF_DIGITS[int(code)])
                if label is not None:
                    self.samples.append((str(image_path), label))
