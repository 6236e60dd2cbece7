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

import numpy as np
import torch
import torch.nn.functional as F

from hsbs_lib.constants import STAGE_NAMES
from hsbs_lib.data.labels import CANONICAL_7, canonical_index
from hsbs_lib.extras import require
from hsbs_lib.losses.bsa import BatchSimilarityAttention
from hsbs_lib.losses.clcl import cluster_alignment_loss
from hsbs_lib.losses.hst import activation_attention, pool_to_teacher_grid
from hsbs_lib.losses.uncertainty import UncertaintyWeighting
from hsbs_lib.models import create_model
from hsbs_lib.models.base import ModelOutput

nbformat = require("nbformat", "hsbs_lib.exercises (notebooks and their exercise versions)")

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
# Each check compares the student's answer with a reference on several fixed inputs (edge cases
# included: a batch of one, a class without samples) and stops at the first difference with a message
# saying what differs. tests/test_exercises.py feeds every check known-wrong answers.
def _report(ok: bool, message: str) -> None:
    """Stop at the first failed comparison, with what was expected."""
    if not ok:
        raise AssertionError(f"not yet: {message}")


def _passed(summary: str) -> None:
    print(f"✓ {summary}")


def _call(student_fn: Callable, *args, case: str):
    """The student's answer for one case; an exception becomes a 'not yet' naming the case."""
    try:
        return student_fn(*args)
    except NotImplementedError:
        raise AssertionError("not yet: the function still raises NotImplementedError (write its body)") from None
    except Exception as error:  # the student's code may fail in any way; say where
        raise AssertionError(f"not yet: raised {type(error).__name__} ({error}) on {case}") from None


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max(|expected|), 0 when both are all zero."""
    got, expected = got.detach().double(), expected.detach().double()
    scale = expected.abs().max().clamp_min(1e-12)
    return float((got - expected).abs().max() / scale)


def _as_tensor(value) -> torch.Tensor:
    return value.detach() if torch.is_tensor(value) else torch.as_tensor(np.asarray(value, dtype=np.float64))


def check_activation_attention(student_fn: Callable) -> None:
    """Checks an activation-attention function: (B, C, H, W) -> (B, H, W), mean over channels of F^2."""
    generator = torch.Generator().manual_seed(0)
    cases = {"a (2, 8, 5, 5) batch": torch.randn(2, 8, 5, 5, generator=generator),
             "a batch of one (1, 3, 4, 4)": torch.randn(1, 3, 4, 4, generator=generator),
             "a non-square (3, 16, 8, 6) map": torch.randn(3, 16, 8, 6, generator=generator) * 5,
             "all-zero features (2, 4, 3, 3)": torch.zeros(2, 4, 3, 3)}
    for case, features in cases.items():
        got = _call(student_fn, features.clone(), case=case)
        expected = activation_attention(features)
        _report(torch.is_tensor(got) and tuple(got.shape) == tuple(expected.shape),
                f"shape (B, H, W) = {tuple(expected.shape)} for {case}, got "
                f"{tuple(got.shape) if torch.is_tensor(got) else type(got).__name__}")
        error = _relative_error(got, expected)
        _report(error < 1e-5, f"values for {case} equal the mean over channels of the squared features "
                              f"(relative error {error:.1e}; square each value, then average over dim 1)")
    _passed('right on 4 inputs (a batch of one, a non-square map, all-zero features)')


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
        loss = _call(student_fn, student, teacher, case=f"a ({batch}, {cells}, {cells}) student")
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
    ten_times = _call(student_fn, 10 * scaled, teacher, case="a student map scaled by 10")
    _report(torch.allclose(ten_times, _call(student_fn, scaled, teacher, case="the same map"), rtol=1e-4),
            "only the shape of a map matters, not its scale (normalise before comparing)")
    _passed("right on 4 shape pairs (65 px and 64 px grids, a batch of one): values, gradient, "
            "stop-gradient, scale invariance")


def check_uniform_similarity(bsa: torch.nn.Module, z: torch.Tensor, similarity: torch.Tensor) -> None:
    """Checks the zero-query/key exercise: ``bsa`` a BatchSimilarityAttention whose query and key
    projections were zeroed, ``z`` (B, D) the batch, ``similarity`` (B, B) = bsa.similarity(z), each entry 1/B.

    The module itself is inspected, so a hand-written matrix of 1/B does not pass.
    """
    batch_size = z.shape[0]
    _report(tuple(similarity.shape) == (batch_size, batch_size),
            f"S has shape (B, B) = ({batch_size}, {batch_size}) for a batch of {batch_size}, "
            f"got {tuple(similarity.shape)}")
    for name in ("query", "key"):
        projection = getattr(bsa, name)
        zeroed = all(float(p.detach().abs().max()) == 0 for p in (projection.weight, projection.bias))
        _report(zeroed, f"the {name} projection's weight and bias are zero")
    untouched = all(float(getattr(bsa, name).weight.detach().abs().max()) > 0 for name in ("value", "out"))
    _report(untouched, "the value and output projections keep their weights (only queries and keys are zeroed)")
    with torch.no_grad():
        recomputed = bsa.similarity(z)
        _report(_relative_error(similarity, recomputed) < 1e-6,
                "S is the module's similarity of this z (compute it with bsa.similarity(z))")
        other = bsa.similarity(torch.randn(batch_size, z.shape[1], generator=torch.Generator().manual_seed(1)))
    expected = torch.full((batch_size, batch_size), 1 / batch_size)
    _report(_relative_error(similarity, expected) < 1e-6 and _relative_error(other, expected) < 1e-6,
            f"every entry is 1/B = {1 / batch_size:.4f}, for this batch and any other: with zero queries and keys "
            "BSA adds the batch mean")
    _passed('queries and keys zeroed, S uniform (1/B) for this batch and any other')


def _bsa_cases() -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    """Seeded cosine BSA layers with a gate away from 1 (so a forgotten gamma shows) and their batches."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    cases = {}
    for case, (batch, dim, attn_dim, temperature, gamma) in {
            "a batch of 8, 32-d features, tau 0.1": (8, 32, 16, 0.1, 0.7),
            "a batch of one": (1, 32, 16, 0.1, 0.7),
            "a batch of 5, 16-d features, tau 0.5": (5, 16, 8, 0.5, -0.4)}.items():
        bsa = BatchSimilarityAttention(dim, attn_dim, similarity="cosine", temperature=temperature).eval()
        with torch.no_grad():
            bsa.gamma.fill_(gamma)
        cases[case] = (bsa, 3 * torch.randn(batch, dim))
    torch.random.set_rng_state(generator_state)
    return cases


