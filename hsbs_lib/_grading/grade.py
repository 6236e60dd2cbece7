"""``hsbs grade``: execute submitted exercise notebooks headless and write one score table.

    hsbs grade submissions/*.ipynb --out grades [--smoke] [--exercises-only]

For every notebook: the exercise notebook it answers is read from its metadata (``make exercises``
stamps ``hsbs.exercises_of``) or from its file name (``03_hst_attention_maps``); the student is the
notebook's ``student`` metadata field, else the file's stem. The notebook runs in a fresh kernel
(nbclient, errors allowed so one broken cell costs only what depends on it, in a scratch folder; the
grader's own ``SMOKE`` is passed on, ``--smoke`` sets it). Then one cell the grader adds runs, in that
kernel, every exercise's check on the notebook's cases and on the hidden cases
(:mod:`hsbs_lib._grading.hidden`): a point each. The exercises and the names their answers have come
from :data:`EXERCISES`, not from the submitted check cells, which a student may have edited.

``--out`` receives ``scores.csv`` and ``scores.json`` (one row per student and exercise: student,
notebook, exercise, points, max_points, reason) and ``executed/STUDENT__NOTEBOOK.ipynb``, under the
package's output rule (a file this command did not write is replaced only with ``--force``).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import nbformat

from hsbs_lib import exercises
from hsbs_lib.outputs import OutputFolder

try:
    from hsbs_lib._grading.hidden import HIDDEN
except ImportError:      # the student bundle ships without the hidden cases
    HIDDEN = None

#: exercise notebook -> [(check, the notebook names it is called with)]; tests keep it equal to the
#: notebooks' check cells.
EXERCISES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "00_quickstart": [("check_majority_baseline", ("majority_baseline",))],
    "01_data_preparation": [("check_label_mapping", ("canonical_lookup",))],
    "02_training_on_gpu": [("check_train_step", ("train_step",)), ("check_training_loop", ("train_loop",))],
    "03_hst_attention_maps": [("check_activation_attention", ("my_activation_attention",)),
                              ("check_hst_loss", ("my_hst_loss",))],
    "04_bsa_similarity_heatmaps": [("check_bsa_forward", ("bsa_forward",)),
                                   ("check_uniform_similarity", ("uniform_bsa", "z", "S"))],
    "05_confusion_matrices_and_metrics": [("check_mean_class_accuracy", ("mean_class_accuracy",)),
                                          ("check_row_normalised_confusion", ("row_normalised_confusion",))],
    "06_gradcam_and_learning_intensity": [("check_gradcam", ("gradcam_with_hooks",)),
                                          ("check_layer_intensity", ("layer_intensity",))],
    "07_method_zoo": [("check_cluster_alignment", ("clbs_alignment",)),
                      ("check_uncertainty_weighting", ("weigh_losses",))],
    "08_paper_figures": [("check_paper_figure", ("paper_recall_figure",))],
}
MARKER = "HSBS-GRADE "
COLUMNS = ("student", "notebook", "exercise", "points", "max_points", "reason")


def _short(message: str, limit: int = 300) -> str:
    message = " ".join(str(message).split())
    return message if len(message) <= limit else message[:limit - 3] + "..."


def _attempt(function, *args) -> tuple[bool, str]:
    """Run one check quietly: (passed, reason)."""
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            function(*args)
        except AssertionError as error:
            return False, _short(str(error).removeprefix("not yet: "))
        except Exception as error:     # a broken answer may fail in any way
            return False, _short(f"{type(error).__name__}: {error}")
    return True, "passed"


def grade_namespace(namespace: dict, notebook: str) -> list[dict]:
    """Score the answers found in a notebook's namespace: per exercise a point for its notebook check and
    one for the hidden cases."""
    if HIDDEN is None:
        raise RuntimeError("the hidden cases are not part of this installation (a student bundle): grade "
                           "with the teacher's copy of the course")
    rows = []
    for check, names in EXERCISES[notebook]:
        row = {"notebook": notebook, "exercise": check.removeprefix("check_"), "points": 0, "max_points": 2}
        missing = [name for name in names if name not in namespace or namespace[name] is Ellipsis]
        if missing:
            row["reason"] = f"{', '.join(missing)} not defined (the exercise cell did not run or was left as a stub)"
            rows.append(row)
            continue
        answers = [namespace[name] for name in names]
        visible, visible_reason = _attempt(getattr(exercises, check), *answers)
        hidden, hidden_reason = _attempt(HIDDEN[check], *answers)
        row["points"] = int(visible) + int(hidden)
        row["reason"] = ("passed the notebook's check and the hidden cases" if visible and hidden else
                         f"notebook check: {visible_reason}" if not visible else f"hidden cases: {hidden_reason}")
        rows.append(row)
    return rows


def notebook_key(notebook: nbformat.NotebookNode, path: Path) -> str | None:
    """Which exercise notebook a submission answers: its metadata, else a known stem in its file name."""
    stamped = notebook.metadata.get("hsbs", {}).get("exercises_of")
    if stamped in EXERCISES:
        return stamped
    return next((key for key in EXERCISES if key in path.stem), None)


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def prepare(notebook: nbformat.NotebookNode, key: str, *, exercises_only: bool) -> nbformat.NotebookNode:
    """The notebook to execute: its code cells (later cells may use what a check cell computed), or, with
    ``exercises_only``, the cells up to the parameters cell and the exercise cells; then one grading cell.
    The score never depends on the submitted check cells: the grading cell runs the checks itself."""
    notebook = nbformat.from_dict(json.loads(json.dumps(notebook)))
    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if exercises_only:
        parameters = next((i for i, cell in enumerate(cells) if "parameters" in _tags(cell)), -1)
        cells = [cell for i, cell in enumerate(cells)
                 if i <= parameters or {"exercise", "solution"} & set(_tags(cell))]
    for cell in cells:
        cell.outputs, cell.execution_count = [], None
    cells.append(nbformat.v4.new_code_cell(
        "import json as _json\nfrom hsbs_lib._grading.grade import grade_namespace as _grade\n"
        f"print({MARKER!r} + _json.dumps(_grade(globals(), {key!r})))", metadata={"tags": ["grading"]}))
    notebook.cells = cells
    return notebook


def execute(notebook: nbformat.NotebookNode, *, timeout: int) -> str | None:
    """Run ``notebook`` in a fresh kernel in a scratch folder; the grading cell's output, None if it died."""
    from nbclient import NotebookClient

    package_parent = str(Path(exercises.__file__).resolve().parents[1])
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, previous]))   # this hsbs_lib
    try:
        with tempfile.TemporaryDirectory(prefix="hsbs-grade-") as scratch:
            client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", allow_errors=True,
                                    resources={"metadata": {"path": scratch}})
            try:
                client.execute(cwd=scratch)
            except Exception as error:          # a dead kernel, a timeout: the notebook scores what ran
                return f"error: {type(error).__name__}: {_short(str(error), 200)}"
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous
    for output in notebook.cells[-1].get("outputs", []):
        for line in output.get("text", "").splitlines():
            if line.startswith(MARKER):
                return line[len(MARKER):]
    return None


