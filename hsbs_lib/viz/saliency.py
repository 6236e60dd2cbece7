"""Tables and bar charts of attention scores (the scores themselves: :mod:`hsbs_lib.engine.saliency`)."""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np

from hsbs_lib.engine.saliency import (area_share, centre_pointing, dilate, energy_inside, outer_ring_chance,  # noqa: F401 (re-exported)
                                      outer_ring_share, pointing_game, resize_saliency, score_saliency)
from hsbs_lib.viz.style import METHOD_COLORS, apply_style

SCORE_NAMES = {
    "energy_share": "energy share",
    "pointing_hit_rate": "pointing game",
}


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
            "centre_pointing": scores.get("centre_pointing", float("nan")),
            "outer_ring_share": scores.get("outer_ring_share", float("nan")),
            "chance_outer_ring": scores.get("chance_outer_ring", float("nan")),
            "n": scores.get("n", ""),
        })
    if not markdown:
        return rows
    lines = ["| method | map | energy share | chance | pointing game | chance | centre | outer ring | chance | n |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['map'] or '-'} | {row['energy_share']:.3f} | "
                     f"{row['chance_energy_share']:.3f} | {row['pointing_hit_rate']:.3f} | "
                     f"{row['chance_pointing']:.3f} | {row['centre_pointing']:.3f} | {row['outer_ring_share']:.3f} | "
                     f"{row['chance_outer_ring']:.3f} | {row['n']} |")
    return "\n".join(lines) + "\n"


def plot_attention_scores(scores_by_method: Mapping[str, Mapping], *, title: str | None = None):
    """Grouped bars of energy share and pointing-game hit rate, each score's chance level dashed and the
    pointing game's centre baseline dotted.

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
            centres = [] if key != "pointing_hit_rate" else [
                lookup[(m, map_name)]["centre_pointing"] for m in methods
                if (m, map_name) in lookup and "centre_pointing" in lookup[(m, map_name)]]
            if centres:
                # faces are centred: a map that always peaks at the image centre is the bar to beat
                centre = float(np.mean(centres))
                highest = max(highest, centre)
                ax.hlines(centre, position - 0.45, position + 0.45, colors="dimgray", linestyles="dotted",
                          linewidth=1.5, label="image centre" if position == 0 else None)
        ax.set_xticks(positions, [m or "all" for m in maps])
        # region masks cover a small part of a face, so a 0..1 axis would flatten every bar
        ax.set_ylim(0, min(1.0, 1.25 * highest + 0.02))
        ax.set_ylabel(label)
    axes[0, 1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
