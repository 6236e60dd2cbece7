"""The uint8 split cache: exact round trip, no decoding on reuse, bad images, in-memory datasets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fakes
from hsbs_lib.data.base import BadDatasetError, FERDataset
from hsbs_lib.data.pipeline.cache import cache_split, resize_square
from hsbs_lib.data.datasets import load_dataset
from hsbs_lib.data.images import decode_image


def test_round_trip_is_exact_and_second_call_does_not_decode(tmp_path):
    fakes.make_rafdb_basic(tmp_path / "raf")
    dataset = load_dataset("rafdb", tmp_path / "raf", "train")
    cached = cache_split(dataset, 16, cache_dir=tmp_path / "cache")
    assert cached.images.dtype == np.uint8 and cached.images.shape == (len(dataset), 3, 16, 16)
    assert cached.labels.dtype == np.int64 and cached.labels.tolist() == dataset.targets
    assert cached.paths == [path for path, _ in dataset.samples]
    assert cached.classes == dataset.classes and cached.poses is None and cached.soft_labels is None
    for i, (path, _) in enumerate(dataset.samples):
        expected = resize_square(decode_image(path), 16).transpose(2, 0, 1)
        assert np.array_equal(cached.images[i], expected)
    written = list((tmp_path / "cache").iterdir())
    assert len(written) == 1 and (written[0] / "meta.json").is_file()    # no temporary folder left

    def must_not_decode(index):
        raise AssertionError("the cache decoded an image on the second call")

    dataset.load_image = must_not_decode
    again = cache_split(dataset, 16, cache_dir=tmp_path / "cache")
    assert isinstance(again.images, np.memmap)
    assert np.array_equal(np.asarray(again.images), np.asarray(cached.images))
    assert np.array_equal(again.labels, cached.labels) and again.paths == cached.paths
    with pytest.raises(AssertionError, match="decoded"):
        cache_split(dataset, 8, cache_dir=tmp_path / "cache")     # another size is another key


def test_key_follows_the_samples(tmp_path):
    copy = fakes.make_imagefolder(tmp_path / "data")
    train = load_dataset("imagefolder", tmp_path / "data", "train")
    first = cache_split(train, 8, cache_dir=tmp_path / "cache")
    train.samples = train.samples[:2]
    second = cache_split(train, 8, cache_dir=tmp_path / "cache")
    assert first.location != second.location and len(second) == 2 and len(first) == len(copy.expected["train"])


def test_tensors_share_memory_and_keep_types(tmp_path):
    copy, meta = fakes.make_kdef(tmp_path / "kdef")
    dataset = load_dataset("kdef", tmp_path / "kdef", "all")
    cached = cache_split(dataset, 8, cache_dir=tmp_path / "cache")
    assert cached.poses.tolist() == dataset.poses
    tensors = cache_split(dataset, 8, cache_dir=tmp_path / "cache").tensors()
    assert tensors["images"].dtype == torch.uint8 and tensors["images"].shape == (len(dataset), 3, 8, 8)
    assert tensors["labels"].dtype == torch.int64 and tensors["poses"].dtype == torch.int64
    assert "soft_labels" not in tensors
    view = cached.tensors()["images"]
    assert view.data_ptr() == cached.images.ctypes.data          # a view of the memory map, not a copy
    # non-square 12x16 KDEF images are scaled on the short side and centre-cropped: colour preserved
    for i, (_, label) in enumerate(dataset.samples):
        colour = np.array(fakes.CLASS_COLOR[dataset.classes[label]])
        assert np.abs(cached.images[i].reshape(3, -1).mean(1) - colour).max() < 8


def test_decode_failures_listed_or_skipped(tmp_path):
    copy = fakes.make_imagefolder(tmp_path / "data", broken=True)
    dataset = load_dataset("imagefolder", tmp_path / "data", "train", skip_bad=True)
    with pytest.raises(BadDatasetError) as caught:
        cache_split(dataset, 8, cache_dir=tmp_path / "cache", skip_bad=False)
    assert {Path(entry.path).name for entry in caught.value.report.bad} == copy.bad_decode["train"]
    assert not list((tmp_path / "cache").iterdir())               # nothing half-written stays behind

    cached = cache_split(dataset, 8, cache_dir=tmp_path / "cache")  # follows dataset.skip_bad
    assert cached.skipped == 2 and len(cached) == len(dataset) - 2
    assert {Path(p).name for p in cached.paths} == set(copy.expected["train"]) - copy.bad_decode["train"]
    kept = [i for i, (p, _) in enumerate(dataset.samples) if Path(p).name not in copy.bad_decode["train"]]
    assert cached.labels.tolist() == [dataset.targets[i] for i in kept]
    for row, i in enumerate(kept):
        assert np.array_equal(cached.images[row], resize_square(dataset.load_image(i), 8).transpose(2, 0, 1))
    with pytest.raises(BadDatasetError):
        cache_split(dataset, 8, cache_dir=tmp_path / "cache", skip_bad=False)


class InMemory(FERDataset):
    name = "inmemory"

    def __init__(self, images, labels):
        super().__init__(None, "train")
        self.images = images
        self.samples = [(f"mem://{i}", int(label)) for i, label in enumerate(labels)]
        self.poses = [i % 5 for i in range(len(labels))]

    def load_image(self, index):
        raise AssertionError("in-memory datasets are not decoded")


def test_in_memory_images_skip_the_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("HSBS_CACHE", str(tmp_path / "cache"))
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    dataset = InMemory(images, [0, 1, 2, 3, 4])
    same = cache_split(dataset, 32)
    assert np.array_equal(same.images, images.transpose(0, 3, 1, 2)) and same.location is None
    smaller = cache_split(dataset, 16)
    assert smaller.images.shape == (5, 3, 16, 16)
    assert np.array_equal(smaller.images[3], resize_square(images[3], 16).transpose(2, 0, 1))
    assert smaller.poses.tolist() == [0, 1, 2, 3, 4]
    assert not (tmp_path / "cache").exists()

    fakes.make_ferplus(tmp_path / "ferplus")
    soft = load_dataset("ferplus", tmp_path / "ferplus", "train", label_mode="soft")
    cached = cache_split(soft, 24)
    assert cached.soft_labels.shape == (3, 7) and np.array_equal(cached.soft_labels, soft.soft_labels)
    assert (cached.images[0] == 10).all()       # FERPlus row 0 is grey level 10 (48x48 -> 24x24)
    assert not (tmp_path / "cache").exists()


def test_default_location_is_hsbs_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HSBS_CACHE", str(tmp_path / "here"))
    fakes.make_sfew(tmp_path / "sfew")
    cached = cache_split(load_dataset("sfew", tmp_path / "sfew", "val"), 8)
    assert cached.location.parent == tmp_path / "here"
    assert cached.location.name.startswith("sfew-val-8px-")
