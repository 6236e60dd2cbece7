"""The attention explorer: image, method and layer; the attention overlay and, with SynthFER masks, its
energy share inside the expression regions and its pointing-game hit."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from hsbs_lib.data.synthfer import REGION_NAMES
from hsbs_lib.viz.attention import (IMAGENET_MEAN, IMAGENET_STD, attention_maps, normalize_map, overlay,
                                    upsample_to)
from hsbs_lib.viz.interactive.widgets import _explorer, _hide_axes, _ImageSource, _widgets, use_static
from hsbs_lib.viz.saliency import score_saliency
from hsbs_lib.viz.samples import REGION_COLORS
from hsbs_lib.viz.style import apply_style


class _AttentionCache:
    """attention_maps per model, computed once for all images (in chunks) when first asked for."""

    def __init__(self, models: Mapping[str, nn.Module], inputs: Tensor, chunk: int = 32):
        self.models, self.inputs, self.chunk = models, inputs, chunk
        self.maps: dict[str, dict[str, Tensor]] = {}

    def __getitem__(self, method: str) -> dict[str, Tensor]:
        if method not in self.maps:
            parts = [attention_maps(self.models[method], self.inputs[start:start + self.chunk])
                     for start in range(0, len(self.inputs), self.chunk)]
            self.maps[method] = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
        return self.maps[method]


def _mask_outline(ax, masks: np.ndarray) -> None:
    """Region outlines (4, S, S) drawn in the region colours."""
    for k, name in enumerate(REGION_NAMES[:len(masks)]):
        if masks[k].any():
            ax.contour(masks[k].astype(float), levels=[0.5], colors=[REGION_COLORS[name]], linewidths=0.8)


def _image_scores(heat: Tensor, masks: np.ndarray | None, tolerance_px: int) -> dict[str, float]:
    if masks is None:
        return {}
    region_names = REGION_NAMES if len(masks) == len(REGION_NAMES) else None
    return score_saliency(heat[None], masks[None], tolerance_px=tolerance_px, region_names=region_names)


def attention_explorer(models: Mapping[str, nn.Module], images, masks=None, *,
                       mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD,
                       static: bool | None = None, alpha: float = 0.5, tolerance_px: int = 0):
    """Pick an image, a method and a layer or scale; see the attention overlay and how it scores.

    models: ``{"baseline": model, "hsbs": model, ...}``; images: uint8 (N, S, S, 3) / (N, 3, S, S) or
    normalised float (N, 3, S, S) inputs (``mean``/``std`` normalise the former, denormalise the latter);
    masks: bool (N, 4, S, S) SynthFER regions or None. With masks, each map gets its energy share inside
    the regions (chance = their area share) and whether its peak hits them (pointing game).
    Static mode draws image 0: one row per method, one column per map.
    """
    if not models:
        raise ValueError("attention_explorer needs at least one model")
    source = _ImageSource(images, mean=mean, std=std)
    indices = np.arange(len(source))
    inputs, pictures = source.model_inputs(indices), source.pictures(indices)
    masks = None if masks is None else np.asarray(masks.cpu() if isinstance(masks, Tensor) else masks).astype(bool)
    if masks is not None and (masks.ndim != 4 or len(masks) != len(pictures)):
        raise ValueError(f"masks must be (N, R, S, S) with N = {len(pictures)} images, got {masks.shape}")
    cache = _AttentionCache(models, inputs)

    if use_static(static):
        return _plot_attention_grid(cache, pictures, masks, 0, alpha=alpha, tolerance_px=tolerance_px)

    def draw(values: dict) -> tuple[Figure, dict]:
        return _plot_attention_choice(cache, pictures, masks, values["image"], values["method"], values["layer"],
                                      alpha=alpha, tolerance_px=tolerance_px)

    widgets = _widgets()
    methods = list(models)
    layers = list(cache[methods[0]])
    controls = {
        "image": widgets.IntSlider(value=0, min=0, max=len(pictures) - 1, description="image"),
        "method": widgets.Dropdown(options=methods, value=methods[0], description="method"),
        "layer": widgets.Dropdown(options=layers, value=layers[-1] if "layer4" not in layers else "layer4",
                                  description="layer"),
    }
    box = _explorer(controls, draw, observe=False)

    def method_changed(change) -> None:
        options = list(cache[change["new"]])
        with box.pause_redraw():
            previous = controls["layer"].value
            controls["layer"].options = options
            controls["layer"].value = previous if previous in options else options[-1]
        box.redraw()

    controls["method"].observe(method_changed, names="value")
    controls["image"].observe(box.redraw, names="value")
    controls["layer"].observe(box.redraw, names="value")
    return box


def _plot_attention_choice(cache: _AttentionCache, pictures: np.ndarray, masks: np.ndarray | None, image: int,
                           method: str, layer: str, *, alpha: float, tolerance_px: int) -> tuple[Figure, dict]:
    """Input with region outlines, the overlay with its peak, and per-region energy against chance."""
    apply_style()
    heat = cache[method][layer][image]
    picture = pictures[image]
    blended = overlay(picture, heat, alpha)
    scores = _image_scores(heat, None if masks is None else masks[image], tolerance_px)
    columns = 3 if scores else 2
    fig, axes = plt.subplots(1, columns, figsize=(2.4 * columns + (0.6 if scores else 0), 2.6))
    axes[0].imshow(picture)
    axes[0].set_title(f"image {image}")
    axes[1].imshow(blended)
    peak = np.unravel_index(int(np.argmax(upsample_to(normalize_map(heat), picture.shape[:2]).numpy())),
                            picture.shape[:2])
    axes[1].plot(peak[1], peak[0], marker="x", color="white", markersize=8, markeredgewidth=2)
    axes[1].set_title(f"{method} / {layer}")
    for ax in axes[:2]:
        _hide_axes(ax)
    state = {"image": image, "method": method, "layer": layer, "overlay": blended, "peak": peak}
    if scores:
        _mask_outline(axes[0], masks[image])
        names = [name for name in REGION_NAMES if f"energy_share/{name}" in scores]
        shares = [scores[f"energy_share/{name}"] for name in names]
        chances = [scores[f"chance_energy_share/{name}"] for name in names]
        positions = np.arange(len(names))
        axes[2].barh(positions, shares, color=[REGION_COLORS[name] for name in names])
        axes[2].scatter(chances, positions, marker="|", s=200, color="black", label="chance (area)", zorder=3)
        axes[2].set_yticks(positions, names)
        axes[2].invert_yaxis()
        axes[2].set_xlim(0, max(0.05, 1.2 * max(shares + chances)))
        axes[2].set_xlabel("energy share")
        axes[2].legend(loc="lower right", frameon=False, fontsize=7)
        hit = "hit" if scores["pointing_hit_rate"] > 0.5 else "miss"
        axes[2].set_title(f"all regions {scores['energy_share']:.2f} "
                          f"(chance {scores['chance_energy_share']:.2f}), peak: {hit}")
        state.update(energy_share=scores["energy_share"], pointing_hit=scores["pointing_hit_rate"] > 0.5,
                     chance_energy_share=scores["chance_energy_share"])
    fig.tight_layout()
    return fig, state


def _plot_attention_grid(cache: _AttentionCache, pictures: np.ndarray, masks: np.ndarray | None, image: int, *,
                         alpha: float, tolerance_px: int) -> Figure:
    """Static view of one image: rows = methods, columns = the input then every map of that method."""
    apply_style()
    methods = list(cache.models)
    layers_by_method = {method: list(cache[method]) for method in methods}
    columns = 1 + max(len(layers) for layers in layers_by_method.values())
    fig, axes = plt.subplots(len(methods), columns, figsize=(1.6 * columns, 1.75 * len(methods) + 0.3),
                             squeeze=False)
    for row, method in enumerate(methods):
        axes[row, 0].imshow(pictures[image])
        if masks is not None:
            _mask_outline(axes[row, 0], masks[image])
        axes[row, 0].set_ylabel(method)
        for column, layer in enumerate(layers_by_method[method], start=1):
            heat = cache[method][layer][image]
            axes[row, column].imshow(overlay(pictures[image], heat, alpha))
            scores = _image_scores(heat, None if masks is None else masks[image], tolerance_px)
            title = layer
            if scores:
                title += f"\nE {scores['energy_share']:.2f} " + ("hit" if scores["pointing_hit_rate"] > 0.5 else "miss")
            axes[row, column].set_title(title, fontsize=7)
    for ax in axes.flat:
        _hide_axes(ax)
    axes[0, 0].set_title("input" + (" + regions" if masks is not None else ""), fontsize=7)
    fig.suptitle(f"attention on image {image}" + ("  (E = energy share in regions)" if masks is not None else ""))
    fig.tight_layout()
    return fig
