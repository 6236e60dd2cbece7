"""Exercise notebooks are generated from the solution cells, up to date, and hold no solution code."""
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hsbs_lib import exercises
from hsbs_lib._grading import expected
from hsbs_lib._grading.grade import EXERCISES
from hsbs_lib.data.labels import CANONICAL_8, canonical_name
from hsbs_lib.losses.bsa import BatchSimilarityAttention
from hsbs_lib.losses.hst import activation_attention, pool_to_teacher_grid

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


# ------------------------------------------------------------------ every other check: right and wrong answers
def _uniform_bsa(zero=("query", "key"), biases=True, batch=6, fresh_matrix=False, before=False):
    """The BSA exercise's three answers (module, z, S), with one thing done differently."""
    torch.manual_seed(0)
    z = torch.randn(batch, 512)
    bsa = BatchSimilarityAttention(512, 128)
    earlier = bsa.similarity(z).detach()
    with torch.no_grad():
        for name in zero:
            getattr(bsa, name).weight.zero_()
            if biases:
                getattr(bsa, name).bias.zero_()
    similarity = torch.full((6, 6), 1 / 6) if fresh_matrix else earlier if before else bsa.similarity(z)
    return bsa, z, similarity


def _mca_nan_on_empty(cm):
    cm = np.asarray(cm, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.diag(cm) / cm.sum(1)).mean()


def _mca_empty_as_zero(cm):
    cm = np.asarray(cm, dtype=float)
    return (np.diag(cm) / np.maximum(cm.sum(1), 1)).mean()


def _mca_column_normalised(cm):
    cm = np.asarray(cm, dtype=float)
    predicted = cm.sum(0)
    return (np.diag(cm)[predicted > 0] / predicted[predicted > 0]).mean()


def _confusion(normalise="row", transpose=False, nan_rows=False):
    def matrix(labels, predictions, k):
        counts = np.zeros((k, k))
        np.add.at(counts, (predictions, labels) if transpose else (labels, predictions), 1)
        if normalise == "none":
            return counts
        if normalise == "total":
            return counts / counts.sum()
        axis = 1 if normalise == "row" else 0
        total = counts.sum(axis=axis, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return counts / total if nan_rows else np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    return matrix


def _lookup(mode):
    def lookup(class_to_idx):
        names = sorted(class_to_idx, key=class_to_idx.get)
        if mode == "identity":
            return list(range(len(names)))
        if mode == "exact names":                                    # no synonyms: 'happy' is not a class
            return [CANONICAL_8.index(name) for name in names]
        canonical = []
        for name in names:
            found = canonical_name(name)
            canonical.append(CANONICAL_8.index(found) if found else len(CANONICAL_8))   # a typo becomes a class
        if mode == "typo becomes a class":
            return canonical
        if mode == "inverse permutation":                            # canonical index -> dataset index
            return np.argsort(canonical).tolist()
        if mode == "one-based":
            return [index + 1 for index in canonical]
        raise ValueError(mode)
    return lookup


def _right_lookup(class_to_idx):
    lookup = [0] * len(class_to_idx)
    for name, index in class_to_idx.items():
        if canonical_name(name) is None:
            raise ValueError(f"unknown class {name}")
        lookup[index] = CANONICAL_8.index(canonical_name(name))
    return lookup


def _gradcam_with(relu=True, spatial_mean=True, batch_mean=False, remove_hooks=True, gradients=True):
    """A hook-based Grad-CAM with one thing done differently."""
    def cam(model, layer, images, class_index):
        stored = {}

        def keep(module, args, output):
            stored["activations"] = output
            output.register_hook(lambda grad: stored.__setitem__("gradients", grad))

        handle = layer.register_forward_hook(keep)
        try:
            model(images)[:, class_index].sum().backward()
        finally:
            if remove_hooks:
                handle.remove()
        activations, grads = stored["activations"].detach(), stored["gradients"]
        if not gradients:
            weights = torch.ones_like(grads)
        elif spatial_mean:
            weights = grads.mean(dim=(2, 3), keepdim=True)
            if batch_mean:
                weights = weights.mean(dim=0, keepdim=True)
        else:
            weights = grads
        result = (weights * activations).sum(dim=1)
        return F.relu(result) if relu else result
    return cam


def _bsa_forward_with(score="cosine", softmax_dim=1, temperature=True, gamma=True, residual=True):
    """BSA's forward pass with one thing done differently."""
    def forward(bsa, z):
        queries, keys = bsa.query(z), bsa.key(z)
        if score == "cosine":
            scores = F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T
        else:
            scores = queries @ keys.T / queries.shape[1] ** 0.5
        scores = scores / bsa.temperature if temperature else scores
        similarity = scores.softmax(dim=softmax_dim)
        mixed = bsa.out(similarity @ bsa.value(z))
        mixed = bsa.gamma * mixed if gamma else mixed
        return (z + mixed if residual else mixed), similarity
    return forward


def _step_with(train_mode=True, zero_grad=True, terms="all", autocast=True, step=True):
    """One training step with one thing done differently."""
    def train_step(model, batch, optimizer, device_type):
        if train_mode:
            model.train()
        if zero_grad:
            optimizer.zero_grad()
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=autocast):
            output = model(batch["image"])
            named = model.loss(output, batch)
            loss = sum(named.values()) if terms == "all" else named["ce"]
        loss.backward()
        if step:
            optimizer.step()
        return float(loss.detach())
    return train_step


