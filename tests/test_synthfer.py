"""SynthFER: determinism, shapes, masks that follow the drawn features, distributions, splits,
the RAF-DB layout writer, the `hsbs synth` command and the sample figures."""
import re

import numpy as np
import pytest
from PIL import Image

from hsbs_lib.bench import benchmark_rendering
from hsbs_lib.data.labels import CANONICAL_7
from hsbs_lib.data.synthfer import (EXPRESSION_CLASSES, POSE_BINS, POSE_YAW_DEGREES, RAFDB_TRAIN_DISTRIBUTION,
                                    REGION_NAMES, SynthFER, render_parameters, render_synthfer, sample_parameters,
                                    subject_parameters, write_rafdb_layout)
from hsbs_lib.data.synthfer import render as renderer

BROWS, EYES, NOSE, MOUTH = range(4)


def _clean_frontal(n, *, seed=0, label=None, intensity=None):
    """Parameters of n frontal, upright, unoccluded faces (nuisances otherwise as sampled)."""
    p = sample_parameters(np.arange(n), seed=seed)
    p["pose"][:] = 2
    p["yaw"][:] = 0.0
    p["roll"][:] = 0.0
    p["occluder"][:] = False
    if label is not None:
        p["label"][:] = label
    if intensity is not None:
        p["intensity"][:] = intensity
    return p


def test_constants_follow_the_canonical_order():
    assert EXPRESSION_CLASSES == CANONICAL_7
    assert REGION_NAMES == ("brows", "eyes", "nose", "mouth")
    assert POSE_BINS == 5
    assert RAFDB_TRAIN_DISTRIBUTION.sum() == pytest.approx(1.0)
    assert RAFDB_TRAIN_DISTRIBUTION[3] == pytest.approx(4772 / 12271)


def test_same_index_gives_same_pixels_whatever_the_batch():
    full = render_synthfer(np.arange(40), size=48, seed=3, split="train")
    picked = render_synthfer([31, 2, 17], size=48, seed=3, split="train")
    for j, i in enumerate([31, 2, 17]):
        assert np.array_equal(picked["images"][j], full["images"][i])
        assert np.array_equal(picked["masks"][j], full["masks"][i])
        assert picked["labels"][j] == full["labels"][i]
        assert picked["subjects"][j] == full["subjects"][i]
        assert picked["intensity"][j] == full["intensity"][i]


def test_chunking_does_not_change_pixels(monkeypatch):
    reference = render_synthfer(np.arange(10), size=48, seed=1)
    monkeypatch.setattr(renderer, "_PIXELS_PER_CHUNK", 3 * 48 * 48)   # chunks of 3 images
    chunked = render_synthfer(np.arange(10), size=48, seed=1)
    assert np.array_equal(reference["images"], chunked["images"])
    assert np.array_equal(reference["masks"], chunked["masks"])


def test_feature_window_matches_a_full_image_render():
    """Features are drawn in a window around the face for speed; nothing may be cut off by it."""
    p = sample_parameters(np.arange(12), seed=5)
    p["scale"][:4] = 1.2           # the largest faces and strongest rolls the sampler produces
    p["roll"][:4] = np.radians([12, -12, 12, -12])
    s = subject_parameters(p["subject"])
    units = renderer._action_units(p, s)
    windowed = renderer._render_chunk(p, s, units, 64)
    full = renderer._render_chunk(p, s, units, 64, full_window=True)
    np.testing.assert_allclose(windowed[0].astype(int), full[0].astype(int), atol=1)
    assert np.array_equal(windowed[1], full[1])


def test_seed_and_split_change_the_images():
    a = render_synthfer(np.arange(6), size=48, seed=0)["images"]
    b = render_synthfer(np.arange(6), size=48, seed=1)["images"]
    c = render_synthfer(np.arange(6), size=48, seed=0, split="test")["images"]
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # every image differs, not just one
    assert all(not np.array_equal(a[i], b[i]) for i in range(6))


