"""Figures that show SynthFER itself: expressions by intensity, and the region masks used to score
attention maps."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import matplotlib.pyplot as plt

from hsbs_lib.data.synthfer import (EXPRESSION_CLASSES, INTENSITY_RANGE, REGION_NAMES, render_parameters,
                                     render_synthfer, sample_parameters)
from hsbs_lib.viz.style import apply_style, class_color

# One colour per region for the overlays (brows, eyes, nose, mouth).
REGION_COLORS: dict[str, tuple[float, float, float]] = {
    "brows": (0.9, 0.6, 0.0), "eyes": (0.0, 0.45, 0.7), "nose": (0.0, 0.62, 0.45), "mouth": (0.8, 0.47, 0.65),
}


def plot_synthfer_grid(*, size: int = 96, seed: int = 0, columns: int = 6, intensity_range=INTENSITY_RANGE):
    """One row per expression, intensity increasing left to right (over the range the data uses),
    one subject per row.

    Pose is frontal and occluders, noise and blur are switched off so the expressions can be read;
    background, lighting and identity vary as in the data.
    """
    apply_style()
    rows = len(EXPRESSION_CLASSES)
    p = sample_parameters(np.arange(rows * columns), seed=seed, split="train", balanced=True)
    p["label"] = np.repeat(np.arange(rows), columns)
    p["intensity"] = np.tile(np.linspace(*intensity_range, columns), rows).astype(np.float32)
    first_of_row = p["subject"][::columns]
    p["subject"] = np.repeat(first_of_row, columns)
    p["pose"][:] = 2
    p["yaw"][:] = 0.0
    p["roll"][:] = 0.0
    p["occluder"][:] = False
    p["noise_std"][:] = 0.0
    p["blur"][:] = 0.0
    p["au_noise"][:] = 0.0
    images = render_parameters(p, size=size)["images"]

    fig, axes = plt.subplots(rows, columns, figsize=(1.1 * columns + 0.9, 1.1 * rows), squeeze=False)
    for r in range(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.imshow(images[r * columns + c], interpolation="antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title(f"{p['intensity'][c]:.2f}")
        axes[r, 0].set_ylabel(EXPRESSION_CLASSES[r], rotation=0, ha="right", va="center",
                              color=class_color(EXPRESSION_CLASSES[r]), fontweight="bold")
    fig.suptitle("SynthFER: expression (rows) by intensity (columns)")
    fig.tight_layout()
    return fig


def plot_region_masks(*, size: int = 128, seed: int = 0, label: int = 3, intensity: float = 0.9,
                      alpha: float = 0.45):
    """A frontal face, each of its four region masks, and all four overlaid in their colours."""
    apply_style()
    p = sample_parameters(np.arange(1), seed=seed, split="train")
    p["label"][:] = label
    p["intensity"][:] = intensity
    p["pose"][:] = 2
    p["yaw"][:] = 0.0
    p["occluder"][:] = False
    rendered = render_parameters(p, size=size)
    image = rendered["images"][0].astype(np.float32) / 255.0
    masks = rendered["masks"][0]

    fig, axes = plt.subplots(1, len(REGION_NAMES) + 2, figsize=(2.0 * (len(REGION_NAMES) + 2), 2.2))
    axes[0].imshow(image)
    axes[0].set_title(EXPRESSION_CLASSES[label])
    combined = image.copy()
    for k, name in enumerate(REGION_NAMES):
        color = np.array(REGION_COLORS[name], dtype=np.float32)
        tinted = image.copy()
        tinted[masks[k]] = (1 - alpha) * tinted[masks[k]] + alpha * color
        combined[masks[k]] = (1 - alpha) * combined[masks[k]] + alpha * color
        axes[k + 1].imshow(tinted)
        axes[k + 1].set_title(f"{name} ({masks[k].mean():.1%})")
    axes[-1].imshow(combined)
    axes[-1].set_title("all regions")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_synthfer_examples(*, n: int = 24, size: int = 64, seed: int = 0, split: str = "train", columns: int = 8):
    """Images as the models see them (all nuisances on), titled with their label and pose bin."""
    apply_style()
    out = render_synthfer(np.arange(n), size=size, seed=seed, split=split)
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.2 * columns, 1.35 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            name = EXPRESSION_CLASSES[out["labels"][i]]
            ax.imshow(out["images"][i])
            ax.set_title(f"{name[:5]} p{out['poses'][i]}", color=class_color(name))
    fig.tight_layout()
    return fig


def plot_real_beside_synthfer(real_images: np.ndarray, real_classes: Sequence[str], *, per_class: int = 4,
                              size: int = 48, seed: int = 0):
    """One row per expression: ``per_class`` real faces (uint8 (N, H, W) or (N, H, W, 3), canonical class
    names (N,)) beside ``per_class`` SynthFER faces of the same class, all drawn at ``size`` px."""
    apply_style()
    real_classes = np.asarray(real_classes)
    rng = np.random.default_rng(seed)
    synth = render_synthfer(np.arange(60 * per_class * len(EXPRESSION_CLASSES)), size=size, seed=seed,
                            balanced=True)
    fig, axes = plt.subplots(len(EXPRESSION_CLASSES), 2 * per_class,
                             figsize=(1.0 * 2 * per_class + 0.6, 1.05 * len(EXPRESSION_CLASSES)), squeeze=False)
    for row, name in enumerate(EXPRESSION_CLASSES):
        real = rng.permutation(np.flatnonzero(real_classes == name))[:per_class]
        rendered = np.flatnonzero(synth["labels"] == row)[:per_class]
        for column in range(2 * per_class):
            ax = axes[row, column]
            ax.set_axis_off()
            if column < per_class and column < len(real):
                image = real_images[real[column]]
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
            elif column >= per_class and column - per_class < len(rendered):
                ax.imshow(synth["images"][rendered[column - per_class]])
        axes[row, 0].text(-0.15, 0.5, name, transform=axes[row, 0].transAxes, ha="right", va="center",
                          color=class_color(name))
    axes[0, 0].set_title("real (FER2013)", loc="left")
    axes[0, per_class].set_title("SynthFER", loc="left")
    fig.tight_layout()
    return fig
