"""Expected results: small files from full-budget runs that the notebooks show beside the student's run.

A SMOKE run (a few hundred faces, one epoch) only shows that the code runs; what a good result looks like
comes from the full-budget runs of ``make demo``, ``hsbs compare --config configs/ablation_hsbs.yaml
--seeds 0 1 2 3 4`` and ``hsbs compare --config configs/compare_synthfer.yaml --seeds 0 1 2``. ``make reference`` (``python -m hsbs_lib.engine.expected --runs RUNS --out
notebooks/reference``) copies and derives, from those finished runs and the committed ``figures/``:

* ``demo_baseline/`` and ``demo_hsbs/``: each run's ``eval.json`` (test metrics, confusion matrix, the
  validation scores of the selected checkpoint) and ``metrics.csv`` (one row per epoch);
* ``synthfer_ablation.json``: the ablation rows over their seeds (``compare.summarise``: mean, std and
  the difference to the baseline paired by seed, for the metrics, the attention scores and BSA's
  similarity statistics), plus HSBS against +HST (what BSA adds); ``synthfer_ablation.md``, its tables;
* ``synthfer_methods.json`` and ``.md``: the same for every method at the demo recipe
  (``hsbs compare --config configs/compare_synthfer.yaml --seeds 0 1 2``, sharing runs/synthfer);
* ``figures/``: the few committed figures the notebooks discuss, scaled down to at most 1000 px wide;
* ``manifest.json``: every file above with its size and where it came from, and for each summary the recipe
  of its runs (``train.epochs``, ``model.stem``, input size).

``--parts`` rewrites some parts only (``demo``, ``ablation``, ``methods``) and keeps the others as they are,
with their manifest entries, so a table whose runs are not on this machine still says which recipe it holds.
``--parts control`` adds ``synthfer_control.json`` and ``.md``, the perfect-teacher control (``hsbs compare
--config configs/control_hst.yaml --seeds 0 1 2 3 4 5 6 7``, runs/control_hst), with the ground-truth mask
against layer4's map as HST's teacher (``mask_vs_layer4``); it is written only when asked for.

No checkpoint is copied: the folder stays well under a few MB. Nothing here trains or evaluates a model.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Mapping, Sequence

import yaml
from PIL import Image

from hsbs_lib.config import load_config, repo_root
from hsbs_lib.engine.compare import _cost as model_cost
from hsbs_lib.engine.compare import format_report, summarise
from hsbs_lib.outputs import atomic_write, write_bytes_atomic, write_text_atomic

DEMO_RUNS = ("demo_baseline", "demo_hsbs")
RUN_FILES = ("eval.json", "metrics.csv")
ABLATION_ROWS = ("baseline", "hsbs", "+HST", "+BSA")
ABLATION_SEEDS = (0, 1, 2, 3, 4)
METHOD_ROWS = ("baseline", "hsbs", "clcl", "phanet", "mfer")
METHOD_SEEDS = (0, 1, 2)
# The perfect-teacher control (configs/control_hst.yaml, runs/control_hst): HST on layer3 only, four teachers.
CONTROL_ROWS = ("baseline", "HST layer3 (layer4 teacher)", "HST layer3 (GT mask)", "HST layer3 (blend)",
                "HST layer3 (AU mask)")
CONTROL_SEEDS = tuple(range(8))
DIAGNOSTICS_FILE = "diagnostics-test-512.json"
# The committed figures (figures/NAME.png) the notebooks discuss.
FIGURES = ("synthfer_samples", "demo_hsbs_vs_demo_baseline_attention", "demo_hsbs_vs_demo_baseline_per_class",
           "demo_hsbs_vs_demo_baseline_curves", "demo_hsbs_vs_demo_baseline_confusion",
           "demo_hsbs_vs_demo_baseline_tsne", "demo_hsbs_bsa_similarity", "demo_hsbs_class_similarity",
           "demo_baseline_gradcam", "demo_hsbs_vs_demo_baseline_intensity")
MAX_FIGURE_WIDTH = 1000
MAX_FILE_BYTES = 400_000

#: The parts of the reference folder, each rewritten from its own runs: the demo runs with the figures, and
#: the summaries. An optional part is written only when asked for (``--parts control``); until then the
#: folder may lack it.
PARTS = ("demo", "ablation", "methods", "control")
OPTIONAL_PARTS = ("control",)
DEFAULT_PARTS = tuple(part for part in PARTS if part not in OPTIONAL_PARTS)

METRIC_LABELS = {"accuracy": "accuracy", "mean_class_accuracy": "mean class accuracy", "macro_f1": "macro-F1"}


class ReferenceError(Exception):
    """A finished run or figure the reference needs is missing; the message names it."""


def reference_dir() -> Path:
    """notebooks/reference at the repository root."""
    return repo_root() / "notebooks" / "reference"


def reference_path(name: str) -> Path:
    """The path of one reference file (``demo_hsbs/eval.json``, ``figures/X.png``); it must exist."""
    path = reference_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such reference file (regenerate with `make reference`)")
    return path


def load_reference(name: str) -> dict:
    """One reference JSON file (``demo_hsbs/eval.json``, ``synthfer_ablation.json``) as a dict."""
    return json.loads(reference_path(name).read_text())


def compare_with_reference(yours: Mapping, reference: Mapping, *, classes: Sequence[str] = ()) -> str:
    """A Markdown table "your run vs reference": the three metrics in percent, then the recall of ``classes``.

    ``yours`` and ``reference`` are eval.json-like dicts (``accuracy``, ..., ``per_class_recall``).
    """
    def percent(report: Mapping, key: str, by_class: bool = False) -> str:
        value = (report.get("per_class_recall") or {}).get(key) if by_class else report.get(key)
        return "n/a" if value is None or value != value else f"{100 * float(value):.1f}"

    lines = ["| metric (test split, %) | your run | reference |", "|---|---|---|"]
    lines += [f"| {label} | {percent(yours, key)} | {percent(reference, key)} |"
              for key, label in METRIC_LABELS.items()]
    lines += [f"| {name} recall | {percent(yours, name, True)} | {percent(reference, name, True)} |"
              for name in classes]
    return "\n".join(lines)


def ablation_table(caption: str | None = None, file: str = "synthfer_ablation.md") -> str:
    """One Markdown table of ``file`` (synthfer_ablation.md, or synthfer_methods.md for the methods): the
    first (the metrics per row), or the one whose caption starts with ``caption`` (``"Attention of each
    stage"``, ``"BSA similarity"``), caption included."""
    blocks = reference_path(file).read_text().strip().split("\n\n")
    if caption is None:
        return blocks[0]
    for index, block in enumerate(blocks[:-1]):
        if block.startswith(caption):
            return f"{block}\n\n{blocks[index + 1]}"
    raise KeyError(f"{file}: no table captioned '{caption}...'")


def ablation_row(summaries: Sequence[Mapping], row: str) -> dict:
    """The summary of one ablation row (``synthfer_ablation.json``'s ``rows``)."""
    for summary in summaries:
        if summary["row"] == row:
            return dict(summary)
    raise KeyError(f"synthfer_ablation.json: no row '{row}'; rows: {[s['row'] for s in summaries]}")


def attention_vs_reference(yours: Mapping[str, Mapping[str, Mapping]], summaries: Sequence[Mapping], *,
                           score: str = "energy_share") -> str:
    """A Markdown table: per layer, each row's ``score`` in your run beside the reference's mean ± std.

    ``yours[row][layer]`` is ``score_saliency``'s dict for that row's maps of that layer; ``summaries`` are
    ``synthfer_ablation.json``'s ``rows``; rows the reference does not hold show "n/a".
    """
    rows = list(yours)
    layers = list(next(iter(yours.values()))) if rows else []
    header = "| layer | " + " | ".join(f"{row}: yours | {row}: reference" for row in rows) + " |"
    lines = [header, "|---|" + "---|---|" * len(rows)]
    by_row = {summary["row"]: summary for summary in summaries}
    for layer in layers:
        cells = []
        for row in rows:
            reference = by_row.get(row, {})
            mean, std = reference.get(f"{layer}_{score}_mean"), reference.get(f"{layer}_{score}_std")
            cells += [f"{yours[row][layer][score]:.3f}",
                      "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}"]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- writing

def _run_results(run: Path, command: str) -> dict:
    """eval.json of a finished run, with its cached attention/BSA diagnostics when present; ``command``
    trains it."""
    eval_file = run / "eval.json"
    if not eval_file.is_file():
        raise ReferenceError(f"{eval_file}: missing; the reference needs the finished run (train it with "
                             f"`{command}`)")
    result = json.loads(eval_file.read_text())
    diagnostics = run / DIAGNOSTICS_FILE
    if diagnostics.is_file():
        result["diagnostics"] = json.loads(diagnostics.read_text())
    return result


def _row_results(folder: Path, rows: Sequence[str], seeds: Sequence[int], plan: str) -> dict[str, dict[int, dict]]:
    command = f"hsbs compare --config configs/{plan} --seeds {' '.join(map(str, seeds))}"
    return {row: {seed: _run_results(folder / row / f"seed{seed}", command) for seed in seeds} for row in rows}


def _summaries_with_cost(folder: Path, results: dict[str, dict[int, dict]], seeds: Sequence[int]) -> list[dict]:
    """``summarise`` against the baseline, with each row's size columns from its own recipe."""
    summaries = summarise(results, reference="baseline")
    for summary in summaries:
        config = load_config(folder / summary["row"] / f"seed{seeds[0]}" / "config.yaml")
        summary.update(model_cost(config, measure_speed=False))
    return summaries


def run_recipe(config_file: Path) -> str:
    """The budget and network a run was trained with, as overrides read (``train.epochs=16, model.stem=pooled,
    data.input_size=65``), from its ``config.yaml``; "unknown" when the file holds no such keys."""
    try:
        values = yaml.safe_load(config_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "unknown"
    keys = (("train", "epochs"), ("model", "stem"), ("data", "input_size"))
    found = [f"{section}.{key}={values[section][key]}" for section, key in keys
             if isinstance(values.get(section), dict) and key in values[section]]
    return ", ".join(found) or "unknown"


def ablation_summaries(ablation: Path, rows: Sequence[str] = ABLATION_ROWS, seeds: Sequence[int] = ABLATION_SEEDS
                       ) -> dict:
    """Summaries of ``ablation/ROW/seedS`` against the baseline, and of hsbs against +HST (BSA's share)."""
    results = _row_results(ablation, rows, seeds, "ablation_hsbs.yaml")
    summaries = _summaries_with_cost(ablation, results, seeds)
    bsa_share = summarise({"+HST": results["+HST"], "hsbs": results["hsbs"]}, reference="+HST")
    return {"rows": summaries, "hsbs_vs_hst": ablation_row(bsa_share, "hsbs"), "seeds": list(seeds),
            "reference_row": "baseline", "recipe": run_recipe(ablation / rows[0] / f"seed{seeds[0]}" / "config.yaml")}


def method_summaries(folder: Path, rows: Sequence[str] = METHOD_ROWS, seeds: Sequence[int] = METHOD_SEEDS) -> dict:
    """Summaries of every method's ``folder/ROW/seedS`` (compare_synthfer.yaml) against the baseline."""
    results = _row_results(folder, rows, seeds, "compare_synthfer.yaml")
    return {"rows": _summaries_with_cost(folder, results, seeds), "seeds": list(seeds), "reference_row": "baseline",
            "recipe": run_recipe(folder / rows[0] / f"seed{seeds[0]}" / "config.yaml")}


def control_summaries(folder: Path, rows: Sequence[str] = CONTROL_ROWS, seeds: Sequence[int] = CONTROL_SEEDS
                      ) -> dict:
    """Summaries of the control's ``folder/ROW/seedS`` (control_hst.yaml) against the baseline, and of the
    ground-truth mask against layer4's map as HST's teacher (``mask_vs_layer4``: what a perfect teacher adds)."""
    results = _row_results(folder, rows, seeds, "control_hst.yaml")
    layer4, mask = rows[1], rows[2]
    teacher_share = summarise({layer4: results[layer4], mask: results[mask]}, reference=layer4)
    return {"rows": _summaries_with_cost(folder, results, seeds), "mask_vs_layer4": ablation_row(teacher_share, mask),
            "seeds": list(seeds), "reference_row": "baseline",
            "recipe": run_recipe(folder / rows[0] / f"seed{seeds[0]}" / "config.yaml")}


def write_summary_files(summaries: dict, out: Path, stem: str, source: str) -> dict[str, dict]:
    """``out/STEM.json`` (the summaries) and ``out/STEM.md`` (their tables); returns their manifest entries."""
    write_text_atomic(out / f"{stem}.json", json.dumps(summaries, indent=1) + "\n")
    write_text_atomic(out / f"{stem}.md", format_report(summaries["rows"], summaries["reference_row"]) + "\n")
    return {f"{stem}.{suffix}": {"source": source, "recipe": summaries.get("recipe", "unknown"),
                                 "bytes": (out / f"{stem}.{suffix}").stat().st_size}
            for suffix in ("json", "md")}


def _runs_pattern(rows: Sequence[str], seeds: Sequence[int], folder: str = "synthfer") -> str:
    return f"runs/{folder}/{{{','.join(rows)}}}/seed{{{','.join(map(str, seeds))}}}"


def _scaled_figure(source: Path, target: Path) -> None:
    """Copy a PNG, scaled down to MAX_FIGURE_WIDTH px wide (notebooks show it at about that width)."""
    with Image.open(source) as image:
        if image.width > MAX_FIGURE_WIDTH:
            height = round(image.height * MAX_FIGURE_WIDTH / image.width)
            image = image.resize((MAX_FIGURE_WIDTH, height), Image.LANCZOS)
        # A 256-colour palette keeps a plot readable at a third of the bytes of full colour.
        palette = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT,
                                                dither=Image.Dither.FLOYDSTEINBERG)
        atomic_write(target, lambda path: palette.save(path, format="PNG", optimize=True))


def write_reference(runs: str | Path, figures: str | Path, out: str | Path, parts: Sequence[str] = DEFAULT_PARTS
                    ) -> dict:
    """Write the reference folder ``out`` from finished ``runs`` and committed ``figures``; return the manifest.

    ``parts`` (of :data:`PARTS`) are rewritten; the others are kept as ``out`` holds them, with their manifest
    entries (a kept part must be there). Every input is checked before anything is written, so a missing run
    leaves ``out`` as it was; a file in ``out`` that an earlier run of this function did not write is never
    overwritten.
    """
    runs, figures, out = Path(runs), Path(figures), Path(out)
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        raise ReferenceError(f"--parts expects some of {', '.join(PARTS)}, got {', '.join(parts) or 'none'}")
    sources = {}
    if "demo" in parts:
        sources = {f"{name}/{file}": runs / name / file for name in DEMO_RUNS for file in RUN_FILES}
        sources.update({f"figures/{name}.png": figures / f"{name}.png" for name in FIGURES})
    missing = [str(path) for path in sources.values() if not path.is_file()]
    if missing:
        raise ReferenceError(f"missing inputs (train with `make demo`, draw with `make figures`): "
                             f"{', '.join(missing)}")
    summaries = {}
    if "ablation" in parts:
        summaries["synthfer_ablation"] = (ablation_summaries(runs / "synthfer"),
                                          _runs_pattern(ABLATION_ROWS, ABLATION_SEEDS))
    if "methods" in parts:
        summaries["synthfer_methods"] = method_summaries(runs / "synthfer"), _runs_pattern(METHOD_ROWS, METHOD_SEEDS)
    if "control" in parts:
        summaries["synthfer_control"] = (control_summaries(runs / "control_hst"),
                                         _runs_pattern(CONTROL_ROWS, CONTROL_SEEDS, "control_hst"))
    # Only files an earlier run of this command wrote (its manifest.json lists them, with their size) may be
    # replaced; every name is checked before anything is written.
    previous_manifest = out / "manifest.json"
    try:
        previous = json.loads(previous_manifest.read_text()) if previous_manifest.is_file() else {}
    except (OSError, ValueError):
        previous = {}
    previous = previous if isinstance(previous, dict) else {}

    def written_before(name: str) -> bool:
        return (isinstance(previous.get(name), dict) and (out / name).is_file()
                and previous[name].get("bytes") == (out / name).stat().st_size)

    targets = [*sources, *(f"{stem}.{suffix}" for stem in summaries for suffix in ("json", "md"))]
    foreign = [name for name in targets if (out / name).exists() and not written_before(name)]
    if foreign:
        raise ReferenceError(f"{out}: holds {', '.join(foreign)}, not written by this command (no entry in "
                             f"{previous_manifest.name}, or another size than it records); choose another --out "
                             "or move them away")
    kept = {name: entry for name, entry in previous.items() if _part_of(name) not in parts}
    absent = sorted({_part_of(name) for name in kept if not written_before(name)}
                    | {part for part in DEFAULT_PARTS
                       if part not in parts and not any(_part_of(n) == part for n in kept)})
    if absent:
        raise ReferenceError(f"{out}: cannot keep {', '.join(absent)}: it is not there as this command wrote it; "
                             f"rewrite it too (--parts {' '.join(DEFAULT_PARTS)})")

    manifest = dict(kept)
    for name, source in sources.items():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.startswith("figures/"):
            _scaled_figure(source, target)
        else:
            write_bytes_atomic(target, source.read_bytes())
        # Recorded relative to the runs / figures folders: no machine's absolute paths in the repository.
        base, label = (figures, "figures") if name.startswith("figures/") else (runs, "runs")
        manifest[name] = {"source": f"{label}/{source.relative_to(base).as_posix()}"}
        if name.endswith("eval.json"):
            manifest[name]["recipe"] = run_recipe(source.parent / "config.yaml")
        manifest[name]["bytes"] = (out / name).stat().st_size
    for stem, (summary, pattern) in summaries.items():
        manifest.update(write_summary_files(summary, out, stem, pattern))
    manifest = {name: manifest[name] for name in sorted(manifest, key=_manifest_order)}
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def _part_of(name: str) -> str:
    """The part (:data:`PARTS`) a reference file belongs to."""
    if name.startswith("synthfer_ablation."):
        return "ablation"
    if name.startswith("synthfer_methods."):
        return "methods"
    if name.startswith("synthfer_control."):
        return "control"
    return "demo"


def _manifest_order(name: str) -> tuple[int, str]:
    return PARTS.index(_part_of(name)), name


def read_metrics_csv(path: str | Path) -> list[dict]:
    """metrics.csv rows as dicts of floats (for a quick look at a reference run's last epoch)."""
    with Path(path).open(newline="") as handle:
        return [{key: float(value) for key, value in row.items() if value not in ("", None)}
                for row in csv.DictReader(handle)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hsbs_lib.engine.expected", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="runs", help="the folder holding demo_baseline, demo_hsbs and synthfer/")
    parser.add_argument("--figures", default="figures", help="the committed figures (make figures)")
    parser.add_argument("--out", default=str(reference_dir()), help="the reference folder to (re)write")
    parser.add_argument("--parts", nargs="+", default=list(DEFAULT_PARTS), metavar="PART",
                        help=f"rewrite only these parts ({', '.join(PARTS)}; default {' '.join(DEFAULT_PARTS)}), "
                             "keeping the others")
    args = parser.parse_args(argv)
    try:
        manifest = write_reference(args.runs, args.figures, args.out, args.parts)
    except ReferenceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    total = sum(entry["bytes"] for entry in manifest.values())
    kept = sorted({_part_of(name) for name in manifest} - set(args.parts), key=PARTS.index)
    print(f"wrote {args.out}: {', '.join(args.parts)}" + (f"; kept {', '.join(kept)}" if kept else "")
          + f" ({len(manifest)} files, {total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