def check_bsa_forward(student_fn: Callable) -> None:
    """Checks student_fn(bsa, z (B, C)) -> (z~ (B, C), S (B, B)) against BatchSimilarityAttention.forward
    with cosine scores: S = softmax over j of cos(q_i, k_j) / tau, z~ = z + gamma W_o (S V)."""
    for case, (bsa, z) in _bsa_cases().items():
        with torch.no_grad():
            expected_mixed, expected_similarity = bsa(z)
            answer = _call(student_fn, bsa, z.clone(), case=case)
        _report(isinstance(answer, tuple) and len(answer) == 2, f"returns (z~, S) on {case}")
        mixed, similarity = answer
        batch = z.shape[0]
        _report(tuple(similarity.shape) == (batch, batch) and tuple(mixed.shape) == tuple(z.shape),
                f"shapes z~ {tuple(z.shape)} and S ({batch}, {batch}) on {case}, got "
                f"{tuple(mixed.shape)} and {tuple(similarity.shape)}")
        _report(torch.allclose(similarity.sum(dim=1), torch.ones(batch), atol=1e-5),
                f"every row of S sums to 1 on {case} (softmax over j, the keys: dim=1)")
        error = _relative_error(similarity, expected_similarity)
        _report(error < 1e-4, f"S on {case} (relative error {error:.1e}): cosine of queries and keys "
                              "(normalise both to unit length), divided by bsa.temperature, softmax over each row")
        error = _relative_error(mixed, expected_mixed)
        _report(error < 1e-4, f"z~ on {case} (relative error {error:.1e}): z + bsa.gamma * bsa.out(S @ bsa.value(z))")
    _passed("S and z~ equal the library layer's on 3 batches (a batch of one, two temperatures)")


