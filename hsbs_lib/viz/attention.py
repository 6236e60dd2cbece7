"""Attention maps per layer, drawn over the faces they came from.

Every model puts its raw stage outputs in ``maps["features/layerN"]`` (B, C, H, W); methods with an
attention of their own add ``maps["attention/NAME"]`` (B, H, W). :func:`attention_maps` prefers the
method's map and otherwise computes activation attention A = mean_c F^2, so the same figure can put the
baseline beside any method.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from torch import Tensor, nn

from hsbs_lib.constants import IMAGENET_NORMALIZATION, STAGE_NAMES
from hsbs_lib.losses.hst import activation_attention  # (B, C, H, W) -> (B, H, W) = mean over channels of F^2
from hsbs_lib.models.backbones import cells_to_pixels
from hsbs_lib.viz.style import apply_style

LAYERS: tuple[str, ...] = STAGE_NAMES
IMAGENET_MEAN = tuple(IMAGENET_NORMALIZATION["mean"])
IMAGENET_STD = tuple(IMAGENET_NORMALIZATION["std"])


@torch.no_grad()
def attention_maps(model: nn.Module, images: Tensor, *, layers: Sequence[str] = LAYERS) -> dict[str, Tensor]:
    """Per-layer attention of ``model`` on ``images`` (B, 3, H, W), computed in eval mode without gradients.

    Returns ``{layer: (B, h, w) float CPU tensor}`` for each of ``layers`` (the model's
    ``attention/<layer>`` map when it has one, else activation attention of ``features/<layer>``), plus
    every other ``attention/NAME`` map the model returns under ``NAME`` (e.g. ``ds_layer3`` for MFER).
    The model's training flag is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        output = model(images.to(device))
    finally:
        model.train(was_training)
    maps: dict[str, Tensor] = {}
    for layer in layers:
        if f"attention/{layer}" in output.maps:
            maps[layer] = output.maps[f"attention/{layer}"].float().cpu()
        elif f"features/{layer}" in output.maps:
            maps[layer] = activation_attention(output.maps[f"features/{layer}"]).cpu()
    for key, value in output.maps.items():
        name = key.split("/", 1)[1] if key.startswith("attention/") else None
        if name and name not in maps and value.dim() == 3:
            maps[name] = value.float().cpu()
    if not maps:
        raise KeyError(f"the model returned no attention/* or features/* maps for {list(layers)}; "
                       f"its maps are: {sorted(output.maps)}")
    return maps


