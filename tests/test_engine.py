"""The training engine: learning, logging, exact resume, NaN stops, sampling, and the train/eval commands."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hsbs_lib.cli import main
from hsbs_lib.config import Config, apply_overrides
from hsbs_lib.data.base import FERDataset
from hsbs_lib.data.pipeline.cache import cache_split
from hsbs_lib.engine.checkpoint import load_checkpoint
from hsbs_lib.engine.evaluate import evaluate_checkpoint
from hsbs_lib.data.pipeline.loaders import DeviceBatchLoader, EpochSampler, class_sample_weights
from hsbs_lib.engine.train import NonFiniteLossError, fit, inverse_frequency_weights, lr_factor, resume_config
from hsbs_lib.models.baseline import Baseline
from hsbs_lib.models.registry import list_models, register_model, unregister_model

REPO = Path(__file__).resolve().parents[1]
PALETTE = np.array([[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40], [40, 230, 230], [230, 40, 230],
                    [128, 128, 128]])


class ColourFER(FERDataset):
    """Learnable toy data: each class has its own colour, under noise and a horizontal gradient."""

    name = "colour"

    def __init__(self, n: int = 96, size: int = 32, seed: int = 0, split: str = "train", labels=None):
        super().__init__(None, split)
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 7, n) if labels is None else np.asarray(labels)
        self.samples = [(f"colour/{split}/{i}", int(label)) for i, label in enumerate(labels)]
        self.poses = [i % 5 for i in range(len(labels))]
        noise = rng.integers(0, 100, (len(labels), size, size, 3))
        gradient = np.linspace(0, 60, size)[None, None, :, None]
        self.images = np.clip(PALETTE[labels][:, None, None] * 0.6 + noise + gradient, 0, 255).astype(np.uint8)

    def load_image(self, index):
        return self.images[index]


@pytest.fixture(scope="module")
def splits():
    """(train, test, val) cached splits of the colour toy data."""
    return (cache_split(ColourFER(96, seed=0), 32), cache_split(ColourFER(56, seed=1, split="test"), 32),
            cache_split(ColourFER(40, seed=2, split="val"), 32))


def _config(tmp_path, *overrides) -> Config:
    return apply_overrides(Config(), ["model.name=baseline", "data.input_size=32", "train.batch_size=16",
                                      "train.progress=false", "train.threads=1", f"out={tmp_path}", *overrides])


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


class NanAfter(Baseline):
    """A baseline whose loss turns NaN from training step ``bad_step`` (1-based) on."""

    def __init__(self, *args, bad_step: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.bad_step, self.steps = bad_step, 0

    def loss(self, output, targets):
        self.steps += 1
        terms = super().loss(output, targets)
        terms["aux"] = output.logits.sum() * (math.nan if self.steps >= self.bad_step else 0.0)
        return terms


@pytest.fixture
def nan_after_model():
    """``nan_after`` in the model registry for one test, removed afterwards."""
    register_model("nan_after")(NanAfter)
    yield "nan_after"
    unregister_model("nan_after")
    assert "nan_after" not in list_models()


def test_training_lowers_the_loss_beats_chance_and_logs_every_column(tmp_path, splits):
    config = _config(tmp_path, "train.epochs=2", "train.record_intensity=true", "data.augment=flip")
    result = fit(config, train_data=splits[0], val_data=splits[2], test_data=splits[1])
    rows = _rows(tmp_path)
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert float(rows[1]["loss/total"]) < float(rows[0]["loss/total"])
    assert result.final["accuracy"] > 0.5 and result.best["mean_class_accuracy"] > 0.5   # chance is 1/7
    for column in ("loss/ce", "loss/total", "lr", "train/accuracy", "val/accuracy", "val/mean_class_accuracy",
                   "val/macro_f1", "intensity/layer1", "intensity/layer4"):
        assert column in rows[0], column
    assert all(float(rows[0][f"intensity/layer{i}"]) > 0 for i in range(1, 5))
    assert {"last.pt", "best.pt", "config.yaml", "eval.json"} <= {p.name for p in tmp_path.iterdir()}
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["epoch"] == result.best_epoch and report["n"] == 56
    assert report["selected_on"] == "the validation data given to fit"
    best_row = rows[result.best_epoch - 1]
    assert report["validation"]["mean_class_accuracy"] == pytest.approx(float(best_row["val/mean_class_accuracy"]))


@pytest.mark.parametrize("method", ["baseline", "hsbs"])
def test_compiled_training_trains_and_turns_the_intensity_hooks_off(tmp_path, splits, monkeypatch, caplog, method):
    # torch.compile through dynamo and AOT autograd (the graphs a GPU run compiles), executed eagerly so the
    # suite needs no C++ compiler. A compiled forward hands hooks on its stage outputs no gradient (None for
    # the baseline), which once crashed train.compile=true with the default record_intensity of SynthFER.
    compile_eagerly = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **options: compile_eagerly(model, backend="aot_eager"))
    torch._dynamo.reset()
    config = _config(tmp_path, f"model.name={method}", "train.epochs=1", "train.max_steps_per_epoch=3",
                     "train.compile=true", "train.record_intensity=true")
    with caplog.at_level("WARNING"):
        result = fit(config, train_data=splits[0], val_data=splits[2], test_data=splits[1])
    row = _rows(tmp_path)[0]
    assert math.isfinite(float(row["loss/total"])) and not any(key.startswith("intensity/") for key in row)
    assert "record_intensity is off under train.compile" in caplog.text
    assert 0.0 <= result.final["accuracy"] <= 1.0
    torch._dynamo.reset()


def test_metrics_csv_names_every_loss_term_of_the_method(tmp_path, splits):
    config = _config(tmp_path, "model.name=hsbs", "train.epochs=1", "train.max_steps_per_epoch=2")
    fit(config, train_data=splits[0], val_data=splits[2], test_data=splits[1])
    columns = _rows(tmp_path)[0].keys()
    assert {"loss/ce", "loss/ce_bsa", "loss/hst", "loss/total"} <= set(columns)


def test_two_epochs_equal_one_epoch_plus_resume(tmp_path, splits):
    overrides = ["data.augment=standard", "model.options.dropout=0.3", "train.max_steps_per_epoch=3",
                 "train.warmup_epochs=0.5", "train.deterministic=true"]
    straight = fit(_config(tmp_path / "straight", "train.epochs=2", *overrides),
                   train_data=splits[0], val_data=splits[2], test_data=splits[1])
    fit(_config(tmp_path / "split", "train.epochs=1", *overrides), train_data=splits[0], val_data=splits[2], test_data=splits[1])
    resumed = fit(resume_config(tmp_path / "split", ["train.epochs=2"]), resume=tmp_path / "split",
                  train_data=splits[0], val_data=splits[2], test_data=splits[1])
    expected, actual = straight.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert [int(row["epoch"]) for row in _rows(tmp_path / "split")] == [1, 2]
    assert load_checkpoint(tmp_path / "split")["epoch"] == 2


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, splits,
                                                                                       nan_after_model):
    config = _config(tmp_path, f"model.name={nan_after_model}", "model.options.bad_step=4", "train.epochs=3",
                     "train.max_steps_per_epoch=3")
    with pytest.raises(NonFiniteLossError, match=r"step 4 \(epoch 2, batch 1 of 3\).*aux=nan"):
        fit(config, train_data=splits[0], val_data=splits[2], test_data=splits[1])
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["epoch"] == 1 and checkpoint["step"] == 3
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())
    assert len(_rows(tmp_path)) == 1


def test_balanced_sampling_draws_minority_classes_more_often():
    labels = np.array([0] * 90 + [1] * 10)
    weights = class_sample_weights(labels, 2)
    balanced = EpochSampler(100, seed=0, weights=weights)
    drawn = []
    for epoch in range(20):
        balanced.set_epoch(epoch)
        drawn.append(labels[balanced.indices().numpy()])
    drawn = np.concatenate(drawn)
    plain = labels[EpochSampler(100, seed=0).indices().numpy()]
    assert (plain == 1).mean() == pytest.approx(0.1)
    assert 0.4 < (drawn == 1).mean() < 0.6
    split = cache_split(ColourFER(70, size=8, labels=[3] * 63 + [1] * 7), 8)
    loader = DeviceBatchLoader(split, batch_size=70, shuffle=True, balanced=True, num_classes=7)
    counts = np.bincount(next(iter(loader))[1]["label"].numpy(), minlength=7)
    assert counts[1] > 20 and counts[3] < 50


def test_class_weights_and_schedule_helpers():
    weights = inverse_frequency_weights(np.array([0] * 8 + [2] * 2), 3)
    assert weights[1] == 0 and weights[2] > weights[0]
    assert float((weights[0] * 8 + weights[2] * 2) / 10) == pytest.approx(1.0)
    factor = lambda step, epochs: lr_factor(step, schedule="cosine", steps_per_epoch=10, epochs=epochs,
                                            warmup_steps=5, gamma=0.9)
    assert factor(0, 2) == pytest.approx(0.2) and factor(4, 2) == 1.0
    assert factor(19, 2) < 0.02 and factor(19, 4) > 0.5      # extending epochs stretches the cosine
    assert lr_factor(25, schedule="exponential", steps_per_epoch=10, epochs=5, warmup_steps=0, gamma=0.5) == 0.25


def test_class_weights_reach_the_cross_entropy_of_hard_and_soft_labels():
    torch.manual_seed(0)
    model = Baseline(num_classes=3, backbone_width=8)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 0, 0, 0, 2, 2])
    plain = torch.nn.functional.cross_entropy(logits, labels)
    model.configure_criterion(class_weights=torch.ones(3))
    assert torch.allclose(model.classification_loss(logits, {"label": labels}), plain)
    weights = inverse_frequency_weights(labels.numpy(), 3)
    model.configure_criterion(class_weights=weights)
    weighted = torch.nn.functional.cross_entropy(logits, labels, weight=weights.float())
    assert torch.allclose(model.classification_loss(logits, {"label": labels}), weighted)
    assert not torch.allclose(weighted, plain)
    soft = torch.nn.functional.one_hot(labels, 3).float()   # one-hot soft labels: the weighted sum, not the mean
    expected = -(soft * torch.log_softmax(logits, 1) * weights.float()).sum(1).mean()
    assert torch.allclose(model.classification_loss(logits, {"soft_label": soft}), expected)


def test_train_and_resume_and_eval_commands_on_synthfer(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = ["train.progress=false", "train.threads=1", "data.cache_dir=cache"]
    assert main(["train", "--config", str(REPO / "configs/synthfer_hsbs.yaml"), "--out", "runs/a",
                 "train.epochs=1", "data.n_train=256", "data.n_val=128", "data.n_test=128", *common]) == 0
    assert main(["train", "--resume", "runs/a", "train.epochs=2"]) == 0
    rows = _rows(tmp_path / "runs/a")
    assert [int(row["epoch"]) for row in rows] == [1, 2] and "loss/hst" in rows[0]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", "runs/a/best.pt"]) == 0
    printed = capsys.readouterr().out
    assert "mean class accuracy" in printed and "confusion matrix" in printed
    report = json.loads((tmp_path / "runs/a/eval.json").read_text())
    assert report["n"] == 128 and report["split"] == "test" and report["dataset"] == "synthfer"
    assert set(report["per_class_recall"]) == set(report["classes"]) and len(report["confusion_matrix"]) == 7
    for key in ("accuracy", "mean_class_accuracy", "macro_f1"):
        assert 0 <= report[key] <= 1
    assert sum(map(sum, report["confusion_matrix"])) == 128
    again = evaluate_checkpoint("runs/a/best.pt", out="again.json", overrides=["data.pipeline=loader"])
    assert again["confusion_matrix"] == report["confusion_matrix"], "loader and device paths agree"


def test_a_run_is_reused_when_its_options_differ_only_by_spelled_out_defaults():
    """An ablation row (model.name=hsbs, no options) and configs/synthfer_hsbs.yaml (every option written
    out at its default) train the same model; a real change of an option is still a different recipe."""
    from hsbs_lib.config import load_config
    from hsbs_lib.engine.build import trained_same_recipe

    row = load_config("configs/synthfer_baseline.yaml", ["model.name=hsbs"]).to_dict()
    demo = load_config("configs/synthfer_hsbs.yaml")
    assert row["model"]["options"] == {} and demo.model.options
    assert trained_same_recipe(row, demo)
    assert not trained_same_recipe(row, load_config("configs/synthfer_hsbs.yaml", ["model.options.lambda_hst=5"]))
    assert not trained_same_recipe(row, load_config("configs/synthfer_hsbs.yaml", ["model.options.bsa=false"]))
    assert not trained_same_recipe(row, load_config("configs/synthfer_baseline.yaml"))
