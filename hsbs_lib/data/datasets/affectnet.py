"""AffectNet: the manually annotated images with their csv lists, or the train_set/val_set export."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hsbs_lib.config import shown
from hsbs_lib.data.datasets.adapter import FileDataset, _child, _describe, _read_csv, _unknown_split, inside
from hsbs_lib.data.datasets.registry import register_dataset

# AffectNet's expression codes -> canonical class names; codes 8..10 are outside the protocol.
AFFECTNET_CODES: dict[int, str] = {0: "neutral", 1: "happiness", 2: "sadness", 3: "surprise", 4: "fear",
                                   5: "disgust", 6: "anger", 7: "contempt"}
AFFECTNET_EXCLUDED: dict[int, str] = {8: "none", 9: "uncertain", 10: "non-face"}

_AFFECTNET_SPLIT_DIRS = {"train": ("train_set", "train", "training"),
                         "val": ("val_set", "val", "validation", "valid", "test_set", "test")}



@register_dataset("affectnet")
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

    @classmethod
    def splits_on_disk(cls, root: Path) -> list[str]:
        if _child(root, "Manually_Annotated_Images") is not None:
            return [split for split, csv_name in (("train", "training.csv"), ("val", "validation.csv"))
                    if _child(root, csv_name, want_dir=False)
                    or _child(root / "Manually_Annotated_file_lists", csv_name, want_dir=False)]
        return [split for split, names in _AFFECTNET_SPLIT_DIRS.items() if _child(root, *names)]

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
                self._bad(where, f"malformed row: {len(row)} fields, expected {len(columns)}", "malformed")
                continue
            listed = row[columns["subdirectory_filepath"]]
            image_path = inside(image_dir, listed)
            if image_path is None:      # an absolute path, or ../ out of the images: never read
                self._bad(where, f"path {shown(listed)} is not under {image_dir.name}/", "outside")
                continue
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
        for image_path in self._images_in(images):
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
