"""``hsbs grade``: its options, and a handler that imports the grader (which needs the ``lab`` extra's
nbformat and nbclient) only when the command runs, so the base install still lists and parses it."""
from __future__ import annotations

import argparse
import importlib
import os
import re

from hsbs_lib.extras import require
from hsbs_lib.outputs import OutputFolder


def add_grade_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebooks", nargs="+", help="submitted exercise notebooks (.ipynb)")
    parser.add_argument("--out", required=True, help="folder for scores.csv, scores.json and executed/")
    parser.add_argument("--smoke", action="store_true", help="run the notebooks with SMOKE=1 (tiny sizes)")
    parser.add_argument("--exercises-only", action="store_true",
                        help="execute only the setup cells and the exercise cells (fast; enough for every check)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds one cell may run (default 1200)")
    parser.add_argument("--force", action="store_true", help="replace files in --out this command did not write")


def run_grade(args: argparse.Namespace) -> int:
    nbformat = require("nbformat", "hsbs grade (reading and executing notebooks)")
    require("nbclient", "hsbs grade (reading and executing notebooks)")
    # Loaded by name, as the hsbs command loads each subcommand's module: importing it at the top would make
    # the base install (without the lab extra) fail to list this command.
    grader = importlib.import_module("hsbs_lib._grading.grade")
    if args.smoke:
        os.environ["SMOKE"] = "1"
    outputs = OutputFolder(args.out, "grade", force=args.force, reads=args.notebooks)
    rows = []
    for path in args.notebooks:
        graded, executed = grader.grade_notebook(path, timeout=args.timeout, exercises_only=args.exercises_only)
        rows += graded
        if executed is not None:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{graded[0]['student']}__{graded[0]['notebook']}.ipynb")
            outputs.write_text(f"executed/{name}", nbformat.writes(executed))
        total = sum(row["points"] for row in graded)
        print(f"{graded[0]['student']:<24} {graded[0]['notebook']:<36} {total}/{sum(r['max_points'] for r in graded)}")
    outputs.write_text("scores.csv", grader.csv_text(rows))
    outputs.write_json("scores.json", rows)
    print(f"scores: {outputs.folder / 'scores.csv'}")
    return 0
