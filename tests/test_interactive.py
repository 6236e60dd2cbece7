"""The notebook explorers: static figures, live widgets and the helpers behind them."""
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

ipywidgets = pytest.importorskip("ipywidgets")

from hsbs_lib.data.synthfer import EXPRESSION_CLASSES, REGION_NAMES, render_synthfer  # noqa: E402
from hsbs_lib.models import create_model  # noqa: E402
from hsbs_lib.models.base import ModelOutput  # noqa: E402
from hsbs_lib.viz import interactive  # noqa: E402
from hsbs_lib.viz.attention import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

SIZE = 64
N = 14
MOUTH = REGION_NAMES.index("mouth")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {"baseline": create_model("baseline").eval(), "hsbs": create_model("hsbs").eval()}


@pytest.fixture(scope="module")
def faces():
    return render_synthfer(np.arange(N), size=SIZE, seed=3, balanced=True)


def _image_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_images()]


# ----------------------------------------------------------------------------------------------
# Mode selection
# ----------------------------------------------------------------------------------------------

def test_static_mode_is_chosen_headless_and_can_be_forced(monkeypatch):
    monkeypatch.setenv("SMOKE", "1")
    assert interactive.use_static(None) is True
    assert interactive.use_static(False) is False
    monkeypatch.setenv("SMOKE", "0")
    # pytest runs without a Jupyter kernel, so there is no frontend to draw widgets in
    assert interactive.use_static(None) is True
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    assert interactive.use_static(None) is True
    with pytest.raises(ImportError, match="static=True"):
        interactive.synthfer_explorer(size=SIZE, static=False)


def test_auto_mode_under_smoke_returns_a_figure(monkeypatch):
    monkeypatch.setenv("SMOKE", "1")
    assert isinstance(interactive.synthfer_explorer(size=SIZE), Figure)


# ----------------------------------------------------------------------------------------------
# SynthFER explorer
# ----------------------------------------------------------------------------------------------

def test_controlled_face_follows_its_controls():
    base = dict(expression="happiness", yaw_bin=2, clutter=0.0, lighting=0.0, noise=0.0, blur=0.0, size=SIZE)
    calm = interactive.render_controlled_face(intensity=0.0, **base)
    smiling = interactive.render_controlled_face(intensity=1.0, **base)
    assert calm["image"].shape == (SIZE, SIZE, 3) and calm["image"].dtype == np.uint8
    assert calm["masks"].shape == (len(REGION_NAMES), SIZE, SIZE)
    mouth = calm["masks"][MOUTH] | smiling["masks"][MOUTH]
    change = np.abs(calm["image"].astype(int) - smiling["image"].astype(int)).sum(axis=-1)
    assert change[mouth].mean() > 20
    # the expression moves the face, not the background: the corners do not change
    assert change[:4, :4].max() == 0
    again = interactive.render_controlled_face(intensity=1.0, **base)
    np.testing.assert_array_equal(again["image"], smiling["image"])

    turned = interactive.render_controlled_face(intensity=1.0, **{**base, "yaw_bin": 0})
    columns = np.arange(SIZE)
    centre = lambda mask: (mask.sum(axis=0) * columns).sum() / mask.sum()  # noqa: E731
    assert abs(centre(turned["masks"][MOUTH]) - centre(smiling["masks"][MOUTH])) > 1.0
    occluded = interactive.render_controlled_face(intensity=1.0, occluder=True, **base)
    assert np.any(occluded["image"] != smiling["image"])
    other = interactive.render_controlled_face(intensity=1.0, identity=smiling["subject"] + 3, **base)
    assert other["subject"] == smiling["subject"] + 3 and np.any(other["image"] != smiling["image"])


def test_controlled_face_rejects_unknown_expression():
    with pytest.raises(ValueError, match="expression must be one of"):
        interactive.render_controlled_face(expression="joy", size=SIZE)
    with pytest.raises(ValueError, match="yaw_bin"):
        interactive.render_controlled_face(yaw_bin=7, size=SIZE)


def test_synthfer_static_figure_shows_face_and_masks():
    fig = interactive.synthfer_explorer(size=SIZE, static=True)
    assert isinstance(fig, Figure)
    axes = _image_axes(fig)
    assert len(axes) == 1 + len(REGION_NAMES)
    assert axes[0].get_images()[0].get_array().shape[:2] == (SIZE, SIZE)
    assert [ax.get_title().split(" ")[0] for ax in axes[1:]] == list(REGION_NAMES)


