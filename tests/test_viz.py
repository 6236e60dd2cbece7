"""The figures library: every plot runs on a tiny model and small batch and writes a non-empty PNG."""
import argparse
import csv

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from hsbs_lib import demo as demo_module
from hsbs_lib.data.labels import CANONICAL_7
from hsbs_lib.models import ModelOutput, create_model
from hsbs_lib.viz import (ClassSimilarityAccumulator, LearningIntensityRecorder, attention_maps,
                          batch_similarity_maps, class_similarity, confusion, overlay, per_class_recall,
                          plot_class_similarity, plot_confusion, plot_confusion_pair, plot_ds_attention,
                          plot_layer_attention, plot_learning_intensity, plot_per_class_accuracy,
                          plot_scale_attention_by_pose, plot_similarity_matrix, plot_training_curves, plot_tsne,
                          read_intensity, read_metrics, save_figure, sort_by_label, to_display_images,
                          tsne_embedding, upsample_to)
from hsbs_lib.viz import figures as figures_module

CLASSES = list(CANONICAL_7)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _saved_png(fig, name, folder):
    png, pdf = save_figure(fig, name, folder)
    plt.close(fig)
    assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000
    return png


@pytest.fixture(scope="module")
def baseline():
    torch.manual_seed(0)
    return create_model("baseline", num_classes=7).eval()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(0)
    uint8 = torch.randint(0, 256, (4, 48, 48, 3), dtype=torch.uint8, generator=generator)
    inputs = (uint8.permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD).view(1, 3, 1, 1)
    return uint8.numpy(), inputs


