"""t-SNE of pooled features (scikit-learn), one panel per method or per feature loss."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from torch import Tensor

from hsbs_lib.viz.attention import _hide_axes
from hsbs_lib.viz.style import apply_style, class_color


def default_perplexity(num_points: int) -> float:
    """30 (scikit-learn's default) when there are enough points, else about N / 4, never below 2.

    t-SNE needs perplexity < N; a perplexity near N makes every point a neighbour of every other.
    """
    return float(min(30.0, max(2.0, (num_points - 1) / 4)))


def tsne_embedding(features, *, seed: int = 0, pca_dim: int = 50, perplexity: float | None = None,
                   max_iter: int = 1000) -> np.ndarray:
    """Features (N, C) -> 2-D embedding (N, 2), deterministic for a fixed ``seed``.

    Features are reduced to ``pca_dim`` dimensions by PCA first (faster and less noisy, as the t-SNE
    authors recommend), then embedded with PCA-initialised t-SNE.
    """
    data = np.asarray(features.detach().double().cpu() if isinstance(features, Tensor) else features,
                      dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"features must be (N, C), got shape {data.shape}")
    if data.shape[0] < 5:
        raise ValueError(f"t-SNE needs at least 5 samples, got {data.shape[0]}")
    components = min(pca_dim, data.shape[0], data.shape[1])
    if components < data.shape[1]:
        data = PCA(n_components=components, random_state=seed).fit_transform(data)
    tsne = TSNE(n_components=2, perplexity=perplexity or default_perplexity(data.shape[0]), init="pca",
                learning_rate="auto", max_iter=max_iter, random_state=seed)
    return tsne.fit_transform(data).astype(np.float32)


def plot_tsne(embeddings_by_panel: Mapping[str, tuple], classes: Sequence[str], *, ncols: int | None = None,
              point_size: float = 6.0, title: str | None = None):
    """Scatter each panel's (embedding (N, 2), labels (N,)) coloured by class, one shared legend.

    Keys are panel titles: methods (baseline, HSBS, ...) or feature losses (none, center, LGM, DSF).
    """
    apply_style()
    panels = list(embeddings_by_panel.items())
    ncols = ncols or min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.8 * ncols + 1.2, 2.7 * nrows), squeeze=False)
    for ax, (name, (embedding, labels)) in zip(axes.flat, panels):
        embedding = np.asarray(embedding)
        labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).astype(int)
        for k, class_name in enumerate(classes):
            chosen = labels == k
            if chosen.any():
                ax.scatter(embedding[chosen, 0], embedding[chosen, 1], s=point_size, color=class_color(class_name),
                           linewidths=0, alpha=0.85)
        ax.set_title(name)
        _hide_axes(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles = [Line2D([], [], marker="o", linestyle="", color=class_color(name), label=name) for name in classes]
    fig.legend(handles=handles, loc="center right", frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - 1.1 / fig.get_figwidth(), 1))
    return fig