def test_synthfer_widget_redraws_on_every_control():
    box = interactive.synthfer_explorer(size=SIZE, static=False)
    assert isinstance(box, ipywidgets.Widget)
    assert set(box.controls) >= {"expression", "intensity", "yaw_bin", "identity", "clutter", "lighting",
                                 "noise", "blur", "occluder"}
    assert list(box.controls["expression"].options) == list(EXPRESSION_CLASSES)
    before = box.state["image"].copy()
    box.controls["expression"].value = "surprise"
    after = box.state["image"].copy()
    assert np.any(before != after)

    box.controls["intensity"].value = 0.0
    low = box.state["image"].astype(int)
    mouth_low = box.state["masks"][MOUTH]
    box.controls["intensity"].value = 1.0
    high = box.state["image"].astype(int)
    mouth = mouth_low | box.state["masks"][MOUTH]
    assert np.abs(high - low).sum(axis=-1)[mouth].mean() > 20

    for name, value in (("yaw_bin", 4), ("noise", 0.05), ("blur", 1.0), ("occluder", True), ("clutter", 0.0),
                        ("lighting", 1.0), ("identity", 7)):
        previous = box.state["image"].copy()
        box.controls[name].value = value
        assert np.any(box.state["image"] != previous), name
    assert plt.get_fignums() == []   # every redraw closed its figure


# ----------------------------------------------------------------------------------------------
# Attention explorer
# ----------------------------------------------------------------------------------------------

