"""The batch-similarity explorer: how rare one class is in a batch; the BSA similarity matrix and what each
minority sample attends to."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from hsbs_lib.data.labels import class_names
from hsbs_lib.viz.attention import IMAGENET_MEAN, IMAGENET_STD
from hsbs_lib.viz.interactive.widgets import _explorer, _hide_axes, _ImageSource, _widgets, use_static
from hsbs_lib.viz.similarity import batch_similarity_maps, draw_similarity_heatmap
from hsbs_lib.viz.style import apply_style, class_color


def compose_batch(labels, *, minority: int, share: float, batch_size: int, seed: int = 0) -> np.ndarray:
    """Indices of a batch in which class ``minority`` has ``share`` of the places, the rest split evenly
    over the other classes present in ``labels`` (N,). At least one minority sample when share > 0.

    Deterministic for a given seed; classes with too few samples give their places to the others.
    Returns int64 (B,) with B = min(batch_size, N), grouped by class.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    rng = np.random.default_rng(seed)
    pools = {int(k): rng.permutation(np.flatnonzero(labels == k)) for k in np.unique(labels)}
    total = min(int(batch_size), len(labels))
    available = len(pools.get(int(minority), ()))
    wanted = int(round(share * total))
    wanted = max(wanted, 1) if share > 0 else 0
    taken = {int(minority): min(wanted, available, total)} if available else {}
    others = [k for k in pools if k != int(minority)]
    remaining = total - sum(taken.values())
    taken.update({k: 0 for k in others})
    # Round-robin over the other classes, so every class gets an equal share until its pool runs out.
    while remaining > 0 and others:
        progressed = False
        for k in others:
            if remaining > 0 and taken[k] < len(pools[k]):
                taken[k] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            break
    chosen = [pools[k][:count] for k, count in sorted(taken.items()) if count]
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)


@torch.no_grad()
def batch_similarity(model: nn.Module, images: Tensor) -> tuple[Tensor, str]:
    """The (B, B) similarity a model assigns within one batch, and what it is.

    HSBS: ``model.similarity(x)`` in eval mode (BSA's attention weights). Other models with a
    ``bsa_similarity`` map: :func:`batch_similarity_maps`. Models without BSA: cosine similarity of the
    pooled eval features, for comparison.
    """
    was_training = model.training
    model.eval()
    try:
        if callable(getattr(model, "similarity", None)) and getattr(model, "bsa", True) is not None:
            return model.similarity(images.to(next(model.parameters()).device)).float().cpu(), "BSA similarity"
        similarity = batch_similarity_maps(model, images)
        if similarity is not None:
            return similarity, "BSA similarity"
        features = model(images.to(next(model.parameters()).device)).features.float().cpu()
        normalised = torch.nn.functional.normalize(features, dim=1)
        return normalised @ normalised.T, "feature cosine similarity (no BSA)"
    finally:
        model.train(was_training)


def _dataset_arrays(data) -> tuple[Any, np.ndarray, tuple[str, ...]]:
    """(images, labels (N,), class names) from a dataset, a dict or (images, labels)."""
    if isinstance(data, Mapping):
        images, labels, classes = data["images"], data["labels"], data.get("classes")
    elif isinstance(data, (tuple, list)) and len(data) in (2, 3):
        images, labels = data[0], data[1]
        classes = data[2] if len(data) == 3 else None
    elif hasattr(data, "load_image") and hasattr(data, "targets"):
        images = data.images if hasattr(data, "images") else data
        labels, classes = data.targets, getattr(data, "classes", None)
    else:
        raise TypeError("expected a FERDataset, a dict with 'images' and 'labels', or a tuple (images, labels); "
                        f"got {type(data).__name__}")
    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels, dtype=np.int64).reshape(-1)
    if classes is None:
        classes = class_names(8 if labels.size and labels.max() >= 7 else 7)
    return images, labels, tuple(classes)


