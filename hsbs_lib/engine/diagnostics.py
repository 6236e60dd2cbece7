"""What a trained run's attention and batch similarity look like, in numbers.

``run_diagnostics(run_dir)`` loads ``best.pt``, runs it over the first ``n`` images of a split and returns

* ``attention``: for each backbone stage, the scores of its activation attention (mean over channels of
  F^2) against the SynthFER expression masks (:func:`hsbs_lib.engine.saliency.score_saliency`: energy share,
  pointing game, outer-ring share, each with its chance level, and the pointing game with a one-cell
  tolerance on the map's own grid, ``pointing_hit_rate_1cell``), and the same stage at the teacher's
  resolution (:func:`hsbs_lib.engine.saliency.score_equal_resolution`: ``teacher_grid_*``, the stage pooled
  onto layer4's grid as HST pools it, and ``teacher_upsampled_*``, layer4's map upsampled onto the stage's
  grid); only for data with masks;
* ``bsa``: for models with a batch similarity (HSBS), the statistics of S over consecutive batches of the
  training batch size (:func:`hsbs_lib.losses.bsa.similarity_statistics`: row entropy, largest column
  mass, same-class / different-class ratio), averaged over the batches.

The result is written to ``diagnostics-<split>-<n>.json`` in the run folder and reused while ``best.pt``
is unchanged and the file was written by this version of the scores (:data:`DIAGNOSTICS_VERSION`). ``hsbs
compare`` tabulates it over seeds; ``hsbs figures`` prints it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from hsbs_lib.constants import STAGE_NAMES
from hsbs_lib.config import config_from_dict
from hsbs_lib.engine.build import build_dataset
from hsbs_lib.engine.checkpoint import load_model_from_checkpoint
from hsbs_lib.engine.evaluate import as_eval_loader
from hsbs_lib.engine.saliency import score_equal_resolution, score_saliency
from hsbs_lib.losses.bsa import similarity_statistics
from hsbs_lib.losses.hst import activation_attention

LAYERS = STAGE_NAMES
#: Bumped when the report gains or changes scores, so a cached report without them is computed again.
#: 2: the one-cell pointing game and the equal-resolution scores.
DIAGNOSTICS_VERSION = 2


def diagnostics_file(run_dir: str | Path, split: str, n: int) -> Path:
    return Path(run_dir) / f"diagnostics-{split}-{n}.json"


def stage_attention(output) -> dict[str, torch.Tensor]:
    """Each stage's activation attention of one forward pass (a ``ModelOutput``): {layer: (B, h, w)}, for the
    stages whose ``features/<layer>`` map the model returns."""
    return {layer: activation_attention(output.maps[f"features/{layer}"]) for layer in LAYERS
            if f"features/{layer}" in output.maps}


@torch.no_grad()
def run_diagnostics(run_dir: str | Path, *, split: str = "test", n: int = 512, device: str = "cpu",
                    reuse: bool = True) -> dict:
    """Attention scores and BSA statistics of ``run_dir/best.pt`` on the first ``n`` images of ``split``."""
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / "best.pt"
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"{checkpoint_path} not found: diagnostics need a trained run's best.pt")
    stamp = checkpoint_path.stat().st_mtime_ns
    cached = diagnostics_file(run_dir, split, n)
    if reuse and cached.is_file():
        stored = json.loads(cached.read_text())
        if stored.get("checkpoint_mtime_ns") == stamp and stored.get("version") == DIAGNOSTICS_VERSION:
            return stored

    model, checkpoint = load_model_from_checkpoint(checkpoint_path, device=device)
    config = config_from_dict(checkpoint["config"])
    config.data.input_size = int(checkpoint["input_size"])
    if config.data.name == "synthfer":  # rendered per index, so fewer images are a prefix of the split
        for key in ("n_train", "n_val", "n_test"):
            setattr(config.data, key, min(getattr(config.data, key), n))
    dataset = build_dataset(config, split)
    count = min(n, len(dataset))
    masks = getattr(dataset, "masks", None)
    batch_size = int(config.train.batch_size)
    loader = as_eval_loader(dataset, batch_size=batch_size, device=device, normalization=checkpoint["normalization"],
                            input_size=config.data.input_size)

    maps: dict[str, list[torch.Tensor]] = {layer: [] for layer in LAYERS}
    bsa: list[dict] = []
    seen = 0
    for images, targets in loader:
        if seen >= count:
            break
        images = images[:count - seen].to(device)
        labels = targets["label"][:count - seen]
        output = model(images)
        for layer, values in stage_attention(output).items():
            maps[layer].append(values.cpu())
        if getattr(model, "bsa", None) is not None and len(labels) > 1:
            bsa.append(similarity_statistics(model.similarity(images), labels))
        seen += len(labels)

    report: dict = {"run": str(run_dir), "split": split, "n": seen, "checkpoint_mtime_ns": stamp,
                    "version": DIAGNOSTICS_VERSION}
    if masks is not None and any(maps.values()):
        region_masks = np.asarray(masks)[:seen]
        attention = {layer: torch.cat(values) for layer, values in maps.items() if values}
        report["attention"] = {layer: score_saliency(values, region_masks) for layer, values in attention.items()}
        teacher = LAYERS[-1]
        if teacher in attention:
            for layer, scores in score_equal_resolution(attention, region_masks, teacher=teacher).items():
                report["attention"][layer].update(scores)
    if bsa:
        report["bsa"] = {key: _nanmean([batch[key] for batch in bsa]) for key in bsa[0]}
        report["bsa"]["batch_size"] = batch_size
    cached.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _nanmean(values: list[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return float(np.mean(finite)) if finite else float("nan")


def format_diagnostics(report: dict) -> str:
    """A few readable lines: attention scores per layer and the BSA statistics."""
    lines = [f"{report['run']} [{report['split']}, {report['n']} images]"]
    for layer, scores in report.get("attention", {}).items():
        lines.append(f"  {layer}: energy share {scores['energy_share']:.3f} (chance {scores['chance_energy_share']:.3f}),"
                     f" pointing game {scores['pointing_hit_rate']:.3f} (chance {scores['chance_pointing']:.3f}"
                     + (f", centre {scores['centre_pointing']:.3f}" if "centre_pointing" in scores else "") + "),"
                     f" outer ring {scores['outer_ring_share']:.3f} (uniform {scores['chance_outer_ring']:.3f})")
        if "pointing_hit_rate_1cell" in scores:   # reports written before the equal-resolution scores lack them
            lines.append(f"    one-cell pointing on its own grid {scores['pointing_hit_rate_1cell']:.3f} (chance "
                         f"{scores['chance_pointing_1cell']:.3f}, centre {scores['centre_pointing_1cell']:.3f})")
        if "teacher_grid_energy_share" in scores:
            lines.append(f"    pooled to {LAYERS[-1]}'s grid: energy share {scores['teacher_grid_energy_share']:.3f},"
                         f" pointing game {scores['teacher_grid_pointing_hit_rate']:.3f},"
                         f" one-cell {scores['teacher_grid_pointing_hit_rate_1cell']:.3f};"
                         f" {LAYERS[-1]} upsampled to this grid: one-cell pointing"
                         f" {scores['teacher_upsampled_pointing_hit_rate_1cell']:.3f}")
    if "bsa" in report:
        b = report["bsa"]
        lines.append(f"  BSA similarity (batches of {b['batch_size']}): row entropy {b['row_entropy']:.2f} of "
                     f"{b['max_entropy']:.2f}, largest column mass {b['max_column_mass']:.3f} "
                     f"(even: {1 / b['batch_size']:.3f}), same/different class {b['same_to_different']:.2f}")
    return "\n".join(lines)
