"""Grad-CAM through pytorch-grad-cam: output range, hooks released, model state untouched."""
import numpy as np
import pytest
import torch

from hsbs_lib.models import create_model, list_models
from hsbs_lib.viz.gradcam import (CAM_METHODS, EXCLUDED_CAM_METHODS, gradcam, gradcam_target_layer,
                                  plot_gradcam_per_class)
from hsbs_lib.viz.style import save_figure


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("baseline", num_classes=7)


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_gradcam_shape_and_range(model, images):
    cams = gradcam(model, images)
    assert isinstance(cams, np.ndarray) and cams.dtype == np.float32
    assert cams.shape == (3, 64, 64)
    assert np.isfinite(cams).all() and cams.min() >= 0.0 and cams.max() <= 1.0
    assert cams.max() > 0.5  # min-max scaled per image by the library: not a blank map


def test_hooks_are_released_and_state_restored(model, images):
    model.train()
    model.backbone.layer1.eval()  # a mixed state must come back exactly
    modes = {name: m.training for name, m in model.named_modules()}
    before = _hook_count(model)
    marker = torch.full_like(model.classifier.weight, 3.0)
    model.classifier.weight.grad = marker.clone()
    for method in ("gradcam", "gradcam++", "gradcam"):
        gradcam(model, images[:2], method=method)
    assert _hook_count(model) == before
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(model.classifier.weight.grad, marker)
    assert model.backbone.conv1.weight.grad is None
    model.classifier.weight.grad = None
    model.eval()


def test_explicit_targets_change_the_map(model, images):
    first = gradcam(model, images[:1], targets=[0])
    second = gradcam(model, images[:1], targets=[1])
    assert first.shape == (1, 64, 64)
    assert not np.allclose(first, second)
    broadcast = gradcam(model, images[:2], targets=0)
    assert broadcast.shape == (2, 64, 64)
    with pytest.raises(ValueError, match="3 targets for 2 images"):
        gradcam(model, images[:2], targets=[0, 1, 2])
    with pytest.raises(ValueError, match="unknown CAM method"):
        gradcam(model, images[:1], method="nope")


# A forward pass per channel of layer4 (scorecam, ablationcam) or a CAM per window and scale (sess): one small
# image. fem thresholds the target grid at its mean plus two standard deviations: 4 x 4 cells (128 px) at least.
SLOW_CAM_METHODS = ("scorecam", "ablationcam", "sess")


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_every_selectable_method_gives_a_finite_map_and_releases_its_hooks(model, method):
    size, count = (64, 1) if method in SLOW_CAM_METHODS else (128, 2) if method == "fem" else (64, 2)
    x = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(3))
    before, modes = _hook_count(model), {name: m.training for name, m in model.named_modules()}
    cams = gradcam(model, x, method=method, targets=[1] * count)
    assert cams.shape == (count, size, size) and cams.dtype == np.float32
    assert np.isfinite(cams).all() and cams.min() >= 0.0 and cams.max() <= 1.0
    assert cams.max() > 0.5, "a blank map"
    assert _hook_count(model) == before
    assert {name: m.training for name, m in model.named_modules()} == modes


@pytest.mark.parametrize("name", list_models())
def test_the_fast_methods_run_on_every_registered_model(name):
    torch.manual_seed(0)
    network = create_model(name, num_classes=7, backbone_width=16, input_size=64).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    for method in CAM_METHODS:
        if method in (*SLOW_CAM_METHODS, "fem"):
            continue
        cams = gradcam(network, x, method=method)
        assert cams.shape == (1, 64, 64) and np.isfinite(cams).all() and cams.max() > 0.5, method


def test_an_unknown_method_is_one_line_naming_every_method(model, images):
    with pytest.raises(ValueError) as error:
        gradcam(model, images[:1], method="gradcam--")
    message = str(error.value)
    assert "\n" not in message and message.startswith("unknown CAM method 'gradcam--'; choose from gradcam, ")
    assert all(name in message for name in CAM_METHODS)
    for excluded in EXCLUDED_CAM_METHODS:
        assert excluded not in CAM_METHODS
        with pytest.raises(ValueError, match=f"{excluded} is left out: "):
            gradcam(model, images[:1], method=excluded)


def test_gradcam_with_frozen_parameters(images):
    frozen = create_model("baseline", num_classes=7)
    for param in frozen.parameters():
        param.requires_grad_(False)
    cams = gradcam(frozen, images[:1])
    assert cams.shape == (1, 64, 64) and cams.max() > 0.5


def test_scorecam_runs_on_a_small_input(model):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = _hook_count(model)
    cams = gradcam(model, x, method="scorecam")
    assert cams.shape == (1, 32, 32) and 0.0 <= cams.min() and cams.max() <= 1.0
    assert _hook_count(model) == before


def test_target_layer_table_and_override(model, images):
    assert gradcam_target_layer(model) is model.backbone.layer4[-1]
    wide = create_model("baseline", num_classes=7, backbone="resnet50")
    assert gradcam_target_layer(wide) is wide.backbone.layer4[-1]
    convnext = create_model("baseline", num_classes=7, backbone="convnext_tiny")
    assert gradcam_target_layer(convnext) is convnext.backbone.layer4[-1]    # stage 4's blocks, after downsampling
    assert type(gradcam_target_layer(convnext)[-1]).__name__ == "CNBlock"
    model.gradcam_target_layer = "backbone.layer3.-1"
    try:
        assert gradcam_target_layer(model) is model.backbone.layer3[-1]
        cams = gradcam(model, images[:1])
        assert cams.shape == (1, 64, 64)
        model.gradcam_target_layer = "backbone.layer9"
        with pytest.raises(KeyError, match="backbone.layer9"):
            gradcam_target_layer(model)
    finally:
        del model.gradcam_target_layer


def test_plot_gradcam_per_class(model, tmp_path):
    classes = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
    images = np.random.default_rng(0).integers(0, 255, size=(5, 48, 48, 3), dtype=np.uint8)
    cams = np.random.default_rng(1).random((5, 48, 48)).astype(np.float32)
    labels = np.array([0, 1, 1, 3, 6])
    preds = np.array([0, 2, 1, 3, 5])
    fig = plot_gradcam_per_class(images, cams, labels, preds, classes, per_class=2)
    assert len(fig.axes) == 2 * len(classes)
    # fear: the correct prediction (index 2) is shown first, the mistake (predicted disgust) second
    fear_top, fear_bottom = fig.axes[1], fig.axes[len(classes) + 1]
    assert fear_top.get_xlabel() == "pred: fear" and fear_bottom.get_xlabel() == "pred: disgust"
    assert not fig.axes[2].images  # no disgust sample: blank panel
    png, _ = save_figure(fig, "gradcam_per_class", tmp_path)
    assert png.stat().st_size > 1000
