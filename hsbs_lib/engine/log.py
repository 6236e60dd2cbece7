"""Run logging: metrics.csv (one row per epoch), optional TensorBoard, tqdm progress bars.

Columns of metrics.csv: ``epoch``, ``step``, ``loss/<term>`` for every named loss term (train means),
``loss/total``, ``lr``, ``train/accuracy``, ``val/accuracy``, ``val/mean_class_accuracy``,
``val/macro_f1`` (the validation split; the test split is scored once, into eval.json), whatever ``model.epoch_end`` returns (under its own names), ``intensity/layer1..4``
when learning intensity is recorded, and ``time/epoch_s``.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Iterable, Mapping

from tqdm.auto import tqdm

from hsbs_lib.constants import progress_disabled
from hsbs_lib.outputs import atomic_write
from hsbs_lib.extras import require

log = logging.getLogger("hsbs_lib.engine")


def progress_enabled(requested: bool = True) -> bool:
    """Progress bars unless switched off by the config or by ``HSBS_NO_PROGRESS=1``."""
    return bool(requested) and not progress_disabled()


def progress_bar(iterable: Iterable, *, enabled: bool, desc: str = "", total: int | None = None):
    """A tqdm bar around ``iterable`` (the iterable itself when disabled)."""
    if not enabled:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


class MetricsLog:
    """Epoch rows in memory, mirrored to ``metrics.csv`` (rewritten whole, so new columns are fine).

    Only the main process writes (``enabled=False`` elsewhere). ``keep_until`` reloads the rows of an
    existing file up to that epoch, so a resumed run continues its own table.
    """

    def __init__(self, out_dir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = False,
                 keep_until: int | None = None):
        self.path = Path(out_dir) / "metrics.csv"
        self.enabled = enabled
        self.rows: list[dict] = []
        if keep_until is not None and self.path.is_file():
            with open(self.path, newline="") as file:
                self.rows = [_parse_row(row) for row in csv.DictReader(file)
                             if int(float(row["epoch"])) <= keep_until]
        self.writer = None
        if enabled and tensorboard:
            require("tensorboard", "train.tensorboard=true (TensorBoard logging)")
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def log(self, row: dict) -> None:
        self.rows.append(dict(row))
        if not self.enabled:
            return
        self._write()
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def _write(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [key for key in row if key not in columns]

        def write(path: Path) -> None:
            with open(path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.rows)
        atomic_write(self.path, write)      # a reader (or a kill) never meets half a table

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _parse_row(row: dict[str, str]) -> dict:
    parsed = {}
    for key, text in row.items():
        try:
            value = float(text)
            parsed[key] = int(value) if key in ("epoch", "step") else value
        except (TypeError, ValueError):
            parsed[key] = text if text != "" else math.nan
    return parsed


def format_epoch(row: dict) -> str:
    """One log line per epoch with the headline numbers."""
    parts = [f"epoch {row['epoch']}", f"loss {row['loss/total']:.4f}", f"train acc {row['train/accuracy']:.3f}"]
    if "val/accuracy" in row:
        parts += [f"val acc {row['val/accuracy']:.3f}", f"mca {row['val/mean_class_accuracy']:.3f}",
                  f"F1 {row['val/macro_f1']:.3f}"]
    parts.append(f"lr {row['lr']:.2e}")
    return " | ".join(parts)


# ---------------------------------------------------------------------------------------------- reading

def _parse(text: str):
    """A csv cell -> float (NaN when empty), or the text itself when it is not a number."""
    if text is None or text.strip() == "":
        return float("nan")
    try:
        return float(text)
    except ValueError:
        return text


def read_metrics(path: str | os.PathLike) -> dict[str, list]:
    """metrics.csv -> {column: values in row order}; numbers as floats, empty cells as NaN.

    Columns are aligned: every list has one entry per row, whatever was logged in that row.
    """
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise ValueError(f"{path}: empty metrics file (no header row)")
        columns: dict[str, list] = {name: [] for name in reader.fieldnames}
        for row in reader:
            for name in columns:
                columns[name].append(_parse(row.get(name)))
    return columns


def metrics_of(run: str | os.PathLike | Mapping[str, list]) -> Mapping[str, list]:
    """A run's metrics: ``read_metrics`` of a metrics.csv path, or a dict it already returned, as is."""
    return read_metrics(run) if isinstance(run, (str, os.PathLike)) else run


def numeric_column(values: Iterable) -> list[float]:
    """One ``read_metrics`` column as floats, every non-number (text, None) as NaN."""
    return [v if isinstance(v, float) else math.nan for v in values]


def read_intensity(metrics_csv: str | os.PathLike) -> dict[str, list[float]]:
    """The ``intensity/<layer>`` columns of a metrics.csv -> {layer: per-row values}, empty rows dropped.

    Returns {} when the run did not log learning intensity.
    """
    metrics = read_metrics(metrics_csv)
    curves = {}
    for column, values in metrics.items():
        if column.startswith("intensity/"):
            kept = [v for v in values if isinstance(v, float) and not math.isnan(v)]
            if kept:
                curves[column.split("/", 1)[1]] = kept
    return curves