def _weighting_with(scale=0.5, variance="sigma^2", regulariser="softplus"):
    """Uncertainty weighting with one thing done differently."""
    def weigh(losses, log_variances):
        weighted = {}
        for name, loss in losses.items():
            s = log_variances[name]
            precision = torch.exp(-s) if variance == "sigma^2" else torch.exp(-s / 2)
            if regulariser == "softplus":
                penalty = F.softplus(s)
            elif regulariser == "naive":
                penalty = torch.log(1 + torch.exp(s))
            else:
                penalty = s                                       # Kendall et al.'s log sigma^2
            weighted[name] = scale * precision * loss + penalty
        return weighted
    return weigh


def _intensity_with(*, absolute=True, reduction="mean", target="outputs", of="loss"):
    """A layer_intensity answer, right by default, with one mistake switched on."""
    layers = exercises.INTENSITY_LAYERS

    def layer_intensity(model, images, labels):
        output = model(images)
        if of == "logits":
            objective = output.logits.sum()
        else:
            objective = F.cross_entropy(output.logits, labels, reduction=reduction)
        if target == "weights":
            stages = [list(getattr(model.backbone, layer).parameters()) for layer in layers]
            flat = torch.autograd.grad(objective, [p for group in stages for p in group])
            gradients, start = [], 0
            for group in stages:
                gradients.append(torch.cat([g.flatten() for g in flat[start:start + len(group)]]))
                start += len(group)
        else:
            gradients = torch.autograd.grad(objective, [output.maps[f"features/{layer}"] for layer in layers])
        return {layer: float((g.abs() if absolute else g).mean()) for layer, g in zip(layers, gradients)}
    return layer_intensity


def _alignment_with(*, assign="cosine", empty="one", scale=0.5, pooling="cluster_mean", detach=True):
    """A cluster-alignment answer, right by default, with one mistake switched on."""
    def alignment(student, centroids):
        if detach:
            centroids = centroids.detach()
        if assign == "euclidean":
            nearest = torch.cdist(student, centroids).argmin(dim=1)
        else:
            nearest = (F.normalize(student, dim=1) @ F.normalize(centroids, dim=1).T).argmax(dim=1)
        if pooling == "per_student":
            return -scale * F.cosine_similarity(student, centroids[nearest], dim=1).mean()
        cosines = []
        for k in range(len(centroids)):
            members = student[nearest == k]
            if len(members):
                cosines.append(F.cosine_similarity(members.mean(dim=0), centroids[k], dim=0))
            elif empty == "one":
                cosines.append(torch.ones(()))
        return -scale * torch.stack(cosines).mean()
    return alignment


def _step_cpu_autocast(model, batch, optimizer, device_type):
    """Right in every way but one: the autocast device is written in, not taken from the argument."""
    model.train()
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sum(model.loss(model(batch["image"]), batch).values())
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _loop_with(*, validation="eval", accuracy="overall", copy_state=True, tie="earliest", restore=True,
               first_epoch=1):
    """A training loop on top of the reference step, right by default, with one mistake switched on."""
    import copy as copying

    def loop(model, train_batches, val_batches, optimizer, epochs, device_type):
        history, best, best_epoch, best_state = [], -1.0, 0, None
        for epoch in range(first_epoch, epochs + first_epoch):
            losses = [expected.train_step(model, batch, optimizer, device_type) for batch in train_batches]
            if validation == "eval":
                model.eval()
            scores, correct, total = [], 0, 0
            with torch.no_grad():
                for batch in val_batches:
                    hits = int((model(batch["image"]).logits.argmax(1) == batch["label"]).sum())
                    scores.append(hits / len(batch["label"]))
                    correct, total = correct + hits, total + len(batch["label"])
            value = correct / total if accuracy == "overall" else sum(scores) / len(scores)
            history.append({"epoch": epoch, "train_loss": sum(losses) / len(losses), "val_accuracy": value})
            if value > best or (tie == "latest" and value == best):
                best, best_epoch = value, epoch
                best_state = copying.deepcopy(model.state_dict()) if copy_state else model.state_dict()
        if restore:
            model.load_state_dict(best_state)
        return {"history": history, "best_epoch": best_epoch}
    return loop


