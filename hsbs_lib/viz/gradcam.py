"""Class activation maps through pytorch-grad-cam, for any model of the package: every method of the library
that works on these models, by name (:data:`CAM_METHODS`; the ones left out and why: :data:`EXCLUDED_CAM_METHODS`).

Our models return a :class:`ModelOutput`, the library expects logits: :class:`LogitsOnly` adapts one
to the other. The target layer comes from a per-backbone table unless the model names its own with a
``gradcam_target_layer`` attribute (a module or a dotted path such as ``"backbone.layer3.-1"``). Hooks
live only inside the library's context manager, and every module's training flag and every
parameter's ``.grad`` are put back afterwards, so a call in the middle of training changes nothing.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from hsbs_lib.models.base import LogitsOnly
from hsbs_lib.viz.attention import _hide_axes, overlay, to_display_images
from hsbs_lib.viz.style import apply_style

# method name (as pytorch-grad-cam's own example script names them) -> pytorch_grad_cam class name (imported on
# first use: the library pulls in a lot). Each runs on every registered model (tests/test_gradcam.py). Notes:
# eigencam, eigengradcam, kpcacam, fem and segeigencam ignore the target class (principal components or
# feature statistics of the layer); fem needs a target grid of at least 4 x 4 (inputs of 112 px and more on a
# stride-32 backbone) and returns a blank map below that; scorecam and ablationcam run a forward pass per
# channel of the target layer (512 on a ResNet-18), and sess one CAM per window of 12 scales: seconds per
# image on a CPU (docs/BENCHMARKS.md), meant for a handful of images.
CAM_METHODS = {
    "gradcam": "GradCAM", "hirescam": "HiResCAM", "gradcamelementwise": "GradCAMElementWise",
    "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM", "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM", "kpcacam": "KPCA_CAM", "shapleycam": "ShapleyCAM", "finercam": "FinerCAM",
    "fem": "FEM", "segeigencam": "SegEigenCAM", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM",
    "sess": "SESS",
}

#: pytorch-grad-cam methods that are not selectable here, and why.
EXCLUDED_CAM_METHODS = {
    "fullgrad": "ignores the target layer and sums the bias gradients of every Conv2d and BatchNorm2d; fails on "
                "CLCL (an assertion) and MFER (bias and map shapes do not broadcast)",
    "randomcam": "a random map, a control for saliency metrics rather than an explanation",
    "refinecam": "aggregates the maps of several target layers (this module targets one, where it is its base "
                 "method) and has no context manager to release its hooks",
}

# The last residual block of the last stage: the deepest map that still has a spatial grid.
TARGET_LAYERS: dict[str, str] = {
    "resnet18": "backbone.layer4.-1",
    "resnet34": "backbone.layer4.-1",
    "resnet50": "backbone.layer4.-1",
    # ConvNeXt's layer4 is (downsampling, blocks): its last module ends in the last block.
    "convnext_tiny": "backbone.layer4.-1",
    "convnext_base": "backbone.layer4.-1",
}


def resolve_module(model: nn.Module, dotted: str) -> nn.Module:
    """``"backbone.layer4.-1"`` -> model.backbone.layer4[-1] (integers index sequential containers)."""
    module = model
    for part in dotted.split("."):
        try:
            module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)
        except (AttributeError, IndexError, TypeError) as error:
            raise KeyError(f"no module '{dotted}' in {type(model).__name__} (failed at '{part}')") from error
    return module


def gradcam_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM should look at: the model's ``gradcam_target_layer`` or the backbone table."""
    override = getattr(model, "gradcam_target_layer", None)
    if isinstance(override, nn.Module):
        return override
    if isinstance(override, str):
        return resolve_module(model, override)
    backbone = getattr(getattr(model, "backbone", None), "name", None)
    if backbone not in TARGET_LAYERS:
        raise KeyError(f"no Grad-CAM target layer known for backbone {backbone!r} "
                       f"(table: {', '.join(TARGET_LAYERS)}); pass target_layer= or set model.gradcam_target_layer")
    return resolve_module(model, TARGET_LAYERS[backbone])


