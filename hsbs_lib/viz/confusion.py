"""Confusion matrices (scikit-learn counts, seaborn heatmaps) in the canonical label order."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from sklearn.metrics import confusion_matrix
from torch import Tensor

from hsbs_lib.data.labels import class_names
from hsbs_lib.viz.style import apply_style, class_color


def _ints(values) -> np.ndarray:
    return np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values).reshape(-1).astype(int)


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts (K, K) with rows = true class and columns = predicted class; every class gets a row."""
    return confusion_matrix(_ints(y_true), _ints(y_pred), labels=list(range(num_classes)))


def normalize_rows(counts) -> np.ndarray:
    """Each row divided by its total (the per-class recall on the diagonal); empty rows stay 0."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def per_class_recall(counts, classes: Sequence[str]) -> dict[str, float]:
    """{class: recall} from a confusion count matrix; NaN for a class absent from the data."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1)
    return {name: float(counts[k, k] / totals[k]) if totals[k] > 0 else float("nan")
            for k, name in enumerate(classes)}


def draw_confusion(ax, counts, classes: Sequence[str], normalize: bool, title: str | None, cbar: bool,
                   vmax: float | None = None) -> None:
    """Draw a confusion matrix (K, K) on ``ax``: counts, or row-normalised shares when ``normalize``."""
    counts = np.asarray(counts)
    values = normalize_rows(counts) if normalize else counts
    sns.heatmap(values, ax=ax, annot=True, fmt=".2f" if normalize else "d", cmap="Blues", square=True,
                vmin=0, vmax=1.0 if normalize else vmax, cbar=cbar, annot_kws={"size": 7},
                xticklabels=list(classes), yticklabels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for tick in ax.get_xticklabels() + ax.get_yticklabels():
        tick.set_color(class_color(tick.get_text()))
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    mean_recall = np.nanmean([v for v in per_class_recall(counts, classes).values()])
    suffix = f"acc {accuracy:.3f}, mean class acc {mean_recall:.3f}"
    ax.set_title(f"{title}\n{suffix}" if title else suffix)


def plot_confusion(counts, classes: Sequence[str] | None = None, *, normalize: bool = True,
                   title: str | None = None):
    """Heatmap of a (K, K) count matrix, row-normalised by default; the title gives accuracy and mean
    class accuracy. ``classes`` defaults to the canonical names for K = 7 or 8."""
    apply_style()
    counts = np.asarray(counts)
    classes = list(classes) if classes is not None else list(class_names(counts.shape[0]))
    fig, ax = plt.subplots(figsize=(4.4, 3.9))
    draw_confusion(ax, counts, classes, normalize, title, cbar=True)
    fig.tight_layout()
    return fig


def plot_confusion_pair(counts_a, counts_b, classes: Sequence[str] | None = None,
                        titles: Sequence[str] = ("baseline", "method"), *, normalize: bool = True):
    """Two confusion matrices side by side on one colour scale (e.g. baseline vs HSBS)."""
    apply_style()
    counts_a, counts_b = np.asarray(counts_a), np.asarray(counts_b)
    classes = list(classes) if classes is not None else list(class_names(counts_a.shape[0]))
    vmax = None if normalize else float(max(counts_a.max(), counts_b.max()))
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.9))
    for ax, counts, title, cbar in zip(axes, (counts_a, counts_b), titles, (False, True)):
        draw_confusion(ax, counts, classes, normalize, title, cbar=cbar, vmax=vmax)
    axes[1].set_ylabel("")
    fig.tight_layout()
    return fig
