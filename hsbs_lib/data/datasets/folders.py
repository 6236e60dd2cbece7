"""Datasets read from class folders: SFEW 2.0, KDEF, CK+ and any ``<split>/<class>/`` copy (imagefolder).

KDEF and CK+ ship as one pool of images; they are split into subject-independent folds.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from hsbs_lib.data.datasets.adapter import FileDataset, _child, _describe, _subdirs, _unknown_split
from hsbs_lib.data.datasets.registry import register_dataset
from hsbs_lib.data.images import is_image_file
from hsbs_lib.data.labels import canonical_name

KDEF_EXPRESSIONS: dict[str, str] = {"AF": "fear", "AN": "anger", "DI": "disgust", "HA": "happiness",
                                    "NE": "neutral", "SA": "sadness", "SU": "surprise"}
# Camera views from full left to full right -> pose bins 0..4.
KDEF_VIEWS: dict[str, int] = {"FL": 0, "HL": 1, "S": 2, "HR": 3, "FR": 4}
_FOLD_SPLITS = ("train", "test", "all")


class _FoldMixin:
    """Subject-independent k-fold splits for datasets shipped as one pool (KDEF, CK+)."""

    @classmethod
    def splits_on_disk(cls, root: Path) -> list[str]:
        return ["all"]      # the folds come from the fold / n_folds options with train / test

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



@register_dataset("sfew", aliases=("sfew2", "sfew2.0"))
class SFEW(FileDataset):
    """SFEW 2.0: ``Train/<Class>/`` and ``Val/<Class>/`` (``test`` and ``val`` read ``Val/``)."""

    name = "sfew"

    SPLIT_FOLDERS = (("train", ("train",)), ("val", ("val", "valid", "validation")))

    def __init__(self, root, split="train", *, num_classes=7, transform=None, skip_bad=False):
        super().__init__(root, split, num_classes=num_classes, transform=transform, skip_bad=skip_bad)
        root = Path(root)
        folders = {key: folder for key, names in self.SPLIT_FOLDERS if (folder := _child(root, *names)) is not None}
        if not folders:
            raise FileNotFoundError(f"sfew: expected Train/<Class>/ and Val/<Class>/ under {root}; "
                                    f"found: {_describe(root)}")
        key = {"test": "val", "valid": "val", "validation": "val"}.get(self.split, self.split)
        if key not in folders:
            raise _unknown_split(self.name, self.split, list(folders))
        self._scan_class_folders(folders[key])
        self._finish()

    @classmethod
    def splits_on_disk(cls, root: Path) -> list[str]:
        return [split for split, names in cls.SPLIT_FOLDERS if _child(root, *names)]


_KDEF_CODE = re.compile(r"^(?P<session>[AB])(?P<subject>[FM]\d{2})(?P<expression>[A-Z]{2})"
                        r"(?P<view>FL|HL|S|HR|FR)$", re.IGNORECASE)



@register_dataset("kdef")
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



@register_dataset("ckplus", aliases=("ck+", "ck"))
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



@register_dataset("imagefolder", aliases=("image_folder", "folder"))
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
