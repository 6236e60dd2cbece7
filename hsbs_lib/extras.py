"""Optional dependencies: which extra of the package brings each, and the one-line message when it is missing.

The base install holds what the ``hsbs`` command needs; the extras add the rest:
``lab`` (JupyterLab, widgets, scikit-image, notebook execution), ``export`` (ONNX), ``tb`` (TensorBoard) and
``dev`` (all of them and the test tools).
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: import name -> (distribution to install, the extra that brings it)
OPTIONAL: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "export"),
    "onnxscript": ("onnxscript", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "tensorboard": ("tensorboard", "tb"),
    "ipywidgets": ("ipywidgets", "lab"),
    "IPython": ("ipython", "lab"),
    "skimage": ("scikit-image", "lab"),
    "nbformat": ("nbformat", "lab"),
    "nbclient": ("nbclient", "lab"),
}


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the extra that brings it, in one line."""


def install_hint(module: str) -> str:
    """``'pip install "hsbs_lib[export]"'`` for an optional module's import name."""
    return f'pip install "hsbs_lib[{OPTIONAL[module][1]}]"'


def require(module: str, purpose: str) -> ModuleType:
    """Import optional ``module`` (a key of :data:`OPTIONAL`) or raise :class:`MissingExtraError`:
    ``'ONNX export needs onnx, which is not installed: pip install "hsbs_lib[export]"'``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != module:
            raise   # the package is there but one of its own imports failed: that is not a missing extra
        raise MissingExtraError(f"{purpose} needs {OPTIONAL[module][0]}, which is not installed: "
                                f"{install_hint(module)}") from None
