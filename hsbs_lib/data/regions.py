"""Expression-region masks carried through the input pipeline at one byte per pixel.

SynthFER renders, for every face, one boolean mask per region (REGION_NAMES: brows, eyes, nose, mouth). A
training batch that needs them (HSBS's ground-truth HST teachers) carries them as
``targets["region_bits"]``: uint8 (B, S, S) with bit r set where region r is. Four masks then cost what
one image channel costs, the device path slices them like the images, and every geometric augmentation
moves them with the image by nearest-neighbour sampling, so bits stay bits. A model reads the union of any
set of regions with one AND: :func:`regions_union`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: the targets key of the region bits
REGION_BITS = "region_bits"


def encode_region_bits(masks) -> np.ndarray:
    """Per-region masks (N, R, H, W) bool, R <= 8 -> uint8 (N, H, W), bit r set where region r is."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 4 or masks.shape[1] > 8:
        raise ValueError(f"region masks must be (N, R, H, W) with at most 8 regions, got shape {masks.shape}")
    bits = np.zeros((masks.shape[0], *masks.shape[2:]), dtype=np.uint8)
    for region in range(masks.shape[1]):
        bits |= masks[:, region].astype(np.uint8) << region
    return bits


def region_bit_mask(regions: Sequence[str], names: Sequence[str]) -> int:
    """The bits of ``regions`` among the region ``names`` (their order gives the bits): ("eyes",) -> 0b0010."""
    unknown = sorted(set(regions) - set(names))
    if unknown:
        raise ValueError(f"unknown regions {unknown}; the masks hold {', '.join(names)}")
    return sum(1 << names.index(region) for region in regions)


def has_region_masks(data: Any) -> bool:
    """True for data that holds per-pixel region masks: ``masks`` (N, R, H, W) or ``region_bits`` (N, H, W)."""
    return getattr(data, "masks", None) is not None or getattr(data, REGION_BITS, None) is not None


def region_bits_of(data: Any, size: int | None = None) -> np.ndarray | None:
    """The region bits (N, size, size) uint8 of ``data`` (from its ``region_bits``, else its ``masks``), or None.

    Masks of another size are resized by nearest neighbour (square faces, scaled as the cache scales them);
    ``size=None`` keeps the data's own size.
    """
    bits = getattr(data, REGION_BITS, None)
    if bits is None:
        masks = getattr(data, "masks", None)
        if masks is None:
            return None
        bits = encode_region_bits(masks)
    bits = np.asarray(bits, dtype=np.uint8)
    if size is not None and bits.shape[-2:] != (size, size):
        resized = F.interpolate(torch.from_numpy(bits)[:, None].float(), size=(size, size), mode="nearest")
        bits = resized[:, 0].to(torch.uint8).numpy()
    return bits


def regions_union(bits: Tensor, selected: int | Tensor) -> Tensor:
    """1.0 where any of the ``selected`` regions is, else 0: bits (B, H, W) uint8, selected an int or (B,) -> (B, H, W).

    ``selected`` per sample (B,) picks a different set of regions for each, e.g. by its class.
    """
    if isinstance(selected, Tensor):
        selected = selected.to(device=bits.device, dtype=bits.dtype).view(-1, 1, 1)
    return ((bits & selected) != 0).float()
