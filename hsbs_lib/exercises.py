"""Exercise notebooks for courses, and the checks students run on their answers.

In the numbered notebooks, a code cell tagged ``solution`` is a part a student should write. The
exercise version (``make exercises`` -> notebooks/exercises/NN_*.ipynb) keeps the cell's leading
comment block (the task), keeps function signatures and docstrings, and replaces every body by
``raise NotImplementedError``; top-level assignments become ``name = ...``. The cell tagged ``check``
that follows calls one of the ``check_*`` functions below and says whether the answer works.

A check decides: it compares the answer with values computed by :mod:`hsbs_lib._grading.expected` (code
of its own, never the library function the exercise asks for), on cases chosen so that each known
mistake shows (tests/test_exercises.py names them), and while the answer runs the library's own
implementation of the piece is blocked (:mod:`hsbs_lib._grading.guard`): an answer that only calls it
is told so instead of passing. ``hsbs grade`` runs the same checks on hidden cases too.

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

from hsbs_lib._grading import expected
from hsbs_lib._grading.guard import LibraryCalled, library_blocked
from hsbs_lib.constants import STAGE_NAMES
from hsbs_lib.data.labels import CANONICAL_7
from hsbs_lib.extras import require
from hsbs_lib.losses.bsa import BatchSimilarityAttention
from hsbs_lib.models import create_model
from hsbs_lib.models.base import ModelOutput
from hsbs_lib.viz.style import FONT_SIZE, METHOD_COLORS

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
        exercise = make_exercise(notebook)
        exercise.metadata["hsbs"] = {"exercises_of": path.stem}   # hsbs grade finds its checks by it
        nbformat.write(exercise, target)
        written.append(target)
    return written



# ------------------------------------------------------------------------------------------- checks
# Each check runs the student's answer on several fixed inputs (edge cases included: a batch of one, a
# class without samples) and stops at the first difference with a message saying what differs.
# ``_check_NAME(answer, cases)`` does the work; ``check_NAME(answer)`` runs the cases of the notebook and
# hsbs_lib._grading.hidden other ones.
def _report(ok: bool, message: str) -> None:
    """Stop at the first failed comparison, with what was expected."""
    if not ok:
        raise AssertionError(f"not yet: {message}")


def _passed(summary: str) -> None:
    print(f"✓ {summary}")


#: check name -> the library objects its answer may not call ('module:attr' or 'module:Class.method').
BLOCKED: dict[str, tuple[str, ...]] = {
    "check_majority_baseline": ("hsbs_lib.engine.metrics:classification_metrics",),
    "check_label_mapping": ("hsbs_lib.data.labels:canonical_index",),
    "check_train_step": ("hsbs_lib.engine.train:train_one_epoch", "hsbs_lib.engine.train:fit"),
    "check_training_loop": ("hsbs_lib.engine.train:train_one_epoch", "hsbs_lib.engine.train:fit",
                            "hsbs_lib.engine.evaluate:evaluate"),
    "check_activation_attention": ("hsbs_lib.losses.hst:activation_attention",),
    "check_hst_loss": ("hsbs_lib.losses.hst:hst_loss", "hsbs_lib.losses.hst:_pooled_attention",
                       "hsbs_lib.losses.hst:HSTLoss.forward"),
    "check_bsa_forward": ("hsbs_lib.losses.bsa:BatchSimilarityAttention.forward",
                          "hsbs_lib.losses.bsa:BatchSimilarityAttention.similarity"),
    "check_mean_class_accuracy": ("hsbs_lib.engine.metrics:classification_metrics",),
    "check_row_normalised_confusion": ("hsbs_lib.viz.confusion:confusion", "hsbs_lib.viz.confusion:normalize_rows",
                                       "hsbs_lib.engine.metrics:classification_metrics"),
    "check_gradcam": ("hsbs_lib.viz.gradcam:gradcam",),
    "check_layer_intensity": ("hsbs_lib.engine.train:LearningIntensity.__init__",
                              "hsbs_lib.viz.intensity:LearningIntensityRecorder.__init__"),
    "check_cluster_alignment": ("hsbs_lib.losses.clcl:cluster_alignment_loss",),
    "check_uncertainty_weighting": ("hsbs_lib.losses.uncertainty:UncertaintyWeighting.forward",),
    "check_paper_figure": ("hsbs_lib.viz.curves:plot_per_class_accuracy", "hsbs_lib.viz.confusion:per_class_recall"),
}


def _call(student_fn: Callable, *args, case: str, check: str):
    """The student's answer for one case, with the library's implementation of the piece blocked; an
    exception becomes a 'not yet' naming the case."""
    with library_blocked(student_fn, BLOCKED.get(check, ())) as called:
        try:
            result = student_fn(*args)
        except NotImplementedError:
            raise AssertionError("not yet: the function still raises NotImplementedError (write its body)") from None
        except LibraryCalled:
            result = None
        except Exception as error:  # the student's code may fail in any way; say where
            if not called:
                raise AssertionError(f"not yet: raised {type(error).__name__} ({error}) on {case}") from None
    _report(not called, f"on {case} the answer calls the library's own "
                        f"`{called[0].replace(':', '.') if called else ''}`; the exercise is to write it yourself")
    return result


def _relative_error(got, expected) -> float:
    """max |got - expected| / max(|expected|), 0 when both are all zero."""
    got, expected = torch.as_tensor(got).detach().double(), torch.as_tensor(expected).detach().double()
    scale = expected.abs().max().clamp_min(1e-12)
    return float((got - expected).abs().max() / scale)


def _describe(value) -> str:
    return str(tuple(value.shape)) if torch.is_tensor(value) else type(value).__name__


# ---------------------------------------------------------------------------- 00 quickstart
MAJORITY_CASES = {
    "SynthFER-like shares (happiness most frequent)":
        (np.repeat(np.arange(7), [120, 30, 60, 390, 160, 60, 180]), np.repeat(np.arange(7), [12, 3, 6, 39, 16, 6, 20])),
    "a test split whose most frequent class differs from training's":
        (np.array([0, 0, 0, 1, 2, 2]), np.array([2, 2, 2, 2, 0, 1, 1])),
    "a class absent from the test labels": (np.array([1, 1, 1, 0, 2]), np.array([1, 1, 0, 0, 0])),
}


def _check_majority_baseline(student_fn: Callable, cases: dict) -> None:
    for case, (train_labels, test_labels) in cases.items():
        got = _call(student_fn, train_labels.copy(), test_labels.copy(), case=case, check="check_majority_baseline")
        wanted = expected.majority_scores(train_labels, test_labels)
        _report(isinstance(got, dict) and set(wanted) <= set(got),
                f"a dict with {', '.join(wanted)} on {case}, got {_describe(got)}")
        for key, value in wanted.items():
            _report(abs(float(got[key]) - value) < 1e-9,
                    f"{key} on {case}: expected {value:.4f}, got {float(got[key]):.4f} (the majority class comes "
                    "from the TRAINING labels; mean class accuracy and macro-F1 average over the classes present "
                    "in the test labels, a class never predicted has precision 0 and F1 0)")


def check_majority_baseline(student_fn: Callable) -> None:
    """Checks student_fn(train_labels (N,), test_labels (M,)) -> {"accuracy", "mean_class_accuracy",
    "macro_f1"} of the classifier that always answers the most frequent training class."""
    _check_majority_baseline(student_fn, MAJORITY_CASES)
    _passed("right on 3 label sets (the majority taken from training, a class absent from the test labels)")


# ---------------------------------------------------------------------------- 01 data preparation
def _check_label_mapping(student_fn: Callable, cases) -> None:
    for case, class_to_idx, wanted in cases:
        got = _call(student_fn, dict(class_to_idx), case=case, check="check_label_mapping")
        got = np.asarray(got.cpu() if torch.is_tensor(got) else got).reshape(-1).tolist()
        _report(len(got) == len(wanted), f"one entry per dataset class on {case}: {len(wanted)}, got {len(got)}")
        wrong = [f"{name} (index {index}) -> {got[index]}, expected {wanted[index]}"
                 for name, index in class_to_idx.items() if got[index] != wanted[index]]
        _report(not wrong, f"lookup[dataset index] = canonical index on {case} (place each name at the index "
                           "the dict gives it, not at its position in the dict)"
                           + (f"; wrong: {', '.join(wrong[:3])}" if wrong else ""))
    with library_blocked(student_fn, BLOCKED["check_label_mapping"]):
        try:
            student_fn({"angry": 0, "hapy": 1})
            raised = None
        except Exception as error:
            raised = error
    _report(isinstance(raised, ValueError) and not isinstance(raised, NotImplementedError),
            "an unknown folder name ('hapy') raises ValueError instead of becoming a class"
            + ("" if raised is None or isinstance(raised, ValueError) else f" (got {type(raised).__name__})"))


def check_label_mapping(student_fn: Callable) -> None:
    """Checks student_fn(class_to_idx) -> lookup, a sequence with lookup[dataset index] = canonical index
    (RAF-DB order, contempt = 7), matched by name through the synonyms; an unknown name raises ValueError.
    Some dicts list their names out of index order, so the indices must be read, not assumed."""
    _check_label_mapping(student_fn, expected.LABEL_LOOKUPS)
    _passed("right on 5 label orders (FER2013 folders and csv, AffectNet with contempt, dicts out of "
            "index order), and a typo is refused")


# ---------------------------------------------------------------------------- 02 training
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


def _seeded_model(seed: int) -> _TwoTermModel:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = _TwoTermModel().eval()
    torch.random.set_rng_state(state)
    return model


class _AutocastSpy(torch.autocast):
    """torch.autocast that records the device_type it is given and runs on the CPU: the check asks for
    device_type "cuda" on a CPU-only model to see that the answer passes on what it was given."""
    requested: list = []

    def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        type(self).requested.append(str(device_type))
        super().__init__("cpu", dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


def _spying_autocast(student_fn: Callable):
    """A context manager that routes torch.autocast (and its aliases in the answer's globals) to the spy."""
    import contextlib

    @contextlib.contextmanager
    def spying():
        _AutocastSpy.requested = []
        originals = (torch.autocast, torch.amp.autocast)
        namespace = getattr(student_fn, "__globals__", {})
        aliases = [key for key, value in namespace.items() if any(value is original for original in originals)]
        torch.autocast = torch.amp.autocast = _AutocastSpy
        for key in aliases:
            namespace[key] = _AutocastSpy
        try:
            yield _AutocastSpy.requested
        finally:
            torch.autocast, torch.amp.autocast = originals
            for key in aliases:
                namespace[key] = originals[0]
    return spying()


TRAIN_STEP_CASES = {"a batch of 8": (8, "cpu"), "a batch of 2, device_type 'cuda'": (2, "cuda")}


def _check_train_step(student_fn: Callable, cases: dict) -> None:
    generator = torch.Generator().manual_seed(0)
    for case, (batch_size, device_type) in cases.items():
        model = _seeded_model(batch_size)
        for parameter in model.parameters():               # leftovers that a missing zero_grad would add
            parameter.grad = torch.full_like(parameter, 0.5)
        batch = {"image": torch.randn(batch_size, 3, 8, 8, generator=generator),
                 "label": torch.randint(0, 3, (batch_size,), generator=generator)}
        reference = copy.deepcopy(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
        reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=0.05)
        wanted = expected.train_step(reference, {k: v.clone() for k, v in batch.items()}, reference_optimizer, "cpu")
        with _spying_autocast(student_fn) as requested:
            got = _call(student_fn, model, {k: v.clone() for k, v in batch.items()}, optimizer, device_type,
                        case=case, check="check_train_step")
        _report(isinstance(got, float), f"returns the loss as a Python float on {case}, got {type(got).__name__}")
        _report(model.training, f"the model is left in training mode on {case} (call model.train() first)")
        _report(requested == [device_type],
                f"one torch.autocast on the device_type the step is given ({device_type!r}) on {case}, got "
                f"{requested or 'none'} (pass device_type through: torch.autocast(device_type=device_type, ...))")
        _report(abs(got - wanted) <= 1e-6 * max(1.0, abs(wanted)),
                f"the loss on {case}: expected {wanted:.6f}, got {got:.6f} (training mode, the sum of every "
                "term of model.loss, forward and loss inside torch.autocast(device_type, dtype=torch.bfloat16))")
        moved = max(float((p.detach() - q.detach()).abs().max())
                    for p, q in zip(model.parameters(), reference.parameters()))
        _report(moved < 1e-6, f"the weights after the step on {case} differ from the reference's by {moved:.1e} "
                              "(zero the old gradients, backward, then optimizer.step())")


def check_train_step(student_fn: Callable) -> None:
    """Checks student_fn(model, batch {"image": (B, 3, H, W), "label": (B,)}, optimizer, device_type) -> float:
    one bf16-autocast training step, against the reference on a tiny model (with batch norm and two loss
    terms), starting from an eval-mode model whose gradients hold leftovers of an earlier step. One case
    passes device_type "cuda" (the autocast it opens is recorded, then run on the CPU), so a device
    written into the answer instead of the argument shows."""
    _check_train_step(student_fn, TRAIN_STEP_CASES)
    _passed("one bf16 step matches the reference on 2 batches: training mode, fresh gradients, every loss "
            "term, the optimiser step, autocast on the device it was given")


def _loop_data(seed: int, train_sizes: tuple[int, ...], val_sizes: tuple[int, ...]) -> tuple[list, list]:
    generator = torch.Generator().manual_seed(seed)

    def batches(sizes):
        return [{"image": torch.randn(size, 3, 8, 8, generator=generator),
                 "label": torch.randint(0, 3, (size,), generator=generator)} for size in sizes]
    return batches(train_sizes), batches(val_sizes)


#: case -> (model seed, data seed, training batch sizes, validation batch sizes, learning rate, epochs);
#: chosen so that the best epoch is not the last, two epochs tie, and the validation batches differ in
#: size (tests/test_exercises.py keeps them so).
TRAINING_LOOP_CASES = {
    "4 epochs, validation batches of 7 and 2": (1, 3, (8, 8), (7, 2), 0.3, 4),
    "5 epochs, validation batches of 3, 3 and 1": (3, 3, (6, 6, 6), (3, 3, 1), 0.3, 5),
}


def _check_training_loop(student_fn: Callable, cases: dict) -> None:
    for case, (model_seed, data_seed, train_sizes, val_sizes, lr, epochs) in cases.items():
        train_batches, val_batches = _loop_data(data_seed, train_sizes, val_sizes)
        model, reference = _seeded_model(model_seed), _seeded_model(model_seed)
        wanted = expected.train_loop(reference, copy.deepcopy(train_batches), copy.deepcopy(val_batches),
                                     torch.optim.SGD(reference.parameters(), lr=lr, momentum=0.9), epochs, "cpu")
        got = _call(student_fn, model, copy.deepcopy(train_batches), copy.deepcopy(val_batches),
                    torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9), epochs, "cpu",
                    case=case, check="check_training_loop")
        _report(isinstance(got, dict) and {"history", "best_epoch"} <= set(got),
                f"a dict with 'history' and 'best_epoch' on {case}, got {_describe(got)}")
        history = got["history"]
        _report(isinstance(history, (list, tuple)) and len(history) == epochs,
                f"one history row per epoch on {case}: {epochs}, got {len(history) if hasattr(history, '__len__') else '?'}")
        for row, wanted_row in zip(history, wanted["history"]):
            epoch = wanted_row["epoch"]
            _report(isinstance(row, dict) and row.get("epoch") == epoch,
                    f"row {epoch} on {case} has 'epoch': {epoch} (epochs counted from 1), got {row}")
            _report(abs(float(row["train_loss"]) - wanted_row["train_loss"]) < 1e-5,
                    f"train_loss of epoch {epoch} on {case}: expected {wanted_row['train_loss']:.5f}, got "
                    f"{float(row['train_loss']):.5f} (the mean of that epoch's step losses, a train_step per "
                    "batch in order; validate in eval mode so batch norm's statistics are left alone)")
            _report(abs(float(row["val_accuracy"]) - wanted_row["val_accuracy"]) < 1e-9,
                    f"val_accuracy of epoch {epoch} on {case}: expected {wanted_row['val_accuracy']:.4f}, got "
                    f"{float(row['val_accuracy']):.4f} (model.eval() and torch.no_grad(); correct / total over "
                    "every validation image, not the mean of the batch accuracies)")
        _report(got["best_epoch"] == wanted["best_epoch"],
                f"best_epoch on {case}: expected {wanted['best_epoch']}, got {got['best_epoch']} (the highest "
                "validation accuracy, the earlier epoch on a tie)")
        moved = max(float((p.detach().double() - q.detach().double()).abs().max())
                    for p, q in zip(model.state_dict().values(), reference.state_dict().values()))
        _report(moved < 1e-6, f"after the loop on {case} the model holds the best epoch's weights and batch-norm "
                              f"statistics (largest difference {moved:.1e}): keep copy.deepcopy(model.state_dict()) "
                              "of the best epoch (a plain state_dict() follows the live tensors) and load it back "
                              "at the end")