def _majority_with(*, majority_from="train", over="present", f1="zero"):
    """A majority_baseline answer, right by default, with one mistake switched on."""
    def score(train_labels, test_labels):
        source = train_labels if majority_from == "train" else test_labels
        majority = int(np.bincount(source).argmax())
        classes = np.unique(test_labels) if over == "present" else np.arange(max(train_labels.max(), test_labels.max()) + 1)
        accuracy = float(np.mean(test_labels == majority))
        recalls = [1.0 if k == majority else 0.0 for k in classes]
        f1s = [2 * accuracy / (accuracy + 1) if k == majority else (0.0 if f1 == "zero" else float("nan"))
               for k in classes]
        return {"accuracy": accuracy, "mean_class_accuracy": float(np.mean(recalls)), "macro_f1": float(np.nanmean(f1s))}
    return score


def _figure_with(*, scale=100, caption="data", formats=("pdf",), colours=True, width=6.5, ylabel="recall (%)",
                 tick_size=None):
    """A paper_recall_figure answer, right by default, with one mistake switched on."""
    import json as js

    import matplotlib.pyplot as plt

    from hsbs_lib.viz.style import METHOD_COLORS, save_figure

    def draw(runs, out):
        reports = {name: js.loads((folder / "eval.json").read_text()) for name, folder in runs.items()}
        first = next(iter(reports.values()))
        fig, ax = plt.subplots(figsize=(width, 2.6))
        for index, (name, report) in enumerate(reports.items()):
            counts = np.asarray(report["confusion_matrix"], dtype=float)
            recall = scale * counts.diagonal() / np.maximum(counts.sum(1), 1)
            ax.bar(np.arange(len(counts)) + 0.3 * index, recall, 0.3, label=name,
                   color=METHOD_COLORS.get(name) if colours else None)
        ax.set_xticks(np.arange(len(first["classes"])), first["classes"])
        if tick_size:
            ax.tick_params(labelsize=tick_size)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, scale)
        ax.legend()
        text = (f"Per-class recall on the {first['split']} split of {first['dataset']} ({first['n']} images)."
                if caption == "data" else "Per-class recall on the test split of synthfer (100 images).")
        paths = save_figure(fig, "per_class_recall", out=out, formats=formats)
        return fig, text, paths[0]
    return draw


def _library_bsa_forward(bsa, z):
    return bsa(z)


RIGHT = {
    "check_majority_baseline": lambda: (_majority_with(),),
    "check_uncertainty_weighting": lambda: (_weighting_with(),),
    "check_train_step": lambda: (_step_with(),),
    "check_training_loop": lambda: (_loop_with(),),
    "check_bsa_forward": lambda: (_bsa_forward_with(),),
    "check_activation_attention": lambda: (lambda f: f.pow(2).mean(dim=1),),
    "check_mean_class_accuracy": lambda: (expected.mean_class_accuracy,),
    "check_uniform_similarity": lambda: _uniform_bsa(),
    "check_row_normalised_confusion": lambda: (_confusion(),),
    "check_label_mapping": lambda: (_right_lookup,),
    "check_gradcam": lambda: (_gradcam_with(),),
    "check_layer_intensity": lambda: (_intensity_with(),),
    "check_cluster_alignment": lambda: (_alignment_with(),),
    "check_paper_figure": lambda: (_figure_with(),),
}

def _step_with_imported_autocast():
    """The right step written with ``from torch import autocast`` in the notebook's namespace."""
    namespace = {}
    exec("import torch\nfrom torch import autocast\n"
         "def train_step(model, batch, optimizer, device_type):\n"
         "    model.train()\n    optimizer.zero_grad()\n"
         "    with autocast(device_type, dtype=torch.bfloat16):\n"
         "        loss = sum(model.loss(model(batch['image']), batch).values())\n"
         "    loss.backward()\n    optimizer.step()\n    return float(loss.detach())\n", namespace)
    return namespace["train_step"]


#: Other right answers: every change that truly makes BSA's similarity uniform passes; autocast may be
#: imported under its own name.
ALSO_RIGHT = {
    "check_train_step": {"torch.autocast imported by name": lambda: (_step_with_imported_autocast(),)},
    "check_uniform_similarity": {
        "only the query projection zeroed (a zero query scores 0 against every key)":
            lambda: _uniform_bsa(zero=("query",)),
        "query and key weights zeroed, biases kept (every query and key is the same vector)":
            lambda: _uniform_bsa(biases=False),
    },
}

