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

Maps of different layers have different grids (33, 17, 9 and 5 cells at the SynthFER demo scale), so a
pixel tolerance of zero asks far more of a coarse map than of a fine one. Three scores compare them at one
resolution: the pointing game with a tolerance of one cell on the map's own grid
(:func:`pointing_game_on_grid`), every map pooled onto the teacher's (layer4's) grid with the pooling HST
uses, and the teacher's map upsampled onto each layer's grid (:func:`score_equal_resolution`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hsbs_lib.losses.hst import pool_to_teacher_grid, upsample_to_student_grid
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


def mask_on_grid(mask, grid: tuple[int, int]) -> Tensor:
    """The cells of an (h, w) ResNet grid that a mask touches: (B, H, W) or (B, R, H, W) bool -> (B, h, w) bool.

    Cell i of a stride-s map sits on pixel s*i (:func:`~hsbs_lib.models.backbones.cells_to_pixels`) and
    stands for the pixels s*i - s/2 .. s*i + s/2, the windows HST pools with
    (:func:`~hsbs_lib.losses.hst.pool_to_teacher_grid`); a cell is in the mask when any of its pixels is.
    """
    masks = _as_masks(mask)
    return pool_to_teacher_grid(masks.float(), tuple(grid)) > 0


def grow_cells(cells, tolerance_cells: int) -> Tensor:
    """Grow a (B, h, w) bool grid mask by ``tolerance_cells`` cells in every direction, diagonals included."""
    grid = torch.as_tensor(cells).bool()
    if tolerance_cells <= 0:
        return grid
    size = 2 * int(tolerance_cells) + 1
    return F.max_pool2d(grid[:, None].float(), size, stride=1, padding=int(tolerance_cells))[:, 0] > 0


def pointing_game_on_grid(saliency, mask, tolerance_cells: int = 1) -> Tensor:
    """Whether each map's largest cell is within ``tolerance_cells`` cells of its mask, on the map's grid: (B,) bool.

    saliency (B, h, w) stays on its own grid; the mask (B, H, W) is moved onto it (:func:`mask_on_grid`) and
    grown by the tolerance (a (2t + 1) x (2t + 1) square of cells). A tolerance of one cell asks the same of a
    5x5 and a 33x33 map: that the peak is next to the expression at the map's own resolution. Negative
    values are clamped to 0 first, and among tied maxima the first cell in row-major order counts, as in
    :func:`pointing_game`.
    """
    maps = _as_float_batch(saliency).clamp_min(0.0)
    masks = _as_mask_batch(mask, maps.shape[0])
    target = grow_cells(mask_on_grid(masks, tuple(maps.shape[-2:])), tolerance_cells)
    peak = maps.flatten(1).argmax(dim=1)
    return target.flatten(1).gather(1, peak[:, None])[:, 0]


def centre_pointing_on_grid(mask, grid: tuple[int, int], tolerance_cells: int = 1) -> Tensor:
    """The centre baseline of :func:`pointing_game_on_grid`: whether each grown grid mask holds the middle cell.

    mask (B, H, W) or (B, R, H, W) bool -> (B,) bool; the middle cell is (h // 2, w // 2).
    """
    grown = grow_cells(mask_on_grid(mask, grid), tolerance_cells)
    height, width = grown.shape[-2:]
    return grown[:, height // 2, width // 2]


def chance_pointing_on_grid(mask, grid: tuple[int, int], tolerance_cells: int = 1) -> Tensor:
    """The share of an (h, w) grid's cells within ``tolerance_cells`` of each mask: a random peak's hit rate, (B,)."""
    return grow_cells(mask_on_grid(mask, grid), tolerance_cells).double().mean(dim=(1, 2))


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
    ``chance_outer_ring`` (at the map's own grid), the pointing game with a tolerance of one cell on the
    map's own grid ``pointing_hit_rate_1cell`` (:func:`pointing_game_on_grid`) with its chance level
    ``chance_pointing_1cell`` and centre baseline ``centre_pointing_1cell``, and ``n``.
    """
    maps = _as_float_batch(saliency)
    union = _as_mask_batch(masks, maps.shape[0])
    grown = dilate(union, tolerance_px)   # the pointing game's target, for both of its reference levels
    grid = tuple(maps.shape[-2:])
    scores = {
        "energy_share": float(energy_inside(maps, union).mean()),
        "pointing_hit_rate": float(pointing_game(maps, union, tolerance_px).double().mean()),
        "chance_energy_share": float(area_share(union).mean()),
        "chance_pointing": float(grown.double().mean()),
        "centre_pointing": float(centre_pointing(grown).double().mean()),
        "outer_ring_share": float(outer_ring_share(maps).mean()),
        "chance_outer_ring": outer_ring_chance(grid),
        "pointing_hit_rate_1cell": float(pointing_game_on_grid(maps, union, 1).double().mean()),
        "chance_pointing_1cell": float(chance_pointing_on_grid(union, grid, 1).mean()),
        "centre_pointing_1cell": float(centre_pointing_on_grid(union, grid, 1).double().mean()),
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


#: The scores :func:`score_equal_resolution` gives every layer, each under both prefixes
#: (``teacher_grid_`` and ``teacher_upsampled_``).
EQUAL_RESOLUTION_SCORES = ("energy_share", "pointing_hit_rate", "pointing_hit_rate_1cell")


def teacher_on_student_grid(teacher, grid: tuple[int, int]) -> Tensor:
    """The teacher's maps (B, h, w) upsampled onto a finer ResNet grid ``grid`` = (H_l, W_l): (B, H_l, W_l).

    Bilinear, each teacher cell placed on the student cell it sits on (cell i of the teacher on student cell
    r*i, r the stride ratio: :func:`~hsbs_lib.models.backbones.cells_to_pixels` with the student's grid as
    the pixels), the registration :func:`~hsbs_lib.losses.hst.pool_to_teacher_grid` pools with: HST's own
    :func:`~hsbs_lib.losses.hst.upsample_to_student_grid`, in float64.
    """
    return upsample_to_student_grid(_as_float_batch(teacher), tuple(grid))


def score_equal_resolution(attention: dict[str, Tensor], masks, *,
                           teacher: str = "layer4") -> dict[str, dict[str, float]]:
    """Every layer and the teacher scored at one resolution, both ways.

    attention: {layer: (B, h_l, w_l) maps}, the teacher's among them; masks: (B, H, W) or (B, R, H, W) bool.
    Returns {layer: scores} with, for each score s of :data:`EQUAL_RESOLUTION_SCORES`:

    * ``teacher_grid_<s>``: the layer's map pooled onto the teacher's grid with HST's registered pooling
      (:func:`~hsbs_lib.losses.hst.pool_to_teacher_grid`), scored there (what HST compares with the teacher);
    * ``teacher_upsampled_<s>``: the teacher's map upsampled onto the layer's grid
      (:func:`teacher_on_student_grid`), scored there. Where the grids nest (odd input sizes) its energy share
      and pixel pointing game equal the teacher's own, since bilinear upsampling keeps a piecewise-linear
      surface; the one-cell pointing game is what changes, the tolerance now one cell of the layer's grid.

    The teacher's own entries are its own scores (pooling and upsampling onto its own grid change nothing).
    """
    if teacher not in attention:
        raise KeyError(f"no '{teacher}' map to score the other layers against; got {sorted(attention)}")
    teacher_maps = _as_float_batch(attention[teacher])
    teacher_grid = tuple(teacher_maps.shape[-2:])
    union = _as_mask_batch(masks, teacher_maps.shape[0])

    def scored(maps: Tensor) -> dict[str, float]:
        return {"energy_share": float(energy_inside(maps, union).mean()),
                "pointing_hit_rate": float(pointing_game(maps, union).double().mean()),
                "pointing_hit_rate_1cell": float(pointing_game_on_grid(maps, union, 1).double().mean())}

    results = {}
    for layer, maps in attention.items():
        maps = _as_float_batch(maps)
        pooled = pool_to_teacher_grid(maps, teacher_grid).double()
        upsampled = teacher_on_student_grid(teacher_maps, tuple(maps.shape[-2:]))
        results[layer] = {**{f"teacher_grid_{key}": value for key, value in scored(pooled).items()},
                          **{f"teacher_upsampled_{key}": value for key, value in scored(upsampled).items()}}
    return results