class _TwoTermModel(torch.nn.Module):
    """A tiny model with the package's contract (ModelOutput, named loss terms) and batch norm, so that
    training mode, both loss terms and the optimiser step all change the result of one step."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        features = self.body(x)
        return ModelOutput(logits=self.head(features), features=features)

    def loss(self, output: ModelOutput, batch: dict) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(output.logits.float(), batch["label"]),
                "feature_norm": 0.1 * output.features.float().pow(2).mean()}


def reference_train_step(model, batch: dict, optimizer, device_type: str) -> float:
    """One AMP training step as the engine takes it: train mode, fresh gradients, bf16 autocast around
    forward and loss, the sum of the named terms, backward, optimiser step; returns the loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
        output = model(batch["image"])
        loss = sum(model.loss(output, batch).values())
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def check_train_step(student_fn: Callable) -> None:
    """Checks student_fn(model, batch {"image": (B, 3, H, W), "label": (B,)}, optimizer, device_type) -> float:
    one bf16-autocast training step, against the reference on a tiny model (with batch norm and two loss
    terms), starting from an eval-mode model whose gradients hold leftovers of an earlier step."""
    generator = torch.Generator().manual_seed(0)
    for case, batch_size in (("a batch of 8", 8), ("a batch of 2", 2)):
        state = torch.random.get_rng_state()
        torch.manual_seed(batch_size)
        model = _TwoTermModel().eval()
        torch.random.set_rng_state(state)
        for parameter in model.parameters():               # leftovers that a missing zero_grad would add
            parameter.grad = torch.full_like(parameter, 0.5)
        batch = {"image": torch.randn(batch_size, 3, 8, 8, generator=generator),
                 "label": torch.randint(0, 3, (batch_size,), generator=generator)}
        reference = copy.deepcopy(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
        reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=0.05)
        reference_optimizer.load_state_dict(optimizer.state_dict())
        expected = reference_train_step(reference, {k: v.clone() for k, v in batch.items()}, reference_optimizer, "cpu")
        got = _call(student_fn, model, {k: v.clone() for k, v in batch.items()}, optimizer, "cpu", case=case)
        _report(isinstance(got, float), f"returns the loss as a Python float on {case}, got {type(got).__name__}")
        _report(model.training, f"the model is left in training mode on {case} (call model.train() first)")
        _report(abs(got - expected) <= 1e-6 * max(1.0, abs(expected)),
                f"the loss on {case}: expected {expected:.6f}, got {got:.6f} (training mode, the sum of every "
                "term of model.loss, forward and loss inside torch.autocast(device_type, dtype=torch.bfloat16))")
        moved = max(float((p.detach() - q.detach()).abs().max())
                    for p, q in zip(model.parameters(), reference.parameters()))
        _report(moved < 1e-6, f"the weights after the step on {case} differ from the reference's by {moved:.1e} "
                              "(zero the old gradients, backward, then optimizer.step())")
    _passed("one bf16 step matches the reference on 2 batches: training mode, fresh gradients, every loss "
            "term, the optimiser step")


UNCERTAINTY_CASES = {
    "three terms": ({"ce": 0.7, "pose": 2.3, "ce/layer2": 0.05}, {"ce": 0.0, "pose": 1.5, "ce/layer2": -2.0}),
    "a single term": ({"ce": 1.2}, {"ce": 0.4}),
    "a very large log-variance (s = 100)": ({"ce": 0.9, "pose": 3.0}, {"ce": 100.0, "pose": -0.5}),
}


def check_uncertainty_weighting(student_fn: Callable) -> None:
    """Checks student_fn(losses {name: scalar}, log_variances {name: scalar s = log sigma^2}) -> {name: weighted}
    with weighted = L / (2 sigma^2) + log(1 + sigma^2), against UncertaintyWeighting, gradients included."""
    for case, (losses, log_variances) in UNCERTAINTY_CASES.items():
        reference = UncertaintyWeighting(list(losses))
        with torch.no_grad():
            reference.log_variance.copy_(torch.tensor([log_variances[name] for name in losses]))
        loss_tensors = {name: torch.tensor(value) for name, value in losses.items()}
        with torch.no_grad():
            expected = {name: float(value) for name, value in reference(loss_tensors).items()}
        variables = {name: torch.tensor(value, requires_grad=True) for name, value in log_variances.items()}
        got = _call(student_fn, dict(loss_tensors), dict(variables), case=case)
        _report(isinstance(got, dict) and set(got) == set(losses), f"one weighted term per loss name on {case}")
        for name in losses:
            value = float(torch.as_tensor(got[name]).detach())
            _report(np.isfinite(value), f"{name} on {case} is finite, got {value} (log(1 + exp(s)) overflows "
                                        "for large s: torch.nn.functional.softplus(s) computes it safely)")
            _report(abs(value - expected[name]) <= 1e-5 * max(1.0, abs(expected[name])),
                    f"{name} on {case}: expected {expected[name]:.6g}, got {value:.6g} "
                    "(0.5 * exp(-s) * L + log(1 + exp(s)) with s = log sigma^2)")
        try:
            sum(got.values()).backward()
        except (AttributeError, RuntimeError):
            pass                     # no graph: reported just below
        _report(all(variables[name].grad is not None for name in losses),
                f"the gradient reaches every log-variance on {case} (compute with torch, keep the graph)")
    _passed("weighted terms equal the library's on 3 cases (a single term, a very large log-variance), "
            "with gradients to every sigma")