WRONG = {
    "check_majority_baseline": {
        "majority taken from the test labels": lambda: (_majority_with(majority_from="test"),),
        "averaged over every class, present or not": lambda: (_majority_with(over="all"),),
        "F1 NaN for a class never predicted, then skipped": lambda: (_majority_with(f1="nan"),),
    },
    "check_uncertainty_weighting": {
        "log sigma^2 regulariser instead of log(1 + sigma^2)": lambda: (_weighting_with(regulariser="log"),),
        "no factor 1/2": lambda: (_weighting_with(scale=1.0),),
        "sigma instead of sigma^2": lambda: (_weighting_with(variance="sigma"),),
        "log(1 + exp(s)) that overflows": lambda: (_weighting_with(regulariser="naive"),),
        "s detached inside the weight (gradient to s from the regulariser only)":
            lambda: (lambda losses, s: {n: 0.5 * torch.exp(-s[n].detach()) * l + F.softplus(s[n])
                                        for n, l in losses.items()},),
        "the loss detached (no gradient to L)":
            lambda: (lambda losses, s: {n: 0.5 * torch.exp(-s[n]) * l.detach() + F.softplus(s[n])
                                        for n, l in losses.items()},),
    },
    "check_train_step": {
        "eval mode kept (batch norm uses running statistics)": lambda: (_step_with(train_mode=False),),
        "old gradients not cleared": lambda: (_step_with(zero_grad=False),),
        "only the cross-entropy term": lambda: (_step_with(terms="ce"),),
        "float32, no autocast": lambda: (_step_with(autocast=False),),
        "no optimizer step": lambda: (_step_with(step=False),),
        "autocast hard-coded to the CPU, device_type ignored": lambda: (_step_cpu_autocast,),
    },
    "check_training_loop": {
        "validation in training mode": lambda: (_loop_with(validation="train"),),
        "mean of the batch accuracies": lambda: (_loop_with(accuracy="batch mean"),),
        "best state kept without a copy (follows the live weights)": lambda: (_loop_with(copy_state=False),),
        "the later epoch wins a tie": lambda: (_loop_with(tie="latest"),),
        "the best state never loaded back": lambda: (_loop_with(restore=False),),
        "epochs counted from 0": lambda: (_loop_with(first_epoch=0),),
    },
    "check_bsa_forward": {
        "scaled dot product instead of cosine": lambda: (_bsa_forward_with(score="dot"),),
        "softmax over the queries (dim 0)": lambda: (_bsa_forward_with(softmax_dim=0),),
        "no temperature": lambda: (_bsa_forward_with(temperature=False),),
        "gate gamma forgotten": lambda: (_bsa_forward_with(gamma=False),),
        "no residual (z~ = mixed only)": lambda: (_bsa_forward_with(residual=False),),
        "the layer's own forward (bsa(z))": lambda: (_library_bsa_forward,),
    },
    "check_activation_attention": {
        "absolute values": lambda: (lambda f: f.abs().mean(dim=1),),
        "sum over channels": lambda: (lambda f: f.pow(2).sum(dim=1),),
        "mean without squaring": lambda: (lambda f: f.mean(dim=1),),
        "normalised per sample": lambda: (lambda f: F.normalize(f.pow(2).mean(1).flatten(1), dim=1).view_as(f[:, 0]),),
        "max over channels": lambda: (lambda f: f.pow(2).amax(dim=1),),
        "detached (no gradient to the features)": lambda: (lambda f: f.detach().pow(2).mean(dim=1),),
    },
    "check_mean_class_accuracy": {
        "plain accuracy": lambda: (lambda cm: np.trace(cm) / np.sum(cm),),
        "NaN on a class without samples": lambda: (_mca_nan_on_empty,),
        "empty class counted as recall 0": lambda: (_mca_empty_as_zero,),
        "column-normalised (precision)": lambda: (_mca_column_normalised,),
    },
    "check_uniform_similarity": {
        "torch.full((6, 6), 1/6) without touching BSA": lambda: _uniform_bsa(zero=(), fresh_matrix=True),
        "value and output zeroed instead": lambda: _uniform_bsa(zero=("value", "out")),
        "only the query weight zeroed, its bias kept": lambda: _uniform_bsa(zero=("query",), biases=False),
        "S of another batch size": lambda: (lambda bsa, z, s: (bsa, z[:4], s))(*_uniform_bsa()),
        "S computed before zeroing": lambda: _uniform_bsa(before=True),
    },
    "check_row_normalised_confusion": {
        "column-normalised": lambda: (_confusion(normalise="column"),),
        "divided by the total": lambda: (_confusion(normalise="total"),),
        "transposed (rows = predictions)": lambda: (_confusion(transpose=True),),
        "NaN rows for a class without images": lambda: (_confusion(nan_rows=True),),
        "counts, not normalised": lambda: (_confusion(normalise="none"),),
        "class count inferred from the data": lambda: (
            lambda labels, preds, k: _confusion()(labels, preds, int(max(labels.max(), preds.max())) + 1),),
    },
    "check_label_mapping": {
        "identity (trusting the folder order)": lambda: (_lookup("identity"),),
        "inverse permutation": lambda: (_lookup("inverse permutation"),),
        "exact names, no synonyms": lambda: (_lookup("exact names"),),
        "RAF-DB's one-based digits": lambda: (_lookup("one-based"),),
        "a typo becomes an eighth class": lambda: (_lookup("typo becomes a class"),),
        "names in the dict's order, its indices never read": lambda: (
            lambda class_to_idx: [CANONICAL_8.index(canonical_name(n)) for n in class_to_idx],),
    },
    "check_gradcam": {
        "no ReLU": lambda: (_gradcam_with(relu=False),),
        "gradient x activation without the spatial mean": lambda: (_gradcam_with(spatial_mean=False),),
        "weights averaged over the batch too": lambda: (_gradcam_with(batch_mean=True),),
        "hooks left registered": lambda: (_gradcam_with(remove_hooks=False),),
        "activations only (no gradients)": lambda: (_gradcam_with(gradients=False),),
    },
    "check_layer_intensity": {
        "signed mean (no absolute value)": lambda: (_intensity_with(absolute=False),),
        "summed cross-entropy instead of the batch mean": lambda: (_intensity_with(reduction="sum"),),
        "gradient of the stage's weights, not its output": lambda: (_intensity_with(target="weights"),),
        "gradient of the summed logits, not the loss": lambda: (_intensity_with(of="logits"),),
    },
    "check_cluster_alignment": {
        "nearest centroid by distance, not by angle": lambda: (_alignment_with(assign="euclidean"),),
        "empty clusters left out of the mean": lambda: (_alignment_with(empty="skip"),),
        "no factor 0.5": lambda: (_alignment_with(scale=1.0),),
        "each student against its centroid, no cluster means": lambda: (_alignment_with(pooling="per_student"),),
        "the centroids not detached": lambda: (_alignment_with(detach=False),),
    },
    "check_paper_figure": {
        "fractions, not percent": lambda: (_figure_with(scale=1, ylabel="recall (%)"),),
        "a caption typed in, not read from eval.json": lambda: (_figure_with(caption="typed"),),
        "PNG only, no PDF": lambda: (_figure_with(formats=("png",)),),
        "matplotlib's default colours": lambda: (_figure_with(colours=False),),
        "wider than a page": lambda: (_figure_with(width=10),),
        "no unit on the y axis": lambda: (_figure_with(ylabel="recall"),),
        "tick labels at 5 pt": lambda: (_figure_with(tick_size=5),),
    },
}


