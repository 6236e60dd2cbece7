"""Scoring attention against where the expression is: energy share and the pointing game.

SynthFER renders, for every face, a mask of the expression-bearing regions (brows, eyes, nose, mouth).
A map that "looks at the expression" puts its energy there. Two scores, both standard in the saliency
literature:

- energy share = sum(s * m) / sum(s), with s the saliency resized bilinearly to the mask grid and
  negatives clamped to 0. A uniform map scores the mask's area share, which is therefore the chance
  level; a map equal to the mask scores exactly 1.
- pointing game: a hit when the saliency's maximum lies inside the mask, optionally dilated by a
  tolerance of a few pixels (Zhang et al., "Top-down neural attention by excitation backprop", 2016).
  Its chance level is the area share of the dilated mask.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hsbs_lib.viz.style import METHOD_COLORS, apply_style

SCORE_NAMES = {
    "energy_share": "energy share",
    "pointing_hit_rate": "pointing game",
}


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


def resize_saliency(saliency, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (B, h, w) maps to ``size`` with negatives clamped to 0 -> float64 (B, H, W)."""
    maps = _as_float_batch(saliency)
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return maps.clamp_min(0.0)


def area_share(mask) -> Tensor:
    """Fraction of each mask's pixels that are inside: (B, H, W) or (B, R, H, W) bool -> (B,) float64."""
    tensor = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask.detach())
    batch = tensor.shape[0] if tensor.dim() > 2 else 1
    return _as_mask_batch(tensor, batch).double().mean(dim=(1, 2))


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


def score_saliency(saliency, masks, *, tolerance_px: int = 0,
                   region_names: Sequence[str] | None = None) -> dict[str, float]:
    """Summary scores of a batch of maps against their masks.

    saliency: (B, h, w); masks: (B, H, W) bool, or (B, R, H, W) per-region masks (their union is scored,
    and with ``region_names`` also each region on its own as ``energy_share/<region>``).
    Returns ``energy_share`` (mean), ``pointing_hit_rate``, ``chance_energy_share`` (the mean mask area
    share), ``chance_pointing`` (mean dilated area share) and ``n``.
    """
    maps = _as_float_batch(saliency)
    union = _as_mask_batch(masks, maps.shape[0])
    scores = {
        "energy_share": float(energy_inside(maps, union).mean()),
        "pointing_hit_rate": float(pointing_game(maps, union, tolerance_px).double().mean()),
        "chance_energy_share": float(area_share(union).mean()),
        "chance_pointing": float(dilate(union, tolerance_px).double().mean()),
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


def _flatten_scores(scores_by_method: Mapping[str, Mapping]) -> list[tuple[str, str, Mapping[str, float]]]:
    """(method, map, scores) triples from ``{method: scores}`` or ``{method: {map: scores}}``."""
    triples = []
    for method, value in scores_by_method.items():
        if "energy_share" in value:
            triples.append((method, "", value))
        else:
            for map_name, scores in value.items():
                triples.append((method, map_name, scores))
    return triples


def attention_score_table(scores_by_method: Mapping[str, Mapping], *, markdown: bool = True):
    """The scores as a table: a markdown string, or (``markdown=False``) a list of row dicts.

    scores_by_method: ``{method: score_saliency(...)}`` or ``{method: {map name: score_saliency(...)}}``.
    """
    rows = []
    for method, map_name, scores in _flatten_scores(scores_by_method):
        rows.append({
            "method": method, "map": map_name,
            "energy_share": scores["energy_share"], "chance_energy_share": scores["chance_energy_share"],
            "pointing_hit_rate": scores["pointing_hit_rate"], "chance_pointing": scores["chance_pointing"],
            "n": scores.get("n", ""),
        })
    if not markdown:
        return rows
    lines = ["| method | map | energy share | chance | pointing game | chance | n |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['map'] or '-'} | {row['energy_share']:.3f} | "
                     f"{row['chance_energy_share']:.3f} | {row['pointing_hit_rate']:.3f} | "
                     f"{row['chance_pointing']:.3f} | {row['n']} |")
    return "\n".join(lines) + "\n"


def plot_attention_scores(scores_by_method: Mapping[str, Mapping], *, title: str | None = None):
    """Grouped bars of energy share and pointing-game hit rate, with each score's chance level dashed.

    Groups are the maps (layers, Grad-CAM, ...), bars the methods; the input is the same as for
    :func:`attention_score_table`.
    """
    apply_style()
    triples = _flatten_scores(scores_by_method)
    methods = list(dict.fromkeys(method for method, _, _ in triples))
    maps = list(dict.fromkeys(map_name for _, map_name, _ in triples))
    lookup = {(method, map_name): scores for method, map_name, scores in triples}
    panel_width = 0.45 * len(maps) * max(2, len(methods)) / 2 + 1.2
    fig, axes = plt.subplots(1, 2, figsize=(2 * panel_width + 1.5, 2.8), squeeze=False)
    width = 0.8 / max(len(methods), 1)
    positions = np.arange(len(maps))
    fallback = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label) in zip(axes[0], SCORE_NAMES.items()):
        chance_key = "chance_energy_share" if key == "energy_share" else "chance_pointing"
        highest = 0.0
        for index, method in enumerate(methods):
            values = [lookup[(method, m)][key] if (method, m) in lookup else np.nan for m in maps]
            color = METHOD_COLORS.get(method.split()[0].lower(), fallback[index % len(fallback)])
            ax.bar(positions + (index - (len(methods) - 1) / 2) * width, values, width, label=method, color=color)
            highest = max(highest, float(np.nanmax(values)) if not np.all(np.isnan(values)) else 0.0)
        for position, map_name in zip(positions, maps):
            chances = [lookup[(m, map_name)][chance_key] for m in methods if (m, map_name) in lookup]
            chance = float(np.mean(chances))
            highest = max(highest, chance)
            ax.hlines(chance, position - 0.45, position + 0.45, colors="black",
                      linestyles="dashed", linewidth=1, label="chance" if position == 0 else None)
        ax.set_xticks(positions, [m or "all" for m in maps])
        # region masks cover a small part of a face, so a 0..1 axis would flatten every bar
        ax.set_ylim(0, min(1.0, 1.25 * highest + 0.02))
        ax.set_ylabel(label)
    axes[0, 1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
