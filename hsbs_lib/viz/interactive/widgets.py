"""What every explorer shares: static or live mode, the widget container that redraws on a change, and
images given in any of the package's forms."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Mapping, Sequence

import cv2
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from hsbs_lib.constants import smoke_run
from hsbs_lib.data.pipeline.transforms import model_inputs
from hsbs_lib.extras import MissingExtraError, install_hint
from hsbs_lib.viz.attention import IMAGENET_MEAN, IMAGENET_STD, to_display_images


def use_static(static: bool | None = None) -> bool:
    """Resolve ``static``: None -> True when SMOKE is set, ipywidgets is missing or no kernel runs."""
    if static is not None:
        return bool(static)
    if smoke_run():
        return True
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return True
    shell = get_ipython()
    # A terminal IPython has no kernel and so no frontend to draw widgets in.
    return shell is None or getattr(shell, "kernel", None) is None


def show_explorer(explorer) -> None:
    """Show what an explorer returned: a static Figure through pyplot (shown once, then closed), a widget
    box through IPython's display (its controls redraw it in place)."""
    if isinstance(explorer, Figure):
        plt.show()
        return
    from IPython.display import display
    display(explorer)


def _widgets():
    try:
        import ipywidgets
    except ImportError as error:
        raise MissingExtraError(f"interactive explorers need ipywidgets, which is not installed: "
                                f"{install_hint('ipywidgets')} (or pass static=True for a plain figure)") from error
    return ipywidgets


class _Redraw:
    """Calls ``draw(values)`` on every control change, showing the figure in ``output``.

    ``paused()`` lets a handler rewrite dependent controls (e.g. a layer list) without a redraw per step.
    """

    def __init__(self, box, controls: Mapping[str, Any], output, draw: Callable[[dict], tuple[Figure, dict]]):
        self.box, self.controls, self.output, self.draw = box, controls, output, draw
        self.hold = False

    @contextmanager
    def paused(self):
        self.hold, previous = True, self.hold
        try:
            yield
        finally:
            self.hold = previous

    def __call__(self, change=None) -> None:
        if self.hold:
            return
        from IPython import get_ipython
        from IPython.display import display

        values = {name: control.value for name, control in self.controls.items()}
        in_kernel = get_ipython() is not None
        if in_kernel:
            self.output.clear_output(wait=True)
        # Inside a kernel the Output widget shows a traceback in place; elsewhere the error propagates.
        with self.output:
            figure, state = self.draw(values)
            self.box.state = state
            if in_kernel:
                display(figure)
            # The figure has been rendered into the output; closing it stops pyplot from piling them up.
            plt.close(figure)


def _explorer(controls: Mapping[str, Any], draw: Callable[[dict], tuple[Figure, dict]], *,
              header=None, observe: bool = True):
    """VBox(header or the controls in a wrap-around row, Output) with ``controls``, ``state``, ``redraw``."""
    widgets = _widgets()
    output = widgets.Output()
    if header is None:
        header = widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap"))
    box = widgets.VBox([header, output])
    box.controls, box.output, box.state = dict(controls), output, {}
    redraw = _Redraw(box, box.controls, output, draw)
    box.redraw, box.pause_redraw = redraw, redraw.paused
    if observe:
        for control in box.controls.values():
            control.observe(redraw, names="value")
    redraw()
    return box


def _hide_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


# ----------------------------------------------------------------------------------------------
# Images from arrays, tensors or datasets
# ----------------------------------------------------------------------------------------------

class _ImageSource:
    """Uniform access to images given as uint8 (N, S, S, 3) / (N, 3, S, S), float model inputs
    (N, 3, S, S) or a dataset with ``load_image(i)``. Only requested images are converted."""

    def __init__(self, images, *, mean: Sequence[float] | None, std: Sequence[float] | None):
        self.images, self.mean, self.std = images, mean, std
        self.from_dataset = hasattr(images, "load_image") and not hasattr(images, "shape")
        if not self.from_dataset and isinstance(images, (list, tuple)):
            self.images = np.stack([np.asarray(image) for image in images])
        if not self.from_dataset and np.ndim(self.images) != 4:
            raise ValueError(f"images must be (N, S, S, 3) or (N, 3, S, S), got shape {tuple(np.shape(self.images))}")

    def __len__(self) -> int:
        return len(self.images)

    def raw(self, indices: np.ndarray):
        """The selected images in their original form (a dataset's are stacked at the first one's size)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self.from_dataset:
            loaded = [np.asarray(self.images.load_image(int(i))) for i in indices]
            if not loaded:
                return np.zeros((0, 1, 1, 3), np.uint8)
            height, width = loaded[0].shape[:2]
            return np.stack([image if image.shape[:2] == (height, width)
                             else cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
                             for image in loaded])
        if isinstance(self.images, Tensor):
            return self.images[torch.as_tensor(indices)]
        return np.asarray(self.images)[indices]

    def pictures(self, indices) -> np.ndarray:
        """float (k, H, W, 3) in [0, 1] for imshow."""
        return to_display_images(self.raw(indices), mean=self.mean, std=self.std)

    def model_inputs(self, indices) -> Tensor:
        """float (k, 3, S, S) normalised model inputs; float tensors (k, 3, S, S) are taken as normalised."""
        raw = self.raw(indices)
        tensor = torch.as_tensor(raw) if not isinstance(raw, Tensor) else raw
        if tensor.is_floating_point() and tensor.shape[1] == 3:
            return tensor.float()
        normalization = {"mean": self.mean if self.mean is not None else IMAGENET_MEAN,
                         "std": self.std if self.std is not None else IMAGENET_STD}
        return model_inputs(tensor, normalization).contiguous()


def _draw_thumbnails(fig, cell, pictures: np.ndarray, titles: Sequence[str], colors: Sequence[str], *,
                     columns: int, empty_text: str = "no images") -> list:
    """Thumbnails in a grid inside one GridSpec ``cell``; returns the axes."""
    count = len(pictures)
    rows = max(1, int(np.ceil(count / columns)))
    grid = cell.subgridspec(rows, columns, wspace=0.08, hspace=0.35)
    axes = []
    for slot in range(rows * columns):
        ax = fig.add_subplot(grid[slot // columns, slot % columns])
        _hide_axes(ax)
        if slot < count:
            ax.imshow(pictures[slot])
            ax.set_title(titles[slot], color=colors[slot], fontsize=7)
        elif count == 0 and slot == 0:
            ax.text(0.0, 0.5, empty_text, transform=ax.transAxes, va="center")
        axes.append(ax)
    return axes