def _library(target):
    """An answer that hands the work to the library's implementation of the exercise."""
    from hsbs_lib.engine.metrics import classification_metrics
    from hsbs_lib.engine.train import train_one_epoch
    from hsbs_lib.losses.clcl import cluster_alignment_loss
    from hsbs_lib.losses.hst import activation_attention, hst_loss
    from hsbs_lib.losses.uncertainty import UncertaintyWeighting
    from hsbs_lib.viz.confusion import confusion, normalize_rows
    from hsbs_lib.viz.gradcam import gradcam
    from hsbs_lib.data.labels import canonical_index

    def uncertainty(losses, s):
        module = UncertaintyWeighting(list(losses))
        with torch.no_grad():
            module.log_variance.copy_(torch.stack([s[name] for name in losses]))
        return module(losses)

    def mean_class_accuracy(counts):
        labels = np.repeat(np.arange(len(counts)), np.asarray(counts).sum(1))
        predictions = np.concatenate([np.repeat(np.arange(len(counts)), row) for row in np.asarray(counts)])
        return classification_metrics(labels, predictions, [str(k) for k in range(len(counts))])["mean_class_accuracy"]

    answers = {
        "check_activation_attention": activation_attention,
        "check_activation_attention (wrapped)": lambda features: activation_attention(features),
        "check_hst_loss": lambda student, teacher: hst_loss([student[:, None], teacher[:, None]]),
        "check_bsa_forward": _library_bsa_forward,
        "check_uncertainty_weighting": uncertainty,
        "check_cluster_alignment": lambda student, centroids: cluster_alignment_loss(student[None], centroids[None]),
        "check_row_normalised_confusion": lambda labels, preds, k: normalize_rows(confusion(labels, preds, k)),
        "check_mean_class_accuracy": mean_class_accuracy,
        "check_label_mapping": lambda class_to_idx: [canonical_index(n, 8) for n in sorted(class_to_idx, key=class_to_idx.get)],
        "check_gradcam": lambda model, layer, images, k: torch.as_tensor(gradcam(model, images, target_layer=layer, targets=k)),
        "check_training_loop": lambda model, train, val, optimizer, epochs, device_type: train_one_epoch(
            model, train, optimizer, device=torch.device("cpu")),
    }
    return answers[target]


LIBRARY_ANSWERS = ["check_activation_attention", "check_activation_attention (wrapped)", "check_hst_loss",
                   "check_bsa_forward", "check_uncertainty_weighting", "check_cluster_alignment",
                   "check_row_normalised_confusion", "check_mean_class_accuracy", "check_label_mapping",
                   "check_gradcam", "check_training_loop"]


@pytest.mark.parametrize("target", LIBRARY_ANSWERS)
def test_a_check_rejects_an_answer_that_calls_the_library(target):
    """The library implements every exercise; an answer that hands the work to it is told so, whatever
    the values it returns (the library's implementation is blocked while the answer runs)."""
    check = getattr(exercises, target.split(" ")[0])
    with pytest.raises(AssertionError, match="not yet: .*library's own"):
        check(_library(target))