def _class_targets(targets, batch: int):
    """None (the predicted class) or class indices (B,) -> the library's target objects."""
    if targets is None:
        return None
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    indices = np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets).reshape(-1).astype(int)
    if len(indices) == 1 and batch > 1:
        indices = np.repeat(indices, batch)
    if len(indices) != batch:
        raise ValueError(f"{len(indices)} targets for {batch} images")
    return [ClassifierOutputTarget(int(index)) for index in indices]


def gradcam(model: nn.Module, images: Tensor, *, method: str = "gradcam", target_layer: nn.Module | None = None,
            targets=None, score_batch_size: int = 64) -> np.ndarray:
    """Class activation maps: images (B, 3, H, W) model inputs -> float32 (B, H, W) in [0, 1].

    targets: None explains each image's predicted class; an int or indices (B,) explain given classes.
    method: a name of :data:`CAM_METHODS` ("gradcam", "gradcam++", "layercam", "scorecam", ...; the notes
    above the table say which ignore the class and which are slow).
    """
    if method not in CAM_METHODS:
        why = f" ({method} is left out: {EXCLUDED_CAM_METHODS[method]})" if method in EXCLUDED_CAM_METHODS else ""
        raise ValueError(f"unknown CAM method '{method}'{why}; choose from {', '.join(CAM_METHODS)}")
    import pytorch_grad_cam

    cam_class = getattr(pytorch_grad_cam, CAM_METHODS[method])
    layer = target_layer if target_layer is not None else gradcam_target_layer(model)
    modes = {module: module.training for module in model.modules()}
    saved_grads = {param: param.grad for param in model.parameters()}
    device = next(model.parameters()).device
    inputs = images.detach().to(device).float()
    cam_targets = _class_targets(targets, inputs.shape[0])
    result = None
    try:
        with cam_class(model=LogitsOnly(model), target_layers=[layer]) as cam:
            cam.batch_size = score_batch_size
            # Frozen parameters would leave the target layer without a gradient; an input that
            # requires grad keeps every activation on the graph.
            inputs.requires_grad_(method not in ("scorecam", "ablationcam"))
            with torch.enable_grad():
                result = cam(input_tensor=inputs, targets=cam_targets)
    finally:
        for module, training in modes.items():
            module.training = training
        for param, grad in saved_grads.items():
            param.grad = grad
    if result is None:  # the library's context manager swallows IndexError
        raise RuntimeError(f"{method} returned no map; check targets (class indices < {model.num_classes})"
                           if hasattr(model, "num_classes") else f"{method} returned no map")
    return np.clip(np.asarray(result, dtype=np.float32), 0.0, 1.0)


def plot_gradcam_per_class(images, cams, labels, preds, classes: Sequence[str], *, per_class: int = 1,
                           mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                           alpha: float = 0.5):
    """One column per class, ``per_class`` examples each (correct predictions first), CAM overlaid.

    images: (B, H, W, 3) uint8 or (B, 3, H, W) model inputs; cams: (B, H, W); labels, preds: (B,) ints.
    Titles give the true and predicted class; a class without an example stays blank.
    """
    apply_style()
    pictures = to_display_images(images, mean=mean, std=std)
    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).astype(int)
    preds = np.asarray(preds.cpu() if isinstance(preds, Tensor) else preds).astype(int)
    cams = np.asarray(cams.cpu() if isinstance(cams, Tensor) else cams)
    fig, axes = plt.subplots(per_class, len(classes), figsize=(1.35 * len(classes), 1.55 * per_class + 0.2),
                             squeeze=False)
    for column, name in enumerate(classes):
        members = np.flatnonzero(labels == column)
        # stable sort: correct predictions first, dataset order within each group
        members = members[np.argsort(preds[members] != column, kind="stable")][:per_class]
        for row in range(per_class):
            ax = axes[row, column]
            _hide_axes(ax)
            if row == 0:
                ax.set_title(name)
            if row >= len(members):
                continue
            index = members[row]
            ax.imshow(overlay(pictures[index], cams[index], alpha))
            correct = preds[index] == column
            ax.set_xlabel(f"pred: {classes[preds[index]]}", color="black" if correct else "#c00000")
    fig.tight_layout(pad=0.3)
    return fig
