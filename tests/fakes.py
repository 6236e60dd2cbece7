"""Tiny fake copies of every dataset layout, built in a temp dir from real encoded images.

Each image is one solid colour chosen by its class (``CLASS_COLOR``; FER2013 rows use ``CLASS_GREY``),
so a test can check that the label an adapter reports matches the pixels it decodes. Each builder
returns a :class:`FakeCopy` saying which files every split should yield with which canonical class,
and which entries are broken on purpose.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from hsbs_lib.data.labels import CANONICAL_8

# Distinct, JPEG-robust colours per canonical class.
CLASS_COLOR: dict[str, tuple[int, int, int]] = {
    "surprise": (240, 200, 20), "fear": (120, 20, 160), "disgust": (30, 140, 40), "happiness": (250, 120, 10),
    "sadness": (20, 60, 200), "anger": (210, 20, 20), "neutral": (128, 128, 128), "contempt": (20, 200, 200),
}
CLASS_GREY: dict[str, int] = {name: 20 + 30 * i for i, name in enumerate(CANONICAL_8)}

# FER2013 numeric codes and their class names (the csv's own order).
FER_CODE = {"anger": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 4, "surprise": 5, "neutral": 6}
RAF_DIGIT = {"surprise": 1, "fear": 2, "disgust": 3, "happiness": 4, "sadness": 5, "anger": 6, "neutral": 7}
AFFECTNET_CODE = {"neutral": 0, "happiness": 1, "sadness": 2, "surprise": 3, "fear": 4, "disgust": 5,
                  "anger": 6, "contempt": 7}


@dataclass
class FakeCopy:
    """A fake dataset copy: ``expected[split]`` maps file name -> canonical class of every good sample;
    ``bad_index[split]`` / ``bad_decode[split]`` name the entries broken at indexing / decoding time."""

    root: Path
    expected: dict[str, dict[str, str]] = field(default_factory=dict)
    bad_index: dict[str, set[str]] = field(default_factory=dict)
    bad_decode: dict[str, set[str]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)


def sample_classes(dataset) -> dict[str, str]:
    """file name (or csv:line) -> class name, for comparing an adapter's output with a FakeCopy."""
    return {Path(path).name: dataset.classes[label] for path, label in dataset.samples}


# ---------------------------------------------------------------------------------------- writers

