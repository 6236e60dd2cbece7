"""Validation splits: the dataset's own, a stratified seeded hold-out, never the test split; the test split
is scored once, for the checkpoint the validation split selected."""
import json

import numpy as np
import pytest

import hsbs_lib.engine.train as train_module
from hsbs_lib.config import Config, apply_overrides
from hsbs_lib.data.pipeline.cache import cache_split
from hsbs_lib.data.datasets import load_dataset
from hsbs_lib.data.synthfer import write_rafdb_layout
from hsbs_lib.data.splits import SplitView, holdout_indices, holdout_split, per_class_subset
from hsbs_lib.engine.build import build_splits
from hsbs_lib.engine.train import fit

from fakes import make_fer2013_csv, make_kdef, make_rafdb_basic
from test_engine import ColourFER


def _config(*overrides) -> Config:
    return apply_overrides(Config(), list(overrides))


def test_holdout_is_stratified_disjoint_and_fixed_by_its_seed():
    labels = np.repeat(np.arange(7), [300, 20, 60, 500, 200, 150, 250])
    train, val = holdout_indices(labels, fraction=0.1, seed=0)
    assert np.intersect1d(train, val).size == 0 and train.size + val.size == labels.size
    counts = np.bincount(labels[val], minlength=7)
    assert counts.tolist() == [30, 2, 6, 50, 20, 15, 25]          # 10 % of every class
    again = holdout_indices(labels, fraction=0.1, seed=0)[1]
    other = holdout_indices(labels, fraction=0.1, seed=1)[1]
    assert np.array_equal(val, again) and not np.array_equal(val, other)


def test_holdout_keeps_at_least_one_of_every_class_that_has_two():
    labels = np.array([0] * 5 + [1] * 2 + [2])
    _, val = holdout_indices(labels, fraction=0.1, seed=0)
    assert sorted(labels[val].tolist()) == [0, 1]                  # a lone sample stays in training