def reference_mean_class_accuracy(confusion_matrix) -> float:
    """(K, K) counts, rows = true class -> mean recall over the classes that have samples."""
    counts = np.asarray(confusion_matrix, dtype=np.float64)
    support = counts.sum(axis=1)
    present = support > 0
    return float((np.diag(counts)[present] / support[present]).mean())


MEAN_CLASS_ACCURACY_CASES = {
    "a 3-class matrix": [[8, 2, 0], [1, 1, 0], [0, 0, 10]],
    "a class with no test image (row 1 empty)": [[5, 0, 0], [0, 0, 0], [1, 0, 3]],
    "a single test image": [[0, 1], [0, 0]],
    "a class predicted but never present": [[2, 1, 0], [0, 0, 0], [0, 3, 1]],
    "a 7-class imbalanced matrix": [[30, 2, 0, 5, 0, 0, 3], [1, 2, 0, 0, 0, 0, 0], [0, 0, 4, 1, 0, 3, 0],
                                    [2, 0, 1, 150, 3, 0, 4], [0, 0, 0, 6, 40, 1, 13], [0, 0, 3, 2, 1, 20, 4],
                                    [1, 0, 0, 9, 8, 1, 60]],
}


def check_mean_class_accuracy(student_fn: Callable) -> None:
    """Checks mean class accuracy from a confusion matrix (rows = true class), empty classes skipped."""
    for case, matrix in MEAN_CLASS_ACCURACY_CASES.items():
        counts = np.array(matrix, dtype=np.int64)
        got = _call(student_fn, counts.copy(), case=case)
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise AssertionError(f"not yet: returns a number, got {type(got).__name__} on {case}") from None
        expected = reference_mean_class_accuracy(counts)
        _report(np.isfinite(got), f"a finite number on {case}, got {got} (skip classes whose row is empty)")
        _report(abs(got - expected) < 1e-9,
                f"mean of the per-class recalls on {case}: expected {expected:.4f}, got {got:.4f} (diagonal over "
                "row totals, averaged over the classes that have test images)")
    _passed('right on 5 confusion matrices (a class without test images, a single image)')