def test_the_library_is_usable_again_after_a_check():
    from hsbs_lib.losses import hst

    with pytest.raises(AssertionError):
        exercises.check_activation_attention(_library("check_activation_attention (wrapped)"))
    assert hst.activation_attention(torch.ones(1, 2, 3, 3)).shape == (1, 3, 3)
    assert BatchSimilarityAttention(4, 2)(torch.randn(3, 4))[1].shape == (3, 3)


@pytest.mark.parametrize("check, right", [(c, r) for c in ALSO_RIGHT for r in ALSO_RIGHT[c]],
                         ids=[f"{c}-{r}" for c in ALSO_RIGHT for r in ALSO_RIGHT[c]])
def test_a_check_accepts_another_right_answer(check, right):
    getattr(exercises, check)(*ALSO_RIGHT[check][right]())


def test_every_check_has_a_right_answer_and_at_least_three_wrong_ones():
    checks = {name for name in dir(exercises) if name.startswith("check_")}
    assert checks == set(RIGHT) | {"check_hst_loss"}, "a check without answers in this test"
    assert checks == {check for items in EXERCISES.values() for check, _ in items}, "hsbs grade misses a check"
    assert all(len(WRONG[name]) >= 3 for name in RIGHT) and len(HST_WRONG) >= 5


@pytest.mark.parametrize("check", RIGHT)
def test_a_check_accepts_the_right_answer(check):
    getattr(exercises, check)(*RIGHT[check]())


@pytest.mark.parametrize("check, wrong", [(check, wrong) for check in WRONG for wrong in WRONG[check]],
                         ids=[f"{check}-{wrong}" for check in WRONG for wrong in WRONG[check]])
def test_a_check_rejects_a_wrong_answer(check, wrong):
    with pytest.raises(AssertionError, match="not yet"):
        getattr(exercises, check)(*WRONG[check][wrong]())


def test_an_unwritten_answer_is_reported_as_not_yet():
    def stub(*args):
        raise NotImplementedError("your code here")

    with pytest.raises(AssertionError, match="not yet: the function still raises NotImplementedError"):
        exercises.check_row_normalised_confusion(stub)


# ------------------------------------------------------------------------ questions and the teacher's key
NUMBERED = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def numbered_items(markdown: str) -> list[str]:
    """The items of a Markdown numbered list ('1. text' plus indented continuation lines), one string each."""
    items: list[str] = []
    for line in markdown.splitlines():
        start = re.match(r"^(\d+)\. (.*)$", line)
        if start:
            assert int(start.group(1)) == len(items) + 1, f"question numbers out of order at {line!r}"
            items.append(start.group(2))
        elif items and line.startswith("   ") and line.strip():
            items[-1] += " " + line.strip()
    return [" ".join(item.split()) for item in items]


@pytest.mark.parametrize("path", NUMBERED, ids=lambda p: p.name)
def test_notebook_ends_with_questions_and_going_further(path):
    cells = nbformat.read(path, as_version=4).cells
    questions, further = cells[-2], cells[-1]
    assert questions.cell_type == further.cell_type == "markdown"
    assert questions.source.startswith("## Questions"), f"{path.name}: the second-to-last cell is '## Questions'"
    assert 4 <= len(numbered_items(questions.source)) <= 8, f"{path.name}: 4 to 8 numbered questions"
    assert further.source.startswith("## Going further") and further.source.count("\n* ") >= 3, \
        f"{path.name}: the last cell is '## Going further' with at least three suggestions"


@pytest.mark.parametrize("path", NUMBERED, ids=lambda p: p.name)
def test_the_answer_key_repeats_every_question_and_answers_it(path):
    key = ROOT / "notebooks" / "answers" / f"{path.stem}.md"
    assert key.is_file(), f"{path.name} has no answer key {key.relative_to(ROOT)}"
    questions = numbered_items(nbformat.read(path, as_version=4).cells[-2].source)
    text = key.read_text()
    headings = re.findall(r"^### (\d+)\. (.+)$", text, flags=re.M)
    assert [int(number) for number, _ in headings] == list(range(1, len(questions) + 1)), \
        f"{key.name}: one '### N. question' heading per question of {path.name}"
    for (number, heading), question in zip(headings, questions):
        assert " ".join(heading.split()) == question, f"{key.name} question {number} differs from {path.name}'s"
    answers = re.split(r"^### \d+\. .+$", text, flags=re.M)[1:]
    assert all(len(answer.split()) >= 10 for answer in answers), f"{key.name}: an answer is missing or a stub"


