"""Where a network's attention looks on real faces, scored against eye and mouth regions found offline
(``hsbs attention``).

SynthFER renders its expression masks; real faces have none. Here OpenCV's Haar cascades find the eyes and
the mouth on each face (:mod:`hsbs_lib.data.face_regions`), and on the faces where both were found every
stage's activation attention (mean over channels of F^2, ``output.maps["features/layerN"]``, as
:func:`~hsbs_lib.engine.diagnostics.run_diagnostics` takes it) is scored against the union of the regions with
:func:`~hsbs_lib.engine.saliency.score_saliency`: energy share, pointing game, one-cell pointing game on the
map's own grid, each with its chance level.

Beside each stage, two reference maps that know nothing of the face are scored the same way: drawn at the
image's resolution, pooled onto the stage's grid with HST's registered pooling (the windows a ResNet cell
stands for, :func:`~hsbs_lib.losses.hst.pool_to_teacher_grid`) and given to ``score_saliency`` as that stage's
maps are:

* **centre**: a Gaussian centred on the image's centre pixel (H // 2, W // 2), its standard deviation a
  quarter of the side (:data:`CENTRE_SIGMA`; 12 px on a 48 px face), the saliency literature's centre bias;
* **dataset mean**: the mean of the scored faces' region masks, one map for every face: "where eyes and
  mouths usually are". A network that does not beat it has not shown that it finds the regions face by face.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hsbs_lib.config import validate_config
from hsbs_lib.constants import STAGE_NAMES
from hsbs_lib.data.face_regions import REGION_NAMES, FaceRegions, find_face_regions
from hsbs_lib.data.fer2013_files import load_fer2013_npz
from hsbs_lib.data.pipeline.transforms import model_inputs
from hsbs_lib.engine.build import build_dataset, select_device
from hsbs_lib.engine.checkpoint import (DEFAULT_SHIPPED, SHIPPED_MODELS, describe_checkpoint, is_shipped_name,
                                        load_checkpoint, load_model_from_checkpoint, resolve_checkpoint)
from hsbs_lib.engine.diagnostics import stage_attention
from hsbs_lib.engine.evaluate import write_json
from hsbs_lib.engine.runs import checkpoint_data_config
from hsbs_lib.engine.saliency import score_saliency
from hsbs_lib.losses.hst import pool_to_teacher_grid
from hsbs_lib.outputs import output_for

log = logging.getLogger(__name__)

#: The centre map's standard deviation, as a share of the image's longer side.
CENTRE_SIGMA = 0.25
#: The reference maps scored beside every stage, in the order the table shows them.
REFERENCE_MAPS = ("centre", "dataset_mean")
#: The table's scores, each with its chance level (keys of :func:`~hsbs_lib.engine.saliency.score_saliency`).
TABLE_SCORES = (("energy_share", "chance_energy_share", "energy share"),
                ("pointing_hit_rate", "chance_pointing", "pointing game"),
                ("pointing_hit_rate_1cell", "chance_pointing_1cell", "one-cell pointing game"))
#: FER2013's own names of its splits (the adapter's split names, lower case, and the ``.npz`` names' prefixes).
FER2013_SPLITS = {"train": "Training", "training": "Training", "val": "PublicTest", "publictest": "PublicTest",
                  "test": "PrivateTest", "privatetest": "PrivateTest"}
VALIDATION_SPLITS = {"val", "valid", "validation", "publictest"}


# ------------------------------------------------------------------------------------ reference maps

def centre_map(shape: tuple[int, int], *, sigma: float = CENTRE_SIGMA) -> Tensor:
    """A Gaussian peaked on pixel (H // 2, W // 2), standard deviation ``sigma`` times the longer side: (H, W) float64."""
    height, width = shape
    rows = torch.arange(height, dtype=torch.float64) - height // 2
    columns = torch.arange(width, dtype=torch.float64) - width // 2
    spread = sigma * max(height, width)
    return torch.exp(-(rows[:, None] ** 2 + columns[None, :] ** 2) / (2 * spread ** 2))


def dataset_mean_map(masks) -> Tensor:
    """The mean over faces of their region masks' union: (N, H, W) or (N, R, H, W) bool -> (H, W) float64."""
    masks = torch.as_tensor(np.asarray(masks))
    if masks.dim() == 4:
        masks = masks.any(dim=1)
    if masks.dim() != 3 or masks.shape[0] == 0:
        raise ValueError(f"the dataset-mean map needs masks (N, H, W) of at least one face, got {tuple(masks.shape)}")
    return masks.double().mean(dim=0)


def on_grid(reference: Tensor, grid: tuple[int, int]) -> Tensor:
    """A reference map (H, W) pooled onto a stage's grid (h, w) as HST pools a shallow map: (h, w) float64."""
    return pool_to_teacher_grid(reference[None].float(), tuple(grid))[0].double()


def score_against_regions(attention: dict[str, Tensor], masks, *, region_names: Sequence[str] = REGION_NAMES,
                          sigma: float = CENTRE_SIGMA) -> dict[str, dict]:
    """Every stage's maps and the two reference maps on its grid, scored against the faces' regions.

    attention: {stage: (n, h, w) maps}; masks: bool (n, R, H, W), the regions of the same n faces, at the
    model's input resolution. Returns {stage: {"grid": [h, w], "network": scores, "centre": scores,
    "dataset_mean": scores}}, each ``scores`` from :func:`~hsbs_lib.engine.saliency.score_saliency` (the
    union scored, and each region's energy share on its own).
    """
    masks = np.asarray(masks, dtype=bool)
    shape = tuple(masks.shape[-2:])
    references = {"centre": centre_map(shape, sigma=sigma), "dataset_mean": dataset_mean_map(masks)}
    results: dict[str, dict] = {}
    for stage, maps in attention.items():
        grid = tuple(maps.shape[-2:])
        entry: dict = {"grid": list(grid), "network": score_saliency(maps, masks, region_names=region_names)}
        for name, reference in references.items():
            same_for_all = on_grid(reference, grid).expand(len(masks), *grid)
            entry[name] = score_saliency(same_for_all, masks, region_names=region_names)
        results[stage] = entry
    return results


# --------------------------------------------------------------------------------------- the network

@torch.no_grad()
def attention_maps(model: nn.Module, images: np.ndarray, *, normalization: dict, input_size: int,
                   device: torch.device | str = "cpu", batch_size: int = 256) -> dict[str, Tensor]:
    """Each stage's activation attention on uint8 faces (N, H, W, 3): {stage: float32 (N, h, w)} on the CPU."""
    maps: dict[str, list[Tensor]] = {stage: [] for stage in STAGE_NAMES}
    size = None if images.shape[1:3] == (input_size, input_size) else input_size
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        inputs = model_inputs(list(batch) if size else batch, normalization, size=size).to(device)
        for stage, values in stage_attention(model(inputs)).items():
            maps[stage].append(values.float().cpu())
    return {stage: torch.cat(values) for stage, values in maps.items() if values}


def masks_at(masks: np.ndarray, size: int) -> np.ndarray:
    """Region masks (N, R, H, W) at the model's input size (nearest neighbour, as the image is resized)."""
    if masks.shape[-2:] == (size, size):
        return masks
    resized = F.interpolate(torch.from_numpy(masks).float(), size=(size, size), mode="nearest")
    return resized.bool().numpy()


def _rgb(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"faces must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


def attention_on_real_faces(checkpoint: str | Path, images: np.ndarray, *, labels: Sequence[str] | None = None,
                            regions: FaceRegions | None = None, device: str = "cpu", batch_size: int = 256,
                            detect_size: int = 192, sigma: float = CENTRE_SIGMA) -> dict:
    """Find the regions of faces uint8 (N, H, W) or (N, H, W, 3) (unless ``regions`` are given) and score the
    checkpoint's attention on the found faces (:func:`score_against_regions`).

    ``checkpoint``: a file, a run folder (its best.pt) or a shipped model's name; ``labels``: the faces' class
    names, for the detection rate per class. Returns the report: ``faces_tried``, ``faces_found``,
    ``detection_rate``, ``found_per_class`` (with labels), ``n`` (the faces scored), ``stages`` and timings.
    """
    path = resolve_checkpoint(checkpoint, default="best.pt")
    images = _rgb(images)
    if len(images) == 0:
        raise ValueError("no faces to score")
    started = time.perf_counter()
    regions = regions if regions is not None else find_face_regions(images, detect_size=detect_size)
    detected = time.perf_counter()
    found = np.asarray(regions.found, dtype=bool)
    report: dict = {"checkpoint": str(path), "faces_tried": int(len(found)), "faces_found": int(found.sum()),
                    "detection_rate": float(found.mean()), "regions": list(regions.names),
                    "detect_size": detect_size, "centre_sigma": sigma}
    if labels is not None:
        labels = np.asarray(labels)
        report["found_per_class"] = {str(name): [int(found[labels == name].sum()), int((labels == name).sum())]
                                     for name in dict.fromkeys(labels.tolist())}
    if not found.any():
        raise ValueError(f"the cascades found the eyes and mouth on none of the {len(found)} faces: nothing to score")
    model, stored = load_model_from_checkpoint(path, device=device)
    input_size = int(stored["input_size"])
    attention = attention_maps(model, images[found], normalization=stored["normalization"], input_size=input_size,
                               device=device, batch_size=batch_size)
    if not attention:
        raise ValueError(f"checkpoint {path} ({describe_checkpoint(stored)}) gives no stage maps (features/layerN)")
    report.update(model=describe_checkpoint(stored), input_size=input_size, n=int(found.sum()),
                  stages=score_against_regions(attention, masks_at(regions.kept(), input_size),
                                               region_names=regions.names, sigma=sigma))
    report["seconds"] = {"detection": round(detected - started, 1),
                         "scoring": round(time.perf_counter() - detected, 1)}
    return report


# -------------------------------------------------------------------------------------- the faces

def split_description(dataset: str, split: str) -> str:
    """The split in words, a validation split labelled as such: 'PublicTest (fer2013's validation split ...)'."""
    name = FER2013_SPLITS.get(split.lower(), split) if dataset in ("fer2013", "ferplus") else split
    if split.lower() in VALIDATION_SPLITS:
        return (f"{name}, the validation split: runs select their checkpoint on it, so these are validation "
                f"numbers, not test scores")
    return name


def npz_split(path: str | Path) -> str | None:
    """The FER2013 split a ``.npz`` holds, from its file names (``PublicTest_<n>.png``): val, train or test."""
    with np.load(path) as data:
        names = [str(name) for name in data["names"][:1]] if "names" in data.files else []
    usage = names[0].split("_")[0] if names else ""
    return {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}.get(usage)


def real_faces(checkpoint: dict, *, npz: str | Path | None = None, split: str | None = None, n: int,
               overrides: Sequence[str] = ()) -> tuple[np.ndarray, list[str], str, str]:
    """The first ``n`` faces of a split: from a FER2013 ``.npz`` (the split is the file's), else through the
    dataset adapter of the checkpoint's data config with the user's ``data.`` overrides (``data.root=DIR``).
    Returns uint8 faces (n, H, W, 3), their class names, the dataset's name and the split."""
    if npz is not None:
        path = Path(npz).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--npz {path}: no such file (a .npz with images, labels and classes)")
        held = npz_split(path)
        if split is not None and held is not None and FER2013_SPLITS.get(split.lower()) != FER2013_SPLITS[held]:
            raise ValueError(f"--split {split}: {path.name} holds FER2013's {FER2013_SPLITS[held]} split only")
        images, names = load_fer2013_npz(path)
        return _rgb(images[:n]), list(names[:n]), "fer2013", held or split or "given"
    config = checkpoint_data_config(checkpoint["config"],
                                    [item if item.startswith("data.") else f"data.{item}" for item in overrides],
                                    source="the checkpoint")
    validate_config(config)
    split = split or "val"
    dataset = build_dataset(config, split)
    count = min(n, len(dataset))
    images = np.stack([dataset.load_image(index) for index in range(count)])
    classes = list(dataset.classes)
    labels = [classes[int(target)] for target in np.asarray(dataset.targets)[:count]]
    return _rgb(images), labels, config.data.name, split


# -------------------------------------------------------------------------------------- the table

def format_attention_report(report: dict) -> str:
    """The report as a table: each stage, then the centre and dataset-mean maps on its grid; the three scores
    with their chance levels (the same for the three maps of a stage)."""
    lines = [f"{report['checkpoint']} ({report['model']})"]
    if "split_description" in report:       # set by the command, which knows where the faces came from
        lines.append(f"faces: {report['dataset']} {report['split_description']}; the first {report['faces_tried']:,}")
    lines += [f"regions: {' and '.join(report['regions'])} by OpenCV's Haar cascades, found on "
              f"{report['faces_found']:,} of {report['faces_tried']:,} faces ({100 * report['detection_rate']:.1f} %); "
              f"{report['n']:,} faces scored"]
    header = f"{'map':<28}{'grid':>7}" + "".join(f"  {title:>22}" for _, _, title in TABLE_SCORES)
    subheader = " " * 35 + "".join(f"  {'score':>13} {'chance':>8}" for _ in TABLE_SCORES)
    lines += ["", header, subheader, "-" * len(header)]
    labels = {"centre": "  centre (Gaussian)", "dataset_mean": "  dataset-mean mask"}
    for stage, entry in report["stages"].items():
        grid = "x".join(str(value) for value in entry["grid"])
        row = f"{stage:<28}{grid:>7}"
        for score, chance, _ in TABLE_SCORES:
            row += f"  {entry['network'][score]:>13.3f} {entry['network'][chance]:>8.3f}"
        lines.append(row)
        for name in REFERENCE_MAPS:
            lines.append(f"{labels[name]:<28}{'':>7}" + "".join(f"  {entry[name][score]:>13.3f} {'':>8}"
                                                             for score, _, _ in TABLE_SCORES))
    sigma = report["centre_sigma"]
    lines += ["", f"centre: a Gaussian on the image's centre, standard deviation {sigma:g} of the side; dataset mean: the",
              f"mean of the {report['n']:,} scored faces' region masks; both pooled onto each stage's grid and scored as its "
              f"maps are.", "chance: a uniform map (energy share), a peak anywhere on the grid (pointing games)."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- the command

def add_attention_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=DEFAULT_SHIPPED,
                        help=f"RUN/best.pt, a run folder (its best.pt) or a shipped model's name (default "
                             f"{DEFAULT_SHIPPED})")
    parser.add_argument("--npz", help="faces from a FER2013 .npz (images, labels, classes, names) instead of "
                                      "data.root's copy; its split is the file's")
    parser.add_argument("--root", help="the same as data.root=DIR: the FER2013 copy (fer2013.csv or its image folders; "
                                       "default: the checkpoint's, else $HSBS_DATA)")
    parser.add_argument("--split", help="the split of data.root's copy (default: the validation split, FER2013's "
                                        "PublicTest)")
    parser.add_argument("--n", type=int, default=1000, help="score the first N faces of the split (default 1000)")
    parser.add_argument("--json", help="also write the report to this JSON file (nothing is written without it)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --json file that hsbs attention did not write")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=int, default=256, help="faces per forward pass (default 256)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="data settings, e.g. data.root=/data/fer2013 (the leading 'data.' may be left out)")


def run_attention(args: argparse.Namespace) -> int:
    if args.n is None or args.n < 1:
        raise ValueError(f"--n expects at least 1 face, got {args.n}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size expects at least 1 face, got {args.batch_size}")
    path = resolve_checkpoint(args.checkpoint, default="best.pt")
    outputs = None
    if args.json:
        outputs, name = output_for(args.json, "attention", force=args.force, reads=[path])
        outputs.check([name])
    if is_shipped_name(args.checkpoint):
        print(f"using the shipped model '{args.checkpoint}' ({SHIPPED_MODELS[args.checkpoint][1]})", file=sys.stderr)
    device = select_device(args.device)
    overrides = [*args.overrides, *([f"data.root={args.root}"] if args.root else [])]
    images, labels, dataset, split = real_faces(load_checkpoint(path), npz=args.npz, split=args.split, n=args.n,
                                                overrides=overrides)
    if len(images) < args.n:
        print(f"the split holds {len(images):,} faces: all of them are scored", file=sys.stderr)
    report = attention_on_real_faces(path, images, labels=labels, device=device, batch_size=args.batch_size)
    report.update(dataset=dataset, split=split, split_description=split_description(dataset, split))
    print(format_attention_report(report))
    if outputs is not None:
        write_json(report, args.json, outputs=outputs)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