def reference_row_normalised_confusion(labels, predictions, num_classes: int) -> np.ndarray:
    """labels (N,), predictions (N,) -> (K, K) float, row i = where class i's images went; empty rows zero."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    counts = np.bincount(labels * num_classes + predictions, minlength=num_classes ** 2)
    counts = counts.reshape(num_classes, num_classes).astype(np.float64)
    support = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)


def _confusion_cases() -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    rng = np.random.default_rng(0)
    labels = rng.choice(7, size=60, p=[0.1, 0.03, 0.06, 0.39, 0.16, 0.06, 0.2])
    predictions = np.where(rng.random(60) < 0.6, labels, rng.integers(0, 7, size=60))
    return {
        "60 images of 7 classes": (labels, predictions, 7),
        "a class with no image (class 1 of 3)": (np.array([0, 0, 2, 2, 2]), np.array([0, 1, 2, 0, 1]), 3),
        "a single image": (np.array([1]), np.array([0]), 2),
        "a class never predicted": (np.array([0, 1, 1, 2, 2, 2]), np.array([0, 0, 0, 2, 2, 0]), 3),
    }


def check_row_normalised_confusion(student_fn: Callable) -> None:
    """Checks student_fn(labels (N,), predictions (N,), num_classes) -> (K, K): counts of (true, predicted)
    pairs, each row divided by its total; a class without images gets a row of zeros (not NaN)."""
    for case, (labels, predictions, num_classes) in _confusion_cases().items():
        got = _call(student_fn, labels.copy(), predictions.copy(), num_classes, case=case)
        got = np.asarray(got.detach().cpu() if torch.is_tensor(got) else got, dtype=np.float64)
        expected = reference_row_normalised_confusion(labels, predictions, num_classes)
        _report(got.shape == expected.shape, f"shape (K, K) = {expected.shape} on {case}, got {got.shape}")
        _report(bool(np.isfinite(got).all()), f"no NaN on {case} (a class without images gets a row of zeros)")
        _report(np.allclose(got.sum(axis=1), expected.sum(axis=1)),
                f"each row sums to 1 (0 for a class without images) on {case}: rows sum to "
                f"{np.round(got.sum(axis=1), 3).tolist()} (rows = true class, divide each row by its own total)")
        _report(np.allclose(got, expected, atol=1e-9),
                f"entry (i, j) = share of class i's images predicted as j on {case} (largest difference "
                f"{float(np.abs(got - expected).max()):.3f}; rows are true classes, columns predictions)")
    _passed('right on 4 cases (a class without images, a single image, a class never predicted)')


def reference_canonical_lookup(class_to_idx: dict[str, int]) -> list[int]:
    """A dataset's {class name: index} -> lookup[index] = canonical index (CANONICAL_8 order)."""
    lookup = [-1] * len(class_to_idx)
    for name, index in class_to_idx.items():
        canonical = canonical_index(name, 8)
        if canonical is None:
            raise ValueError(f"unknown class name {name!r}")
        lookup[index] = canonical
    return lookup


LABEL_ORDER_CASES = {
    "the FER2013 folder export (ImageFolder, alphabetical)":
        {"angry": 0, "disgust": 1, "fear": 2, "happy": 3, "neutral": 4, "sad": 5, "surprise": 6},
    "FER2013's csv codes": {"Angry": 0, "Disgust": 1, "Fear": 2, "Happy": 3, "Sad": 4, "Surprise": 5, "Neutral": 6},
    "AffectNet's eight classes": {"Neutral": 0, "Happy": 1, "Sad": 2, "Surprise": 3, "Fear": 4, "Disgust": 5,
                                  "Anger": 6, "Contempt": 7},
    "the canonical names in canonical order": {name: index for index, name in enumerate(CANONICAL_7)},
    "three classes only": {"Sad": 0, "Surprised": 1, "happiness": 2},
}


def check_label_mapping(student_fn: Callable) -> None:
    """Checks student_fn(class_to_idx) -> lookup, a sequence with lookup[dataset index] = canonical index
    (RAF-DB order, contempt = 7), matched by name through the synonyms; an unknown name raises ValueError."""
    for case, class_to_idx in LABEL_ORDER_CASES.items():
        got = _call(student_fn, dict(class_to_idx), case=case)
        got = np.asarray(got.cpu() if torch.is_tensor(got) else got).reshape(-1).tolist()
        expected = reference_canonical_lookup(class_to_idx)
        _report(len(got) == len(expected), f"one entry per dataset class on {case}: {len(expected)}, got {len(got)}")
        wrong = [f"{name} (index {index}) -> {got[index]}, expected {expected[index]}"
                 for name, index in class_to_idx.items() if got[index] != expected[index]]
        _report(not wrong, f"lookup[dataset index] = canonical index on {case}"
                           + (f"; wrong: {', '.join(wrong[:3])}" if wrong else ""))
    try:
        student_fn({"angry": 0, "hapy": 1})
        raised = None
    except Exception as error:
        raised = error
    _report(isinstance(raised, ValueError) and not isinstance(raised, NotImplementedError),
            "an unknown folder name ('hapy') raises ValueError instead of becoming a class"
            + ("" if raised is None or isinstance(raised, ValueError) else f" (got {type(raised).__name__})"))
    _passed("right on 5 label orders (FER2013 folders and csv, AffectNet with contempt, a subset), "
            "and a typo is refused")