def test_grouped_holdout_never_splits_a_subject():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 5)
    labels = rng.integers(0, 3, groups.size)
    train, val = holdout_indices(labels, fraction=0.2, seed=0, groups=groups)
    assert set(groups[train]).isdisjoint(groups[val]) and val.size > 0


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_holdout_fraction_out_of_range_is_a_readable_error(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_indices([0, 1, 0, 1], fraction=fraction)


@pytest.fixture(scope="module")
def rafdb_root(tmp_path_factory):
    """SynthFER faces written in the RAF-DB basic layout: 60 training and 20 test images."""
    return write_rafdb_layout(tmp_path_factory.mktemp("raf") / "basic", n_train=60, n_test=20, size=24)


def test_split_view_reads_through_the_parent_and_caches_apart(tmp_path, rafdb_root):
    train = load_dataset("rafdb", rafdb_root, "train")
    kept, held = holdout_split(train, fraction=0.3, seed=0)
    assert isinstance(held, SplitView) and len(kept) + len(held) == len(train)
    assert {p for p, _ in kept.samples}.isdisjoint(p for p, _ in held.samples)
    for view in (kept, held):
        for i, (path, label) in enumerate(view.samples):
            parent_index = [p for p, _ in train.samples].index(path)
            assert np.array_equal(view.load_image(i), train.load_image(parent_index))
            assert train.samples[parent_index][1] == label
    cached = cache_split(held, 16, cache_dir=tmp_path / "cache")
    assert len(cached.labels) == len(held) and cached.labels.tolist() == held.targets


def test_per_class_subset_caps_every_class():
    data = ColourFER(200, size=8, labels=[0] * 150 + [1] * 30 + [2] * 20)
    capped = per_class_subset(data, 25, seed=0)
    assert np.bincount(capped.targets).tolist() == [25, 25, 20]


def test_synthfer_selects_on_its_own_val_split():
    splits = build_splits(_config("data.n_train=64", "data.n_val=48", "data.n_test=32"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (64, 48, 32)
    assert splits.val.split == "val" and "val split" in splits.selection


def test_rafdb_has_no_validation_split_so_auto_holds_out_training_images(rafdb_root):
    splits = build_splits(_config("data.name=rafdb", f"data.root={rafdb_root}", "data.val_fraction=0.25"))
    train_paths = {p for p, _ in splits.train.samples}
    val_paths = {p for p, _ in splits.val.samples}
    test_paths = {p for p, _ in splits.test.samples}
    assert val_paths and train_paths.isdisjoint(val_paths) and not (val_paths & test_paths)
    assert all("train_" in path for path in val_paths)
    assert "hold-out of the train split" in splits.selection


def test_a_holdout_from_singletons_is_a_readable_error(tmp_path):
    copy = make_rafdb_basic(tmp_path / "raf")        # one training image per class
    with pytest.raises(ValueError, match="no class has two.*val_split=none"):
        build_splits(_config("data.name=rafdb", f"data.root={copy.root}"))


def test_fer2013_selects_on_publictest(tmp_path):
    copy = make_fer2013_csv(tmp_path / "fer")
    splits = build_splits(_config("data.name=fer2013", f"data.root={copy.root}", "data.input_size=48"))
    assert {name.split("/")[-1] for name in (p for p, _ in splits.val.samples)} == set(copy.expected["val"])
    assert "fer2013 val split" in splits.selection


def test_a_validation_split_that_is_the_test_split_is_refused(tmp_path):
    copy = make_rafdb_basic(tmp_path / "raf")
    # RAF-DB reads "val" as its test split: selecting on it would select on the test set
    with pytest.raises(ValueError, match="shares .* images with the test split.*val_split=holdout"):
        build_splits(_config("data.name=rafdb", f"data.root={copy.root}", "data.val_split=val"))


def test_kdef_holdout_keeps_people_apart(tmp_path):
    copy, meta = make_kdef(tmp_path / "kdef")
    splits = build_splits(_config("data.name=kdef", f"data.root={copy.root}", "data.val_fraction=0.34",
                                  "data.options={fold: 0, n_folds: 2}"))
    subject = lambda path: meta[path.replace("\\", "/").split("/")[-1]][1]
    assert {subject(p) for p, _ in splits.val.samples}.isdisjoint(subject(p) for p, _ in splits.train.samples)


def test_the_test_split_is_scored_once_after_training(tmp_path, monkeypatch):
    train, val, test = (cache_split(ColourFER(n, seed=s, split=name), 32)
                        for n, s, name in ((96, 0, "train"), (40, 2, "val"), (56, 1, "test")))
    seen = []
    real_evaluate = train_module.evaluate

    def spy(model, loader, **kwargs):
        seen.append(len(loader.sampler))
        return real_evaluate(model, loader, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", spy)
    config = apply_overrides(Config(), ["model.name=baseline", "data.input_size=32", "train.batch_size=16",
                                        "train.epochs=3", "train.progress=false", "train.threads=1", f"out={tmp_path}"])
    result = fit(config, train_data=train, val_data=val, test_data=test)
    assert seen == [40, 40, 40, 56]                # validation every epoch, the test split once at the end
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["n"] == 56 and report["epoch"] == result.best_epoch
    val_scores = [row["val/mean_class_accuracy"] for row in result.history]
    assert result.best_epoch == 1 + int(np.argmax(val_scores))


def test_without_validation_best_is_the_last_epoch(tmp_path):
    train, test = (cache_split(ColourFER(n, seed=s, split=name), 32) for n, s, name in ((64, 0, "train"), (32, 1, "test")))
    config = apply_overrides(Config(), ["model.name=baseline", "data.input_size=32", "train.batch_size=16",
                                        "train.epochs=2", "train.progress=false", "train.threads=1", f"out={tmp_path}"])
    result = fit(config, train_data=train, test_data=test)
    report = json.loads((tmp_path / "eval.json").read_text())
    assert result.best_epoch == 2 and report["selected_on"].startswith("none")


def test_the_reference_trainer_reads_the_same_splits_and_reports_like_the_engine(tmp_path):
    """train.trainer=reference: torchvision's ResNet-18 in a plain loop, same validation rule, same eval.json."""
    config = apply_overrides(Config(), ["train.trainer=reference", "data.n_train=96", "data.n_val=48",
                                        "data.n_test=40", "data.input_size=32", "train.epochs=2",
                                        "train.batch_size=16", "train.threads=1", f"out={tmp_path}"])
    result = fit(config)
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["trainer"].startswith("torchvision resnet18") and report["n"] == 40
    assert report["selected_on"] == "synthfer val split" and result.best_epoch == report["epoch"]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "val/mean_class_accuracy" in rows[0]
    assert float(rows[2].split(",")[1]) < float(rows[1].split(",")[1])        # the loss went down
    with pytest.raises(ValueError, match="train.trainer must be engine or reference"):
        fit(apply_overrides(Config(), ["train.trainer=keras", f"out={tmp_path / 'x'}"]))
