"""Scoring attention against where the expression is: energy share, the pointing game, the outer ring.

SynthFER renders, for every face, a mask of the expression-bearing regions (brows, eyes, nose, mouth).
A map that "looks at the expression" puts its energy there. Two scores, both standard in the saliency
literature:

- energy share = sum(s * m) / sum(s), with s the saliency resized bilinearly to the mask grid (each
  ResNet cell placed on the pixel it is centred on, see :func:`resize_saliency`) and negatives clamped
  to 0. A uniform map scores the mask's area share, which is therefore the chance level; a map equal to
  the mask scores exactly 1.
- pointing game: a hit when the saliency's maximum lies inside the mask, optionally dilated by a
  tolerance of a few pixels (Zhang et al., "Top-down neural attention by excitation backprop", 2016).
  Its chance level is the area share of the dilated mask. Faces are centred, so the literature's second
  reference, the *centre baseline* (a map that always peaks at the image centre, Zhang et al.'s "Center"),
  can score far above that chance: a map must beat both to show it localises anything.

A third score needs no mask and catches a classic artefact: zero padding makes the border cells of a
feature map respond differently from the inside, so a map can light up an edge or a corner of the image
whatever the face shows. The outer-ring share is the share of a map's energy on its outermost ring of
cells, at the map's own resolution; a uniform map scores the ring's share of the cells.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hsbs_lib.models.backbones import cells_to_pixels


def _as_float_batch(saliency) -> Tensor:
    """(B, h, w) or (h, w) map(s), numpy or torch -> float64 (B, h, w) CPU tensor."""
    tensor = torch.as_tensor(np.asarray(saliency) if not isinstance(saliency, Tensor) else saliency.detach())
    tensor = tensor.cpu().double()
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() != 3:
        raise ValueError(f"saliency must be (B, H, W) or (H, W), got shape {tuple(tensor.shape)}")
    return tensor


def _as_mask_batch(mask, batch: int) -> Tensor:
    """(B, H, W) or (B, R, H, W) boolean regions -> bool (B, H, W); several regions are joined."""
    tensor = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask.detach()).cpu()
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() == 4:
        tensor = tensor.bool().any(dim=1)
    if tensor.dim() != 3:
        raise ValueError(f"mask must be (B, H, W) or (B, R, H, W), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] != batch:
        raise ValueError(f"saliency has {batch} maps but the mask has {tensor.shape[0]}")
    return tensor.bool()


def resize_saliency(saliency, size: tuple[int, int], *, cells: str = "resnet") -> Tensor:
    """Bilinear resize of (B, h, w) maps to ``size`` with negatives clamped to 0 -> float64 (B, H, W).

    ``cells="resnet"``: cell i of a stride-s map sits on pixel s*i, as in every torchvision ResNet
    (:func:`~hsbs_lib.models.backbones.cells_to_pixels`); ``"block"``: cell i covers pixels [s*i, s*(i+1))
    (a plain resize; right for maps made by non-overlapping patches).
    """
    maps = _as_float_batch(saliency)
    if tuple(maps.shape[-2:]) != tuple(size):
        if cells == "resnet":
            maps = cells_to_pixels(maps, tuple(size)).double()
        elif cells == "block":
            maps = F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        else:
            raise ValueError(f"cells must be 'resnet' or 'block', got {cells!r}")
    return maps.clamp_min(0.0)


def _as_masks(mask) -> Tensor:
    """Masks of any batch size, numpy or torch, (B, H, W), (H, W) or per-region (B, R, H, W) -> bool (B, H, W)."""
    tensor = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask.detach())
    return _as_mask_batch(tensor, tensor.shape[0] if tensor.dim() > 2 else 1)


def area_share(mask) -> Tensor:
    """Fraction of each mask's pixels that are inside: (B, H, W) or (B, R, H, W) bool -> (B,) float64."""
    return _as_masks(mask).double().mean(dim=(1, 2))


def energy_inside(saliency, mask) -> Tensor:
    """Share of saliency energy inside the mask: saliency (B, h, w), mask (B, H, W) bool -> (B,) in [0, 1].

    The saliency is resized bilinearly to the mask grid and clamped at 0. A map with no positive energy
    carries no information and scores like a uniform map (the mask's area share).
    """
    maps = _as_float_batch(saliency)
    masks = _as_mask_batch(mask, maps.shape[0])
    maps = resize_saliency(maps, tuple(masks.shape[-2:]))
    total = maps.sum(dim=(1, 2))
    inside = (maps * masks).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float64).tiny), area_share(masks))


def dilate(mask, tolerance_px: int) -> Tensor:
    """Grow a (B, H, W) bool mask by a disk of radius ``tolerance_px`` pixels."""
    masks = torch.as_tensor(mask).bool()
    if tolerance_px <= 0:
        return masks
    radius = int(tolerance_px)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).float()
    grown = F.conv2d(masks[:, None].float(), disk[None, None], padding=radius)[:, 0]
    return grown > 0.5