class _ScaleAttentionModel(nn.Module):
    """A model whose only maps are two named attention scales (like PhaNet's), to test layer lists."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.classifier = nn.Linear(4, 7)

    def forward(self, x):
        features = torch.relu(self.conv(x))
        pooled = features.mean(dim=(2, 3))
        maps = {"attention/coarse": features.mean(dim=1)[:, ::2, ::2], "attention/fine": features.mean(dim=1)}
        return ModelOutput(logits=self.classifier(pooled), features=pooled, maps=maps)


def test_attention_static_grid_scores_each_map(models, faces):
    fig = interactive.attention_explorer(models, faces["images"], faces["masks"], static=True)
    assert isinstance(fig, Figure)
    axes = _image_axes(fig)
    assert len(axes) == len(models) * 5   # input + 4 layers per method
    scored = [ax.get_title() for ax in axes if "E " in ax.get_title()]
    assert len(scored) == len(models) * 4
    for title in scored:
        share = float(title.split("E ")[1].split()[0])
        assert 0.0 <= share <= 1.0 and title.split()[-1] in ("hit", "miss")


def test_attention_widget_follows_image_method_and_layer(models, faces):
    all_models = {**models, "scales": _ScaleAttentionModel()}
    box = interactive.attention_explorer(all_models, faces["images"], faces["masks"], static=False)
    assert isinstance(box, ipywidgets.Widget)
    assert box.state["method"] == "baseline" and box.state["layer"] == "layer4"
    assert 0.0 <= box.state["energy_share"] <= 1.0
    first = box.state["overlay"].copy()
    box.controls["image"].value = 5
    assert box.state["image"] == 5 and np.any(box.state["overlay"] != first)
    second = box.state["overlay"].copy()
    box.controls["layer"].value = "layer1"
    assert box.state["layer"] == "layer1" and np.any(box.state["overlay"] != second)
    box.controls["method"].value = "hsbs"
    assert box.state["method"] == "hsbs" and box.state["layer"] == "layer1"
    # a model with other maps gets its own layer list, and the view lands on one of them
    box.controls["method"].value = "scales"
    assert set(box.controls["layer"].options) == {"coarse", "fine"}
    assert box.state["method"] == "scales" and box.state["layer"] in ("coarse", "fine")
    assert box.state["overlay"].shape == (SIZE, SIZE, 3)


def test_attention_accepts_uint8_or_normalised_inputs_alike(models, faces):
    pixels = torch.as_tensor(faces["images"][:4]).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalised = (pixels - mean) / std
    from_uint8 = interactive.attention_explorer(models, faces["images"][:4], None, static=False)
    from_tensor = interactive.attention_explorer(models, normalised, None, static=False)
    np.testing.assert_allclose(from_uint8.state["overlay"], from_tensor.state["overlay"], atol=1e-4)
    assert "energy_share" not in from_uint8.state   # no masks, no scores
    with pytest.raises(ValueError, match="masks must be"):
        interactive.attention_explorer(models, faces["images"][:4], faces["masks"][:3], static=True)


# ----------------------------------------------------------------------------------------------
# Batch-similarity explorer
# ----------------------------------------------------------------------------------------------

def test_compose_batch_controls_the_minority_share():
    labels = np.repeat(np.arange(7), 10)
    batch = interactive.compose_batch(labels, minority=1, share=0.25, batch_size=16, seed=0)
    counts = np.bincount(labels[batch], minlength=7)
    assert len(batch) == 16 and len(set(batch.tolist())) == 16
    assert counts[1] == 4 and counts.max() - counts[np.arange(7) != 1].min() <= 4
    np.testing.assert_array_equal(batch, interactive.compose_batch(labels, minority=1, share=0.25, batch_size=16))
    assert np.bincount(labels[interactive.compose_batch(labels, minority=1, share=0.0, batch_size=16)],
                       minlength=7)[1] == 0
    assert np.bincount(labels[interactive.compose_batch(labels, minority=1, share=0.01, batch_size=16)],
                       minlength=7)[1] == 1
    # a class with fewer samples than its share gives its places to the others
    few = np.r_[[0, 0], np.repeat(np.arange(1, 7), 10)]
    batch = interactive.compose_batch(few, minority=0, share=0.5, batch_size=20)
    assert len(batch) == 20 and np.sum(few[batch] == 0) == 2


def test_similarity_static_figure(models, faces):
    data = {"images": faces["images"], "labels": faces["labels"]}
    fig = interactive.similarity_explorer(models["hsbs"], data, batch_size=12, static=True, minority_share=0.2)
    assert isinstance(fig, Figure)
    heatmaps = [ax for ax in fig.axes if ax.collections]
    assert heatmaps and "BSA similarity" in heatmaps[0].get_title()
    assert len(_image_axes(fig)) == 2 * (1 + 3)   # two fear queries, each with its top-3 attended samples


def test_similarity_widget_recomposes_the_batch(models, faces):
    data = (faces["images"], faces["labels"])
    fear = EXPRESSION_CLASSES.index("fear")
    box = interactive.similarity_explorer(models["hsbs"], data, batch_size=12, static=False, minority_share=0.1)
    assert isinstance(box, ipywidgets.Widget) and box.state["kind"] == "BSA similarity"
    similarity = box.state["similarity"]
    assert similarity.shape == (12, 12)
    np.testing.assert_allclose(similarity.sum(axis=1), 1.0, atol=1e-4)   # BSA rows are a softmax
    assert np.sum(box.state["labels"] == fear) == 1
    box.controls["share"].value = 0.2
    assert np.sum(box.state["labels"] == fear) == 2
    for query, attended in box.state["attended"].items():
        assert box.state["labels"][query] == fear
        assert query not in [j for j, _ in attended] and len(attended) == box.controls["top_k"].value
        weights = [weight for _, weight in attended]
        assert weights == sorted(weights, reverse=True)
        assert weights[0] == pytest.approx(float(np.max(np.delete(box.state["similarity"][query], query))))
    box.controls["minority"].value = "disgust"
    assert set(box.state["attended"]) == set(np.flatnonzero(box.state["labels"] == 2).tolist())
    box.controls["top_k"].value = 2
    assert all(len(attended) == 2 for attended in box.state["attended"].values())


def test_similarity_without_bsa_falls_back_to_feature_cosine(models, faces):
    box = interactive.similarity_explorer(models["baseline"], (faces["images"], faces["labels"]), batch_size=8,
                                          static=False)
    assert "cosine" in box.state["kind"]
    np.testing.assert_allclose(np.diag(box.state["similarity"]), 1.0, atol=1e-5)
    # each sample is most similar to itself here, and that says nothing: it is never listed as attended
    assert box.state["attended"]
    for query, attended in box.state["attended"].items():
        assert query not in [j for j, _ in attended]
    with pytest.raises(ValueError, match="does not occur"):
        interactive.similarity_explorer(models["baseline"], (faces["images"], np.zeros(N, int)), static=True)


# ----------------------------------------------------------------------------------------------
# Confusion explorer
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def predictions():
    y_true = np.arange(40) % 7
    y_pred = y_true.copy()
    y_pred[[1, 8, 15, 22, 29]] = 0          # five fear faces called surprise: the most confused cell
    y_pred[[2, 9]] = 3
    return y_true, y_pred, render_synthfer(np.arange(40), size=32, seed=1)["images"]


def test_confusion_static_outlines_the_most_confused_cell(predictions):
    y_true, y_pred, images = predictions
    fig = interactive.confusion_explorer(y_true, y_pred, images, static=True)
    assert isinstance(fig, Figure)
    outlined = [patch for ax in fig.axes for patch in ax.patches if isinstance(patch, Rectangle)
                and patch.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert len(outlined) == 1 and outlined[0].get_xy() == (0, 1)   # column 0 (surprise), row 1 (fear)
    faces_shown = [ax for ax in _image_axes(fig) if ax.get_title().startswith("#")]
    assert len(faces_shown) == 5
    assert "true fear, predicted surprise: 5 images" in fig._suptitle.get_text()


def test_confusion_widget_shows_the_clicked_cell(predictions):
    y_true, y_pred, images = predictions
    box = interactive.confusion_explorer(y_true, y_pred, images, static=False, max_faces=3)
    assert isinstance(box, ipywidgets.Widget)
    assert len(box.buttons) == 49 and box.buttons[(1, 0)].description == "5"
    assert box.state["cell"] == (1, 0) and len(box.state["shown"]) == 3   # capped at max_faces
    box.buttons[(2, 3)].click()
    assert box.state["cell"] == (2, 3)
    np.testing.assert_array_equal(box.state["members"], [2, 9])
    box.buttons[(4, 4)].click()
    assert box.state["cell"] == (4, 4) and np.all(y_true[box.state["members"]] == 4)
    assert len(box.state["members"]) == np.sum((y_true == 4) & (y_pred == 4))
    with pytest.raises(ValueError, match="differ in length"):
        interactive.confusion_explorer(y_true[:-1], y_pred, images, static=True)
