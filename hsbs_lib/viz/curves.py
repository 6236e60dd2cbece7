"""Training curves from a run's metrics.csv, and per-class accuracy bars with the minority classes marked."""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from hsbs_lib.constants import MINORITY_CLASSES
from hsbs_lib.engine.log import metrics_of, numeric_column, read_metrics
from hsbs_lib.viz.style import METHOD_COLORS, apply_style

X_COLUMNS = ("epoch", "step")


def _numeric(values: Sequence) -> np.ndarray:
    return np.asarray(numeric_column(values), dtype=np.float64)


def _curve_groups(metrics: Mapping[str, list]) -> dict[str, list[str]]:
    """Split columns into loss terms, accuracies and learning rate by their names."""
    groups: dict[str, list[str]] = {"loss": [], "accuracy": [], "learning rate": []}
    for name in metrics:
        short = name.lower().rsplit("/", 1)[-1]
        if name in X_COLUMNS or name.startswith("intensity/") or name.lower().startswith("time"):
            continue
        if short in ("lr", "learning_rate") or short.startswith("lr"):
            groups["learning rate"].append(name)
        elif "acc" in short or "f1" in short or "recall" in short:
            groups["accuracy"].append(name)
        elif "loss" in name.lower() or name.lower().startswith(("train/", "loss/")):
            groups["loss"].append(name)
    return {group: names for group, names in groups.items() if names}


def _run_color(run: str, index: int) -> str:
    for method, color in METHOD_COLORS.items():
        if method in run.lower():
            return color
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return cycle[index % len(cycle)]


def plot_training_curves(metrics_by_run: Mapping[str, Mapping[str, list] | str | os.PathLike]):
    """One panel each for loss terms, accuracies and learning rate; one colour per run, one line style
    per column. Values are ``read_metrics`` dicts or paths to metrics.csv; x is ``epoch`` (else ``step``,
    else the row number). Rows where a column is empty are skipped for that column."""
    apply_style()
    runs = {name: metrics_of(value) for name, value in metrics_by_run.items()}
    panel_names = [group for group in ("loss", "accuracy", "learning rate")
                   if any(group in _curve_groups(metrics) for metrics in runs.values())]
    if not panel_names:
        raise ValueError("no loss, accuracy or lr columns found in the metrics")
    fig, axes = plt.subplots(1, len(panel_names), figsize=(3.4 * len(panel_names) + 1.0, 2.8), squeeze=False)
    styles = ["-", "--", ":", "-."]
    several = len(runs) > 1
    groups_by_run = {run: _curve_groups(metrics) for run, metrics in runs.items()}
    style_of: dict[str, str] = {}  # one line style per column name, the same in every run
    for panel in panel_names:
        panel_columns = dict.fromkeys(c for groups in groups_by_run.values() for c in groups.get(panel, []))
        style_of.update({c: styles[i % len(styles)] for i, c in enumerate(panel_columns)})
    for run_index, (run, metrics) in enumerate(runs.items()):
        x_name = next((name for name in X_COLUMNS if name in metrics), None)
        groups = groups_by_run[run]
        for ax, panel in zip(axes[0], panel_names):
            for column in groups.get(panel, []):
                y = _numeric(metrics[column])
                x = _numeric(metrics[x_name]) if x_name else np.arange(1, len(y) + 1, dtype=float)
                keep = ~np.isnan(y) & ~np.isnan(x)
                if keep.any():
                    # several runs: colour = run, line style = column (two legends below)
                    ax.plot(x[keep], y[keep], style_of[column],
                            color=_run_color(run, run_index) if several else None, label=column, linewidth=1.2,
                            marker="." if keep.sum() < 30 else None)
            ax.set_title(panel)
            ax.set_xlabel(x_name or "row")
    for ax, panel in zip(axes[0], panel_names):
        if panel == "loss" and ax.get_lines() and all(np.all(line.get_ydata() > 0) for line in ax.get_lines()):
            ax.set_yscale("log")  # loss terms differ by orders of magnitude (CE vs weighted HST)
        columns = list(dict.fromkeys(line.get_label() for line in ax.get_lines()))
        if several:
            handles = [Line2D([], [], color="#555555", linestyle=style_of[c], label=c) for c in columns]
            ax.legend(handles=handles, frameon=False, fontsize=6)
        elif columns:
            ax.legend(frameon=False, fontsize=6)
    if several:
        handles = [Line2D([], [], color=_run_color(run, index), linewidth=2, label=run)
                   for index, run in enumerate(runs)]
        fig.legend(handles=handles, loc="upper center", ncols=len(runs), frameon=False,
                   bbox_to_anchor=(0.5, 1.08))
    fig.tight_layout()
    return fig