# ------------------------------------------------------------------ expected values agree with the library
def test_the_independent_expected_values_agree_with_the_library():
    """hsbs_lib._grading.expected is written from the formulas without the library; both must agree."""
    from hsbs_lib.data.labels import canonical_index
    from hsbs_lib.losses.clcl import cluster_alignment_loss
    from hsbs_lib.losses.uncertainty import UncertaintyWeighting

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 6, 4, generator=generator)
    assert torch.allclose(expected.activation_attention(features).float(), activation_attention(features), atol=1e-6)
    for cells, teacher_cells in ((32, 4), (33, 5), (8, 4), (17, 5), (5, 5)):
        student, teacher = torch.rand(2, cells, cells, generator=generator), torch.rand(2, teacher_cells, teacher_cells)
        assert torch.allclose(expected.teacher_grid_pool(student, (teacher_cells,) * 2).float(),
                              pool_to_teacher_grid(student, (teacher_cells,) * 2), atol=1e-6)
        assert abs(expected.hst_term(student, teacher) - float(_hst_right(student, teacher))) < 1e-6
    for bsa, z in exercises._bsa_cases().values():
        mixed, similarity = expected.bsa_forward(bsa, z)
        with torch.no_grad():
            library_mixed, library_similarity = bsa(z)
        assert torch.allclose(mixed.float(), library_mixed, atol=1e-5)
        assert torch.allclose(similarity.float(), library_similarity, atol=1e-5)
    for _, class_to_idx, lookup in expected.LABEL_LOOKUPS + __import__("hsbs_lib._grading.hidden").\
            _grading.hidden.LABEL_LOOKUPS:
        assert [canonical_index(name, 8) for name in sorted(class_to_idx, key=class_to_idx.get)] == lookup
    for student, centroids in exercises._alignment_cases().values():
        value, _ = expected.cluster_alignment(student, centroids)
        assert abs(value - float(cluster_alignment_loss(student[None], centroids[None]))) < 1e-5
    module = UncertaintyWeighting(["a"])
    with torch.no_grad():
        module.log_variance.fill_(0.7)
    assert abs(expected.uncertainty_term(1.3, 0.7)[0] - float(module({"a": torch.tensor(1.3)})["a"].detach())) < 1e-5


def test_the_training_loop_cases_have_a_best_epoch_before_the_last_and_a_tie():
    for model_seed, data_seed, train_sizes, val_sizes, lr, epochs in exercises.TRAINING_LOOP_CASES.values():
        train, val = exercises._loop_data(data_seed, train_sizes, val_sizes)
        model = exercises._seeded_model(model_seed)
        result = expected.train_loop(model, train, val, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
                                     epochs, "cpu")
        accuracies = [row["val_accuracy"] for row in result["history"]]
        best = result["best_epoch"]
        assert best < epochs and accuracies[best - 1] in accuracies[best:], accuracies
        assert len(set(val_sizes)) > 1


def test_hsbs_grade_knows_every_check_cell_of_the_notebooks():
    """The grader's list of exercises (which it trusts instead of the submitted check cells) is the
    notebooks' own."""
    import ast

    found = {}
    for path in NUMBERED:
        for cell in nbformat.read(path, as_version=4).cells:
            if "check" in cell.metadata.get("tags", []):
                call = ast.parse(cell.source).body[0].value
                found.setdefault(path.stem, []).append((call.func.id, tuple(arg.id for arg in call.args)))
    assert found == EXERCISES


# ------------------------------------------------------------------------------------------ hsbs grade
def _submission(source: Path, answers: dict[int, str] | None, student: str) -> nbformat.NotebookNode:
    """An exercise notebook as a student hands it in: the setup cells and the exercise cells of the real
    notebook, each exercise holding the solution (None), the stub, or the code given for it."""
    notebook = nbformat.read(source, as_version=4)
    exercise = exercises.make_exercise(notebook)
    parameters = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    cells, index = [], 0
    for i, (solved, stub) in enumerate(zip(notebook.cells, exercise.cells)):
        tags = solved.metadata.get("tags", [])
        if i <= parameters and solved.cell_type == "code":
            cells.append(stub)
        elif "solution" in tags:
            choice = (answers or {}).get(index, "solution") if answers is not None else "stub"
            cell = copy_cell(stub)
            cell.source = solved.source if choice == "solution" else stub.source if choice == "stub" else choice
            cells.append(cell)
            index += 1
        elif "check" in tags:
            cells.append(stub)
    exercise.cells = cells
    exercise.metadata["hsbs"] = {"exercises_of": source.stem}
    exercise.metadata["student"] = student
    return exercise


def copy_cell(cell):
    return nbformat.from_dict(json.loads(json.dumps(cell)))


WRONG_ROW_NORMALISED = '''def row_normalised_confusion(labels, predictions, num_classes):
    k = int(max(labels.max(), predictions.max())) + 1
    counts = np.zeros((k, k))
    np.add.at(counts, (labels, predictions), 1)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
'''
LIBRARY_MEAN_CLASS_ACCURACY = '''from hsbs_lib.engine.metrics import classification_metrics
def mean_class_accuracy(confusion_matrix):
    counts = np.asarray(confusion_matrix)
    labels = np.repeat(np.arange(len(counts)), counts.sum(1))
    predictions = np.concatenate([np.repeat(np.arange(len(counts)), row) for row in counts])
    names = [str(k) for k in range(len(counts))]
    return classification_metrics(labels, predictions, names)["mean_class_accuracy"]
'''
LIBRARY_ROW_NORMALISED = '''from hsbs_lib.viz.confusion import confusion as library_confusion, normalize_rows
def row_normalised_confusion(labels, predictions, num_classes):
    return normalize_rows(library_confusion(labels, predictions, num_classes))
'''