def check_training_loop(student_fn: Callable) -> None:
    """Checks student_fn(model, train_batches, val_batches, optimizer, epochs, device_type) ->
    {"history": [{"epoch", "train_loss", "val_accuracy"}, ...], "best_epoch"}: a whole training loop with
    validation and best-epoch selection, against the reference loop on a tiny model with batch norm; the
    model must end with the best epoch's state. The answer uses the notebook's own train_step."""
    _check_training_loop(student_fn, TRAINING_LOOP_CASES)
    _passed("the loop matches the reference on 2 runs: losses, validation accuracy over uneven batches, the "
            "best epoch (a tie, not the last) and its weights restored")


# ---------------------------------------------------------------------------- 03 HST
def _activation_cases() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"a (2, 8, 5, 5) batch": torch.randn(2, 8, 5, 5, generator=generator),
            "a batch of one (1, 3, 4, 4)": torch.randn(1, 3, 4, 4, generator=generator),
            "a non-square (3, 16, 8, 6) map": torch.randn(3, 16, 8, 6, generator=generator) * 5,
            "all-zero features (2, 4, 3, 3)": torch.zeros(2, 4, 3, 3)}


def _check_activation_attention(student_fn: Callable, cases: dict) -> None:
    for case, features in cases.items():
        inputs = features.clone().requires_grad_(True)
        got = _call(student_fn, inputs, case=case, check="check_activation_attention")
        wanted = expected.activation_attention(features)
        _report(torch.is_tensor(got) and tuple(got.shape) == tuple(wanted.shape),
                f"shape (B, H, W) = {tuple(wanted.shape)} for {case}, got {_describe(got)}")
        error = _relative_error(got, wanted)
        _report(error < 1e-5, f"values for {case} equal the mean over channels of the squared features "
                              f"(relative error {error:.1e}; square each value, then average over dim 1)")
        upstream = torch.linspace(-1, 1, got.numel()).view_as(got)
        _report(got.requires_grad, f"the gradient flows back to the features on {case} (compute with torch "
                                   "operations, no .detach(), .numpy() or torch.no_grad())")
        (got * upstream.to(got.dtype)).sum().backward()
        gradient = expected.activation_attention_gradient(features, upstream)
        _report(inputs.grad is not None and _relative_error(inputs.grad, gradient) < 1e-4,
                f"the gradient with respect to the features on {case} is 2 F / C times the upstream gradient")


