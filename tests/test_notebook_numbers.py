"""Prose against the numbers: every number the notebooks' markdown, the answer key and the teacher's guide
quote from notebooks/reference/ carries a marker naming its source, and matches it (hsbs_lib.engine.quotes).

A regenerated reference that moves a quoted number makes this test name the cell and the number; a
new quote written without a marker is caught when it equals a reference value (three significant digits
or more: 66.3, 0.118, -17.4). The notebooks' "How long it takes" states the full-budget time that
docs/BENCHMARKS.md records for it.
"""
import re
from pathlib import Path

import nbformat
import pytest

from hsbs_lib.engine.quotes import (check_quotes, format_quote, quoted_numbers, resolve_quote,
                                    unmarked_reference_numbers)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PROSE = sorted((ROOT / "notebooks" / "answers").glob("*.md")) + [ROOT / "docs" / "TEACHING.md"]


def markdown_texts(path: Path) -> list[tuple[str, str]]:
    """(where, text) for every markdown cell of a notebook, or the whole of a Markdown file."""
    if path.suffix == ".ipynb":
        cells = nbformat.read(path, as_version=4).cells
        return [(f"{path.name} cell {i}", c.source) for i, c in enumerate(cells) if c.cell_type == "markdown"]
    return [(path.name, path.read_text())] if path.is_file() else []


def notebook_problems(notebook) -> list[str]:
    """What the checks say about an in-memory notebook: drifted markers, then unmarked quotes."""
    problems = []
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown":
            continue
        problems += [str(p) for p in check_quotes(cell.source, f"cell {i}")]
        problems += [f"cell {i}: {n} unmarked" for n in unmarked_reference_numbers(cell.source)]
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS + PROSE, ids=lambda p: p.name)
def test_every_marked_number_matches_its_source(path):
    problems = [str(p) for where, text in markdown_texts(path) for p in check_quotes(text, where)]
    assert not problems, "quoted numbers that differ from notebooks/reference/:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS + PROSE, ids=lambda p: p.name)
def test_no_unmarked_quote_of_a_reference_number(path):
    hits = [f"{where}: {number}" for where, text in markdown_texts(path)
            for number in unmarked_reference_numbers(text)]
    assert not hits, ("numbers equal to a reference value without a <!-- ref: FILE:PATH --> marker (or "
                      "<!-- not-ref --> when the equality is a coincidence):\n" + "\n".join(hits))


def test_markers_are_used():
    marked = sum(len(list(quoted_numbers(text))) for path in NOTEBOOKS + PROSE
                 for _, text in markdown_texts(path))
    assert marked >= 50


def test_a_drifted_number_fails_and_names_its_cell():
    accuracy = resolve_quote("demo_baseline:accuracy")
    right = f"{100 * accuracy:.1f}"
    wrong = f"{100 * accuracy + 2:.1f}"
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print('code cells are not prose')  # 12.345"),
        nbformat.v4.new_markdown_cell(f"The baseline reaches {right} %<!-- ref: demo_baseline:accuracy -->."),
        nbformat.v4.new_markdown_cell(f"The baseline reaches {wrong} %<!-- ref: demo_baseline:accuracy -->."),
    ])
    problems = notebook_problems(notebook)
    assert len(problems) == 1 and problems[0].startswith("cell 2: " + wrong), problems


def test_an_unmarked_quote_and_a_broken_source_fail():
    mca = format_quote("ablation:hsbs.mean_class_accuracy_mean", percent=True)
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"HSBS reaches {mca} % mean class accuracy."),
        nbformat.v4.new_markdown_cell(f"HSBS reaches {mca} %<!-- not-ref --> by coincidence."),
        nbformat.v4.new_markdown_cell("Fear recall 12.0 %<!-- ref: ablation:hsbs.no_such_key -->."),
        nbformat.v4.new_markdown_cell("<!-- ref: demo_hsbs:accuracy --> with no number before it."),
    ])
    problems = notebook_problems(notebook)
    assert len(problems) == 3, problems
    assert problems[0] == f"cell 0: {mca} unmarked"
    assert problems[1].startswith("cell 2: 12.0") and "does not resolve" in problems[1]
    assert problems[2].startswith("cell 3:") and "no number" in problems[2]


def test_sources_resolve_ratios_sums_and_rows():
    fear = resolve_quote("demo_hsbs:confusion_matrix.1.sum")
    assert fear == sum(resolve_quote(f"demo_hsbs:confusion_matrix.1.{k}") for k in range(7))
    ratio = resolve_quote("demo_baseline/metrics:-1.intensity/layer1 / demo_baseline/metrics:-1.intensity/layer4")
    assert ratio == pytest.approx(resolve_quote("demo_baseline/metrics:-1.intensity/layer1")
                                  / resolve_quote("demo_baseline/metrics:-1.intensity/layer4"))
    assert resolve_quote("ablation:+HST.mean_class_accuracy_diff") == resolve_quote(
        "synthfer_ablation.json:rows.row=+HST.mean_class_accuracy_diff")
    assert format_quote("demo_baseline:accuracy", 1, percent=True) == f"{100 * resolve_quote('demo_baseline:accuracy'):.1f}"


HEADER_TIME = re.compile(r"(about|under)\s+(\d+(?:\.\d+)?)\s+min(?:utes?)?\s+on\s+two\s+CPU\s+cores")
BENCH_ROW = re.compile(r"^\| (\d\d_\w+) \| [^|]+ \| ([^|]+) \| ([^|]+) \|$", re.M)


def benchmark_times() -> dict[str, str]:
    text = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    section = text[text.index("### Notebooks at their full budget"):]
    return {name: cpu.strip() for name, cpu, _ in BENCH_ROW.findall(section)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_header_states_the_benchmarked_time(path):
    header = nbformat.read(path, as_version=4).cells[0].source
    match = HEADER_TIME.search(header)
    assert match, f"{path.name}: the header states no time on two CPU cores"
    stated = f"{match.group(2)} min" if match.group(1) == "about" else f"under {match.group(2)} min"
    assert stated == benchmark_times()[path.stem], (
        f"{path.name}: the header says {match.group(0)}, docs/BENCHMARKS.md {benchmark_times()[path.stem]}")


HEADER_GPU = re.compile(r"about\s+(\d+(?:\.\d+)?)\s+minutes?\s+on\s+one\s+H200\s+GPU")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_header_gpu_time_is_the_benchmarked_estimate(path):
    header = nbformat.read(path, as_version=4).cells[0].source
    text = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    section = text[text.index("### Notebooks at their full budget"):]
    recorded = {name: gpu.strip() for name, _, gpu in BENCH_ROW.findall(section)}[path.stem]
    match = HEADER_GPU.search(header)
    if recorded.startswith("the same"):       # nothing trained: no GPU time to state
        assert match is None
        return
    assert match and recorded.startswith(f"about {match.group(1)} min"), (path.name, recorded)
