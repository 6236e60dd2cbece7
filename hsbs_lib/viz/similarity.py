"""Batch similarity (BSA's S, a (B, B) matrix) as a sample heatmap and as class-to-class means."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from torch import Tensor, nn

from hsbs_lib.viz.style import apply_style, class_color


def _numpy(value) -> np.ndarray:
    return value.detach().float().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


def sort_by_label(similarity, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorder S (B, B) so samples of one class are contiguous: -> (S sorted, labels sorted, order (B,))."""
    matrix, labels = _numpy(similarity), _numpy(labels).astype(int)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(labels):
        raise ValueError(f"expected S of shape (B, B) and B labels, got {matrix.shape} and {len(labels)} labels")
    order = np.argsort(labels, kind="stable")
    return matrix[np.ix_(order, order)], labels[order], order


def draw_similarity_heatmap(ax, similarity, labels, classes: Sequence[str], *, cmap: str = "viridis",
                            colorbar_shrink: float = 0.8) -> None:
    """Draw S (B, B) on ``ax``: samples sorted by label, class blocks separated and named on both axes."""
    matrix, sorted_labels, _ = sort_by_label(similarity, labels)
    sns.heatmap(matrix, ax=ax, cmap=cmap, square=True, xticklabels=False, yticklabels=False,
                cbar_kws={"label": "similarity", "shrink": colorbar_shrink})
    present = np.unique(sorted_labels)
    boundaries = np.searchsorted(sorted_labels, present)
    ends = np.append(boundaries[1:], len(sorted_labels))
    for start in boundaries[1:]:
        ax.axhline(start, color="white", linewidth=1.0)
        ax.axvline(start, color="white", linewidth=1.0)
    centers = (boundaries + ends) / 2
    names = [classes[k] for k in present]
    ax.set_xticks(centers, names, rotation=90)
    ax.set_yticks(centers, names, rotation=0)
    for tick, name in zip(ax.get_xticklabels() + ax.get_yticklabels(), names + names):
        tick.set_color(class_color(name))


def plot_similarity_matrix(similarity, labels, classes: Sequence[str], *, title: str | None = None,
                           cmap: str = "viridis"):
    """Heatmap of S (B, B) with samples sorted by label, class blocks outlined and named on both axes."""
    apply_style()
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    draw_similarity_heatmap(ax, similarity, labels, classes, cmap=cmap)
    ax.set_title(title or "batch similarity S (sorted by label)")
    fig.tight_layout()
    return fig


def _class_sums(similarity: Tensor, labels: Tensor, num_classes: int,
                exclude_diagonal: bool) -> tuple[Tensor, Tensor]:
    """Sum of S[i, j] and count of pairs per (class of i, class of j): two (K, K) float64 tensors."""
    matrix = similarity.detach().double().cpu()
    onehot = torch.nn.functional.one_hot(labels.detach().long().cpu(), num_classes).double()
    pairs = torch.ones_like(matrix)
    if exclude_diagonal:
        pairs.fill_diagonal_(0.0)
    return onehot.T @ (matrix * pairs) @ onehot, onehot.T @ pairs @ onehot


def class_similarity(similarity, labels, num_classes: int, *, exclude_diagonal: bool = True) -> Tensor:
    """Mean similarity between classes: S (B, B), labels (B,) -> (K, K), NaN where a pair never occurs.

    Entry (a, b) averages S[i, j] over samples i of class a and j of class b (i != j by default, since
    a sample's similarity to itself says nothing about classes).
    """
    sums, counts = _class_sums(torch.as_tensor(_numpy(similarity)), torch.as_tensor(_numpy(labels)),
                               num_classes, exclude_diagonal)
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan"))).float()


class ClassSimilarityAccumulator:
    """Class-to-class mean similarity over an epoch of batches (pairs weighted equally across batches).

    >>> acc = ClassSimilarityAccumulator(7)
    >>> for S, y in batches: acc.update(S, y)       # doctest: +SKIP
    >>> M = acc.compute()                            # (7, 7)  # doctest: +SKIP
    """

    def __init__(self, num_classes: int, *, exclude_diagonal: bool = True):
        self.num_classes = num_classes
        self.exclude_diagonal = exclude_diagonal
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64)
        self.counts = torch.zeros_like(self.sums)

    def update(self, similarity, labels) -> None:
        """Add one batch: S (B, B) and labels (B,)."""
        sums, counts = _class_sums(torch.as_tensor(_numpy(similarity)), torch.as_tensor(_numpy(labels)),
                                   self.num_classes, self.exclude_diagonal)
        self.sums += sums
        self.counts += counts

    def compute(self) -> Tensor:
        """(K, K) float32 means, NaN for class pairs never seen together."""
        return torch.where(self.counts > 0, self.sums / self.counts.clamp_min(1),
                           torch.full_like(self.sums, float("nan"))).float()


def plot_class_similarity(matrix, classes: Sequence[str], *, title: str | None = None, cmap: str = "viridis"):
    """Annotated heatmap of the (K, K) class-to-class mean similarity."""
    apply_style()
    values = _numpy(matrix)
    fig, ax = plt.subplots(figsize=(4.4, 3.8))
    sns.heatmap(values, ax=ax, cmap=cmap, annot=True, fmt=".2f", square=True, annot_kws={"size": 7},
                xticklabels=list(classes), yticklabels=list(classes), mask=np.isnan(values),
                cbar_kws={"label": "mean similarity", "shrink": 0.8})
    ax.set_title(title or "class-to-class similarity")
    fig.tight_layout()
    return fig


@torch.no_grad()
def batch_similarity_maps(model: nn.Module, images: Tensor, *, key: str = "bsa_similarity") -> Tensor | None:
    """S (B, B) of a model whose similarity only exists in training mode (HSBS's BSA).

    Runs one forward in training mode with BatchNorm and dropout kept in eval mode, so nothing about
    the model changes (no running-statistics update) and S reflects the trained network. Returns None
    when the model has no such map.
    """
    modes = {module: module.training for module in model.modules()}
    model.train()
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)):
            module.eval()
    try:
        output = model(images.to(next(model.parameters()).device))
    finally:
        for module, training in modes.items():
            module.training = training
    value = output.maps.get(key)
    return None if value is None else value.float().cpu()