def reference_gradcam(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor,
                      class_index: int) -> torch.Tensor:
    """Grad-CAM without hooks on the student's side: (B, 3, H, W) -> (B, h, w) at ``layer``'s resolution,
    ReLU(sum_k alpha_k F_k) with alpha_k the spatial mean of d logit[class_index] / d F_k, per image."""
    captured = []
    handle = layer.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        with torch.enable_grad():
            logits = model(images)
            (gradient,) = torch.autograd.grad(logits[:, class_index].sum(), captured[0])
    finally:
        handle.remove()
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * captured[0]).sum(dim=1)).detach()


def _gradcam_test_model() -> torch.nn.Module:
    """A tiny seeded CNN: 3 -> 6 -> 8 channels, a 3-class linear head (the check's fixed model)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 8, 3, stride=2, padding=1),           # the target: signed activations
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 3)).eval()
    torch.random.set_rng_state(generator_state)
    return model


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def check_gradcam(student_fn: Callable) -> None:
    """Checks student_fn(model, layer, images (B, 3, H, W), class_index) -> (B, h, w) Grad-CAM at ``layer``'s
    resolution (no upsampling, no rescaling), with every hook removed afterwards."""
    model = _gradcam_test_model()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 12, 12, generator=generator)
    cases = {"4 images, class 0, the second conv": (model[2], images, 0),
             "a batch of one, class 2": (model[2], images[1:2], 2),
             "4 images, class 1, the first conv (full resolution)": (model[0], images, 1)}
    for case, (layer, inputs, class_index) in cases.items():
        got = _call(student_fn, model, layer, inputs.clone(), class_index, case=case)
        expected = reference_gradcam(model, layer, inputs, class_index)
        _report(_hook_count(model) == 0, f"every hook is removed after the call ({case}): keep the handles "
                                         "that register_*_hook returns and call .remove(), in a finally block")
        _report(torch.is_tensor(got) and tuple(got.shape) == tuple(expected.shape),
                f"shape (B, h, w) = {tuple(expected.shape)} on {case}, got "
                f"{tuple(got.shape) if torch.is_tensor(got) else type(got).__name__}")
        _report(float(got.min()) >= 0, f"no negative value on {case} (the ReLU keeps the positive evidence)")
        error = _relative_error(got, expected)
        _report(error < 1e-4, f"values on {case} (relative error {error:.1e}): alpha_k = mean over positions of "
                              "d score / d F_k for each image, then ReLU(sum_k alpha_k F_k)")
    single = _call(student_fn, model, model[2], images[:1].clone(), 0, case="the first image alone")
    batched = _call(student_fn, model, model[2], images.clone(), 0, case="the batch")
    _report(_relative_error(single[0], batched[0]) < 1e-4,
            "an image's map does not depend on the rest of its batch (a weight per image and channel)")
    _passed('right on 3 cases (two layers, a batch of one), hooks removed, each image independent of its batch')


INTENSITY_LAYERS = STAGE_NAMES


def reference_layer_intensity(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Learning intensity of one batch: {layerN: mean |d CE / d F_N|} over the stage outputs F_N
    (``output.maps["features/layerN"]``, (B, C, H, W)), CE the batch-mean cross-entropy of the logits."""
    with torch.enable_grad():
        output = model(images)
        stages = [output.maps[f"features/{layer}"] for layer in INTENSITY_LAYERS]
        gradients = torch.autograd.grad(F.cross_entropy(output.logits, labels), stages)
    return {layer: float(gradient.abs().mean()) for layer, gradient in zip(INTENSITY_LAYERS, gradients)}