@pytest.mark.parametrize("size,n", [(48, 3), (64, 3), (112, 2), (224, 2)])
def test_shapes_and_dtypes(size, n):
    out = render_synthfer(np.arange(n), size=size)
    assert out["images"].shape == (n, size, size, 3) and out["images"].dtype == np.uint8
    assert out["masks"].shape == (n, 4, size, size) and out["masks"].dtype == bool
    assert out["labels"].dtype == np.int64 and out["poses"].dtype == np.int64
    assert out["subjects"].dtype == np.int64
    assert out["intensity"].dtype == np.float32
    assert np.all((out["intensity"] > 0) & (out["intensity"] <= 1))
    assert np.all((out["labels"] >= 0) & (out["labels"] < 7))
    assert np.all((out["poses"] >= 0) & (out["poses"] < POSE_BINS))
    # the images use the colour range, they are not blank
    assert out["images"].std() > 20


def test_mask_centroids_are_ordered_brows_eyes_nose_mouth():
    out = render_synthfer(np.arange(60), size=64, seed=2)
    frontal = np.flatnonzero((out["poses"] == 2) & ~out["occluded"])
    assert len(frontal) >= 5
    rows = np.arange(64)[:, None]
    for i in frontal:
        masks = out["masks"][i]
        assert all(masks[k].sum() > 3 for k in range(4)), f"empty region in image {i}"
        centroid_y = [(masks[k] * rows).sum() / masks[k].sum() for k in range(4)]
        assert centroid_y[BROWS] < centroid_y[EYES] < centroid_y[NOSE] < centroid_y[MOUTH]


def test_eye_and_mouth_masks_differ_in_colour_from_the_skin():
    p = _clean_frontal(8, seed=4)
    p["noise_std"][:] = 0.0
    rendered = render_parameters(p, size=96)
    for image, masks, face in zip(rendered["images"].astype(np.float32), rendered["masks"], rendered["face"]):
        assert not np.any(masks & ~face[None]), "a region mask leaves the face oval"
        # skin: face pixels outside every region, between the eyes and the mouth (below the hair fringe)
        rows = np.nonzero(masks[EYES].any(1))[0].max(), np.nonzero(masks[MOUTH].any(1))[0].min()
        skin = face & ~masks.any(0)
        skin[:rows[0]] = False
        skin[rows[1]:] = False
        skin_color = np.median(image[skin], axis=0)
        for k in (EYES, MOUTH):
            distance = np.abs(image[masks[k]] - skin_color).sum(axis=1)
            # the margin around a feature is skin; the feature itself must stand out
            assert np.percentile(distance, 90) > 40, f"{REGION_NAMES[k]} looks like skin"


def test_changed_pixels_fall_inside_the_region_masks():
    """Surprise versus neutral on the same face: what the expression changes is where the masks are."""
    p = _clean_frontal(6, seed=6, intensity=1.0)
    p["au_noise"][:] = 0.0
    p["label"][:] = CANONICAL_7.index("neutral")
    neutral = render_parameters(p, size=96)
    p["label"][:] = CANONICAL_7.index("surprise")
    surprise = render_parameters(p, size=96)
    change = np.abs(surprise["images"].astype(np.float32) - neutral["images"]).sum(-1)
    regions = (surprise["masks"] | neutral["masks"]).any(1)
    assert change.sum() > 0
    assert change[regions].sum() / change.sum() > 0.7


def test_intensity_changes_the_mouth_region():
    p = _clean_frontal(6, seed=7, label=CANONICAL_7.index("happiness"))
    p["au_noise"][:] = 0.0
    p["intensity"][:] = 0.15
    weak = render_parameters(p, size=64)
    p["intensity"][:] = 1.0
    strong = render_parameters(p, size=64)
    change = np.abs(strong["images"].astype(np.float32) - weak["images"]).sum(-1)
    mouth = strong["masks"][:, MOUTH] | weak["masks"][:, MOUTH]
    away = ~(strong["masks"] | weak["masks"]).any(1)
    for i in range(len(change)):
        assert change[i][mouth[i]].mean() > 30
        assert change[i][mouth[i]].mean() > 5 * change[i][away[i]].mean()