def check_activation_attention(student_fn: Callable) -> None:
    """Checks an activation-attention function: (B, C, H, W) -> (B, H, W), mean over channels of F^2,
    values and the gradient to the features."""
    _check_activation_attention(student_fn, _activation_cases())
    _passed('right on 4 inputs (a batch of one, a non-square map, all-zero features), gradient included')


HST_CASES = ((3, 32, 4), (2, 33, 5), (1, 8, 4), (4, 17, 5))


def _check_hst_loss(student_fn: Callable, cases) -> None:
    generator = torch.Generator().manual_seed(0)
    for batch, cells, teacher_cells in cases:
        case = f"a ({batch}, {cells}, {cells}) student on a {teacher_cells}x{teacher_cells} teacher"
        teacher = torch.rand(batch, teacher_cells, teacher_cells, generator=generator, requires_grad=True)
        student = torch.rand(batch, cells, cells, generator=generator, requires_grad=True)
        loss = _call(student_fn, student, teacher, case=case, check="check_hst_loss")
        _report(torch.is_tensor(loss) and loss.dim() == 0, f"returns a scalar tensor for {case}")
        wanted = expected.hst_term(student, teacher)
        _report(abs(float(loss.detach()) - wanted) <= 1e-4 * abs(wanted) + 1e-7,
                f"value for {case}: expected {wanted:.6g}, got {float(loss.detach()):.6g} (pool with "
                "pool_to_teacher_grid, normalise each sample's flattened map to unit length, mean of the "
                "squared differences)")
        loss.backward()
        _report(student.grad is not None and student.grad.abs().sum() > 0, "the gradient reaches the student map")
        _report(teacher.grad is None or teacher.grad.abs().sum() == 0, "the teacher is detached (stop-gradient)")
    scaled = torch.rand(2, 32, 32, generator=generator)
    teacher = torch.rand(2, 4, 4, generator=generator)
    ten_times = _call(student_fn, 10 * scaled, teacher, case="a student map scaled by 10", check="check_hst_loss")
    _report(torch.allclose(ten_times, _call(student_fn, scaled, teacher, case="the same map", check="check_hst_loss"),
                           rtol=1e-4),
            "only the shape of a map matters, not its scale (normalise before comparing)")


def check_hst_loss(student_fn: Callable) -> None:
    """Checks an HST loss student_fn(student (B,h,w), teacher (B,h',w')) -> scalar.

    Expected: the student put on the teacher's grid with ``pool_to_teacher_grid``, both maps flattened and
    L2-normalised per sample, the squared distance averaged over samples and positions, no gradient into
    the teacher. Compared on several shapes (64 px maps: 32 -> 4 cells; 65 px maps: 33 -> 5; a batch of one).
    """
    _check_hst_loss(student_fn, HST_CASES)
    _passed("right on 4 shape pairs (65 px and 64 px grids, a batch of one): values, gradient, "
            "stop-gradient, scale invariance")


# ---------------------------------------------------------------------------- 04 BSA
def _check_uniform_similarity(bsa: torch.nn.Module, z: torch.Tensor, similarity: torch.Tensor,
                              other_sizes: tuple[int, ...]) -> None:
    batch_size = z.shape[0]
    _report(isinstance(bsa, BatchSimilarityAttention), f"uniform_bsa is a BatchSimilarityAttention, got {_describe(bsa)}")
    _report(torch.is_tensor(similarity) and tuple(similarity.shape) == (batch_size, batch_size),
            f"S has shape (B, B) = ({batch_size}, {batch_size}) for a batch of {batch_size}, got {_describe(similarity)}")
    with torch.no_grad():
        _report(_relative_error(similarity, bsa.similarity(z)) < 1e-6,
                "S is the module's similarity of this z (compute it with uniform_bsa.similarity(z), after zeroing)")
        generator = torch.Generator().manual_seed(1)
        others = {size: bsa.similarity(3 * torch.randn(size, z.shape[1], generator=generator)) for size in other_sizes}
    _report(_relative_error(similarity, torch.full((batch_size, batch_size), 1 / batch_size)) < 1e-6,
            f"every entry is 1/B = {1 / batch_size:.4f} for this batch")
    for size, other in others.items():
        _report(_relative_error(other, torch.full((size, size), 1 / size)) < 1e-6,
                f"the module gives a uniform S for any batch, not only this one (a batch of {size} was not: "
                "with zero queries and keys every score is the same; a matrix written by hand does not change "
                "the module)")


def check_uniform_similarity(bsa: torch.nn.Module, z: torch.Tensor, similarity: torch.Tensor) -> None:
    """Checks the uniform-similarity exercise: ``bsa`` a BatchSimilarityAttention changed so that its
    similarity is uniform, ``z`` (B, D) the batch, ``similarity`` (B, B) = bsa.similarity(z), each entry 1/B.

    The module itself is tried on other batches, so a hand-written matrix of 1/B does not pass; any change
    that truly makes every score equal passes (zeroing queries and keys, or only the query projection,
    whose zero query scores 0 against every key).
    """
    _check_uniform_similarity(bsa, z, similarity, (z.shape[0], 3, 9))
    _passed('S uniform (1/B) for this batch and for batches of 3 and 9 from the same module')


def _bsa_cases(seed: int = 0) -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    """Seeded cosine BSA layers with a gate away from 1 (so a forgotten gamma shows) and their batches."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
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


def _check_bsa_forward(student_fn: Callable, cases: dict) -> None:
    for case, (bsa, z) in cases.items():
        expected_mixed, expected_similarity = expected.bsa_forward(bsa, z)
        with torch.no_grad():
            answer = _call(student_fn, bsa, z.clone(), case=case, check="check_bsa_forward")
        _report(isinstance(answer, tuple) and len(answer) == 2, f"returns (z~, S) on {case}")
        mixed, similarity = answer
        batch = z.shape[0]
        _report(tuple(similarity.shape) == (batch, batch) and tuple(mixed.shape) == tuple(z.shape),
                f"shapes z~ {tuple(z.shape)} and S ({batch}, {batch}) on {case}, got "
                f"{tuple(mixed.shape)} and {tuple(similarity.shape)}")
        _report(torch.allclose(similarity.sum(dim=1).double(), torch.ones(batch, dtype=torch.float64), atol=1e-5),
                f"every row of S sums to 1 on {case} (softmax over j, the keys: dim=1)")
        error = _relative_error(similarity, expected_similarity)
        _report(error < 1e-4, f"S on {case} (relative error {error:.1e}): cosine of queries and keys "
                              "(normalise both to unit length), divided by bsa.temperature, softmax over each row")
        error = _relative_error(mixed, expected_mixed)
        _report(error < 1e-4, f"z~ on {case} (relative error {error:.1e}): z + bsa.gamma * bsa.out(S @ bsa.value(z))")


def check_bsa_forward(student_fn: Callable) -> None:
    """Checks student_fn(bsa, z (B, C)) -> (z~ (B, C), S (B, B)) for a cosine BatchSimilarityAttention:
    S = softmax over j of cos(q_i, k_j) / tau, z~ = z + gamma W_o (S V). The layer's own forward and
    similarity are blocked while the answer runs."""
    _check_bsa_forward(student_fn, _bsa_cases())
    _passed("S and z~ right on 3 batches (a batch of one, two temperatures)")


# ---------------------------------------------------------------------------- 05 metrics
MEAN_CLASS_ACCURACY_CASES = {
    "a 3-class matrix": [[8, 2, 0], [1, 1, 0], [0, 0, 10]],
    "a class with no test image (row 1 empty)": [[5, 0, 0], [0, 0, 0], [1, 0, 3]],
    "a single test image": [[0, 1], [0, 0]],
    "a class predicted but never present": [[2, 1, 0], [0, 0, 0], [0, 3, 1]],
    "a 7-class imbalanced matrix": [[30, 2, 0, 5, 0, 0, 3], [1, 2, 0, 0, 0, 0, 0], [0, 0, 4, 1, 0, 3, 0],
                                    [2, 0, 1, 150, 3, 0, 4], [0, 0, 0, 6, 40, 1, 13], [0, 0, 3, 2, 1, 20, 4],
                                    [1, 0, 0, 9, 8, 1, 60]],
}


def _check_mean_class_accuracy(student_fn: Callable, cases: dict) -> None:
    for case, matrix in cases.items():
        counts = np.array(matrix, dtype=np.int64)
        got = _call(student_fn, counts.copy(), case=case, check="check_mean_class_accuracy")
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise AssertionError(f"not yet: returns a number, got {type(got).__name__} on {case}") from None
        wanted = expected.mean_class_accuracy(counts)
        _report(np.isfinite(got), f"a finite number on {case}, got {got} (skip classes whose row is empty)")
        _report(abs(got - wanted) < 1e-9,
                f"mean of the per-class recalls on {case}: expected {wanted:.4f}, got {got:.4f} (diagonal over "
                "row totals, averaged over the classes that have test images)")


def check_mean_class_accuracy(student_fn: Callable) -> None:
    """Checks mean class accuracy from a confusion matrix (rows = true class), empty classes skipped."""
    _check_mean_class_accuracy(student_fn, MEAN_CLASS_ACCURACY_CASES)
    _passed('right on 5 confusion matrices (a class without test images, a single image)')


def _confusion_cases() -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    rng = np.random.default_rng(0)
    labels = rng.choice(7, size=60, p=[0.1, 0.03, 0.06, 0.39, 0.16, 0.06, 0.2])
    predictions = np.where(rng.random(60) < 0.6, labels, rng.integers(0, 7, size=60))
    return {
        "60 images of 7 classes": (labels, predictions, 7),
        "a class with no image (class 1 of 3)": (np.array([0, 0, 2, 2, 2]), np.array([0, 1, 2, 0, 1]), 3),
        "a single image": (np.array([1]), np.array([0]), 2),
        "a class never predicted": (np.array([0, 1, 1, 2, 2, 2]), np.array([0, 0, 0, 2, 2, 0]), 3),
        "the last two of 5 classes neither present nor predicted": (np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]), 5),
    }


def _check_row_normalised_confusion(student_fn: Callable, cases: dict) -> None:
    for case, (labels, predictions, num_classes) in cases.items():
        got = _call(student_fn, labels.copy(), predictions.copy(), num_classes, case=case,
                    check="check_row_normalised_confusion")
        got = np.asarray(got.detach().cpu() if torch.is_tensor(got) else got, dtype=np.float64)
        wanted = expected.row_normalised_confusion(labels, predictions, num_classes)
        _report(got.shape == wanted.shape, f"shape (K, K) = {wanted.shape} on {case}, got {got.shape} (K is "
                                           "num_classes, not the largest label seen + 1)")
        _report(bool(np.isfinite(got).all()), f"no NaN on {case} (a class without images gets a row of zeros)")
        _report(np.allclose(got.sum(axis=1), wanted.sum(axis=1)),
                f"each row sums to 1 (0 for a class without images) on {case}: rows sum to "
                f"{np.round(got.sum(axis=1), 3).tolist()} (rows = true class, divide each row by its own total)")
        _report(np.allclose(got, wanted, atol=1e-9),
                f"entry (i, j) = share of class i's images predicted as j on {case} (largest difference "
                f"{float(np.abs(got - wanted).max()):.3f}; rows are true classes, columns predictions)")


def check_row_normalised_confusion(student_fn: Callable) -> None:
    """Checks student_fn(labels (N,), predictions (N,), num_classes) -> (K, K): counts of (true, predicted)
    pairs, each row divided by its total; a class without images gets a row of zeros (not NaN); K comes
    from num_classes (one case leaves the highest classes out of the data)."""
    _check_row_normalised_confusion(student_fn, _confusion_cases())
    _passed('right on 5 cases (a class without images, a single image, a class never predicted, '
            'the highest classes absent)')


# ---------------------------------------------------------------------------- 06 Grad-CAM, intensity
def _gradcam_test_model(seed: int = 0) -> torch.nn.Module:
    """A tiny seeded CNN: 3 -> 6 -> 8 channels, a 3-class linear head (the check's fixed model)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 8, 3, stride=2, padding=1),           # the target: signed activations
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 3)).eval()
    torch.random.set_rng_state(generator_state)
    return model


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def _check_gradcam(student_fn: Callable, seed: int, size: int) -> None:
    model = _gradcam_test_model(seed)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 3, size, size, generator=generator)
    cases = {"4 images, class 0, the second conv": (model[2], images, 0),
             "a batch of one, class 2": (model[2], images[1:2], 2),
             "4 images, class 1, the first conv (full resolution)": (model[0], images, 1)}
    for case, (layer, inputs, class_index) in cases.items():
        got = _call(student_fn, model, layer, inputs.clone(), class_index, case=case, check="check_gradcam")
        wanted = expected.gradcam(model, layer, inputs, class_index)
        _report(_hook_count(model) == 0, f"every hook is removed after the call ({case}): keep the handles "
                                         "that register_*_hook returns and call .remove(), in a finally block")
        _report(torch.is_tensor(got) and tuple(got.shape) == tuple(wanted.shape),
                f"shape (B, h, w) = {tuple(wanted.shape)} on {case}, got {_describe(got)}")
        _report(float(got.min()) >= 0, f"no negative value on {case} (the ReLU keeps the positive evidence)")
        error = _relative_error(got, wanted)
        _report(error < 1e-4, f"values on {case} (relative error {error:.1e}): alpha_k = mean over positions of "
                              "d score / d F_k for each image, then ReLU(sum_k alpha_k F_k)")
    single = _call(student_fn, model, model[2], images[:1].clone(), 0, case="the first image alone", check="check_gradcam")
    batched = _call(student_fn, model, model[2], images.clone(), 0, case="the batch", check="check_gradcam")
    _report(_relative_error(single[0], batched[0]) < 1e-4,
            "an image's map does not depend on the rest of its batch (a weight per image and channel)")


def check_gradcam(student_fn: Callable) -> None:
    """Checks student_fn(model, layer, images (B, 3, H, W), class_index) -> (B, h, w) Grad-CAM at ``layer``'s
    resolution (no upsampling, no rescaling), with every hook removed afterwards."""
    _check_gradcam(student_fn, 0, 12)
    _passed('right on 3 cases (two layers, a batch of one), hooks removed, each image independent of its batch')


INTENSITY_LAYERS = STAGE_NAMES


def _intensity_cases(seed: int = 0) -> dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]:
    """Small seeded baselines in training mode (batch statistics), at two sizes and batch sizes."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    narrow = create_model("baseline", num_classes=3, backbone_width=8).train()
    five = create_model("baseline", num_classes=5, backbone_width=8, stem="no_maxpool").train()
    torch.random.set_rng_state(generator_state)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(8, 3, 32, 32, generator=generator)
    return {"8 images of 32 px, 3 classes": (narrow, images, torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])),
            "2 images": (narrow, images[:2], torch.tensor([2, 1])),
            "6 images, 5 classes, another stem": (five, images[:6], torch.tensor([4, 0, 3, 1, 2, 4]))}


def _check_layer_intensity(student_fn: Callable, cases: dict) -> None:
    for case, (model, images, labels) in cases.items():
        wanted = expected.layer_intensity(copy.deepcopy(model), images, labels, INTENSITY_LAYERS)
        got = _call(student_fn, copy.deepcopy(model), images.clone(), labels.clone(), case=case,
                    check="check_layer_intensity")
        _report(isinstance(got, dict) and set(INTENSITY_LAYERS) <= set(got),
                f"a dict with one value per layer ({', '.join(INTENSITY_LAYERS)}) on {case}, got "
                f"{sorted(got) if isinstance(got, dict) else type(got).__name__}")
        for layer in INTENSITY_LAYERS:
            value = float(torch.as_tensor(got[layer]).detach())
            _report(np.isfinite(value) and value >= 0,
                    f"{layer} on {case} is a mean of absolute values (>= 0), got {value:.3g}")
            error = abs(value - wanted[layer]) / max(wanted[layer], 1e-12)
            _report(error < 1e-3,
                    f"{layer} on {case}: expected {wanted[layer]:.4g}, got {value:.4g}: the gradient of "
                    "the batch-mean cross-entropy with respect to the stage OUTPUT maps['features/"
                    f"{layer}'] (not its weights), then the mean of its absolute values")


def check_layer_intensity(student_fn: Callable) -> None:
    """Checks student_fn(model, images (B, 3, H, W), labels (B,)) -> {layerN: float}: the mean absolute
    gradient of the batch-mean cross-entropy with respect to each stage output, layer1 to layer4."""
    _check_layer_intensity(student_fn, _intensity_cases())
    _passed("right on 3 batches (2 to 8 images, two stems), for all four layers")


# ---------------------------------------------------------------------------- 07 methods
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


def _check_cluster_alignment(student_fn: Callable, cases: dict) -> None:
    for case, (student, centroids) in cases.items():
        wanted, wanted_gradient = expected.cluster_alignment(student, centroids)
        student_input = student.clone().requires_grad_(True)
        centroid_input = centroids.clone().requires_grad_(True)
        got = _call(student_fn, student_input, centroid_input, case=case, check="check_cluster_alignment")
        _report(torch.is_tensor(got) and got.dim() == 0, f"a scalar tensor on {case}, got {_describe(got)}")
        value = float(got.detach())
        _report(abs(value - wanted) < 1e-5,
                f"the value on {case}: expected {wanted:.5f}, got {value:.5f} (assign by cosine "
                "similarity, average each cluster's students, cosine of that mean with its centroid, an "
                "empty cluster counts 1, then -0.5 * the mean over the K clusters)")
        try:
            got.backward()
        except RuntimeError:
            pass                     # no graph: reported just below
        _report(student_input.grad is not None and _relative_error(student_input.grad, wanted_gradient) < 1e-4,
                f"the gradient reaches the students and equals the formula's on {case} (keep the graph "
                "through the cluster means; the assignment itself has no gradient)")
        _report(centroid_input.grad is None or float(centroid_input.grad.abs().max()) == 0,
                f"no gradient reaches the centroids on {case}: they are the detached layer4 teacher "
                "(use centroids.detach())")


def check_cluster_alignment(student_fn: Callable) -> None:
    """Checks student_fn(student (N, D), centroids (K, D)) -> scalar: each student goes to the centroid of
    highest cosine similarity, each cluster's mean student is compared with its centroid by cosine
    similarity (an empty cluster counts 1), L = -0.5 * mean over the K clusters; the centroids (the
    detached teacher) receive no gradient."""
    _check_cluster_alignment(student_fn, _alignment_cases())
    _passed("right on 4 cases (angle and distance disagree, an empty cluster, a single student), "
            "gradient to the students only")


UNCERTAINTY_CASES = {
    "three terms": ({"ce": 0.7, "pose": 2.3, "ce/layer2": 0.05}, {"ce": 0.0, "pose": 1.5, "ce/layer2": -2.0}),
    "a single term": ({"ce": 1.2}, {"ce": 0.4}),
    "a very large log-variance (s = 100)": ({"ce": 0.9, "pose": 3.0}, {"ce": 100.0, "pose": -0.5}),
}


def _check_uncertainty_weighting(student_fn: Callable, cases: dict) -> None:
    for case, (losses, log_variances) in cases.items():
        wanted = {name: expected.uncertainty_term(losses[name], log_variances[name]) for name in losses}
        loss_tensors = {name: torch.tensor(value, requires_grad=True) for name, value in losses.items()}
        variables = {name: torch.tensor(value, requires_grad=True) for name, value in log_variances.items()}
        got = _call(student_fn, dict(loss_tensors), dict(variables), case=case, check="check_uncertainty_weighting")
        _report(isinstance(got, dict) and set(got) == set(losses), f"one weighted term per loss name on {case}")
        for name in losses:
            value = float(torch.as_tensor(got[name]).detach())
            _report(np.isfinite(value), f"{name} on {case} is finite, got {value} (log(1 + exp(s)) overflows "
                                        "for large s: torch.nn.functional.softplus(s) computes it safely)")
            _report(abs(value - wanted[name][0]) <= 1e-5 * max(1.0, abs(wanted[name][0])),
                    f"{name} on {case}: expected {wanted[name][0]:.6g}, got {value:.6g} "
                    "(0.5 * exp(-s) * L + log(1 + exp(s)) with s = log sigma^2)")
        try:
            sum(got.values()).backward()
        except (AttributeError, RuntimeError, TypeError):
            pass                     # no graph: reported just below
        for name in losses:
            for variable, index, what in ((variables[name], 2, "log-variance s"), (loss_tensors[name], 1, "loss L")):
                gradient = None if variable.grad is None else float(variable.grad)
                _report(gradient is not None and abs(gradient - wanted[name][index]) <= 1e-4 * max(1.0, abs(wanted[name][index])),
                        f"the gradient with respect to {name}'s {what} on {case}: expected {wanted[name][index]:.6g}, "
                        f"got {gradient} (compute with torch on s and L themselves, nothing detached: "
                        "d/ds = -0.5 exp(-s) L + sigmoid(s), d/dL = 0.5 exp(-s))")


def check_uncertainty_weighting(student_fn: Callable) -> None:
    """Checks student_fn(losses {name: scalar}, log_variances {name: scalar s = log sigma^2}) -> {name: weighted}
    with weighted = L / (2 sigma^2) + log(1 + sigma^2): values, and the gradients to s and to L."""
    _check_uncertainty_weighting(student_fn, UNCERTAINTY_CASES)
    _passed("weighted terms right on 3 cases (a single term, a very large log-variance), with the right "
            "gradients to every sigma and every loss")


# ---------------------------------------------------------------------------- 08 paper figures
#: case -> {method: (confusion matrix, classes, dataset)}; every run of a case is scored on the same split.
PAPER_FIGURE_CASES = {
    "two runs on 7 SynthFER classes": {
        "baseline": ([[9, 1, 0, 0, 0, 0, 0], [2, 1, 0, 0, 0, 0, 0], [0, 0, 4, 2, 0, 0, 0], [0, 0, 1, 38, 0, 0, 1],
                      [0, 0, 0, 1, 13, 0, 2], [0, 0, 1, 0, 0, 5, 0], [0, 0, 0, 2, 3, 0, 15]], CANONICAL_7, "synthfer"),
        "hsbs": ([[10, 0, 0, 0, 0, 0, 0], [1, 2, 0, 0, 0, 0, 0], [0, 0, 3, 3, 0, 0, 0], [0, 0, 0, 39, 0, 0, 1],
                  [0, 0, 0, 1, 12, 0, 3], [0, 1, 0, 0, 0, 5, 0], [0, 0, 0, 1, 2, 0, 17]], CANONICAL_7, "synthfer")},
}


def _write_eval_runs(folder: Path, runs: dict) -> dict[str, Path]:
    """One run folder per method holding only eval.json, as `hsbs train` writes it."""
    import json
    paths = {}
    for name, (matrix, classes, dataset) in runs.items():
        run = folder / "runs" / name
        run.mkdir(parents=True, exist_ok=True)
        counts = np.asarray(matrix)
        (run / "eval.json").write_text(json.dumps({
            "dataset": dataset, "split": "test", "classes": list(classes), "n": int(counts.sum()),
            "accuracy": float(np.trace(counts) / counts.sum()), "confusion_matrix": counts.tolist()}))
        paths[name] = run
    return paths


def _check_paper_figure(student_fn: Callable, cases: dict) -> None:
    import tempfile

    import matplotlib.colors
    import matplotlib.figure
    import matplotlib.pyplot as plt
    from matplotlib.container import BarContainer
    from matplotlib.text import Text

    for case, runs in cases.items():
        with tempfile.TemporaryDirectory() as scratch:
            folders = _write_eval_runs(Path(scratch), runs)
            out = Path(scratch) / "figures"
            out.mkdir()
            answer = _call(student_fn, dict(folders), out, case=case, check="check_paper_figure")
            _report(isinstance(answer, tuple) and len(answer) == 3,
                    f"returns (figure, caption, pdf path) on {case}, got {_describe(answer)}")
            fig, caption, pdf = answer
            _report(isinstance(fig, matplotlib.figure.Figure), f"the first item is a matplotlib Figure on {case}")
            bar_axes = [ax for ax in fig.axes if any(isinstance(c, BarContainer) for c in ax.containers)]
            _report(len(bar_axes) == 1, f"one panel of bars on {case}, got {len(bar_axes)}")
            ax = bar_axes[0]
            containers = [c for c in ax.containers if isinstance(c, BarContainer)]
            names = list(runs)
            _report([c.get_label() for c in containers] == names,
                    f"one bar series per run, labelled with its name, in the order given ({names}) on {case}, "
                    f"got {[c.get_label() for c in containers]} (ax.bar(..., label=name))")
            classes = list(next(iter(runs.values()))[1])
            for name, container in zip(names, containers):
                heights = [patch.get_height() for patch in container.patches]
                wanted = expected.per_class_recall_percent(runs[name][0])
                _report(len(heights) == len(wanted) and np.allclose(heights, wanted, atol=1e-6),
                        f"{name}'s bars on {case} are its per-class recall in percent, read from eval.json's "
                        f"confusion_matrix: expected {np.round(wanted, 1).tolist()}, got {np.round(heights, 1).tolist()}")
                if name in METHOD_COLORS:
                    colours = {matplotlib.colors.to_hex(patch.get_facecolor()) for patch in container.patches}
                    _report(colours == {METHOD_COLORS[name]},
                            f"{name}'s bars have the package's colour for it, METHOD_COLORS[{name!r}] = "
                            f"{METHOD_COLORS[name]}, on {case} (got {sorted(colours)}): a method keeps one colour "
                            "in every figure")
            ticks = [label.get_text() for label in ax.get_xticklabels()]
            _report(ticks == classes, f"the x ticks name the classes in eval.json's order on {case}, got {ticks}")
            label = ax.get_ylabel().lower()
            _report("recall" in label and "%" in label, f"the y axis says what it shows and its unit, e.g. "
                                                        f"'recall (%)', on {case}; got {ax.get_ylabel()!r}")
            bottom, top = ax.get_ylim()
            _report(bottom == 0 and 100 <= top <= 110, f"the y axis runs from 0 to 100 % (bars start at zero, every "
                                                       f"figure on the same scale) on {case}; got {bottom:g} to {top:g}")
            legend = ax.get_legend() or fig.legends[0] if (ax.get_legend() or fig.legends) else None
            _report(legend is not None and [t.get_text() for t in legend.get_texts()] == names,
                    f"a legend naming the runs on {case}")
            width = fig.get_size_inches()[0]
            _report(width <= 7.2, f"the figure fits a page width (at most 7.2 inches, drawn at its printed size so "
                                  f"fonts print at their size) on {case}; got {width:.1f}")
            fig.canvas.draw()
            small = sorted({round(t.get_fontsize(), 1) for t in fig.findobj(Text) if t.get_text().strip()
                            and t.get_visible() and t.get_fontsize() < 6})
            _report(not small, f"no text under 6 pt (it does not survive printing) on {case}; got sizes {small}")
            n = int(np.asarray(next(iter(runs.values()))[0]).sum())
            dataset = next(iter(runs.values()))[2]
            words = [str(n), "test", dataset, "recall"]
            missing = [word for word in words if not isinstance(caption, str) or word.lower() not in caption.lower()]
            _report(not missing, f"the caption says what is plotted, on which data and how much of it: it lacks "
                                 f"{missing} on {case} (read the dataset, split and n from eval.json)")
            pdf = Path(pdf) if isinstance(pdf, (str, Path)) else None
            _report(pdf is not None and pdf.suffix == ".pdf" and pdf.is_file() and pdf.parent == out,
                    f"the third item is the path of the PDF written into `out` on {case}, got {answer[2]!r}")
            data = pdf.read_bytes()
            _report(data.startswith(b"%PDF"), f"{pdf.name} is a PDF on {case}")
            _report(b"/CreationDate" not in data, f"{pdf.name} carries no creation date on {case}, so a redrawn "
                                                  "figure is byte-for-byte the same (save_figure drops it)")
            _report(b"/Subtype /Image" not in data, f"{pdf.name} is vector graphics on {case}: no raster image "
                                                    "inside (draw with matplotlib, save as PDF, never a PNG pasted in)")
            plt.close(fig)


def check_paper_figure(student_fn: Callable) -> None:
    """Checks student_fn(runs {name: run folder}, out folder) -> (figure, caption, pdf path): the per-class
    recall figure redrawn from each run's eval.json, bars in percent coloured per method, axes labelled
    with units, a legend, a caption naming the metric, dataset, split and image count read from the files,
    at most a page wide with no text under 6 pt, saved as a vector PDF without a creation date."""
    _check_paper_figure(student_fn, PAPER_FIGURE_CASES)
    _passed("the figure matches the runs' eval.json: bars, colours, axes, legend, caption, page width, fonts "
            "and a byte-stable vector PDF")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    source, out = (argv + ["notebooks", "notebooks/exercises"][len(argv):])[:2]
    for path in build_exercises(source, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