@pytest.mark.slow
def test_hsbs_grade_scores_solved_empty_partly_wrong_and_library_notebooks(tmp_path, monkeypatch):
    """Four submissions of notebook 05 built from its real exercise cells, executed in kernels by
    `hsbs grade --exercises-only`: full marks, zero, in between, and zero for stubs that call the
    library's implementations."""
    from hsbs_lib.cli import main

    source = ROOT / "notebooks" / "05_confusion_matrices_and_metrics.ipynb"
    submissions = {"solved": {}, "empty": None, "partly_wrong": {1: WRONG_ROW_NORMALISED},
                   "library": {0: LIBRARY_MEAN_CLASS_ACCURACY, 1: LIBRARY_ROW_NORMALISED}}
    paths = []
    for student, answers in submissions.items():
        path = tmp_path / "in" / f"{student}.ipynb"
        path.parent.mkdir(exist_ok=True)
        nbformat.write(_submission(source, answers, student), path)
        paths.append(str(path))
    monkeypatch.setenv("SMOKE", "1")
    assert main(["grade", *paths, "--out", str(tmp_path / "grades"), "--exercises-only", "--timeout", "300"]) == 0
    rows = json.loads((tmp_path / "grades" / "scores.json").read_text())
    totals = {student: sum(r["points"] for r in rows if r["student"] == student) for student in submissions}
    assert totals == {"solved": 4, "empty": 0, "partly_wrong": 2, "library": 0}, rows
    assert all(r["max_points"] == 2 for r in rows) and len(rows) == 8
    wrong = next(r for r in rows if r["student"] == "partly_wrong" and r["exercise"] == "row_normalised_confusion")
    assert wrong["points"] == 0 and "num_classes" in wrong["reason"], wrong
    assert all("library's own" in r["reason"] for r in rows if r["student"] == "library")
    table = (tmp_path / "grades" / "scores.csv").read_text().splitlines()
    assert table[0] == "student,notebook,exercise,points,max_points,reason" and len(table) == 9
    assert sorted(p.name for p in (tmp_path / "grades" / "executed").iterdir()) == sorted(
        f"{s}__05_confusion_matrices_and_metrics.ipynb" for s in submissions)


def test_the_student_bundle_holds_exercises_and_library_without_solutions_key_or_hidden_cases(tmp_path):
    from hsbs_lib._grading.bundle import build_bundle

    archive = build_bundle(tmp_path / "student")
    out = tmp_path / "student"
    assert archive.is_file() and archive.suffix == ".zip"
    assert (out / "hsbs_lib" / "exercises.py").is_file() and (out / "hsbs_lib" / "_grading" / "expected.py").is_file()
    assert not (out / "hsbs_lib" / "_grading" / "hidden.py").exists()
    assert not (out / "notebooks" / "answers").exists() and not (out / "docs" / "TEACHING.md").exists()
    for source in SOURCES:
        shipped = nbformat.read(out / "notebooks" / source.name, as_version=4)
        assert not any("solution" in c.metadata.get("tags", []) for c in shipped.cells)
        assert any("exercise" in c.metadata.get("tags", []) for c in shipped.cells)


@pytest.mark.parametrize("path", NUMBERED, ids=lambda p: p.name)
def test_notebook_closes_with_an_open_ended_project_brief(path):
    cells = nbformat.read(path, as_version=4).cells
    project = cells[-3]
    assert project.cell_type == "markdown" and project.source.startswith("## Project"), \
        f"{path.name}: the cell before '## Questions' is a '## Project: ...' brief"
    for part in ("**Goal.**", "**Measure.**", "**Deliverable.**"):
        assert part in project.source, f"{path.name}: the project brief lacks {part}"


def test_the_exercises_module_offers_no_reference_implementation():
    assert not [name for name in dir(exercises) if name.startswith("reference_")]


@pytest.mark.parametrize("source", [
    "from hsbs_lib.losses.hst import activation_attention as aa\ndef answer(f):\n    return aa(f)\n",
    "import hsbs_lib.losses.hst as hst\ndef answer(f):\n    return hst.activation_attention(f)\n",
    "def answer(f):\n    from hsbs_lib.losses.hst import activation_attention\n    return activation_attention(f)\n",
    "def answer(f):\n    try:\n        from hsbs_lib.losses import hst\n        return hst.activation_attention(f)\n"
    "    except Exception:\n        return f.pow(2).mean(1)\n",
], ids=["an alias in the notebook", "through the module", "imported in the body", "called, error swallowed"])
def test_the_guard_sees_the_library_however_it_is_reached(source):
    namespace = {}
    exec(source, namespace)
    with pytest.raises(AssertionError, match="library's own"):
        exercises.check_activation_attention(namespace["answer"])
