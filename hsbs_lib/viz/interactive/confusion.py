"""The confusion explorer: one button per confusion-matrix cell; a click shows that cell's faces."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from hsbs_lib.data.labels import class_names
from hsbs_lib.viz.confusion import confusion, draw_confusion, normalize_rows
from hsbs_lib.viz.interactive.widgets import _draw_thumbnails, _explorer, _ImageSource, _widgets, use_static
from hsbs_lib.viz.style import apply_style


def cell_members(y_true, y_pred, true_class: int, predicted_class: int) -> np.ndarray:
    """Indices (k,) of the samples with label ``true_class`` predicted as ``predicted_class``."""
    y_true, y_pred = (np.asarray(v.cpu() if isinstance(v, Tensor) else v).reshape(-1) for v in (y_true, y_pred))
    return np.flatnonzero((y_true == true_class) & (y_pred == predicted_class))


def most_confused_cell(counts: np.ndarray) -> tuple[int, int]:
    """(true, predicted) of the largest off-diagonal count; the diagonal's largest when nothing is confused."""
    off_diagonal = np.asarray(counts, dtype=np.float64).copy()
    np.fill_diagonal(off_diagonal, -1)
    if off_diagonal.max() > 0:
        return tuple(int(v) for v in np.unravel_index(int(np.argmax(off_diagonal)), off_diagonal.shape))
    diagonal = int(np.argmax(np.diag(counts)))
    return diagonal, diagonal


def _plot_cell_faces(fig, cell, source: _ImageSource, members: np.ndarray, true_name: str, predicted_name: str,
                     max_faces: int) -> None:
    shown = members[:max_faces]
    pictures = source.pictures(shown) if len(shown) else np.zeros((0, 1, 1, 3), np.float32)
    columns = int(np.ceil(np.sqrt(max(len(shown), 1))))
    _draw_thumbnails(fig, cell, pictures, [f"#{i}" for i in shown], ["#333333"] * len(shown),
                     columns=max(columns, 2), empty_text="no images in this cell")
    verb = "correct" if true_name == predicted_name else f"predicted {predicted_name}"
    fig.suptitle(f"true {true_name}, {verb}: {len(members)} images (showing {len(shown)})")


def confusion_explorer(y_true, y_pred, images, classes: Sequence[str] | None = None, *,
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                       static: bool | None = None, max_faces: int = 16):
    """A confusion matrix whose cells are buttons; clicking one shows up to ``max_faces`` of its faces.

    y_true, y_pred: (N,) class indices; images: (N, S, S, 3) uint8, normalised (N, 3, S, S) floats
    (give ``mean``/``std``) or a dataset in the same order. Static mode draws the matrix with the most
    confused cell outlined next to that cell's faces.
    """
    y_true = np.asarray(y_true.cpu() if isinstance(y_true, Tensor) else y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred.cpu() if isinstance(y_pred, Tensor) else y_pred, dtype=np.int64).reshape(-1)
    source = _ImageSource(images, mean=mean, std=std)
    if not len(y_true) == len(y_pred) == len(source):
        raise ValueError(f"y_true, y_pred and images differ in length: {len(y_true)}, {len(y_pred)}, {len(source)}")
    if classes is None:
        classes = class_names(8 if max(y_true.max(initial=0), y_pred.max(initial=0)) >= 7 else 7)
    classes = list(classes)
    counts = confusion(y_true, y_pred, len(classes))
    default_cell = most_confused_cell(counts)

    def faces(cell: tuple[int, int]) -> tuple[Figure, dict]:
        apply_style()
        members = cell_members(y_true, y_pred, *cell)
        fig = plt.figure(figsize=(5.0, 5.0))
        _plot_cell_faces(fig, fig.add_gridspec(1, 1)[0], source, members, classes[cell[0]], classes[cell[1]],
                         max_faces)
        return fig, {"cell": cell, "members": members, "shown": members[:max_faces]}

    if use_static(static):
        apply_style()
        fig = plt.figure(figsize=(10.0, 4.6))
        grid = fig.add_gridspec(1, 2, width_ratios=[1.0, 1.0], wspace=0.3)
        matrix_ax = fig.add_subplot(grid[0])
        draw_confusion(matrix_ax, counts, classes, True, None, cbar=False)
        matrix_ax.add_patch(Rectangle((default_cell[1], default_cell[0]), 1, 1, fill=False, edgecolor="red",
                                      linewidth=2))
        _plot_cell_faces(fig, grid[1], source, cell_members(y_true, y_pred, *default_cell),
                         classes[default_cell[0]], classes[default_cell[1]], max_faces)
        return fig

    widgets = _widgets()
    shares = normalize_rows(counts)
    blues = colormaps["Blues"]
    header = [widgets.Label("true \\ predicted")] + [widgets.Label(name[:9]) for name in classes]
    cells, buttons = [], {}
    selected = widgets.Text(value=f"{default_cell[0]},{default_cell[1]}", description="cell", disabled=True)
    for t, true_name in enumerate(classes):
        cells.append(widgets.Label(true_name))
        for p in range(len(classes)):
            button = widgets.Button(description=str(int(counts[t, p])), tooltip=f"true {true_name}, "
                                    f"predicted {classes[p]}: {shares[t, p]:.0%} of the row",
                                    layout=widgets.Layout(width="auto", height="28px"))
            button.style.button_color = to_hex(blues(0.1 + 0.85 * shares[t, p]))
            button.style.text_color = "white" if shares[t, p] > 0.5 else "black"
            # Each button writes its cell into `selected`; the redraw observes that one control.
            button.on_click(lambda _, cell=f"{t},{p}": setattr(selected, "value", cell))
            buttons[(t, p)] = button
            cells.append(button)
    grid = widgets.GridBox(header + cells, layout=widgets.Layout(
        grid_template_columns=f"110px repeat({len(classes)}, minmax(44px, 1fr))", grid_gap="2px"))

    def draw(values: dict) -> tuple[Figure, dict]:
        t, p = (int(v) for v in values["cell"].split(","))
        return faces((t, p))

    box = _explorer({"cell": selected}, draw, header=widgets.VBox([grid, selected]))
    box.buttons = buttons
    return box