def _intensity_cases() -> dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]:
    """Small seeded baselines in training mode (batch statistics), at two sizes and batch sizes."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    narrow = create_model("baseline", num_classes=3, backbone_width=8).train()
    five = create_model("baseline", num_classes=5, backbone_width=8, stem="no_maxpool").train()
    torch.random.set_rng_state(generator_state)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 32, 32, generator=generator)
    return {"8 images of 32 px, 3 classes": (narrow, images, torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])),
            "2 images": (narrow, images[:2], torch.tensor([2, 1])),
            "6 images, 5 classes, another stem": (five, images[:6], torch.tensor([4, 0, 3, 1, 2, 4]))}


def check_layer_intensity(student_fn: Callable) -> None:
    """Checks student_fn(model, images (B, 3, H, W), labels (B,)) -> {layerN: float}: the mean absolute
    gradient of the batch-mean cross-entropy with respect to each stage output, layer1 to layer4."""
    for case, (model, images, labels) in _intensity_cases().items():
        expected = reference_layer_intensity(copy.deepcopy(model), images, labels)
        got = _call(student_fn, copy.deepcopy(model), images.clone(), labels.clone(), case=case)
        _report(isinstance(got, dict) and set(INTENSITY_LAYERS) <= set(got),
                f"a dict with one value per layer ({', '.join(INTENSITY_LAYERS)}) on {case}, got "
                f"{sorted(got) if isinstance(got, dict) else type(got).__name__}")
        for layer in INTENSITY_LAYERS:
            value = float(torch.as_tensor(got[layer]).detach())
            _report(np.isfinite(value) and value >= 0,
                    f"{layer} on {case} is a mean of absolute values (>= 0), got {value:.3g}")
            error = abs(value - expected[layer]) / max(expected[layer], 1e-12)
            _report(error < 1e-3,
                    f"{layer} on {case}: expected {expected[layer]:.4g}, got {value:.4g}: the gradient of "
                    "the batch-mean cross-entropy with respect to the stage OUTPUT maps['features/"
                    f"{layer}'] (not its weights), then the mean of its absolute values")
    _passed("right on 3 batches (2 to 8 images, two stems), for all four layers")


def _alignment_cases() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    # Students of very different norms: the nearest centroid by angle is not the nearest by distance.
    directions = torch.tensor([[1.0, 0.2], [0.9, -0.1], [0.1, 1.0], [-0.2, 0.9], [0.7, 0.7], [1.0, 0.5]])
    return {
        "10 vectors of 16 dims, 4 centroids": (torch.randn(10, 16, generator=generator),
                                               torch.randn(4, 16, generator=generator)),
        "students much shorter than the centroids (angle and distance disagree)":
            (directions * torch.tensor([[0.3], [0.2], [5.0], [0.4], [0.5], [0.3]]),
             torch.tensor([[10.0, 0.0], [0.6, 0.6], [0.0, 8.0]])),
        "a centroid no student is closest to (an empty cluster)":
            (torch.randn(6, 8, generator=generator).abs(), torch.cat([torch.rand(2, 8, generator=generator),
                                                                      -torch.ones(1, 8)])),
        "a single student": (torch.randn(1, 5, generator=generator), torch.randn(3, 5, generator=generator)),
    }


def check_cluster_alignment(student_fn: Callable) -> None:
    """Checks student_fn(student (N, D), centroids (K, D)) -> scalar: each student goes to the centroid of
    highest cosine similarity, each cluster's mean student is compared with its centroid by cosine
    similarity (an empty cluster counts 1), L = -0.5 * mean over the K clusters; the centroids (the
    detached teacher) receive no gradient."""
    for case, (student, centroids) in _alignment_cases().items():
        reference_student = student.clone().requires_grad_(True)
        expected = cluster_alignment_loss(reference_student[None], centroids[None])
        expected.backward()
        student_input = student.clone().requires_grad_(True)
        centroid_input = centroids.clone().requires_grad_(True)
        got = _call(student_fn, student_input, centroid_input, case=case)
        _report(torch.is_tensor(got) and got.dim() == 0, f"a scalar tensor on {case}, got "
                f"{tuple(got.shape) if torch.is_tensor(got) else type(got).__name__}")
        value, expected_value = float(got.detach()), float(expected.detach())
        _report(abs(value - expected_value) < 1e-5,
                f"the value on {case}: expected {expected_value:.5f}, got {value:.5f} (assign by cosine "
                "similarity, average each cluster's students, cosine of that mean with its centroid, an "
                "empty cluster counts 1, then -0.5 * the mean over the K clusters)")
        try:
            got.backward()
        except RuntimeError:
            pass                     # no graph: reported just below
        _report(student_input.grad is not None and _relative_error(student_input.grad, reference_student.grad) < 1e-4,
                f"the gradient reaches the students and equals the reference's on {case} (keep the graph "
                "through the cluster means; the assignment itself has no gradient)")
        _report(centroid_input.grad is None or float(centroid_input.grad.abs().max()) == 0,
                f"no gradient reaches the centroids on {case}: they are the detached layer4 teacher "
                "(use centroids.detach())")
    _passed("right on 4 cases (angle and distance disagree, an empty cluster, a single student), "
            "gradient to the students only")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    source, out = (argv + ["notebooks", "notebooks/exercises"][len(argv):])[:2]
    for path in build_exercises(source, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