def similarity_explorer(model: nn.Module, dataset_or_arrays, *, batch_size: int = 32,
                        mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD,
                        static: bool | None = None, minority: str = "fear", minority_share: float = 0.1,
                        top_k: int = 3, max_queries: int = 4, seed: int = 0):
    """Choose how rare a class is in a batch; see the batch similarity and what its samples attend to.

    dataset_or_arrays: a FERDataset, ``{"images", "labels"[, "classes"]}`` or ``(images, labels)`` with
    images uint8 (N, S, S, 3) or normalised float (N, 3, S, S). The batch gives ``minority`` the share
    ``minority_share`` (at least one sample) and splits the rest evenly; S (B, B) is drawn sorted by label,
    and each minority sample (up to ``max_queries``) is shown with its ``top_k`` most similar other samples.
    """
    images, labels, classes = _dataset_arrays(dataset_or_arrays)
    source = _ImageSource(images, mean=mean, std=std)
    if len(source) != len(labels):
        raise ValueError(f"{len(source)} images but {len(labels)} labels")
    present = [classes[k] for k in np.unique(labels)]
    if minority not in present:
        raise ValueError(f"minority class {minority!r} does not occur in the data; present: {present}")

    def draw(values: dict) -> tuple[Figure, dict]:
        return _plot_similarity_choice(model, source, labels, classes, minority=values["minority"],
                                       share=values["share"], batch_size=batch_size, top_k=values["top_k"],
                                       max_queries=max_queries, seed=values["seed"])

    defaults = {"minority": minority, "share": minority_share, "top_k": top_k, "seed": seed}
    if use_static(static):
        return draw(defaults)[0]
    widgets = _widgets()
    controls = {
        "minority": widgets.Dropdown(options=present, value=minority, description="minority"),
        "share": widgets.FloatSlider(value=minority_share, min=0.0, max=0.5, step=0.01, description="share",
                                     readout_format=".2f"),
        "top_k": widgets.IntSlider(value=top_k, min=1, max=8, description="top-k"),
        "seed": widgets.IntText(value=seed, description="batch seed"),
    }
    return _explorer(controls, draw)


def _plot_similarity_choice(model: nn.Module, source: _ImageSource, labels: np.ndarray, classes: Sequence[str], *,
                            minority: str, share: float, batch_size: int, top_k: int, max_queries: int,
                            seed: int) -> tuple[Figure, dict]:
    apply_style()
    minority_index = classes.index(minority)
    indices = compose_batch(labels, minority=minority_index, share=share, batch_size=batch_size, seed=seed)
    batch_labels = labels[indices]
    matrix, kind = batch_similarity(model, source.model_inputs(indices))
    matrix = matrix.numpy()
    queries = np.flatnonzero(batch_labels == minority_index)
    pictures = source.pictures(indices)
    top_k = max(1, min(int(top_k), len(indices) - 1))
    attended = {}
    for query in queries:
        # A sample's weight on itself says nothing about its neighbours, so it is left out of the ranking.
        ranking = [int(j) for j in np.argsort(-matrix[query], kind="stable") if j != query][:top_k]
        attended[int(query)] = [(j, float(matrix[query, j])) for j in ranking]

    shown = queries[:max_queries]
    fig = plt.figure(figsize=(4.6 + 1.05 * (top_k + 1), max(3.8, 1.25 * max(len(shown), 1) + 0.8)))
    grid = fig.add_gridspec(1, 2, width_ratios=[4.6, 1.05 * (top_k + 1)], wspace=0.15)
    heat_ax = fig.add_subplot(grid[0])
    draw_similarity_heatmap(heat_ax, matrix, batch_labels, classes, colorbar_shrink=0.7)
    heat_ax.set_title(f"{kind}\n{len(queries)} {minority} of {len(indices)}")
    if len(shown):
        rows = grid[1].subgridspec(len(shown), top_k + 1, wspace=0.08, hspace=0.45)
        for row, query in enumerate(shown):
            entries = [(int(query), None)] + attended[int(query)]
            for column, (j, weight) in enumerate(entries):
                ax = fig.add_subplot(rows[row, column])
                ax.imshow(pictures[j])
                name = classes[batch_labels[j]]
                ax.set_title(f"{name[:8]}" if weight is None else f"{name[:8]} {weight:.2f}",
                             color=class_color(name), fontsize=7)
                _hide_axes(ax)
                if column == 0:
                    ax.set_ylabel("query", fontsize=7)
    else:
        ax = fig.add_subplot(grid[1])
        _hide_axes(ax)
        ax.text(0.0, 0.5, f"no {minority} sample in this batch\n(raise the share)", transform=ax.transAxes)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.86, bottom=0.12)
    state = {"indices": indices, "labels": batch_labels, "similarity": matrix, "kind": kind, "attended": attended}
    return fig, state