def upsample_to(attention: Tensor | np.ndarray, size: int | tuple[int, int], *, cells: str = "resnet") -> Tensor:
    """Bilinear resize of a map (h, w) or a batch of maps (B, h, w) to ``size`` = (H, W); float tensor out.

    ``cells="resnet"`` puts cell i of a stride-s ResNet map on pixel s*i, where the network centred it
    (:func:`~hsbs_lib.models.backbones.cells_to_pixels`); ``"block"`` is a plain resize.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    tensor = torch.as_tensor(np.asarray(attention) if not isinstance(attention, Tensor) else attention).float()
    squeeze = tensor.dim() == 2
    batch = tensor[None] if squeeze else tensor
    if tuple(batch.shape[-2:]) != size:
        if cells == "resnet":
            batch = cells_to_pixels(batch, size)
        elif cells == "block":
            batch = F.interpolate(batch[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        else:
            raise ValueError(f"cells must be 'resnet' or 'block', got {cells!r}")
    return batch[0] if squeeze else batch


def to_display_images(images, *, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None) -> np.ndarray:
    """Images in any of the package's forms -> float array (B, H, W, 3) in [0, 1] for imshow.

    Accepts uint8 (B, H, W, 3) arrays or tensors, a single uint8 (H, W, 3) image, uint8 (B, 3, H, W)
    tensors, and float (B, 3, H, W) model inputs, which are denormalised with ``mean``/``std`` (when
    given; floats without them are taken to be in [0, 1]).
    """
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(image) for image in images])
    array = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(f"expected images of shape (B, H, W, 3) or (B, 3, H, W), got {array.shape}")
    if array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(0, 2, 3, 1)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    else:
        array = array.astype(np.float32)
        if mean is not None and std is not None:
            array = array * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.clip(array, 0.0, 1.0)


def normalize_map(heat: Tensor | np.ndarray) -> np.ndarray:
    """Min-max scale one map to [0, 1] (a constant map becomes zeros)."""
    heat = np.asarray(heat.detach().cpu() if isinstance(heat, Tensor) else heat, dtype=np.float32)
    low, high = float(heat.min()), float(heat.max())
    return (heat - low) / (high - low) if high > low else np.zeros_like(heat)


def overlay(image, heat, alpha: float = 0.5, *, cmap: str = "jet") -> np.ndarray:
    """Blend a heat map over one image: image (H, W, 3) uint8 or float in [0, 1], heat (h, w) any range.

    The heat map is min-max scaled, resized bilinearly to the image and coloured with ``cmap``.
    Returns float (H, W, 3) in [0, 1].
    """
    picture = to_display_images(image)[0]
    resized = upsample_to(normalize_map(heat), picture.shape[:2]).numpy()
    colored = colormaps[cmap](np.clip(resized, 0, 1))[..., :3].astype(np.float32)
    return np.clip((1 - alpha) * picture + alpha * colored, 0.0, 1.0)


def _hide_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_layer_attention(images, maps_by_model: Mapping[str, Mapping[str, Tensor]],
                         layers: Sequence[str] = LAYERS, *, mean: Sequence[float] | None = None,
                         std: Sequence[float] | None = None, alpha: float = 0.5, max_images: int = 6,
                         row_labels: Sequence[str] | None = None):
    """Rows = images, columns = the input then one group per model with one column per layer.

    images: (B, H, W, 3) uint8 or (B, 3, H, W) model inputs; maps_by_model: ``{"baseline": {layer:
    (B, h, w)}, "hsbs": {...}}`` as returned by :func:`attention_maps`. Layers a model lacks stay blank.
    """
    apply_style()
    pictures = to_display_images(images, mean=mean, std=std)[:max_images]
    models = list(maps_by_model)
    columns = 1 + len(models) * len(layers)
    fig, axes = plt.subplots(len(pictures), columns, figsize=(1.25 * columns, 1.3 * len(pictures) + 0.3),
                             squeeze=False)
    for row, picture in enumerate(pictures):
        axes[row, 0].imshow(picture)
        if row_labels is not None:
            axes[row, 0].set_ylabel(row_labels[row])
        for group, model_name in enumerate(models):
            for offset, layer in enumerate(layers):
                ax = axes[row, 1 + group * len(layers) + offset]
                layer_maps = maps_by_model[model_name].get(layer)
                if layer_maps is not None:
                    ax.imshow(overlay(picture, layer_maps[row], alpha))
                if row == 0:
                    ax.set_title(f"{model_name}\n{layer}")
    axes[0, 0].set_title("input")
    for ax in axes.flat:
        _hide_axes(ax)
    fig.tight_layout(pad=0.3)
    return fig


def plot_scale_attention_by_pose(images, poses, maps: Mapping[str, Tensor], *,
                                 layers: Sequence[str] = ("layer2", "layer3", "layer4"),
                                 pose_names: Sequence[str] | None = None, gates: Tensor | None = None,
                                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                                 alpha: float = 0.5):
    """PhaNet's per-scale attention across pose bins: one row per pose bin present in ``poses`` (B,).

    Each row shows the first image of that bin and its attention at every scale in ``layers``; with
    ``gates`` (B, len(layers)) the column titles carry the bin's mean scale-gate weight.
    """
    apply_style()
    pictures = to_display_images(images, mean=mean, std=std)
    poses = np.asarray(poses.cpu() if isinstance(poses, Tensor) else poses).astype(int)
    bins = sorted(set(poses.tolist()))
    fig, axes = plt.subplots(len(bins), 1 + len(layers), figsize=(1.4 * (1 + len(layers)), 1.45 * len(bins) + 0.3),
                             squeeze=False)
    for row, pose in enumerate(bins):
        members = np.flatnonzero(poses == pose)
        index = int(members[0])
        name = pose_names[pose] if pose_names is not None else f"pose {pose}"
        axes[row, 0].imshow(pictures[index])
        axes[row, 0].set_ylabel(name)
        for column, layer in enumerate(layers, start=1):
            ax = axes[row, column]
            if layer in maps:
                ax.imshow(overlay(pictures[index], maps[layer][index], alpha))
            title = layer if row == 0 else ""
            if gates is not None:
                weight = float(torch.as_tensor(gates)[members, column - 1].float().mean())
                title = f"{title}\ngate {weight:.2f}" if title else f"gate {weight:.2f}"
            ax.set_title(title)
    axes[0, 0].set_title("input")
    for ax in axes.flat:
        _hide_axes(ax)
    fig.tight_layout(pad=0.3)
    return fig


def plot_ds_attention(images, maps: Mapping[str, Tensor], *,
                      layers: Sequence[str] = ("ds_layer3", "ds_layer4"), mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None, alpha: float = 0.5, max_images: int = 6):
    """MFER's DS attention after layer3 and layer4: rows = images, columns = input + one map per key."""
    present = [layer for layer in layers if layer in maps]
    if not present:
        raise KeyError(f"none of {list(layers)} in the maps ({sorted(maps)}); pass attention_maps(mfer_model, x)")
    return plot_layer_attention(images, {"DS attention": maps}, present, mean=mean, std=std, alpha=alpha,
                                max_images=max_images)
