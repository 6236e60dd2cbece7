"""``hsbs demo``, the main job on the built-in SynthFER data (what ``make demo`` runs), and ``hsbs figures``.

``hsbs demo`` trains the two demo runs (``runs/demo_baseline`` from configs/synthfer_baseline.yaml and
``runs/demo_hsbs`` from configs/synthfer_hsbs.yaml; a run already finished with the same recipe is
reused), prints one table comparing them on the test split, writes it as ``demo_comparison.md`` and draws
every figure of the two runs (among them the side-by-side confusion matrices
``demo_hsbs_vs_demo_baseline_confusion``) into the figures folder, ``runs/demo_figures`` by default.

``hsbs figures`` draws every figure of a trained run (:mod:`hsbs_lib.viz.figures`):

    hsbs figures --run runs/demo_hsbs --compare runs/demo_baseline --out figures/
    hsbs figures --demo --out figures/   # train the SynthFER demo runs if missing, then redraw figures/

Without ``--out`` (and ``$HSBS_FIGURES``) the figures go into ``RUN/figures``, never into the checkout.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt

from hsbs_lib.config import load_config, repo_root
from hsbs_lib.constants import MINORITY_CLASSES
from hsbs_lib.data.labels import CANONICAL_7
from hsbs_lib.engine.build import resolve_device
from hsbs_lib.engine.run_folder import finished_run_of, resumable_run_of
from hsbs_lib.engine.train import fit
from hsbs_lib.outputs import OutputFolder
from hsbs_lib.viz.figures import draw_figures
from hsbs_lib.viz.gradcam import CAM_METHODS
from hsbs_lib.viz.samples import plot_synthfer_grid
from hsbs_lib.viz.style import save_figure

log = logging.getLogger(__name__)

DEMO_RUNS: dict[str, str] = {"demo_baseline": "configs/synthfer_baseline.yaml",
                             "demo_hsbs": "configs/synthfer_hsbs.yaml"}


def parse_formats(text: str) -> tuple[str, ...]:
    """``"png, pdf"`` -> ("png", "pdf"): the --formats option of the figure commands."""
    return tuple(fmt.strip() for fmt in text.split(",") if fmt.strip())


def figure_notes(paths: Sequence[Path]) -> str:
    """The numbers written beside the figures (attention scores, BSA statistics), for printing.

    When a comparison table of attention scores exists, the per-run ones it contains are left out."""
    notes = [path for path in paths if path.suffix == ".md"]
    if any("_vs_" in path.stem for path in notes):
        notes = [path for path in notes if "_vs_" in path.stem or not path.stem.endswith("_attention_scores")]
    return "\n".join(path.read_text().strip() for path in sorted(set(notes)))


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


def ensure_demo_runs(root: str | Path = "runs", overrides: Sequence[str] = ()) -> dict[str, Path]:
    """Train the SynthFER demo runs (baseline and HSBS) unless they already finished with the shipped recipe.

    ``overrides`` (``key=value`` strings) apply to both recipes, e.g. ``train.device=cuda``.

    A run finished when its eval.json is written (the last thing ``fit`` does); an interrupted run of the
    same recipe is resumed from its last.pt, and a run of another recipe is trained again from scratch.
    """
    directories = {}
    for name, recipe in DEMO_RUNS.items():
        directory = Path(root) / name
        # The shipped recipe, wherever the command is run from (repo_root: the checkout hsbs_lib came from).
        config = load_config(repo_root() / recipe, [*overrides, f"out={directory}"])
        if finished_run_of(directory, config) and (directory / "best.pt").is_file():
            log.info("reusing %s (trained with %s)", directory, recipe)
        elif resumable_run_of(directory, config):
            log.info("resuming the interrupted run %s", directory)
            fit(config, resume=directory)
        else:
            log.info("training %s from %s", name, recipe)
            fit(config)
        directories[name] = directory
    return directories


def run_demo_job(root: str | Path = "runs", figures_out: str | Path | None = None, *,
                 overrides: Sequence[str] = (), draw: bool = True, device: str = "cpu",
                 formats: Sequence[str] = ("png", "pdf"), force: bool = False) -> dict:
    """Train (or reuse) the demo runs, tabulate them and draw their figures. Returns what it wrote.

    The figures folder follows the output rule (:mod:`hsbs_lib.outputs`) as ``hsbs figures``: a file there
    that it did not write is replaced only with ``force``."""
    runs = ensure_demo_runs(root, overrides)
    reports = {}
    for name, directory in runs.items():
        eval_file = Path(directory) / "eval.json"
        if not eval_file.is_file():
            raise FileNotFoundError(f"{eval_file} missing: the run {directory} has no test evaluation")
        reports[name] = json.loads(eval_file.read_text())
    table = comparison_table(reports)
    figures_out = Path(figures_out) if figures_out is not None else Path(root) / "demo_figures"
    outputs = OutputFolder(figures_out, "figures", force=force)
    table_path = outputs.write_text("demo_comparison.md", table + "\n")
    paths = []
    if draw:
        paths = draw_figures(runs["demo_hsbs"], runs["demo_baseline"], outputs, device=device,
                             formats=formats)
    return {"runs": runs, "reports": reports, "table": table, "table_path": table_path, "figures": paths}


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", default="runs", help="folder of the demo runs (default runs/)")
    parser.add_argument("--out", default=None, help="figures folder (default RUNS/demo_figures)")
    parser.add_argument("--no-figures", dest="draw", action="store_false", help="only train and tabulate")
    parser.add_argument("--device", default="auto", help="device for drawing the figures (training: the recipe's)")
    parser.add_argument("--formats", default="png,pdf", help="comma-separated figure formats (default png,pdf)")
    parser.add_argument("--force", action="store_true",
                        help="replace files in the figures folder that hsbs demo / figures did not write")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides for both runs, e.g. train.device=cuda train.epochs=4")
    parser.epilog = ("Trains configs/synthfer_baseline.yaml and configs/synthfer_hsbs.yaml (about 2 minutes each "
                     "on two CPU cores; with the figures under 5 minutes in all) and compares them. Labels: "
                     + ", ".join(CANONICAL_7) + ".")


def run_demo(args: argparse.Namespace) -> int:
    # Malformed overrides are refused by load_config before anything is trained or written.
    result = run_demo_job(args.runs, args.out, overrides=args.overrides, draw=args.draw,
                          device=resolve_device(args.device),
                          formats=parse_formats(args.formats), force=args.force)
    print("\nSynthFER test split, scored once for the checkpoint each run's validation split selected (percent):\n")
    print(result["table"])
    print(f"\nruns: {', '.join(str(path) for path in result['runs'].values())}")
    print(f"table: {result['table_path']}")
    if result["figures"]:
        confusion = [path for path in result["figures"] if path.stem.endswith("_vs_demo_baseline_confusion")]
        print(f"figures: {len(result['figures'])} files in {result['table_path'].parent}"
              + (f" (confusion matrices: {confusion[0]})" if confusion else ""))
        print("\n" + figure_notes(result["figures"]))
    return 0


# ---------------------------------------------------------------------------------------------- hsbs figures

def add_figures_arguments(parser) -> None:
    parser.add_argument("--run", help="run directory (config.yaml, metrics.csv, best.pt)")
    parser.add_argument("--compare", help="a second run, usually the baseline, drawn side by side with --run")
    parser.add_argument("--out", default=None, help="figures folder (default: $HSBS_FIGURES, else RUN/figures)")
    parser.add_argument("--root", help="root of the run's dataset here (default: $HSBS_DATA, else the run's stored root)")
    parser.add_argument("--demo", action="store_true",
                        help="train the SynthFER demo runs if missing, then redraw every demo figure")
    parser.add_argument("--checkpoint", default="best.pt", help="checkpoint file name inside the run (default best.pt)")
    parser.add_argument("--samples", type=int, default=512, help="test images used for the figures (default 512)")
    parser.add_argument("--cam-method", default="gradcam", choices=sorted(CAM_METHODS))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the t-SNE and of the sample choice")
    parser.add_argument("--formats", default="png,pdf", help="comma-separated file formats (default png,pdf)")
    parser.add_argument("--force", action="store_true",
                        help="replace files in --out that hsbs figures did not write")


def run_figures(args) -> int:
    """Entry point of ``hsbs figures``."""
    run_dir, compare_dir = args.run, args.compare
    if args.demo:
        demo = ensure_demo_runs()
        run_dir, compare_dir = run_dir or demo["demo_hsbs"], compare_dir or demo["demo_baseline"]
    if run_dir is None:
        raise ValueError("pass --run RUN_DIR (or --demo to train and draw the SynthFER demo runs)")
    # Never into the package's own checkout: an explicit folder, $HSBS_FIGURES, else beside the run.
    # The folder is made when the first figure is written, once the runs have loaded: a mistyped --run
    # leaves no RUN/figures behind.
    out = Path(args.out or os.environ.get("HSBS_FIGURES") or Path(run_dir) / "figures")
    formats = parse_formats(args.formats)
    # A file there that hsbs figures did not write (its manifest says which) is replaced only with --force.
    outputs = OutputFolder(out, "figures", force=args.force)
    paths = draw_figures(run_dir, compare_dir, outputs, checkpoint=args.checkpoint,
                         device=resolve_device(args.device),
                         samples=args.samples, cam_method=args.cam_method, seed=args.seed, formats=formats,
                         data_overrides=[f"data.root={args.root}"] if args.root else ())
    if args.demo:  # the README's picture of the data belongs to the demo set too
        grid = plot_synthfer_grid()
        try:
            paths += save_figure(grid, "synthfer_samples", formats=formats, outputs=outputs)
        finally:
            plt.close(grid)
    figures = sorted({path.stem for path in paths})
    print(f"wrote {len(figures)} figures to {out}: {', '.join(figures)}")
    notes = figure_notes(paths)
    if notes:
        print("\n" + notes)
    return 0