def pointing_game(saliency, mask, tolerance_px: int = 0) -> Tensor:
    """Whether each map's maximum falls inside its mask (dilated by ``tolerance_px``): -> (B,) bool.

    saliency (B, h, w) is resized to the mask grid (B, H, W) first; among tied maxima the first in
    row-major order counts.
    """
    maps = _as_float_batch(saliency)
    masks = _as_mask_batch(mask, maps.shape[0])
    maps = resize_saliency(maps, tuple(masks.shape[-2:]))
    grown = dilate(masks, tolerance_px)
    peak = maps.flatten(1).argmax(dim=1)
    return grown.flatten(1).gather(1, peak[:, None])[:, 0]


def centre_pointing(mask, tolerance_px: int = 0) -> Tensor:
    """The centre baseline of the pointing game: whether each mask (dilated) holds the image's centre pixel.

    mask (B, H, W) or (B, R, H, W) bool -> (B,) bool; the centre is pixel (H // 2, W // 2), which is
    exactly the middle cell of every odd-sized ResNet grid at an odd input size.
    """
    masks = dilate(_as_masks(mask), tolerance_px)
    height, width = masks.shape[-2:]
    return masks[:, height // 2, width // 2]


def outer_ring_share(saliency) -> Tensor:
    """Share of each map's (clamped) energy on its outermost ring of cells: (B, h, w) -> (B,) in [0, 1].

    Measured at the map's own grid (no resizing); a map with no positive energy scores the chance level
    :func:`outer_ring_chance`.
    """
    maps = _as_float_batch(saliency).clamp_min(0.0)
    ring = torch.ones(maps.shape[-2:], dtype=torch.bool)
    if min(maps.shape[-2:]) > 2:
        ring[1:-1, 1:-1] = False
    total = maps.sum(dim=(1, 2))
    on_ring = (maps * ring).sum(dim=(1, 2))
    chance = outer_ring_chance(tuple(maps.shape[-2:]))
    return torch.where(total > 0, on_ring / total.clamp_min(torch.finfo(torch.float64).tiny),
                       torch.full_like(total, chance))


def outer_ring_chance(grid: tuple[int, int]) -> float:
    """The outer ring's share of an (h, w) grid's cells: what a uniform map scores on :func:`outer_ring_share`."""
    height, width = grid
    inner = max(height - 2, 0) * max(width - 2, 0)
    return 1.0 - inner / (height * width)


def score_saliency(saliency, masks, *, tolerance_px: int = 0,
                   region_names: Sequence[str] | None = None) -> dict[str, float]:
    """Summary scores of a batch of maps against their masks.

    saliency: (B, h, w); masks: (B, H, W) bool, or (B, R, H, W) per-region masks (their union is scored,
    and with ``region_names`` also each region on its own as ``energy_share/<region>``).
    Returns ``energy_share`` (mean), ``pointing_hit_rate``, ``chance_energy_share`` (the mean mask area
    share), ``chance_pointing`` (mean dilated area share), ``centre_pointing`` (the hit rate of a map that
    always peaks at the image centre: :func:`centre_pointing`), ``outer_ring_share`` with its chance level
    ``chance_outer_ring`` (at the map's own grid) and ``n``.
    """
    maps = _as_float_batch(saliency)
    union = _as_mask_batch(masks, maps.shape[0])
    grown = dilate(union, tolerance_px)   # the pointing game's target, for both of its reference levels
    scores = {
        "energy_share": float(energy_inside(maps, union).mean()),
        "pointing_hit_rate": float(pointing_game(maps, union, tolerance_px).double().mean()),
        "chance_energy_share": float(area_share(union).mean()),
        "chance_pointing": float(grown.double().mean()),
        "centre_pointing": float(centre_pointing(grown).double().mean()),
        "outer_ring_share": float(outer_ring_share(maps).mean()),
        "chance_outer_ring": outer_ring_chance(tuple(maps.shape[-2:])),
        "n": int(maps.shape[0]),
    }
    per_region = torch.as_tensor(np.asarray(masks) if not isinstance(masks, Tensor) else masks).cpu()
    if region_names is not None and per_region.dim() == 4:
        if len(region_names) != per_region.shape[1]:
            raise ValueError(f"{len(region_names)} region names for {per_region.shape[1]} region masks")
        for index, region in enumerate(region_names):
            region_mask = per_region[:, index].bool()
            scores[f"energy_share/{region}"] = float(energy_inside(maps, region_mask).mean())
            scores[f"chance_energy_share/{region}"] = float(region_mask.double().mean())
    return scores
