"""Casts that cost nothing when there is nothing to cast.

``tensor.float()`` and ``tensor.to(dtype)`` return the tensor itself when it has that dtype already, but each
is still an operator call, which on a GPU is a dispatch in every training step: these helpers skip it.
"""
from __future__ import annotations

import torch
from torch import Tensor


def as_dtype(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor`` in ``dtype``; the tensor itself, without an operator call, when it is in ``dtype`` already."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def as_float(tensor: Tensor) -> Tensor:
    """``tensor`` in float32 (:func:`as_dtype`)."""
    return as_dtype(tensor, torch.float32)
