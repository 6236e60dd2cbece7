"""Exercise notebooks are generated from the solution cells, up to date, and hold no solution code."""
import json
from pathlib import Path

import nbformat
import pytest
import torch.nn.functional as F
import torch

from hsbs_lib import exercises
from hsbs_lib.losses.hst import pool_to_teacher_grid

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")
                 if any("solution" in c.get("metadata", {}).get("tags", []) for c in json.loads(p.read_text())["cells"]))


def test_some_notebooks_have_solution_cells_each_followed_by_a_check():
    assert len(SOURCES) >= 3
    for path in SOURCES:
        cells = nbformat.read(path, as_version=4).cells
        for i, cell in enumerate(cells):
            if "solution" in cell.metadata.get("tags", []):
                assert i + 1 < len(cells) and "check" in cells[i + 1].metadata.get("tags", []), \
                    f"{path.name}: solution cell {i} must be followed by a cell tagged 'check'"
                assert "hsbs_lib.exercises" in cells[i + 1].source or "check_" in cells[i + 1].source


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_exercise_notebook_is_up_to_date_and_has_no_solution_code(source, tmp_path):
    committed = ROOT / "notebooks" / "exercises" / source.name
    assert committed.is_file(), f"run `make exercises`: {committed} is missing"
    fresh = exercises.make_exercise(nbformat.read(source, as_version=4))
    assert [c.source for c in nbformat.read(committed, as_version=4).cells] == [c.source for c in fresh.cells], \
        f"{committed.name} is out of date with {source.name}: run `make exercises`"
    exercise_cells = [c for c in nbformat.read(committed, as_version=4).cells
                      if "exercise" in c.metadata.get("tags", [])]
    solution_cells = [c for c in nbformat.read(source, as_version=4).cells
                      if "solution" in c.metadata.get("tags", [])]
    assert len(exercise_cells) == len(solution_cells) > 0
    for solution, exercise in zip(solution_cells, exercise_cells):
        for line in exercises.solution_lines(solution.source):
            if not line.startswith(("import ", "from ")):
                assert line not in exercise.source, f"solution line leaked into {committed.name}: {line}"


def test_stub_keeps_task_imports_and_signature_but_no_body():
    source = ("# Exercise: scale a tensor.\n# Return 2 * x.\nimport torch\n\n"
              "def double(x):\n    \"\"\"x (B,) -> (B,).\"\"\"\n    doubled = x * 2\n    return doubled\n\nanswer = double\n")
    stub = exercises.stub_source(source)
    assert stub.startswith("# Exercise: scale a tensor.\n# Return 2 * x.")
    assert "import torch" in stub and "def double(x):" in stub and '"""x (B,) -> (B,)."""' in stub
    assert "doubled = x * 2" not in stub and "raise NotImplementedError" in stub
    assert "answer = ..." in stub
    namespace = {}
    exec(stub, namespace)
    with pytest.raises(NotImplementedError):
        namespace["double"](torch.ones(2))


def test_checks_accept_right_answers_and_reject_wrong_ones():
    from hsbs_lib.losses.hst import activation_attention

    exercises.check_activation_attention(activation_attention)
    with pytest.raises(AssertionError, match="not yet"):
        exercises.check_activation_attention(lambda f: f.abs().mean(dim=1))
    with pytest.raises(AssertionError, match="not yet"):
        exercises.check_hst_loss(lambda s, t: (s.mean() - t.mean()) ** 2)  # gradient reaches the teacher
    exercises.check_mean_class_accuracy(lambda cm: (cm.diagonal() / cm.sum(1)).mean())
    with pytest.raises(AssertionError, match="not yet"):
        exercises.check_mean_class_accuracy(lambda cm: cm.diagonal().sum() / cm.sum())
    exercises.check_uniform_similarity(torch.full((4, 4), 0.25), 4)


def _hst_right(student, teacher):
    pooled = pool_to_teacher_grid(student, tuple(teacher.shape[-2:])).flatten(1)
    return (F.normalize(pooled, dim=1) - F.normalize(teacher.detach().flatten(1), dim=1)).pow(2).mean()


def _hst_with(pool=None, normalise=True, dim=1, reduce="mean", power=2, detach=True):
    """A variant of the HST term with one thing done wrong."""
    def term(student, teacher):
        size = tuple(teacher.shape[-2:])
        pooled = (pool or pool_to_teacher_grid)(student, size).flatten(1)
        target = (teacher.detach() if detach else teacher).flatten(1)
        if normalise:
            pooled, target = F.normalize(pooled, dim=dim), F.normalize(target, dim=dim)
        difference = (pooled - target).abs().pow(power)
        return difference.mean() if reduce == "mean" else difference.sum()
    return term


def _adaptive(student, size):
    return F.adaptive_avg_pool2d(student[:, None], size)[:, 0]


def _max_pool(student, size):
    return F.adaptive_max_pool2d(student[:, None], size)[:, 0]


HST_WRONG = {
    "no normalisation": _hst_with(normalise=False),
    "sum instead of mean": _hst_with(reduce="sum"),
    "normalised over the batch axis": _hst_with(dim=0),
    "max-pool instead of average-pool": _hst_with(pool=_max_pool),
    "adaptive pooling (cells as blocks)": _hst_with(pool=_adaptive),
    "L1 instead of squared error": _hst_with(power=1),
    "teacher not detached": _hst_with(detach=False),
}


def test_the_hst_check_accepts_the_library_term():
    exercises.check_hst_loss(_hst_right)


@pytest.mark.parametrize("wrong", HST_WRONG, ids=list(HST_WRONG))
def test_the_hst_check_rejects_a_wrong_term(wrong):
    with pytest.raises(AssertionError, match="not yet"):
        exercises.check_hst_loss(HST_WRONG[wrong])
