"""Attention on real faces (``hsbs attention``): eye and mouth masks from OpenCV's cascades, the two reference
maps, the command's bad input, and, where the development copy of FER2013's PublicTest faces is present
(``../shared/data/fer2013_publictest.npz``, read in place), detection and the shipped model's scores on 200
real faces. Nothing from that file is written anywhere but pytest's temporary folder."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hsbs_lib.cli import main
from hsbs_lib.data.face_regions import (CASCADE_FILES, FaceRegions, boxes_to_mask, find_face_regions, load_cascade,
                                        pick_eyes, pick_mouth)
from hsbs_lib.data.fer2013_files import load_fer2013_npz, write_fer2013_csv
from hsbs_lib.engine.real_attention import (attention_on_real_faces, centre_map, dataset_mean_map,
                                            format_attention_report, npz_split, score_against_regions,
                                            split_description)

PUBLICTEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013_publictest.npz"
needs_real_faces = pytest.mark.skipif(not PUBLICTEST.is_file(),
                                      reason="FER2013's PublicTest faces not found at ../shared/data/"
                                             "fer2013_publictest.npz (development machines only)")


# ------------------------------------------------------------------------------------ geometry

def test_a_box_found_on_the_upscaled_face_covers_the_pixels_it_came_from():
    # 48 px face searched at 192 px (scale 4): the box [40, 64) x [20, 36) is image columns 10..15, rows 5..8
    mask = boxes_to_mask([(40, 20, 24, 16)], (48, 48), scale=4.0)
    expected = np.zeros((48, 48), dtype=bool)
    expected[5:9, 10:16] = True
    assert np.array_equal(mask, expected)
    # any box drawn on the image and scaled up with it comes back as the same pixels
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 40, size=2)
        w, h = rng.integers(1, 8, size=2)
        drawn = np.zeros((48, 48), dtype=bool)
        drawn[y:y + h, x:x + w] = True
        assert np.array_equal(boxes_to_mask([(4 * x, 4 * y, 4 * w, 4 * h)], (48, 48), scale=4.0), drawn)


def test_a_box_at_a_fractional_scale_keeps_the_pixels_whose_centres_it_holds():
    # a 100 px face searched at 192 px: pixel c spans [1.92 c, 1.92 (c + 1)), its centre 1.92 (c + 0.5)
    mask = boxes_to_mask([(0, 0, 10, 10), (96, 180, 5, 12)], (100, 100), scale=1.92)
    assert mask[:5, :5].all() and not mask[5, :5].any() and not mask[:5, 5].any()   # 1.92 * 5.5 = 10.56 > 10
    # columns: 1.92 (c + 0.5) in [96, 101) for c = 50, 51, 52; rows: in [180, 192) for r = 94 .. 99
    rows, columns = np.nonzero(mask[50:, 40:])
    assert set(columns + 40) == {50, 51, 52} and set(rows + 50) == {94, 95, 96, 97, 98, 99}
    assert mask.sum() == 25 + 18


def test_two_eyes_side_by_side_are_kept_and_an_implausible_box_is_dropped():
    side = 192
    left, right, chin = (40, 60, 36, 36), (115, 62, 36, 36), (80, 150, 36, 36)
    # the chin box is the heaviest, but sits where no eye is
    assert pick_eyes([right, chin, left], [1.0, 5.0, 2.0], side) == [left, right]
    # two boxes on one eye (overlapping): the lighter one goes, the single eye stays
    assert pick_eyes([left, (44, 64, 30, 30)], [1.0, 3.0], side) == [(44, 64, 30, 30)]
    # a mouth must sit below the eyes and between them
    mouth, beside = (60, 130, 70, 35), (0, 130, 70, 35)
    assert pick_mouth([beside, mouth], [9.0, 1.0], side, [left, right]) == mouth
    assert pick_mouth([(60, 70, 70, 35)], [1.0], side, [left, right]) is None


def test_a_missing_cascade_is_named_with_where_it_should_be(tmp_path):
    faces = np.zeros((2, 48, 48), dtype=np.uint8)
    with pytest.raises(FileNotFoundError) as refusal:
        find_face_regions(faces, cascades=tmp_path)
    message = str(refusal.value)
    assert "\n" not in message
    assert f"{CASCADE_FILES['eyes']} is missing: it should be at {tmp_path / CASCADE_FILES['eyes']}" in message
    (tmp_path / CASCADE_FILES["eyes"]).write_text("<opencv_storage>not a cascade")
    with pytest.raises(ValueError, match="could not read the Haar cascade .*haarcascade_eye.xml: the file is damaged"):
        load_cascade(CASCADE_FILES["eyes"], tmp_path)


# ------------------------------------------------------------------------------- reference maps

def test_the_dataset_mean_map_scores_what_is_computed_by_hand():
    masks = np.zeros((3, 2, 4, 4), dtype=bool)   # (faces, regions: eyes and mouth, 4x4 pixels)
    masks[0, 0, 0, 0] = masks[0, 1, 0, 1] = True  # face 0: (0, 0) and (0, 1)
    masks[1, 0, 0, 0] = masks[1, 1, 1, 0] = True  # face 1: (0, 0) and (1, 0)
    masks[2, 1, 3, 3] = True                      # face 2: (3, 3) only
    mean = dataset_mean_map(masks)
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 1], expected[1, 0], expected[3, 3] = 2 / 3, 1 / 3, 1 / 3, 1 / 3
    assert np.allclose(mean.numpy(), expected)
    # a stage whose grid is the image's own (4x4): no pooling, no resizing
    scores = score_against_regions({"layer1": torch.rand(3, 4, 4)}, masks)["layer1"]["dataset_mean"]
    # energy inside: (2/3 + 1/3) / (5/3) = 0.6 for faces 0 and 1, (1/3) / (5/3) = 0.2 for face 2
    assert scores["energy_share"] == pytest.approx((0.6 + 0.6 + 0.2) / 3)
    # the map peaks on (0, 0): inside faces 0 and 1, and more than a cell away from face 2's (3, 3)
    assert scores["pointing_hit_rate"] == pytest.approx(2 / 3)
    assert scores["pointing_hit_rate_1cell"] == pytest.approx(2 / 3)
    assert scores["chance_energy_share"] == pytest.approx((2 + 2 + 1) / 48)
    # each face's mouth pixel holds 1/3 of the map's 5/3
    assert scores["energy_share/mouth"] == pytest.approx(0.2)
    assert scores["n"] == 3


def test_the_centre_map_peaks_on_the_centre_pixel_and_each_stage_has_both_references():
    for shape in ((48, 48), (5, 5), (6, 4)):
        peak = np.unravel_index(int(centre_map(shape).argmax()), shape)
        assert tuple(peak) == (shape[0] // 2, shape[1] // 2)
    masks = np.zeros((2, 2, 48, 48), dtype=bool)
    masks[:, 1, 22:27, 22:27] = True            # a "mouth" on the centre: the centre map hits it every time
    stages = score_against_regions({"layer1": torch.rand(2, 24, 24), "layer3": torch.rand(2, 6, 6)}, masks)
    for stage, grid in (("layer1", [24, 24]), ("layer3", [6, 6])):
        assert stages[stage]["grid"] == grid
        assert set(stages[stage]) == {"grid", "network", "centre", "dataset_mean"}
        assert stages[stage]["centre"]["pointing_hit_rate"] == 1.0
        assert stages[stage]["dataset_mean"]["pointing_hit_rate"] == 1.0


def test_fer2013_splits_are_named_and_the_validation_split_is_labelled():
    assert split_description("fer2013", "val").startswith("PublicTest, the validation split")
    assert "validation numbers, not test scores" in split_description("fer2013", "publictest")
    assert split_description("fer2013", "test") == "PrivateTest"


# ---------------------------------------------------------------------------------- the command

@pytest.mark.parametrize("argv, says", [
    (["--n", "0"], "--n expects at least 1 face, got 0"),
    (["--n", "-5"], "--n expects at least 1 face, got -5"),
    (["--checkpoint", "{tmp}/no_run"], "checkpoint {tmp}/no_run not found"),
    (["--npz", "{tmp}/faces.npz"], "--npz {tmp}/faces.npz: no such file"),
    (["data.root={tmp}/no_copy"], "fer2013: dataset root {tmp}/no_copy does not exist"),
    (["data.no_such_key=1"], "no_such_key"),
])
def test_bad_input_is_one_line_naming_the_file_or_key(argv, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HSBS_DATA", raising=False)
    argv = [word.replace("{tmp}", str(tmp_path)) for word in argv]
    assert main(["attention", "--device", "cpu", *argv]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("hsbs attention: error: ")
    assert says.replace("{tmp}", str(tmp_path)) in error[-1]
    assert not any(tmp_path.iterdir()), "a refused command wrote something"


def test_faces_without_eyes_or_mouth_are_refused_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flat = np.full((6, 48, 48), 128, dtype=np.uint8)
    np.savez(tmp_path / "flat.npz", images=flat, labels=np.zeros(6, dtype=np.uint8), classes=np.array(["happy"]),
             names=np.array([f"PublicTest_{i}.png" for i in range(6)]))
    assert npz_split(tmp_path / "flat.npz") == "val"
    assert main(["attention", "--device", "cpu", "--npz", "flat.npz", "--json", "out/report.json"]) == 1
    assert "found the eyes and mouth on none of the 6 faces" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["flat.npz"]
    assert main(["attention", "--device", "cpu", "--npz", "flat.npz", "--split", "train"]) == 1
    assert "flat.npz holds FER2013's PublicTest split only" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- real faces

@pytest.fixture(scope="module")
def publictest():
    images, names = load_fer2013_npz(PUBLICTEST)
    faces = images[:200]
    return faces, names[:200], find_face_regions(faces)


@needs_real_faces
def test_the_cascades_find_eyes_and_mouth_on_most_real_faces(publictest):
    faces, _, regions = publictest
    assert regions.masks.shape == (200, 2, 48, 48) and regions.masks.dtype == bool
    assert regions.rate >= 0.5, f"eyes and mouth found on {regions.rate:.0%} of 200 PublicTest faces"
    kept = regions.kept()
    # on every found face the eyes lie above the mouth, and neither covers most of the face
    rows = np.arange(48)[:, None]
    for eyes, mouth in kept:
        assert (rows * eyes).sum() / eyes.sum() < (rows * mouth).sum() / mouth.sum()
        assert eyes.mean() < 0.3 and mouth.mean() < 0.3


@needs_real_faces
def test_the_shipped_models_scores_on_real_faces_are_valid(publictest):
    faces, names, regions = publictest
    report = attention_on_real_faces("fer2013", faces, labels=names, regions=regions, device="cpu")
    assert report["n"] == report["faces_found"] == int(regions.found.sum())
    assert report["faces_tried"] == 200 and report["detection_rate"] == pytest.approx(regions.rate)
    assert sum(found for found, _ in report["found_per_class"].values()) == report["n"]
    assert list(report["stages"]) == ["layer1", "layer2", "layer3", "layer4"]
    for stage, entry in report["stages"].items():
        for name in ("network", "centre", "dataset_mean"):
            for key, value in entry[name].items():
                if key != "n":
                    assert np.isfinite(value) and 0.0 <= value <= 1.0, (stage, name, key, value)
            assert entry[name]["n"] == report["n"]
    # where eyes and mouths usually are beats a random peak by far on 48 px faces
    layer1 = report["stages"]["layer1"]
    assert layer1["dataset_mean"]["pointing_hit_rate"] > 2 * layer1["network"]["chance_pointing"]


@needs_real_faces
def test_the_command_reads_a_csv_copy_and_writes_only_the_json_it_is_asked_for(publictest, tmp_path, monkeypatch,
                                                                             capsys):
    faces, names, _ = publictest
    copy = tmp_path / "copy"
    write_fer2013_csv(copy / "fer2013.csv", faces[:30], names[:30], usage="PublicTest")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["attention", "--device", "cpu", f"data.root={copy}", "--n", "30"]) == 0
    table = capsys.readouterr().out
    assert "PublicTest, the validation split" in table and "dataset-mean mask" in table
    assert not any(work.iterdir())
    assert main(["attention", "--device", "cpu", "--root", str(copy), "--n", "30", "--json", "out/attention.json"]) == 0
    report = json.loads((work / "out" / "attention.json").read_text())
    assert report["split"] == "val" and report["faces_tried"] == 30 and report["dataset"] == "fer2013"
    assert {path.name for path in (work / "out").iterdir()} == {"attention.json", ".hsbs-outputs.json"}


@needs_real_faces
def test_the_table_shows_every_stage_with_both_reference_maps(publictest):
    faces, names, regions = publictest
    first = FaceRegions(masks=regions.masks[:40], found=regions.found[:40], boxes=regions.boxes[:40],
                        scale=regions.scale)
    report = attention_on_real_faces("fer2013", faces[:40], labels=names[:40], regions=first, device="cpu")
    table = format_attention_report(report)
    assert f"found on {report['faces_found']} of 40 faces" in table
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        row = next(line for line in table.splitlines() if line.startswith(stage))
        assert f"{report['stages'][stage]['network']['energy_share']:.3f}" in row
    assert table.count("centre (Gaussian)") == table.count("dataset-mean mask") == 4
