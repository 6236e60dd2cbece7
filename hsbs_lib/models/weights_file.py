"""Reading a file written by ``torch.save`` (checkpoints, pretrained weights) with ``weights_only=True``.

torch's own errors for a bad file run to several lines and, for a file holding arbitrary Python objects,
advise loading it with ``weights_only=False``; :func:`load_weights_file` says in one line what is wrong.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


def load_weights_file(path: str | os.PathLike, what: str = "weights file") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; a file that cannot be read that way is a
    ValueError of one line naming ``what`` and ``path``."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"could not load {what} {path}: {_reason(path, error)}") from error


def _reason(path: Path, error: Exception) -> str:
    if not zipfile.is_zipfile(path):
        # Every torch.save since torch 1.6 writes a zip archive.
        return "not a file written by torch.save (truncated by an interrupted copy, or another kind of file)"
    if isinstance(error, pickle.UnpicklingError):
        return ("it holds Python objects other than tensors and plain values, which are never loaded "
                "(it was not written by hsbs_lib, or by a program that saved whole objects)")
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