def write_image(path: Path, color=(128, 128, 128), size=(12, 12)) -> Path:
    """A solid-colour RGB image; the format follows the extension (JPEG at high quality)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, tuple(color))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path)
    return path


def write_class_image(path: Path, class_name: str, size=(12, 12)) -> Path:
    return write_image(path, CLASS_COLOR[class_name], size)


def write_truncated_jpeg(path: Path) -> Path:
    """A JPEG cut in half: the header parses, the pixel data ends early."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_not_an_image(path: Path) -> Path:
    """A text file wearing an image extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image\n")
    return path


def grey_pixels(value: int) -> str:
    return " ".join([str(value)] * (48 * 48))


# --------------------------------------------------------------------------------------- RAF-DB

RAF_TRAIN = {"train_00001.jpg": "sadness", "train_00002.jpg": "surprise", "train_00003.jpg": "happiness",
             "train_00004.jpg": "neutral"}
RAF_TEST = {"test_0001.jpg": "fear", "test_0002.jpg": "anger", "test_0003.jpg": "disgust"}


def make_rafdb_basic(root: Path, *, broken: bool = False) -> FakeCopy:
    """EmoLabel/list_patition_label.txt + Image/aligned/*_aligned.jpg + Image/original/*.jpg.

    broken: a listed-but-missing image, a label 9, a malformed line (indexing), a truncated JPEG and
    a text file named .jpg (decoding), all in train.
    """
    copy = FakeCopy(root)
    lines = []
    for split, table in (("train", RAF_TRAIN), ("test", RAF_TEST)):
        copy.expected[split] = {}
        for name, class_name in table.items():
            stem = name[:-4]
            write_class_image(root / "Image" / "aligned" / f"{stem}_aligned.jpg", class_name)
            write_class_image(root / "Image" / "original" / name, class_name, size=(16, 20))
            lines.append(f"{name} {RAF_DIGIT[class_name]}")
            copy.expected[split][f"{stem}_aligned.jpg"] = class_name
        copy.bad_index[split], copy.bad_decode[split] = set(), set()
    if broken:
        lines += ["train_00005.jpg 2", "train_00006.jpg 9", "train_00007.jpg", "train_00008.jpg 4",
                  "train_00009.jpg 4"]
        write_class_image(root / "Image" / "aligned" / "train_00006_aligned.jpg", "fear")
        write_truncated_jpeg(root / "Image" / "aligned" / "train_00008_aligned.jpg")
        write_not_an_image(root / "Image" / "aligned" / "train_00009_aligned.jpg")
        # the malformed line's name says train: the train split reports it, the test split does not
        copy.bad_index["train"] = {"train_00005_aligned.jpg", "train_00006_aligned.jpg", "list_patition_label.txt:10"}
        copy.bad_decode["train"] = {"train_00008_aligned.jpg", "train_00009_aligned.jpg"}
        copy.expected["train"].update({"train_00008_aligned.jpg": "happiness", "train_00009_aligned.jpg": "happiness"})
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return copy


def make_class_folders(split_dir: Path, table: dict[str, str], folder_of=None) -> dict[str, str]:
    """Write ``split_dir/<folder>/<file>`` for {file: class}; ``folder_of`` maps class -> folder name."""
    folder_of = folder_of or (lambda class_name: class_name)
    for name, class_name in table.items():
        write_class_image(split_dir / folder_of(class_name) / name, class_name)
    return dict(table)


def make_rafdb_folders(root: Path, *, digits: bool = False) -> FakeCopy:
    """train/<class>/ and valid/<class>/ with class names (or RAF digits 1..7)."""
    folder_of = (lambda c: str(RAF_DIGIT[c])) if digits else (lambda c: c)
    copy = FakeCopy(root)
    copy.expected["train"] = make_class_folders(root / "train", {
        "a.jpg": "surprise", "b.jpg": "anger", "c.jpg": "neutral", "d.jpg": "happiness"}, folder_of)
    copy.expected["test"] = make_class_folders(root / "valid", {"e.jpg": "fear", "f.jpg": "sadness"}, folder_of)
    return copy


# ------------------------------------------------------------------------------------ FER2013(+)

FER_ROWS = [("anger", "Training"), ("happiness", "Training"), ("neutral", "Training"), ("surprise", "Training"),
            ("disgust", "PublicTest"), ("sadness", "PublicTest"), ("fear", "PrivateTest"), ("happiness", "PrivateTest")]


def make_fer2013_csv(root: Path, *, broken: bool = False) -> FakeCopy:
    """fer2013.csv with numeric codes; broken adds emotion 7, a short pixel row and an unknown Usage."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [(FER_CODE[c], grey_pixels(CLASS_GREY[c]), usage) for c, usage in FER_ROWS]
    if broken:
        rows += [(7, grey_pixels(10), "Training"), (3, "1 2 3", "Training"), (3, grey_pixels(10), "Bogus")]
    with open(root / "fer2013.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows(rows)
    copy = FakeCopy(root)
    for split, usage in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        copy.expected[split] = {f"fer2013.csv:{i + 2}": c for i, (c, u) in enumerate(FER_ROWS) if u == usage}
        copy.bad_index[split] = set()
    if broken:
        n = len(FER_ROWS)
        copy.bad_index["train"] = {f"fer2013.csv:{n + 2}", f"fer2013.csv:{n + 3}", f"fer2013.csv:{n + 4}"}
        for split in ("val", "test"):
            copy.bad_index[split] = {f"fer2013.csv:{n + 4}"}    # the unknown Usage belongs to no split
    return copy


def make_fer2013_folders(root: Path) -> FakeCopy:
    """The common image export: train/ test/ plus PublicTest/ and privatetest/ (mixed case), folders
    named angry ... surprise, whose alphabetical order is not the canonical one."""
    names = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happiness": "happy", "neutral": "neutral",
             "sadness": "sad", "surprise": "surprise"}
    copy = FakeCopy(root)
    copy.expected["train"] = make_class_folders(root / "train", {
        f"tr_{c}.png": c for c in names}, names.get)
    copy.expected["test"] = make_class_folders(root / "test", {"te_1.png": "sadness", "te_2.png": "anger"}, names.get)
    copy.expected["publictest"] = make_class_folders(root / "PublicTest", {"pu_1.png": "fear"}, names.get)
    copy.expected["privatetest"] = make_class_folders(root / "privatetest", {"pr_1.png": "disgust"}, names.get)
    return copy


# (votes in fer2013new column order: neutral happiness surprise sadness anger disgust fear contempt unknown NF)
FERPLUS_VOTES = [
    ("Training", [2, 8, 0, 0, 0, 0, 0, 0, 0, 0]),   # happiness 0.8 / neutral 0.2
    ("Training", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # not a face: dropped
    ("Training", [0, 0, 0, 4, 0, 0, 0, 0, 6, 0]),   # unknown majority: dropped
    ("Training", [0, 0, 5, 0, 0, 0, 5, 0, 0, 0]),   # surprise/fear tie: dropped by majority, kept by soft
    ("Training", [0, 0, 0, 0, 3, 0, 0, 7, 0, 0]),   # contempt: dropped with 7 classes
    ("Training", [1, 0, 0, 0, 6, 3, 0, 0, 0, 0]),   # anger
    ("PrivateTest", [0, 0, 0, 10, 0, 0, 0, 0, 0, 0]),  # sadness
]


def make_ferplus(root: Path, *, pixels_elsewhere: Path | None = None) -> FakeCopy:
    """fer2013new.csv votes plus fer2013.csv pixels (row i grey value 10 * (i + 1))."""
    root.mkdir(parents=True, exist_ok=True)
    pixels_root = pixels_elsewhere or root
    pixels_root.mkdir(parents=True, exist_ok=True)
    with open(pixels_root / "fer2013.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        for i, (usage, _) in enumerate(FERPLUS_VOTES):
            writer.writerow([0, grey_pixels(10 * (i + 1)), usage])
    with open(root / "fer2013new.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger",
                         "disgust", "fear", "contempt", "unknown", "NF"])
        for i, (usage, votes) in enumerate(FERPLUS_VOTES):
            writer.writerow([usage, f"fer{i:07d}.png", *votes])
    return FakeCopy(root)


# ------------------------------------------------------------------------------------- AffectNet

def make_affectnet_csv(root: Path, *, broken: bool = False) -> FakeCopy:
    """Manually_Annotated_Images/<dir>/<file> + training.csv / validation.csv with codes 0..10."""
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
              "expression", "valence", "arousal"]
    train = [("1/n.jpg", 0), ("1/h.jpg", 1), ("2/s.jpg", 2), ("2/su.jpg", 3), ("3/f.jpg", 4), ("3/d.jpg", 5),
             ("4/a.jpg", 6), ("4/c.jpg", 7), ("5/none.jpg", 8), ("5/nonface.jpg", 10)]
    val = [("6/v1.jpg", 1), ("6/v2.jpg", 6)]
    code_class = {code: name for name, code in AFFECTNET_CODE.items()}
    copy = FakeCopy(root)
    for split, csv_name, rows in (("train", "training.csv", train), ("val", "validation.csv", val)):
        lines = list(rows)
        copy.expected[split] = {}
        for relative, code in rows:
            class_name = code_class.get(code, "neutral")
            write_class_image(root / "Manually_Annotated_Images" / relative, class_name, size=(20, 16))
            if code in code_class:
                copy.expected[split][Path(relative).name] = class_name
        if broken and split == "train":
            lines += [("7/missing.jpg", 1), ("7/odd.jpg", 12)]
            write_class_image(root / "Manually_Annotated_Images" / "7" / "odd.jpg", "happiness")
            copy.bad_index["train"] = {"missing.jpg", "odd.jpg"}
        with open(root / csv_name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for relative, code in lines:
                writer.writerow([relative, 0, 0, 10, 10, "1.0;2.0;3.0", code, 0.1, -0.2])
    return copy


def make_affectnet_npy(root: Path) -> FakeCopy:
    """train_set/images/N.jpg + annotations/N_exp.npy (string codes, as the common export stores
    them); val_set keeps N_exp.npy next to the images (integer codes)."""
    copy = FakeCopy(root)
    code_class = {code: name for name, code in AFFECTNET_CODE.items()}
    for split, folder, codes, beside in (("train", "train_set", [0, 3, 6, 9], False),
                                         ("val", "val_set", [1, 5], True)):
        copy.expected[split] = {}
        annotations = root / folder / ("images" if beside else "annotations")
        annotations.mkdir(parents=True, exist_ok=True)
        for i, code in enumerate(codes):
            class_name = code_class.get(code, "neutral")
            write_class_image(root / folder / "images" / f"{i}.jpg", class_name)
            np.save(annotations / f"{i}_exp.npy", np.array(code) if beside else np.array(str(code)))
            if code in code_class:
                copy.expected[split][f"{i}.jpg"] = class_name
    return copy


# ------------------------------------------------------------------------------------ SFEW, KDEF, CK+

def make_sfew(root: Path) -> FakeCopy:
    """Train/<Class>/ and Val/<Class>/ with SFEW's capitalised folder names."""
    folder = {"anger": "Angry", "disgust": "Disgust", "fear": "Fear", "happiness": "Happy", "neutral": "Neutral",
              "sadness": "Sad", "surprise": "Surprise"}
    copy = FakeCopy(root)
    copy.expected["train"] = make_class_folders(root / "Train", {f"t_{c}.png": c for c in folder}, folder.get)
    copy.expected["val"] = make_class_folders(root / "Val", {"v_1.png": "happiness", "v_2.png": "sadness"}, folder.get)
    return copy


KDEF_CODE = {"fear": "AF", "anger": "AN", "disgust": "DI", "happiness": "HA", "neutral": "NE", "sadness": "SA",
             "surprise": "SU"}
KDEF_VIEW_BIN = {"FL": 0, "HL": 1, "S": 2, "HR": 3, "FR": 4}


def make_kdef(root: Path, *, broken: bool = False) -> tuple[FakeCopy, dict[str, tuple[int, str]]]:
    """KDEF/<session+id>/<code>.JPG for 6 people (F01 also in session B).

    Returns the copy and {file name: (pose bin, subject)}.
    """
    classes, views = list(KDEF_CODE), list(KDEF_VIEW_BIN)
    copy, meta = FakeCopy(root), {}
    copy.expected["all"] = {}
    people = [("A", "F01"), ("B", "F01"), ("A", "F02"), ("A", "F03"), ("A", "M01"), ("A", "M02"), ("A", "M03")]
    for p, (session, subject) in enumerate(people):
        for k in range(3):
            class_name, view = classes[(p + 2 * k) % 7], views[(p + k) % 5]
            name = f"{session}{subject}{KDEF_CODE[class_name]}{view}.JPG"
            write_class_image(root / "KDEF" / f"{session}{subject}" / name, class_name, size=(12, 16))
            copy.expected["all"][name] = class_name
            meta[name] = (KDEF_VIEW_BIN[view], subject)
    if broken:
        write_class_image(root / "KDEF" / "AF01" / "README.JPG", "neutral")
        write_class_image(root / "KDEF" / "AF01" / "AF01XXS.JPG", "neutral")
        copy.bad_index["all"] = {"README.JPG", "AF01XXS.JPG"}
    return copy, meta


def make_ckplus(root: Path, *, broken: bool = False) -> FakeCopy:
    """<class>/S###_###_########.png for 6 subjects, contempt included, no neutral."""
    folders = {"anger": "anger", "contempt": "contempt", "disgust": "disgust", "fear": "fear",
               "happiness": "happy", "sadness": "sadness", "surprise": "surprise"}
    subjects = ["S005", "S010", "S011", "S014", "S022", "S026"]
    copy = FakeCopy(root)
    copy.expected["all"] = {}
    for s, subject in enumerate(subjects):
        for k, class_name in enumerate(list(folders)[s % 3::3]):
            name = f"{subject}_{k + 1:03d}_{s * 7 + k:08d}.png"
            write_class_image(root / folders[class_name] / name, class_name)
            copy.expected["all"][name] = class_name
    if broken:
        write_class_image(root / "happy" / "nosubject.png", "happiness")
        write_class_image(root / "bored" / "S005_009_00000001.png", "neutral")
        copy.bad_index["all"] = {"nosubject.png", "bored"}
    return copy


def make_imagefolder(root: Path, *, broken: bool = False) -> FakeCopy:
    """train/ and val/ with mixed spellings (Angry, happy, Surprised, sadness); broken adds an unknown
    class folder, a numeric class folder, a truncated JPEG and a text file named .jpg."""
    copy = FakeCopy(root)
    spelled = {"anger": "Angry", "happiness": "happy", "surprise": "Surprised", "sadness": "sadness"}
    copy.expected["train"] = make_class_folders(root / "train", {
        "1.jpg": "anger", "2.jpg": "happiness", "3.jpg": "surprise", "4.jpg": "sadness"}, spelled.get)
    copy.expected["val"] = make_class_folders(root / "val", {"5.jpg": "happiness", "6.jpg": "anger"}, spelled.get)
    copy.bad_index = {"train": set(), "val": set()}
    copy.bad_decode = {"train": set(), "val": set()}
    if broken:
        write_class_image(root / "train" / "confused" / "7.jpg", "neutral")
        write_class_image(root / "train" / "3" / "8.jpg", "neutral")
        write_truncated_jpeg(root / "train" / "happy" / "truncated.jpg")
        write_not_an_image(root / "train" / "Angry" / "notimage.jpg")
        copy.bad_index["train"] = {"confused", "3"}
        copy.bad_decode["train"] = {"truncated.jpg", "notimage.jpg"}
        copy.expected["train"].update({"truncated.jpg": "happiness", "notimage.jpg": "anger"})
    return copy