#: The columns :func:`plot_curves_by_row` draws by default: has training levelled off, and what did the
#: validation split (the one that selects the checkpoint) make of it.
PLATEAU_COLUMNS = ("train/accuracy", "val/mean_class_accuracy")


def plot_curves_by_row(runs_by_row: Mapping[str, Sequence[Mapping[str, list] | str | os.PathLike]],
                       columns: Sequence[str] = PLATEAU_COLUMNS):
    """One panel per column; per row of a comparison one colour, a thin line per seed and a thick line
    for the mean over seeds, so that a reader sees whether every method's curve has levelled off.

    ``runs_by_row``: row name -> its seeds' ``read_metrics`` dicts or metrics.csv paths. x is ``epoch``.
    """
    apply_style()
    runs = {row: [metrics_of(value) for value in values] for row, values in runs_by_row.items()}
    if not runs or not any(runs.values()):
        raise ValueError("no runs to draw")
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns) + 0.6, 3.0), squeeze=False)
    for ax, column in zip(axes[0], columns):
        for index, (row, seeds) in enumerate(runs.items()):
            color = _run_color(row, index)
            curves = []
            for metrics in seeds:
                if column not in metrics or "epoch" not in metrics:
                    continue
                x, y = _numeric(metrics["epoch"]), _numeric(metrics[column])
                keep = ~np.isnan(x) & ~np.isnan(y)
                ax.plot(x[keep], y[keep], color=color, linewidth=0.6, alpha=0.45)
                curves.append(dict(zip(x[keep], y[keep])))
            epochs = sorted(set.intersection(*(set(curve) for curve in curves))) if curves else []
            if epochs:
                mean = [np.mean([curve[epoch] for curve in curves]) for epoch in epochs]
                ax.plot(epochs, mean, color=color, linewidth=2.0, label=f"{row} ({len(curves)} seeds)")
        ax.set_title(column)
        ax.set_xlabel("epoch")
    axes[0][0].legend(frameon=False, fontsize=6)
    fig.tight_layout()
    return fig


def plot_per_class_accuracy(recalls_by_model: Mapping[str, Mapping[str, float]], classes: Sequence[str], *,
                            highlight: Sequence[str] = MINORITY_CLASSES, title: str | None = None):
    """Grouped bars of per-class accuracy (recall), one bar per model; minority classes shaded and bold.

    recalls_by_model: ``{"baseline": {"fear": 0.41, ...}, "hsbs": {...}}``; missing classes are NaN.
    """
    apply_style()
    models = list(recalls_by_model)
    positions = np.arange(len(classes))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.75 * len(classes) * max(1, len(models) / 2) + 1.5), 2.8))
    for k, name in enumerate(classes):
        if name in highlight:
            ax.axvspan(k - 0.5, k + 0.5, color="#fff1c9", zorder=0, linewidth=0)
    for index, model in enumerate(models):
        values = [recalls_by_model[model].get(name, float("nan")) for name in classes]
        offsets = positions + (index - (len(models) - 1) / 2) * width
        ax.bar(offsets, values, width, label=model, color=_run_color(model, index), zorder=2)
        for x, value in zip(offsets, values):
            if not math.isnan(value) and len(models) <= 3:
                ax.text(x, value + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=5.5, rotation=90)
    ax.set_xticks(positions, list(classes), rotation=30, ha="right")
    for tick in ax.get_xticklabels():
        if tick.get_text() in highlight:
            tick.set_fontweight("bold")
    ax.set_ylim(0, 1.12)
    ax.set_xlim(-0.5, len(classes) - 0.5)
    ax.set_ylabel("accuracy (recall)")
    ax.set_title(title or "per-class accuracy (minority classes shaded)")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig
