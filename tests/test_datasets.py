"""Dataset adapters: canonical labels for every layout, bad entries, folds, and image decoding."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fakes
from hsbs_lib.data.base import BadDatasetError
from hsbs_lib.data.datasets import DATASET_NAMES, dataset_splits, load_dataset
from hsbs_lib.data.images import ImageDecodeError, decode_image
from hsbs_lib.data.labels import CANONICAL_7, CANONICAL_8


def assert_pixels_match_labels(dataset, tolerance=8):
    """Every decoded image is the solid colour of the class its label names."""
    for index, (_, label) in enumerate(dataset.samples):
        image = dataset.load_image(index)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        expected = np.array(fakes.CLASS_COLOR[dataset.classes[label]])
        assert np.abs(image.reshape(-1, 3).mean(0) - expected).max() < tolerance, dataset.samples[index]


def bad_names(dataset_or_report) -> set[str]:
    report = getattr(dataset_or_report, "report", dataset_or_report)
    return {Path(entry.path).name for entry in report.bad}


# ------------------------------------------------------------------------------------------ RAF-DB

def test_rafdb_basic_list_file_maps_raf_digits(tmp_path):
    copy = fakes.make_rafdb_basic(tmp_path)
    for split in ("train", "test"):
        dataset = load_dataset("rafdb", tmp_path, split)
        assert fakes.sample_classes(dataset) == copy.expected[split]
        assert dataset.classes == CANONICAL_7 and dataset.poses is None and dataset.soft_labels is None
        assert_pixels_match_labels(dataset)
    # RAF digit 5 is sadness: canonical index 4 (the digits are 1-based)
    train = load_dataset("raf-db", tmp_path, "train")
    assert dict((Path(p).name, label) for p, label in train.samples)["train_00001_aligned.jpg"] == 4
    assert dataset_splits("rafdb", tmp_path) == ["train", "test"]


def test_rafdb_original_images_option(tmp_path):
    fakes.make_rafdb_basic(tmp_path)
    dataset = load_dataset("rafdb", tmp_path, "test", aligned=False)
    assert {Path(p).name for p, _ in dataset.samples} == set(fakes.RAF_TEST)
    assert dataset.load_image(0).shape == (20, 16, 3)
    assert_pixels_match_labels(dataset)


@pytest.mark.parametrize("digits", [False, True])
def test_rafdb_folder_form_by_name_or_digit(tmp_path, digits):
    copy = fakes.make_rafdb_folders(tmp_path, digits=digits)
    for split in ("train", "test"):
        dataset = load_dataset("rafdb", tmp_path, split)
        assert fakes.sample_classes(dataset) == copy.expected[split]
        assert_pixels_match_labels(dataset)
    assert dataset_splits("rafdb", tmp_path) == ["train", "test"]


def test_rafdb_bad_entries_listed_then_skipped(tmp_path):
    copy = fakes.make_rafdb_basic(tmp_path, broken=True)
    with pytest.raises(BadDatasetError) as caught:
        load_dataset("rafdb", tmp_path, "train")
    report = caught.value.report
    assert bad_names(report) == copy.bad_index["train"]
    reasons = {Path(entry.path).name: entry.reason for entry in report.bad}
    assert "missing" in reasons["train_00005_aligned.jpg"]
    assert "out of range" in reasons["train_00006_aligned.jpg"]
    assert "malformed" in reasons["list_patition_label.txt:10"]
    message = str(caught.value)
    assert all(name in message for name in ("train_00005_aligned.jpg", "train_00006_aligned.jpg"))

    dataset = load_dataset("rafdb", tmp_path, "train", skip_bad=True)
    assert dataset.report.skipped == 3 and len(dataset.report.bad) == 3
    # decode problems are not visible at indexing time (no decoding there): the check finds them
    assert fakes.sample_classes(dataset) == copy.expected["train"]


def test_rafdb_missing_root_and_wrong_layout_are_readable(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("rafdb", tmp_path / "nowhere", "train")
    (tmp_path / "images").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as caught:
        load_dataset("rafdb", tmp_path, "train")
    message = str(caught.value)
    assert f"expected EmoLabel/list_patition_label.txt under {tmp_path}" in message
    assert "images/" in message and "notes.txt" in message


def test_rafdb_missing_image_folder_names_the_option(tmp_path):
    fakes.make_rafdb_basic(tmp_path)
    for path in sorted((tmp_path / "Image" / "aligned").iterdir()):
        path.unlink()
    (tmp_path / "Image" / "aligned").rmdir()
    with pytest.raises(FileNotFoundError, match="aligned=False"):
        load_dataset("rafdb", tmp_path, "train")


# ----------------------------------------------------------------------------------------- FER2013

def test_fer2013_csv_numeric_codes_and_usage_splits(tmp_path):
    copy = fakes.make_fer2013_csv(tmp_path)
    for split, alias in (("train", "training"), ("val", "publictest"), ("test", "privatetest")):
        dataset = load_dataset("fer2013", tmp_path, split)
        assert fakes.sample_classes(dataset) == copy.expected[split]
        assert fakes.sample_classes(load_dataset("fer2013", tmp_path, alias)) == copy.expected[split]
        for index, (_, label) in enumerate(dataset.samples):
            image = dataset.load_image(index)
            assert image.shape == (48, 48, 3) and image.dtype == np.uint8
            assert (image == fakes.CLASS_GREY[dataset.classes[label]]).all()
        assert dataset.images.shape == (len(dataset), 48, 48, 3)
    # FER2013 code 0 (angry) is canonical 5, code 5 (surprise) is canonical 0
    train = load_dataset("fer2013", tmp_path, "train")
    assert [label for _, label in train.samples] == [5, 3, 6, 0]
    assert dataset_splits("fer2013", tmp_path) == ["train", "publictest", "privatetest"]


def test_fer2013_csv_bad_rows(tmp_path):
    copy = fakes.make_fer2013_csv(tmp_path, broken=True)
    with pytest.raises(BadDatasetError) as caught:
        load_dataset("fer2013", tmp_path, "train")
    assert bad_names(caught.value.report) == copy.bad_index["train"]
    reasons = " | ".join(entry.reason for entry in caught.value.report.bad)
    assert "out of range 0..6" in reasons and "2304" in reasons and "Usage 'Bogus'" in reasons
    dataset = load_dataset("fer2013", tmp_path, "train", skip_bad=True)
    assert len(dataset) == 4 and dataset.report.skipped == 3
    assert bad_names(load_dataset("fer2013", tmp_path, "test", skip_bad=True)) == copy.bad_index["test"]


def test_fer2013_folders_alphabetical_order_is_not_used(tmp_path):
    copy = fakes.make_fer2013_folders(tmp_path)
    train = load_dataset("fer2013", tmp_path, "train")
    assert fakes.sample_classes(train) == copy.expected["train"]
    by_folder = {Path(path).parent.name: label for path, label in train.samples}
    alphabetical = {name: i for i, name in enumerate(sorted(by_folder))}
    assert by_folder != alphabetical
    assert by_folder == {"surprise": 0, "fear": 1, "disgust": 2, "happy": 3, "sad": 4, "angry": 5, "neutral": 6}
    assert_pixels_match_labels(train)
    for split in ("test", "publictest", "privatetest"):
        assert fakes.sample_classes(load_dataset("fer2013", tmp_path, split)) == copy.expected[split]
    # no val/ folder: val reads PublicTest/
    assert fakes.sample_classes(load_dataset("fer2013", tmp_path, "val")) == copy.expected["publictest"]
    assert set(dataset_splits("fer2013", tmp_path)) == {"train", "test", "publictest", "privatetest"}


# ----------------------------------------------------------------------------------------- FERPlus

def test_ferplus_majority_labels_and_drops(tmp_path):
    fakes.make_ferplus(tmp_path)
    dataset = load_dataset("ferplus", tmp_path, "train")
    # csv line = row + 2 (header, 1-based): rows 0 (happiness) and 5 (anger) survive
    assert fakes.sample_classes(dataset) == {"fer2013.csv:2": "happiness", "fer2013.csv:7": "anger"}
    assert dataset.soft_labels is None
    assert dataset.dropped == {"majority unknown/NF": 2, "tied majority": 1,
                               "majority contempt (not in the 7 classes)": 1}
    assert dataset.report.bad == []
    assert (dataset.load_image(1) == 60).all()   # pixels come from fer2013.csv row 5
    test = load_dataset("ferplus", tmp_path, "test")
    assert fakes.sample_classes(test) == {"fer2013.csv:8": "sadness"}


def test_ferplus_soft_labels(tmp_path):
    fakes.make_ferplus(tmp_path)
    dataset = load_dataset("ferplus", tmp_path, "train", label_mode="soft")
    assert dataset.soft_labels.dtype == np.float32 and dataset.soft_labels.shape == (3, 7)
    np.testing.assert_allclose(dataset.soft_labels.sum(1), 1.0, rtol=1e-6)
    rows = dict(zip((Path(p).name for p, _ in dataset.samples), dataset.soft_labels))
    index = CANONICAL_7.index
    np.testing.assert_allclose(rows["fer2013.csv:2"][[index("happiness"), index("neutral")]], [0.8, 0.2])
    np.testing.assert_allclose(rows["fer2013.csv:5"][[index("surprise"), index("fear")]], [0.5, 0.5])
    np.testing.assert_allclose(rows["fer2013.csv:7"][[index("anger"), index("disgust"), index("neutral")]],
                               [0.6, 0.3, 0.1])
    target = dataset[0][1]
    assert target["soft_label"].shape == (7,)

    eight = load_dataset("ferplus", tmp_path, "train", label_mode="soft", num_classes=8)
    rows = dict(zip((Path(p).name for p, _ in eight.samples), eight.soft_labels))
    np.testing.assert_allclose(rows["fer2013.csv:6"][[CANONICAL_8.index("contempt"), CANONICAL_8.index("anger")]],
                               [0.7, 0.3])
    assert fakes.sample_classes(eight)["fer2013.csv:6"] == "contempt"


def test_ferplus_pixels_from_option_and_missing_pixels_message(tmp_path):
    fakes.make_ferplus(tmp_path / "votes", pixels_elsewhere=tmp_path / "pixels")
    with pytest.raises(FileNotFoundError, match="fer2013_csv=PATH"):
        load_dataset("ferplus", tmp_path / "votes", "train")
    dataset = load_dataset("ferplus", tmp_path / "votes", "train", fer2013_csv=str(tmp_path / "pixels" / "fer2013.csv"))
    assert len(dataset) == 2


# --------------------------------------------------------------------------------------- AffectNet

def test_affectnet_csv_codes_and_drops(tmp_path):
    copy = fakes.make_affectnet_csv(tmp_path)
    train7 = load_dataset("affectnet", tmp_path, "train")
    expected7 = {name: c for name, c in copy.expected["train"].items() if c != "contempt"}
    assert fakes.sample_classes(train7) == expected7
    assert train7.dropped == {"expression 8 (none)": 1, "expression 10 (non-face)": 1,
                              "contempt (not in the 7 classes)": 1}
    assert_pixels_match_labels(train7)
    train8 = load_dataset("affectnet", tmp_path, "train", num_classes=8)
    assert fakes.sample_classes(train8) == copy.expected["train"]
    assert train8.classes == CANONICAL_8
    for split in ("test", "val"):
        assert fakes.sample_classes(load_dataset("affectnet", tmp_path, split)) == copy.expected["val"]
    assert dataset_splits("affectnet", tmp_path) == ["train", "val"]


def test_affectnet_csv_bad_entries(tmp_path):
    copy = fakes.make_affectnet_csv(tmp_path, broken=True)
    with pytest.raises(BadDatasetError) as caught:
        load_dataset("affectnet", tmp_path, "train")
    assert bad_names(caught.value.report) == copy.bad_index["train"]
    assert len(load_dataset("affectnet", tmp_path, "train", skip_bad=True)) == 7


def test_affectnet_npy_form(tmp_path):
    copy = fakes.make_affectnet_npy(tmp_path)
    train = load_dataset("affectnet", tmp_path, "train")
    assert fakes.sample_classes(train) == copy.expected["train"]
    assert train.dropped == {"expression 9 (uncertain)": 1}
    assert_pixels_match_labels(train)
    assert fakes.sample_classes(load_dataset("affectnet", tmp_path, "test")) == copy.expected["val"]
    assert dataset_splits("affectnet", tmp_path) == ["train", "val"]


# ----------------------------------------------------------------------------------- SFEW, folders

def test_sfew_folders(tmp_path):
    copy = fakes.make_sfew(tmp_path)
    train = load_dataset("sfew", tmp_path, "train")
    assert fakes.sample_classes(train) == copy.expected["train"]
    assert_pixels_match_labels(train)
    for split in ("val", "test"):
        assert fakes.sample_classes(load_dataset("sfew", tmp_path, split)) == copy.expected["val"]
    assert dataset_splits("sfew", tmp_path) == ["train", "val"]


def test_imagefolder_synonyms_and_bad_class_folders(tmp_path):
    copy = fakes.make_imagefolder(tmp_path, broken=True)
    with pytest.raises(BadDatasetError) as caught:
        load_dataset("imagefolder", tmp_path, "train")
    assert bad_names(caught.value.report) == copy.bad_index["train"]
    assert "unknown class name 'confused'" in str(caught.value)
    train = load_dataset("imagefolder", tmp_path, "train", skip_bad=True)
    assert fakes.sample_classes(train) == copy.expected["train"]
    assert train.report.skipped == 2
    val = load_dataset("imagefolder", tmp_path, "valid")
    assert fakes.sample_classes(val) == copy.expected["val"]
    assert_pixels_match_labels(val)
    assert dataset_splits("imagefolder", tmp_path) == ["train", "val"]
    with pytest.raises(ValueError, match="splits here: train, val"):
        load_dataset("imagefolder", tmp_path, "holdout")


# ------------------------------------------------------------------------------------- KDEF, CK+

def test_kdef_codes_poses_and_subjects(tmp_path):
    copy, meta = fakes.make_kdef(tmp_path)
    dataset = load_dataset("kdef", tmp_path, "all")
    assert fakes.sample_classes(dataset) == copy.expected["all"]
    names = [Path(p).name for p, _ in dataset.samples]
    assert dataset.poses == [meta[name][0] for name in names]
    assert dataset.subjects == [meta[name][1] for name in names]
    assert set(dataset.poses) == {0, 1, 2, 3, 4}
    assert_pixels_match_labels(dataset)
    image, target = dataset[5]
    assert target == {"label": dataset.samples[5][1], "pose": meta[names[5]][0], "index": 5}


@pytest.mark.parametrize("name, builder", [("kdef", lambda root: fakes.make_kdef(root)[0]),
                                          ("ckplus", fakes.make_ckplus)])
def test_subject_independent_folds(tmp_path, name, builder):
    builder(tmp_path)
    everything = load_dataset(name, tmp_path, "all", num_classes=8)
    all_paths = {path for path, _ in everything.samples}
    test_paths = []
    for fold in range(3):
        train = load_dataset(name, tmp_path, "train", fold=fold, n_folds=3, num_classes=8)
        test = load_dataset(name, tmp_path, "test", fold=fold, n_folds=3, num_classes=8)
        assert set(train.subjects).isdisjoint(test.subjects)
        assert {p for p, _ in train.samples} | {p for p, _ in test.samples} == all_paths
        test_paths += [p for p, _ in test.samples]
    assert sorted(test_paths) == sorted(all_paths)       # the test folds partition the pool
    again = load_dataset(name, tmp_path, "test", fold=1, n_folds=3, num_classes=8)
    assert again.samples == load_dataset(name, tmp_path, "test", fold=1, n_folds=3, num_classes=8).samples
    with pytest.raises(ValueError, match="fold must be in 0..2"):
        load_dataset(name, tmp_path, "train", fold=3, n_folds=3)
    with pytest.raises(ValueError, match="subjects cannot fill"):
        load_dataset(name, tmp_path, "train", n_folds=50)
    assert dataset_splits(name, tmp_path) == ["all"]


def test_kdef_bad_file_names(tmp_path):
    copy, _ = fakes.make_kdef(tmp_path, broken=True)
    with pytest.raises(BadDatasetError) as caught:
        load_dataset("kdef", tmp_path, "all")
    assert bad_names(caught.value.report) == copy.bad_index["all"]
    assert len(load_dataset("kdef", tmp_path, "all", skip_bad=True)) == len(copy.expected["all"])


def test_ckplus_contempt_dropped_with_7_classes_and_subjects(tmp_path):
    copy = fakes.make_ckplus(tmp_path)
    n_contempt = sum(c == "contempt" for c in copy.expected["all"].values())
    seven = load_dataset("ckplus", tmp_path, "all")
    assert seven.dropped == {"contempt (not in the 7 classes)": n_contempt}
    assert fakes.sample_classes(seven) == {k: c for k, c in copy.expected["all"].items() if c != "contempt"}
    eight = load_dataset("ckplus", tmp_path, "all", num_classes=8)
    assert fakes.sample_classes(eight) == copy.expected["all"]
    assert_pixels_match_labels(eight)
    assert eight.subjects == [Path(p).name[:4] for p, _ in eight.samples]
    assert "neutral" not in {eight.classes[label] for _, label in eight.samples}


def test_ckplus_bad_entries(tmp_path):
    copy = fakes.make_ckplus(tmp_path, broken=True)
    with pytest.raises(BadDatasetError) as caught:
        load_dataset("ckplus", tmp_path, "all", num_classes=8)
    assert bad_names(caught.value.report) == copy.bad_index["all"]
    skipped = load_dataset("ckplus", tmp_path, "all", num_classes=8, skip_bad=True)
    assert len(skipped) == len(copy.expected["all"]) and skipped.report.skipped == 2


# --------------------------------------------------------------------------------------- the API

def test_load_dataset_readable_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist", tmp_path)
    fakes.make_sfew(tmp_path)
    with pytest.raises(ValueError, match="unknown option.*colour"):
        load_dataset("sfew", tmp_path, "train", colour=True)
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        load_dataset("sfew", tmp_path, "holdout")
    monkeypatch.delenv("HSBS_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="HSBS_DATA"):
        load_dataset("sfew", None, "train")
    monkeypatch.setenv("HSBS_DATA", str(tmp_path))
    assert len(load_dataset("sfew", None, "train")) == 7
    with pytest.raises(FileNotFoundError, match="Train/<Class>/"):
        load_dataset("sfew", tmp_path / "Train", "train")


def test_getitem_applies_transform_and_returns_target(tmp_path):
    fakes.make_sfew(tmp_path)
    dataset = load_dataset("sfew", tmp_path, "val", transform=lambda image: image.shape)
    shape, target = dataset[0]
    assert shape == (12, 12, 3)
    assert target == {"label": dataset.samples[0][1], "index": 0}


def test_every_name_is_served():
    assert set(DATASET_NAMES) == {"rafdb", "fer2013", "ferplus", "affectnet", "sfew", "kdef", "ckplus",
                                  "imagefolder", "synthfer"}


@pytest.mark.skipif(importlib.util.find_spec("hsbs_lib.data.synthfer") is None, reason="SynthFER not available")
def test_synthfer_smoke():
    dataset = load_dataset("synthfer", None, "train", n=8, size=32, seed=0)
    assert len(dataset) == 8
    image, target = dataset[0]
    assert 0 <= target["label"] < 7


# ---------------------------------------------------------------------------------------- decoding

def test_decode_grey_palette_and_alpha_to_rgb(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    rgb = decode_image(tmp_path / "grey.png")
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert all((rgb[:, :, c] == grey).all() for c in range(3))

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = 255
    rgba[0, :, 3] = 0          # fully transparent row -> black
    rgba[1, :, 3] = 128        # half transparent -> half intensity on black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = decode_image(tmp_path / "rgba.png")
    assert out.shape == (4, 4, 3)
    assert (out[0] == 0).all() and (out[2:] == (200, 100, 50)).all()
    np.testing.assert_allclose(out[1, 0], np.array([200, 100, 50]) * 128 / 255, atol=1)

    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA").save(tmp_path / "la.png")
    assert (decode_image(tmp_path / "la.png")[:, :, 1] == grey).all()

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(tmp_path / "p.png")
    assert (decode_image(tmp_path / "p.png") == (10, 200, 30)).all()


def test_decode_cmyk_and_16_bit(tmp_path):
    Image.new("RGB", (8, 8), (200, 40, 90)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    cmyk = decode_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (8, 8, 3) and np.abs(cmyk.astype(int) - (200, 40, 90)).max() <= 6

    deep = np.array([[0, 257 * 100], [30000, 65535]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = decode_image(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[:, :, 0].tolist() == [[0, 100], [117, 255]]     # scaled by 255/65535, not clipped

    wide = Image.fromarray(deep.astype(np.int32), "I")
    wide.save(tmp_path / "wide.tif")
    assert decode_image(tmp_path / "wide.tif")[:, :, 2].tolist() == [[0, 100], [117, 255]]


def test_decode_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (10, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 5))     # top band white
    exif = Image.Exif()
    exif[0x0112] = 6                                 # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    out = decode_image(tmp_path / "rotated.jpg")
    assert out.shape == (10, 20, 3)
    assert out[:, -3:].mean() > 200 and out[:, :3].mean() < 50   # the white band is now on the right


def test_decode_broken_files_raise_with_path(tmp_path):
    truncated = fakes.write_truncated_jpeg(tmp_path / "cut.jpg")
    fake = fakes.write_not_an_image(tmp_path / "fake.jpg")
    for path, words in ((truncated, "truncated"), (fake, "not a recognised image"),
                        (tmp_path / "absent.png", "cannot open")):
        with pytest.raises(ImageDecodeError) as caught:
            decode_image(path)
        assert caught.value.path == str(path) and words in caught.value.reason
    encoded = (tmp_path / "cut.jpg").read_bytes()
    with pytest.raises(ImageDecodeError):
        decode_image(encoded)
    fakes.write_image(tmp_path / "ok.png", (1, 2, 3))
    assert (decode_image((tmp_path / "ok.png").read_bytes()) == (1, 2, 3)).all()


def test_ferplus_row_count_mismatch_is_an_error(tmp_path):
    fakes.make_ferplus(tmp_path)
    votes = tmp_path / "fer2013new.csv"
    votes.write_text("".join(votes.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError, match="different numbers of rows"):
        load_dataset("ferplus", tmp_path, "train")


def test_fer2013_numeric_folders_use_the_fer2013_table(tmp_path):
    fakes.write_class_image(tmp_path / "train" / "0" / "a.png", "anger")
    fakes.write_class_image(tmp_path / "train" / "5" / "b.png", "surprise")
    fakes.write_class_image(tmp_path / "train" / "9" / "c.png", "neutral")
    dataset = load_dataset("fer2013", tmp_path, "train", skip_bad=True)
    assert fakes.sample_classes(dataset) == {"a.png": "anger", "b.png": "surprise"}
    assert "out of range 0..6" in dataset.report.bad[0].reason
    # a generic class-folder copy has no numeric table: digits are refused, not guessed
    (tmp_path / "train" / "9").rename(tmp_path / "train" / "angry")
    generic = load_dataset("imagefolder", tmp_path, "train", skip_bad=True)
    assert fakes.sample_classes(generic) == {"c.png": "anger"} and generic.report.skipped == 2