def grade_notebook(path: str | os.PathLike, *, timeout: int = 600, exercises_only: bool = False
                   ) -> tuple[list[dict], nbformat.NotebookNode | None]:
    """Execute one submission and score it: (rows, the executed notebook)."""
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    student = str(notebook.metadata.get("student") or path.stem)
    key = notebook_key(notebook, path)
    if key is None:
        return [{"student": student, "notebook": path.stem, "exercise": "", "points": 0, "max_points": 0,
                 "reason": "not an exercise notebook of this course (no hsbs.exercises_of metadata, no known name)"}], None
    runnable = prepare(notebook, key, exercises_only=exercises_only)
    result = execute(runnable, timeout=timeout)
    try:
        rows = json.loads(result) if result and not result.startswith("error:") else None
    except json.JSONDecodeError:
        rows = None
    if rows is None:
        reason = result or "the grading cell printed no result (the kernel died or a cell hung)"
        rows = [{"notebook": key, "exercise": check.removeprefix("check_"), "points": 0, "max_points": 2,
                 "reason": reason} for check, _ in EXERCISES[key]]
    return [{"student": student, **row} for row in rows], runnable


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({column: row.get(column, "") for column in COLUMNS} for row in rows)
    return buffer.getvalue()


if __name__ == "__main__":
    from hsbs_lib._grading.command import add_grade_arguments, run_grade
    parser = argparse.ArgumentParser(prog="hsbs grade")
    add_grade_arguments(parser)
    sys.exit(run_grade(parser.parse_args()))