def test_pose_bins_go_left_to_right():
    p = _clean_frontal(5, seed=8)
    p["subject"][:] = p["subject"][0]
    p["pose"] = np.arange(5)
    p["yaw"] = np.radians(POSE_YAW_DEGREES).astype(np.float32)
    out = render_parameters(p, size=96)
    columns = np.arange(96)[None, :]
    offsets = []
    for masks, face in zip(out["masks"], out["face"]):
        features = masks.any(0)
        offsets.append((features * columns).sum() / features.sum() - (face * columns).sum() / face.sum())
    assert np.all(np.diff(offsets) > 0), offsets
    assert offsets[0] < 0 < offsets[4]


def test_all_pose_bins_and_occluders_occur():
    out = render_synthfer(np.arange(200), size=32)
    assert set(out["poses"].tolist()) == set(range(POSE_BINS))
    counts = np.bincount(out["poses"], minlength=POSE_BINS)
    assert abs(int(counts[0]) - int(counts[4])) < 25       # symmetric, so flips keep the distribution
    assert 0.15 < out["occluded"].mean() < 0.45


def test_default_distribution_follows_rafdb_and_balanced_is_uniform():
    labels = sample_parameters(np.arange(20000))["label"]
    shares = np.bincount(labels, minlength=7) / len(labels)
    np.testing.assert_allclose(shares, RAFDB_TRAIN_DISTRIBUTION, atol=0.012)
    assert shares[CANONICAL_7.index("happiness")] > 0.36 and shares[CANONICAL_7.index("fear")] < 0.035
    balanced = np.bincount(sample_parameters(np.arange(20000), balanced=True)["label"], minlength=7) / 20000
    np.testing.assert_allclose(balanced, np.full(7, 1 / 7), atol=0.012)
    eight = np.bincount(sample_parameters(np.arange(8000), balanced=True, num_classes=8)["label"], minlength=8)
    assert len(eight) == 8 and eight.min() > 800
    # the renderer uses exactly these labels
    assert np.array_equal(render_synthfer(np.arange(20), size=32)["labels"], labels[:20])


def test_splits_are_subject_disjoint():
    subjects = {split: set(sample_parameters(np.arange(5000), split=split)["subject"].tolist())
                for split in ("train", "val", "test")}
    assert len(subjects["train"]) > 300
    assert not subjects["train"] & subjects["test"]
    assert not subjects["train"] & subjects["val"]
    assert not subjects["val"] & subjects["test"]
    train = SynthFER("train", n=40, size=32)
    test = SynthFER("test", n=40, size=32)
    assert not set(train.subjects) & set(test.subjects)


def test_identity_depends_on_the_subject_only():
    a = subject_parameters(np.array([3, 6, 3]))
    assert np.array_equal(a["skin"][0], a["skin"][2]) and a["face_rx"][0] == a["face_rx"][2]
    assert not np.array_equal(a["skin"][0], a["skin"][1])


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="split"):
        render_synthfer([0], split="validation")
    with pytest.raises(ValueError, match="num_classes"):
        sample_parameters([0], num_classes=6)
    with pytest.raises(ValueError, match="non-negative"):
        sample_parameters([-1])


