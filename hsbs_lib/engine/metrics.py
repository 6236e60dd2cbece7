"""Classification metrics for imbalanced FER test sets (scikit-learn underneath)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, mean class accuracy, macro-F1, per-class recall and the confusion matrix.

    labels, predictions: (N,) integer class indices. Mean class accuracy averages the recall of the
    classes present in ``labels`` (an absent class has no recall; it is reported as None). Macro-F1 uses
    scikit-learn's default label set: the classes that occur in labels or predictions.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    matrix = confusion_matrix(labels, predictions, labels=list(range(len(classes))))
    support = matrix.sum(axis=1)
    recall = np.divide(np.diag(matrix), support, out=np.zeros(len(classes)), where=support > 0)
    present = support > 0
    n = int(labels.size)
    return {
        "n": n,
        "accuracy": float((labels == predictions).mean()) if n else 0.0,
        "mean_class_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)) if n else 0.0,
        "per_class_recall": {name: (float(recall[k]) if present[k] else None) for k, name in enumerate(classes)},
        "confusion_matrix": matrix.tolist(),
    }


def format_metrics(metrics: dict, classes: Sequence[str]) -> str:
    """A readable text table: headline numbers, per-class recall and the confusion matrix."""
    lines = [f"n = {metrics['n']}",
             f"accuracy            {metrics['accuracy'] * 100:6.2f} %",
             f"mean class accuracy {metrics['mean_class_accuracy'] * 100:6.2f} %",
             f"macro-F1            {metrics['macro_f1'] * 100:6.2f} %",
             "", "per-class recall:"]
    width = max(len(name) for name in classes)
    for name in classes:
        value = metrics["per_class_recall"].get(name)
        lines.append(f"  {name:<{width}} " + ("     -" if value is None else f"{value * 100:6.2f} %"))
    short = [name[:5] for name in classes]
    lines += ["", "confusion matrix (rows: true, columns: predicted):",
              " " * (width + 2) + " ".join(f"{name:>5}" for name in short)]
    for name, row in zip(classes, metrics["confusion_matrix"]):
        lines.append(f"  {name:<{width}} " + " ".join(f"{value:>5d}" for value in row))
    return "\n".join(lines)