class MapsOnly(nn.Module):
    """A stand-in method that returns its own attention maps (like HSBS, PhaNet, MFER)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        b = x.shape[0]
        maps = {"attention/layer2": torch.full((b, 6, 6), 2.0) * self.scale,
                "attention/ds_layer3": torch.ones(b, 3, 3),
                "features/layer4": torch.ones(b, 8, 2, 2) * 3.0,
                "scale_gates": torch.ones(b, 3) / 3}
        return ModelOutput(logits=torch.zeros(b, 7), features=torch.zeros(b, 4), maps=maps)


# ---------------------------------------------------------------- attention

def test_attention_maps_from_features(baseline, batch):
    _, inputs = batch
    baseline.train()
    maps = attention_maps(baseline, inputs)
    assert baseline.training, "the training flag is restored"
    baseline.eval()
    with torch.no_grad():
        output = baseline(inputs)
    assert list(maps) == ["layer1", "layer2", "layer3", "layer4"]
    for layer, value in maps.items():
        features = output.maps[f"features/{layer}"]
        assert value.shape == (4, *features.shape[-2:])
        assert not value.requires_grad
        assert torch.allclose(value, features.pow(2).mean(dim=1), atol=1e-6)


def test_attention_maps_prefers_the_models_own_maps(batch):
    _, inputs = batch
    maps = attention_maps(MapsOnly(), inputs, layers=("layer2", "layer4"))
    assert torch.all(maps["layer2"] == 2.0)
    assert torch.all(maps["layer4"] == 9.0)       # mean_c F^2 of the features
    assert maps["ds_layer3"].shape == (4, 3, 3)  # extra attention maps come along under their name
    assert "scale_gates" not in maps


def test_upsample_overlay_and_display_images(batch):
    uint8, inputs = batch
    assert upsample_to(torch.rand(4, 3, 3), 48).shape == (4, 48, 48)
    assert upsample_to(np.ones((2, 2)), (10, 12)).shape == (10, 12)
    restored = to_display_images(inputs, mean=MEAN, std=STD)
    assert restored.shape == (4, 48, 48, 3)
    assert np.allclose(restored, uint8 / 255.0, atol=1e-5)
    assert np.allclose(to_display_images(torch.from_numpy(uint8).permute(0, 3, 1, 2)), uint8 / 255.0)
    blended = overlay(uint8[0], torch.rand(3, 3), alpha=0.4)
    assert blended.shape == (48, 48, 3) and blended.min() >= 0 and blended.max() <= 1
    assert np.allclose(overlay(uint8[0], torch.rand(3, 3), alpha=0.0), uint8[0] / 255.0, atol=1e-6)


def test_plot_layer_attention_baseline_beside_method(baseline, batch, tmp_path):
    uint8, inputs = batch
    maps = attention_maps(baseline, inputs)
    method_maps = {layer: value.flip(-1) for layer, value in maps.items()}
    fig = plot_layer_attention(uint8, {"baseline": maps, "hsbs": method_maps}, max_images=3)
    assert len(fig.axes) == 3 * (1 + 2 * 4)
    assert fig.axes[1].get_title() == "baseline\nlayer1" and fig.axes[5].get_title() == "hsbs\nlayer1"
    _saved_png(fig, "layer_attention", tmp_path)
    fig = plot_layer_attention(inputs, {"baseline": maps}, mean=MEAN, std=STD)  # float inputs, denormalised
    _saved_png(fig, "layer_attention_float", tmp_path)


def test_plot_scale_attention_by_pose_and_ds_attention(batch, tmp_path):
    uint8, inputs = batch
    maps = {"layer2": torch.rand(4, 6, 6), "layer3": torch.rand(4, 3, 3), "layer4": torch.rand(4, 2, 2)}
    gates = torch.softmax(torch.randn(4, 3), dim=1)
    fig = plot_scale_attention_by_pose(uint8, [3, 0, 3, 1], maps, gates=gates,
                                       pose_names=["-60", "-30", "0", "30", "60"])
    assert len(fig.axes) == 3 * 4  # three pose bins present, input + three scales
    assert fig.axes[0].get_ylabel() == "-60"
    _saved_png(fig, "scale_attention_by_pose", tmp_path)
    ds_maps = attention_maps(MapsOnly(), inputs)
    _saved_png(plot_ds_attention(uint8, ds_maps), "ds_attention", tmp_path)
    with pytest.raises(KeyError, match="ds_layer4"):
        plot_ds_attention(uint8, {"layer1": torch.rand(4, 3, 3)})


# ---------------------------------------------------------------- similarity

def test_similarity_sorted_by_label(tmp_path):
    labels = np.array([2, 0, 1, 0, 2, 1])
    similarity = torch.arange(36, dtype=torch.float32).view(6, 6)
    matrix, sorted_labels, order = sort_by_label(similarity, labels)
    assert sorted_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert order.tolist() == [1, 3, 2, 5, 0, 4]
    assert matrix[0, 1] == similarity[1, 3]
    fig = plot_similarity_matrix(similarity, labels, CLASSES)
    drawn = np.asarray(fig.axes[0].collections[0].get_array()).reshape(6, 6)
    assert np.array_equal(drawn, matrix)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["surprise", "fear", "disgust"]
    _saved_png(fig, "similarity", tmp_path)


def test_class_similarity_and_accumulator(tmp_path):
    similarity = torch.tensor([[1.0, 0.8, 0.1, 0.2],
                               [0.6, 1.0, 0.3, 0.4],
                               [0.1, 0.5, 1.0, 0.9],
                               [0.2, 0.4, 0.7, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    means = class_similarity(similarity, labels, num_classes=3)
    assert means.shape == (3, 3)
    assert means[0, 0].item() == pytest.approx((0.8 + 0.6) / 2)     # diagonal excluded
    assert means[0, 1].item() == pytest.approx((0.1 + 0.2 + 0.3 + 0.4) / 4)
    assert means[1, 0].item() == pytest.approx((0.1 + 0.5 + 0.2 + 0.4) / 4)
    assert torch.isnan(means[2]).all()
    accumulator = ClassSimilarityAccumulator(3)
    accumulator.update(similarity, labels)
    accumulator.update(torch.tensor([[1.0, 0.0], [0.2, 1.0]]), torch.tensor([0, 2]))
    total = accumulator.compute()
    assert total[0, 0].item() == pytest.approx((0.8 + 0.6) / 2)
    assert total[0, 2].item() == pytest.approx(0.0) and total[2, 0].item() == pytest.approx(0.2)
    assert torch.isnan(total[2, 2])
    _saved_png(plot_class_similarity(total, CLASSES[:3]), "class_similarity", tmp_path)


def test_batch_similarity_maps_leaves_the_model_unchanged(batch):
    _, inputs = batch
    model = create_model("baseline", num_classes=7)
    model.eval()
    running_mean = model.backbone.bn1.running_mean.clone()
    assert batch_similarity_maps(model, inputs) is None  # the baseline has no BSA
    assert torch.equal(model.backbone.bn1.running_mean, running_mean)
    assert not model.training


# ---------------------------------------------------------------- confusion, curves, t-SNE

def test_confusion_counts_and_plots(tmp_path):
    y_true = [0, 0, 1, 2, 2, 2, 6]
    y_pred = [0, 1, 1, 2, 0, 2, 6]
    counts = confusion(y_true, y_pred, 7)
    assert counts.shape == (7, 7) and counts.sum() == 7
    assert counts[0, 0] == 1 and counts[0, 1] == 1 and counts[2, 0] == 1 and counts[2, 2] == 2
    recalls = per_class_recall(counts, CLASSES)
    assert recalls["disgust"] == pytest.approx(2 / 3) and np.isnan(recalls["happiness"])
    fig = plot_confusion(counts, normalize=True)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == CLASSES
    _saved_png(fig, "confusion", tmp_path)
    _saved_png(plot_confusion(counts, CLASSES, normalize=False), "confusion_counts", tmp_path)
    _saved_png(plot_confusion_pair(counts, np.eye(7, dtype=int), CLASSES, ("baseline", "hsbs")), "pair", tmp_path)


def test_per_class_accuracy_highlights_minority_classes(tmp_path):
    recalls = {"baseline": dict(zip(CLASSES, [0.9, 0.2, 0.3, 0.95, 0.7, 0.6, 0.8])),
               "hsbs": dict(zip(CLASSES, [0.9, 0.4, 0.45, 0.95, 0.7, 0.65, 0.8]))}
    fig = plot_per_class_accuracy(recalls, CLASSES)
    bold = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_fontweight() == "bold"]
    assert bold == ["fear", "disgust"]
    assert len(fig.axes[0].patches) >= 14
    _saved_png(fig, "per_class", tmp_path)


def _write_metrics(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_read_metrics_and_training_curves(tmp_path):
    path = tmp_path / "metrics.csv"
    rows = [{"epoch": e, "step": 10 * e, "loss/ce": 2.0 / e, "loss/hst": 0.1 / e, "loss/total": 2.1 / e,
             "lr": 1e-3 / e, "train/accuracy": 0.3 + 0.1 * e, "test/accuracy": "" if e == 1 else 0.5,
             "time/epoch_s": 3.0, "intensity/layer1": 1e-4 * e, "intensity/layer4": 1e-3} for e in (1, 2, 3)]
    _write_metrics(path, rows)
    metrics = read_metrics(path)
    assert metrics["epoch"] == [1.0, 2.0, 3.0]
    assert np.isnan(metrics["test/accuracy"][0]) and metrics["test/accuracy"][1] == 0.5
    fig = plot_training_curves({"hsbs": metrics, "baseline": path})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "accuracy", "learning rate"]
    assert len(fig.axes[0].get_lines()) == 2 * 3  # three loss columns per run
    _saved_png(fig, "curves", tmp_path)
    intensity = read_intensity(path)
    assert set(intensity) == {"layer1", "layer4"}
    assert intensity["layer1"] == pytest.approx([1e-4, 2e-4, 3e-4]) and intensity["layer4"] == [1e-3] * 3
    _write_metrics(tmp_path / "plain.csv", [{"epoch": 1, "loss/ce": 1.0}])
    assert read_intensity(tmp_path / "plain.csv") == {}
    fig = plot_learning_intensity({"baseline": intensity, "clcl": {"layer1": [2e-4, 3e-4, 5e-4]}})
    assert [ax.get_title() for ax in fig.axes] == ["layer1", "layer4"]
    _saved_png(fig, "intensity", tmp_path)


def test_tsne_is_deterministic_for_a_seed(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    features = rng.normal(size=(60, 64)) + 4.0 * np.eye(64)[labels]
    first = tsne_embedding(features, seed=0)
    again = tsne_embedding(torch.from_numpy(features), seed=0)  # same values as a tensor
    assert first.shape == (60, 2)
    assert np.allclose(first, again, atol=1e-4)
    centers = np.stack([first[labels == k].mean(axis=0) for k in range(3)])
    spread = max(np.linalg.norm(first[labels == k] - centers[k], axis=1).mean() for k in range(3))
    assert min(np.linalg.norm(centers[a] - centers[b]) for a in range(3) for b in range(a + 1, 3)) > 2 * spread
    fig = plot_tsne({"none": (first, labels), "DSF": (first[::-1], labels[::-1]), "LGM": (first, labels)},
                    CLASSES, ncols=2)
    assert sum(ax.get_visible() for ax in fig.axes) == 3
    _saved_png(fig, "tsne", tmp_path)
    with pytest.raises(ValueError, match="at least 5"):
        tsne_embedding(features[:3])


# ---------------------------------------------------------------- learning intensity

def test_learning_intensity_recorder(batch):
    _, inputs = batch
    model = create_model("baseline", num_classes=7)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    labels = torch.tensor([0, 1, 2, 3])
    with LearningIntensityRecorder(model) as recorder:
        assert len(model._forward_hooks) == 1
        for _ in range(2):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs[:, :, :32, :32]).logits, labels).backward()
            optimizer.step()
        with torch.no_grad():
            model(inputs[:, :, :32, :32])  # no gradient: nothing recorded
        epoch = recorder.end_epoch()
    assert len(model._forward_hooks) == 0
    assert all(len(recorder.epochs[layer]) == 1 and recorder.steps[layer] == [] for layer in recorder.layers)
    assert all(value > 0 and np.isfinite(value) for value in epoch.values())
    nn.functional.cross_entropy(model(inputs[:, :, :32, :32]).logits, labels).backward()
    assert recorder.steps["layer1"] == []  # released: later passes are not recorded


# ---------------------------------------------------------------- hsbs figures pieces

def _eval_data(count=24, size=32):
    rng = np.random.default_rng(0)
    masks = np.zeros((count, 4, size, size), dtype=bool)
    masks[:, 0, 6:9, 6:26] = True
    masks[:, 3, 22:27, 10:22] = True
    return figures_module.EvalData(images=rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8),
                                   labels=np.arange(count) % 7, masks=masks, poses=np.arange(count) % 5)


def _stand_in_run(name, model_name="baseline", **options):
    torch.manual_seed(0)
    metrics = {"epoch": [1.0, 2.0], "loss/ce": [2.0, 1.5], "lr": [1e-3, 5e-4], "test/accuracy": [0.2, 0.3]}
    return figures_module.RunArtifacts(name=name, model=create_model(model_name, num_classes=7, **options).eval(),
                                       classes=CLASSES, input_size=32, metrics=metrics,
                                       intensity={"layer1": [1e-4, 2e-4], "layer4": [1e-3, 1e-3]})


def test_write_run_and_comparison_figures(tmp_path):
    open_before = set(plt.get_fignums())
    data = _eval_data()
    out = tmp_path / "out"
    method = _stand_in_run("toy_hsbs", "hsbs")
    base = _stand_in_run("toy_baseline")
    options = dict(show=3, tsne_samples=24, cam_samples=8, formats=("png",))
    method_summary = figures_module.write_run_figures(method, data, out, **options)
    base_summary = figures_module.write_run_figures(base, data, out, **options)
    figures_module.write_comparison_figures(method_summary, base_summary, (method, base), data, out, formats=("png",))
    names = {path.stem for path in out.glob("*.png")}
    for suffix in ("curves", "intensity", "confusion_counts", "confusion", "per_class", "tsne", "attention",
                   "attention_scores", "gradcam"):
        assert f"toy_hsbs_{suffix}" in names and f"toy_baseline_{suffix}" in names
    assert {"toy_hsbs_bsa_similarity", "toy_hsbs_class_similarity"} <= names
    assert "toy_baseline_bsa_similarity" not in names
    for suffix in ("confusion", "per_class", "attention", "attention_scores", "curves", "intensity", "tsne"):
        assert f"toy_hsbs_vs_toy_baseline_{suffix}" in names
    assert all((out / f"{name}.png").stat().st_size > 1000 for name in names)
    table = (out / "toy_hsbs_vs_toy_baseline_attention_scores.md").read_text()
    assert "| toy_baseline | layer4 |" in table and "| toy_hsbs | gradcam |" in table
    assert method_summary.counts.sum() == len(data.labels)
    assert set(method_summary.scores) == {"layer1", "layer2", "layer3", "layer4", "gradcam"}
    assert set(plt.get_fignums()) <= open_before, "every figure is closed after saving"


def test_phanet_and_mfer_maps_reach_their_figures(tmp_path):
    data = _eval_data(count=10)
    phanet = _stand_in_run("toy_phanet", "phanet")
    inputs = figures_module.model_inputs(data.images, phanet.normalization)
    writer = figures_module.FigureWriter(tmp_path, formats=("png",))
    figures_module._method_specific_figures(phanet, data, inputs, np.arange(3), writer)
    assert [path.name for path in writer.paths] == ["toy_phanet_scale_attention_by_pose.png"]
    mfer = create_model("mfer", num_classes=7)
    maps = attention_maps(mfer, inputs[:3])
    assert {"ds_layer3", "ds_layer4"} <= set(maps)
    _saved_png(plot_ds_attention(data.images[:3], maps), "mfer_ds_attention", tmp_path)


def test_metric_figures_without_test_data(tmp_path):
    run = _stand_in_run("toy_metrics_only")
    summary = figures_module.write_run_figures(run, None, tmp_path)
    assert {path.name for path in summary.paths} == {f"toy_metrics_only_{kind}.{fmt}" for kind in ("curves", "intensity")
                                                      for fmt in ("png", "pdf")}


def test_display_indices_cycle_through_classes():
    labels = np.array([3, 3, 0, 3, 1, 0])
    assert figures_module.display_indices(labels, 4).tolist() == [2, 4, 0, 5]


def test_figures_command_arguments_and_errors(monkeypatch, tmp_path):
    from hsbs_lib.cli import main

    parser = argparse.ArgumentParser()
    demo_module.add_figures_arguments(parser)
    args = parser.parse_args(["--run", "runs/x", "--compare", "runs/y", "--out", "figs", "--samples", "64"])
    assert (args.run, args.compare, args.out, args.samples, args.demo) == ("runs/x", "runs/y", "figs", 64, False)
    assert main(["figures"]) == 1  # neither --run nor --demo: a readable error, not a traceback
    assert main(["figures", "--run", str(tmp_path / "missing")]) == 1

    calls = []
    monkeypatch.setattr(figures_module, "load_run", lambda path, **kw: _stand_in_run(str(path).rsplit("/", 1)[-1]))
    monkeypatch.setattr(figures_module, "load_eval_data", lambda run, **kw: None)  # metric figures only
    monkeypatch.setattr(demo_module, "ensure_demo_runs",
                        lambda: calls.append("trained") or {"demo_hsbs": "runs/demo_hsbs",
                                                            "demo_baseline": "runs/demo_baseline"})
    assert main(["figures", "--demo", "--out", str(tmp_path / "demo"), "--formats", "png"]) == 0
    assert calls == ["trained"]
    assert (tmp_path / "demo" / "demo_hsbs_vs_demo_baseline_curves.png").is_file()
    assert not list((tmp_path / "demo").glob("*.pdf"))


def test_figures_command_end_to_end_on_trained_runs(tmp_path):
    """Train HSBS for one epoch on 128 SynthFER images, then run `hsbs figures` on the run directory."""
    train = pytest.importorskip("hsbs_lib.engine.train")
    from hsbs_lib.cli import main
    from hsbs_lib.config import load_config

    config = load_config(None, [f"out={tmp_path / 'hsbs'}", "model.name=hsbs", "data.name=synthfer",
                                "data.n_train=128", "data.n_val=48", "data.n_test=48", "data.input_size=48",
                                "train.epochs=1", "train.batch_size=32", "train.device=cpu", "train.progress=false",
                                "train.record_intensity=true", "train.threads=1"])
    train.fit(config)
    out = tmp_path / "figures"
    assert main(["figures", "--run", str(tmp_path / "hsbs"), "--out", str(out), "--formats", "png",
                 "--samples", "48"]) == 0
    names = {path.stem for path in out.glob("*.png")}
    expected = {f"hsbs_{kind}" for kind in ("curves", "intensity", "confusion", "confusion_counts", "per_class",
                                            "tsne", "attention", "attention_scores", "gradcam", "bsa_similarity",
                                            "class_similarity")}
    assert expected <= names, sorted(expected - names)
    table = (out / "hsbs_attention_scores.md").read_text()
    assert "| hsbs | layer1 |" in table and "| hsbs | gradcam |" in table
