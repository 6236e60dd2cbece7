"""``hsbs demo``: the main job on the built-in SynthFER data, what ``make demo`` runs.

Trains the two demo runs (``runs/demo_baseline`` from configs/synthfer_baseline.yaml and
``runs/demo_hsbs`` from configs/synthfer_hsbs.yaml; a run already finished with the same recipe is
reused), prints one table comparing them on the test split, writes it as ``demo_comparison.md`` and draws
every figure of the two runs (among them the side-by-side confusion matrices
``demo_hsbs_vs_demo_baseline_confusion``) into the figures folder, ``runs/demo_figures`` by default.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from hsbs_lib.data.labels import CANONICAL_7
from hsbs_lib.constants import MINORITY_CLASSES


def comparison_table(reports: dict[str, dict], minority: Sequence[str] = MINORITY_CLASSES) -> str:
    """A markdown table of eval.json reports: {run name: report} -> one row per run, numbers in percent."""
    header = ["model", "accuracy", "mean class acc.", "macro-F1", *(f"{name} recall" for name in minority), "epoch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, report in reports.items():
        recall = report.get("per_class_recall", {})
        cells = [name, *(f"{100 * report[key]:.1f}" for key in ("accuracy", "mean_class_accuracy", "macro_f1"))]
        cells += ["-" if recall.get(cls) is None else f"{100 * recall[cls]:.1f}" for cls in minority]
        cells.append(str(report.get("epoch", "-")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_demo_job(root: str | Path = "runs", figures_out: str | Path | None = None, *,
                 overrides: Sequence[str] = (), draw: bool = True, device: str = "cpu",
                 formats: Sequence[str] = ("png", "pdf")) -> dict:
    """Train (or reuse) the demo runs, tabulate them and draw their figures. Returns what it wrote."""
    from hsbs_lib.viz.figures import draw_figures, ensure_demo_runs

    runs = ensure_demo_runs(root, overrides)
    reports = {}
    for name, directory in runs.items():
        eval_file = Path(directory) / "eval.json"
        if not eval_file.is_file():
            raise FileNotFoundError(f"{eval_file} missing: the run {directory} has no test evaluation")
        reports[name] = json.loads(eval_file.read_text())
    table = comparison_table(reports)
    figures_out = Path(figures_out) if figures_out is not None else Path(root) / "demo_figures"
    figures_out.mkdir(parents=True, exist_ok=True)
    table_path = figures_out / "demo_comparison.md"
    table_path.write_text(table + "\n")
    paths = []
    if draw:
        paths = draw_figures(runs["demo_hsbs"], runs["demo_baseline"], figures_out, device=device,
                             formats=formats)
    return {"runs": runs, "reports": reports, "table": table, "table_path": table_path, "figures": paths}


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", default="runs", help="folder of the demo runs (default runs/)")
    parser.add_argument("--out", default=None, help="figures folder (default RUNS/demo_figures)")
    parser.add_argument("--no-figures", dest="draw", action="store_false", help="only train and tabulate")
    parser.add_argument("--device", default="cpu", help="device for drawing the figures (training: the recipe's)")
    parser.add_argument("--formats", default="png,pdf", help="comma-separated figure formats (default png,pdf)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides for both runs, e.g. train.device=cuda train.epochs=4")
    parser.epilog = ("Trains configs/synthfer_baseline.yaml and configs/synthfer_hsbs.yaml (about 4 minutes each "
                     "on two CPU cores), then compares them. Labels: " + ", ".join(CANONICAL_7) + ".")


def run_demo(args: argparse.Namespace) -> int:
    from hsbs_lib.viz.figures import parse_formats

    # Malformed overrides are refused by load_config before anything is trained or written.
    result = run_demo_job(args.runs, args.out, overrides=args.overrides, draw=args.draw, device=args.device,
                          formats=parse_formats(args.formats))
    print("\nSynthFER test split, best epoch of each run (percent):\n")
    print(result["table"])
    print(f"\nruns: {', '.join(str(path) for path in result['runs'].values())}")
    print(f"table: {result['table_path']}")
    if result["figures"]:
        from hsbs_lib.viz.figures import figure_notes

        confusion = [path for path in result["figures"] if path.stem.endswith("_vs_demo_baseline_confusion")]
        print(f"figures: {len(result['figures'])} files in {result['table_path'].parent}"
              + (f" (confusion matrices: {confusion[0]})" if confusion else ""))
        print("\n" + figure_notes(result["figures"]))
    return 0
