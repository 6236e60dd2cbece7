"""Exercise notebooks for courses, and the checks students run on their answers.

In the numbered notebooks, a code cell tagged ``solution`` is a part a student should write. The
exercise version (``make exercises`` -> notebooks/exercises/NN_*.ipynb) keeps the cell's leading
comment block (the task), keeps function signatures and docstrings, and replaces every body by
``raise NotImplementedError``; top-level assignments become ``name = ...``. The cell tagged ``check``
that follows calls one of the ``check_*`` functions below and says whether the answer works.

    python -m hsbs_lib.exercises notebooks notebooks/exercises
"""
from __future__ import annotations

import ast
import copy
import sys
from pathlib import Path
from typing import Callable

import nbformat
import torch
import torch.nn.functional as F

from hsbs_lib.losses.hst import activation_attention, pool_to_teacher_grid

STUB_BODY = "raise NotImplementedError(\"your code here\")"


# ------------------------------------------------------------------------------------ stub generation
def _leading_comments(source: str) -> list[str]:
    lines = []
    for line in source.splitlines():
        if line.startswith("#") or (not line.strip() and lines):
            lines.append(line)
        else:
            break
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def stub_source(source: str) -> str:
    """The exercise version of a solution cell's source."""
    tree = ast.parse(source)
    lines = source.splitlines()
    out = _leading_comments(source)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            header_end = node.body[0].lineno - 1  # the def line(s), decorators included
            start = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
            header = lines[start:header_end]
            indent = " " * (node.body[0].col_offset)
            docstring = ast.get_docstring(node, clean=False)
            out.append("")
            out += header
            if docstring is not None:
                first = node.body[0]
                out += lines[first.lineno - 1:first.end_lineno]
            out.append(f"{indent}{STUB_BODY}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out += lines[node.lineno - 1:node.end_lineno]  # students need the same imports
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = ", ".join(ast.unparse(t) for t in targets)
            out.append(f"{names} = ...  # your code here")
    return "\n".join(out).strip("\n") + "\n"


def solution_lines(source: str) -> set[str]:
    """Non-trivial lines of a solution body (used to prove exercises contain none of them)."""
    stubbed = set(stub_source(source).splitlines())
    return {line.strip() for line in source.splitlines()
            if line.strip() and not line.strip().startswith("#") and line not in stubbed and len(line.strip()) > 12}


def make_exercise(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` with every ``solution`` cell replaced by its stub."""
    exercise = copy.deepcopy(notebook)
    for cell in exercise.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.cell_type == "code" and "solution" in tags:
            cell.source = stub_source(cell.source)
            cell.metadata["tags"] = [t if t != "solution" else "exercise" for t in tags]
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return exercise


def build_exercises(source_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write an exercise notebook for every numbered notebook that has solution cells."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(source_dir.glob("[0-9][0-9]_*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        if not any("solution" in c.get("metadata", {}).get("tags", []) for c in notebook.cells):
            continue
        target = out_dir / path.name
        nbformat.write(make_exercise(notebook), target)
        written.append(target)
    return written


# ------------------------------------------------------------------------------------------- checks
def _report(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(f"not yet: {message}")
    print(f"✓ {message}")


def check_activation_attention(student_fn: Callable) -> None:
    """Checks an activation-attention function: (B, C, H, W) -> (B, H, W), mean over channels of F^2."""
    torch.manual_seed(0)
    features = torch.randn(2, 8, 5, 5)
    got = student_fn(features)
    _report(tuple(got.shape) == (2, 5, 5), f"shape (B, H, W) = (2, 5, 5), got {tuple(got.shape)}")
    _report(torch.allclose(got, activation_attention(features), atol=1e-5),
            "values equal the mean over channels of the squared features")


def reference_hst_term(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """One student's HST term, as the library computes it: (B, h, w), (B, h', w') -> scalar."""
    pooled = pool_to_teacher_grid(student, tuple(teacher.shape[-2:])).flatten(1)
    target = teacher.detach().flatten(1)
    return (F.normalize(pooled, dim=1) - F.normalize(target, dim=1)).pow(2).mean()


def check_hst_loss(student_fn: Callable) -> None:
    """Checks an HST loss student_fn(student (B,h,w), teacher (B,h',w')) -> scalar against the library's.

    Expected: the student put on the teacher's grid with ``pool_to_teacher_grid``, both maps flattened and
    L2-normalised per sample, the squared distance averaged over samples and positions, no gradient into
    the teacher. Compared on several shapes (64 px maps: 32 -> 4 cells; 65 px maps: 33 -> 5; a batch of one).
    """
    generator = torch.Generator().manual_seed(0)
    for batch, cells, teacher_cells in ((3, 32, 4), (2, 33, 5), (1, 8, 4), (4, 17, 5)):
        teacher = torch.rand(batch, teacher_cells, teacher_cells, generator=generator, requires_grad=True)
        student = torch.rand(batch, cells, cells, generator=generator, requires_grad=True)
        loss = student_fn(student, teacher)
        _report(torch.is_tensor(loss) and loss.dim() == 0,
                f"returns a scalar tensor for a ({batch}, {cells}, {cells}) student")
        expected = reference_hst_term(student.detach(), teacher.detach())
        _report(torch.allclose(loss.detach().float(), expected, rtol=1e-4, atol=1e-7),
                f"value for a {cells}x{cells} student on a {teacher_cells}x{teacher_cells} teacher: expected "
                f"{float(expected):.6g}, got {float(loss.detach()):.6g} (pool with pool_to_teacher_grid, normalise each "
                f"sample's flattened map to unit length, mean of the squared differences)")
        loss.backward()
        _report(student.grad is not None and student.grad.abs().sum() > 0, "the gradient reaches the student map")
        _report(teacher.grad is None or teacher.grad.abs().sum() == 0, "the teacher is detached (stop-gradient)")
    scaled = torch.rand(2, 32, 32, generator=generator)
    teacher = torch.rand(2, 4, 4, generator=generator)
    _report(torch.allclose(student_fn(10 * scaled, teacher), student_fn(scaled, teacher), rtol=1e-4),
            "only the shape of a map matters, not its scale (normalise before comparing)")


def check_uniform_similarity(similarity: torch.Tensor, batch_size: int) -> None:
    """Checks that a similarity matrix is the uniform B x B matrix (each row 1/B)."""
    _report(tuple(similarity.shape) == (batch_size, batch_size), f"shape ({batch_size}, {batch_size})")
    _report(torch.allclose(similarity, torch.full_like(similarity, 1 / batch_size), atol=1e-6),
            "every entry is 1/B: with zero query/key weights BSA adds the batch mean")


def check_mean_class_accuracy(student_fn: Callable) -> None:
    """Checks mean class accuracy from a confusion matrix (rows = true class)."""
    import numpy as np

    cm = np.array([[8, 2, 0], [1, 1, 0], [0, 0, 10]])
    expected = (0.8 + 0.5 + 1.0) / 3
    got = float(student_fn(cm))
    _report(abs(got - expected) < 1e-9, f"mean of per-class recall = {expected:.4f}, got {got:.4f}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    source, out = (argv + ["notebooks", "notebooks/exercises"][len(argv):])[:2]
    for path in build_exercises(source, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