def test_synthfer_dataset():
    ds = SynthFER("train", n=12, size=32, seed=2, chunk=5)
    reference = render_synthfer(np.arange(12), size=32, seed=2)
    assert len(ds) == 12 and ds.name == "synthfer" and ds.classes == CANONICAL_7
    assert np.array_equal(ds.images, reference["images"]) and np.array_equal(ds.masks, reference["masks"])
    assert ds.samples[3] == ("synthfer://train/seed2/000003", int(reference["labels"][3]))
    assert ds.targets == reference["labels"].tolist()
    assert ds.poses == reference["poses"].tolist() and ds.subjects == reference["subjects"].tolist()
    image, target = ds[3]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert target == {"label": ds.targets[3], "index": 3, "pose": ds.poses[3]}
    assert sum(ds.class_counts()) == 12
    flipped = SynthFER("test", n=2, size=32, transform=lambda x: x[:, ::-1])
    assert np.array_equal(flipped[1][0], flipped.images[1][:, ::-1])
    assert len(SynthFER("train", n=4, size=32, num_classes=8).classes) == 8


def test_write_rafdb_layout(tmp_path):
    root = write_rafdb_layout(tmp_path / "raf", n_train=7, n_test=3, size=40, seed=1)
    lines = (root / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("train_00001.jpg ") and lines[7].startswith("test_0001.jpg ")
    train_labels = render_synthfer(np.arange(7), size=40, seed=1, split="train")["labels"]
    test_labels = render_synthfer(np.arange(3), size=40, seed=1, split="test")["labels"]
    expected = np.concatenate([train_labels, test_labels]) + 1        # RAF digits = canonical + 1
    for line, digit in zip(lines, expected):
        assert re.fullmatch(r"(train_\d{5}|test_\d{4})\.jpg [1-7]", line), line
        assert int(line.split()[1]) == digit
        name = line.split()[0]
        path = root / "Image" / "aligned" / f"{name[:-4]}_aligned.jpg"
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size == (40, 40) and image.mode == "RGB"
    files = sorted(p.name for p in (root / "Image" / "aligned").iterdir())
    assert files == sorted(f"{line.split()[0][:-4]}_aligned.jpg" for line in lines)
    meta = np.load(root / "synthfer_meta.npz")
    assert meta["file_names"].tolist() == [line.split()[0] for line in lines]
    assert meta["masks"].shape == (10, 4, 40, 40) and meta["masks"].dtype == bool
    assert meta["poses"].shape == meta["subjects"].shape == meta["intensity"].shape == (10,)


def test_hsbs_synth_command(tmp_path, capsys):
    from hsbs_lib.cli import main

    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "--n", "10", "--size", "32", "--test-fraction", "0.3",
                 "--seed", "2", "--balanced"]) == 0
    lines = (out / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    assert sum(line.startswith("train_") for line in lines) == 7
    assert sum(line.startswith("test_") for line in lines) == 3
    assert len(list((out / "Image" / "aligned").glob("*_aligned.jpg"))) == 10
    printed = capsys.readouterr().out
    assert str(out) in printed and "train: 7" in printed and "test: 3" in printed
    assert main(["synth", "--out", str(out), "--n", "10", "--test-fraction", "1.5"]) == 1


def test_benchmark_rendering_reports_a_rate():
    assert benchmark_rendering(n=32, size=32) > 0


def test_sample_figures(tmp_path):
    import matplotlib.pyplot as plt

    from hsbs_lib.viz.samples import plot_region_masks, plot_synthfer_examples, plot_synthfer_grid
    from hsbs_lib.viz.style import save_figure

    fig = plot_synthfer_grid(size=40, columns=3)
    assert len(fig.axes) == 7 * 3
    assert [ax.get_ylabel() for ax in fig.axes[::3]] == list(CANONICAL_7)
    paths = save_figure(fig, "synthfer_samples_test", out=tmp_path)
    assert all(path.stat().st_size > 0 for path in paths)
    plt.close(fig)
    fig = plot_region_masks(size=48)
    assert len(fig.axes) == 6
    plt.close(fig)
    fig = plot_synthfer_examples(n=4, size=32, columns=4)
    assert len(fig.axes) == 4
    plt.close(fig)
