"""Learning intensity (CLCL): the mean |gradient| that reaches each stage's output, per layer per epoch.

Shallow layers of a deep network receive weak gradients ("are under-trained"); CLCL and HSBS add
losses at shallow layers and should raise these curves. The recorder here is for notebooks; the engine
logs the same quantity as ``intensity/layer1..4`` columns in metrics.csv when
``train.record_intensity`` is on, which :func:`read_intensity` reads back.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from torch import nn

from hsbs_lib.constants import STAGE_NAMES
from hsbs_lib.engine.log import read_intensity  # noqa: F401 (re-exported)
from hsbs_lib.viz.curves import _run_color
from hsbs_lib.viz.style import apply_style

LAYERS: tuple[str, ...] = STAGE_NAMES


class LearningIntensityRecorder:
    """Context manager: while active, every backward pass through ``model`` records mean |dL/dF_l| for
    each stage output F_l = ``maps["features/<layer>"]`` (B, C, H, W).

    >>> with LearningIntensityRecorder(model) as recorder:      # doctest: +SKIP
    ...     for x, y in batches:
    ...         loss(model(x), y).backward(); optimizer.step()
    ...     recorder.end_epoch()                                  # one point per layer for the epoch
    >>> recorder.epochs["layer1"]                                # list of per-epoch means

    ``steps[layer]`` holds one value per backward pass since the last :meth:`end_epoch`.
    """

    def __init__(self, model: nn.Module, *, layers: Sequence[str] = LAYERS):
        self.model = model
        self.layers = tuple(layers)
        self.steps: dict[str, list[float]] = {layer: [] for layer in self.layers}
        self.epochs: dict[str, list[float]] = {layer: [] for layer in self.layers}
        self._handle = None

    def _make_tensor_hook(self, layer: str):
        def record(grad):
            self.steps[layer].append(float(grad.detach().abs().float().mean()))
        return record

    def _on_forward(self, module, inputs, output) -> None:
        maps = getattr(output, "maps", None) or {}
        for layer in self.layers:
            tensor = maps.get(f"features/{layer}")
            if tensor is not None and tensor.requires_grad:
                tensor.register_hook(self._make_tensor_hook(layer))

    def __enter__(self) -> "LearningIntensityRecorder":
        self._handle = self.model.register_forward_hook(self._on_forward)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the forward hook (tensor hooks die with their tensors)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def step_means(self) -> dict[str, float]:
        """Mean over the steps recorded since the last epoch end (NaN for a layer with none)."""
        return {layer: float(np.mean(values)) if values else float("nan") for layer, values in self.steps.items()}

    def end_epoch(self) -> dict[str, float]:
        """Close an epoch: append the step means to ``epochs`` and clear ``steps``; returns the means."""
        means = self.step_means()
        for layer, value in means.items():
            self.epochs[layer].append(value)
            self.steps[layer] = []
        return means


def plot_learning_intensity(curves_by_method: Mapping[str, Mapping[str, Sequence[float]]], *,
                            layers: Sequence[str] | None = None, log_scale: bool = True):
    """One panel per layer, mean |grad| per epoch, one line per method (baseline vs HSBS vs CLCL)."""
    apply_style()
    if layers is None:
        layers = [layer for layer in LAYERS if any(layer in curves for curves in curves_by_method.values())]
        layers += sorted({layer for curves in curves_by_method.values() for layer in curves} - set(layers))
    if not layers:
        raise ValueError("no learning-intensity curves to plot")
    fig, axes = plt.subplots(1, len(layers), figsize=(2.3 * len(layers) + 1.2, 2.5), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for index, (method, curves) in enumerate(curves_by_method.items()):
            values = np.asarray(curves.get(layer, []), dtype=np.float64)
            if values.size:
                ax.plot(np.arange(1, values.size + 1), values, marker="." if values.size < 30 else None,
                        color=_run_color(method, index), label=method, linewidth=1.2)
        if log_scale and all(np.all(line.get_ydata() > 0) for line in ax.get_lines()) and ax.get_lines():
            ax.set_yscale("log")
        ax.set_title(layer)
        ax.set_xlabel("epoch")
    axes[0, 0].set_ylabel("mean |grad|")
    axes[0, -1].legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig
