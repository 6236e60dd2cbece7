"""Expected values of the exercise checks, computed from the formulas with code of their own.

Nothing here calls the library function an exercise asks for (``activation_attention``, ``hst_loss``,
``BatchSimilarityAttention.forward``, ``UncertaintyWeighting``, ``cluster_alignment_loss``,
``canonical_index``, ...): the checks compare a student's answer with these, and
tests/test_exercises.py compares these with the library, so the two are written twice and agree.
Where a value is a fact rather than a computation (a label lookup) it is stored as a literal.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F


# -------------------------------------------------------------------------------- 03 HST attention
def activation_attention(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W) in float64: the sum over channels of F^2, divided by C."""
    features = features.detach().double()
    return (features * features).sum(dim=1) / features.shape[1]


def activation_attention_gradient(features: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """d sum(upstream * A) / d F = 2 F upstream / C, (B, C, H, W)."""
    features = features.detach().double()
    return 2 * features * upstream.detach().double()[:, None] / features.shape[1]


def teacher_grid_pool(attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) -> (B, h, w) float64, written out cell by cell: teacher cell i averages student cells
    r*i - r//2 .. r*i + r//2 (clipped to the map, the last window running to the map's edge), r the
    power-of-two stride ratio; the teacher's own grid is left as it is."""
    attention = attention.detach().double()
    height, width = size
    if tuple(attention.shape[-2:]) == (height, width):
        return attention.clone()

    def windows(cells: int, teacher_cells: int) -> list[tuple[int, int]]:
        ratio = 2 ** max(0, round(math.log2(cells / teacher_cells)))
        return [(max(0, ratio * i - ratio // 2),
                 cells if i == teacher_cells - 1 else min(cells, ratio * i + ratio // 2 + 1))
                for i in range(teacher_cells)]

    pooled = torch.zeros(attention.shape[0], height, width, dtype=torch.float64)
    for i, (top, bottom) in enumerate(windows(attention.shape[-2], height)):
        for j, (left, right) in enumerate(windows(attention.shape[-1], width)):
            pooled[:, i, j] = attention[:, top:bottom, left:right].mean(dim=(1, 2))
    return pooled


def hst_term(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """The HST term of one student map: mean of (unit(pool(student)) - unit(teacher))^2."""
    pooled = teacher_grid_pool(student, tuple(teacher.shape[-2:])).flatten(1)
    target = teacher.detach().double().flatten(1)
    pooled = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
    target = target / target.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((pooled - target).pow(2).mean())


# ----------------------------------------------------------------------------------- 04 BSA
def bsa_forward(bsa: torch.nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A cosine BSA layer's (z~, S) in float64 from its parameters: S = softmax_j cos(q_i, k_j) / tau,
    z~ = z + gamma W_o (S V)."""
    z = z.detach().double()

    def linear(layer):
        return lambda x: x @ layer.weight.detach().double().T + layer.bias.detach().double()

    queries, keys, values = linear(bsa.query)(z), linear(bsa.key)(z), linear(bsa.value)(z)
    queries = queries / queries.norm(dim=1, keepdim=True).clamp_min(1e-12)
    keys = keys / keys.norm(dim=1, keepdim=True).clamp_min(1e-12)
    scores = queries @ keys.T / bsa.temperature
    scores = scores - scores.max(dim=1, keepdim=True).values
    similarity = scores.exp() / scores.exp().sum(dim=1, keepdim=True)
    return z + float(bsa.gamma.detach()) * linear(bsa.out)(similarity @ values), similarity


# ------------------------------------------------------------------------------ 02 training
def train_step(model, batch: dict, optimizer, device_type: str) -> float:
    """One AMP training step: train mode, fresh gradients, bf16 autocast around forward and the sum of
    the named loss terms, backward, optimiser step; returns the loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
        output = model(batch["image"])
        loss = sum(model.loss(output, batch).values())
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train_loop(model, train_batches, val_batches, optimizer, epochs: int, device_type: str) -> dict:
    """The training loop of notebook 02's exercise: per epoch, a step per training batch (mean loss),
    validation in eval mode without gradients (correct / total over every image), a deep copy of the
    best epoch's state (earliest on a tie); the best state is loaded back at the end."""
    history, best_accuracy, best_epoch, best_state = [], -1.0, 0, None
    for epoch in range(1, epochs + 1):
        losses = [train_step(model, batch, optimizer, device_type) for batch in train_batches]
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for batch in val_batches:
                correct += int((model(batch["image"]).logits.argmax(dim=1) == batch["label"]).sum())
                total += len(batch["label"])
        history.append({"epoch": epoch, "train_loss": sum(losses) / len(losses), "val_accuracy": correct / total})
        if correct / total > best_accuracy:
            best_accuracy, best_epoch, best_state = correct / total, epoch, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return {"history": history, "best_epoch": best_epoch}


# ------------------------------------------------------------------------------ 00 and 05 metrics
def mean_class_accuracy(confusion_matrix) -> float:
    """(K, K) counts, rows = true class -> mean recall over the classes that have samples."""
    counts = np.asarray(confusion_matrix, dtype=np.float64)
    recalls = [counts[k, k] / counts[k].sum() for k in range(len(counts)) if counts[k].sum() > 0]
    return float(sum(recalls) / len(recalls))


def row_normalised_confusion(labels, predictions, num_classes: int) -> np.ndarray:
    """labels (N,), predictions (N,) -> (K, K) float, row i = where class i's images went; empty rows zero."""
    counts = np.zeros((num_classes, num_classes))
    for label, prediction in zip(np.asarray(labels).tolist(), np.asarray(predictions).tolist()):
        counts[label, prediction] += 1
    for row in counts:
        if row.sum() > 0:
            row /= row.sum()
    return counts


def majority_scores(train_labels, test_labels) -> dict[str, float]:
    """The constant classifier that answers the most frequent training class (the smallest index on a
    tie), scored on the test labels; mean class accuracy and macro-F1 over the classes present in the
    test labels (a class never predicted has F1 0)."""
    train_labels, test_labels = np.asarray(train_labels).tolist(), np.asarray(test_labels).tolist()
    majority = max(sorted(set(train_labels)), key=train_labels.count)
    present = sorted(set(test_labels))
    hits = test_labels.count(majority)
    recalls, f1s = [], []
    for k in present:
        recall = hits / test_labels.count(k) if k == majority else 0.0
        precision = hits / len(test_labels) if k == majority else 0.0
        recalls.append(recall)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return {"accuracy": hits / len(test_labels), "mean_class_accuracy": sum(recalls) / len(present),
            "macro_f1": sum(f1s) / len(present)}


# ------------------------------------------------------------------------------- 01 label lookups
#: (case, class_to_idx in the order the dict lists it, lookup[dataset index] = CANONICAL_8 index).
#: Canonical order: 0 surprise, 1 fear, 2 disgust, 3 happiness, 4 sadness, 5 anger, 6 neutral, 7 contempt.
LABEL_LOOKUPS = (
    ("the FER2013 folder export (ImageFolder, alphabetical)",
     {"angry": 0, "disgust": 1, "fear": 2, "happy": 3, "neutral": 4, "sad": 5, "surprise": 6},
     [5, 2, 1, 3, 6, 4, 0]),
    ("FER2013's csv codes",
     {"Angry": 0, "Disgust": 1, "Fear": 2, "Happy": 3, "Sad": 4, "Surprise": 5, "Neutral": 6},
     [5, 2, 1, 3, 4, 0, 6]),
    ("AffectNet's eight classes",
     {"Neutral": 0, "Happy": 1, "Sad": 2, "Surprise": 3, "Fear": 4, "Disgust": 5, "Anger": 6, "Contempt": 7},
     [6, 3, 4, 0, 1, 2, 5, 7]),
    ("a dict not listed in index order ({'happy': 1, 'angry': 0})", {"happy": 1, "angry": 0}, [5, 3]),
    ("three classes only, listed backwards", {"happiness": 2, "Surprised": 1, "Sad": 0}, [4, 0, 3]),
)


# -------------------------------------------------------------------------------- 06 Grad-CAM
def gradcam(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor, class_index: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, h, w) at ``layer``'s resolution: ReLU(sum_k alpha_k F_k), alpha_k the spatial
    mean of d logit[class_index] / d F_k, per image."""
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


def layer_intensity(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    layers: tuple[str, ...]) -> dict[str, float]:
    """{layerN: mean |d CE / d F_N|} over the stage outputs ``output.maps["features/layerN"]``."""
    with torch.enable_grad():
        output = model(images)
        stages = [output.maps[f"features/{layer}"] for layer in layers]
        gradients = torch.autograd.grad(F.cross_entropy(output.logits, labels), stages)
    return {layer: float(gradient.abs().mean()) for layer, gradient in zip(layers, gradients)}


# ------------------------------------------------------------------------------------ 07 methods
def cluster_alignment(student: torch.Tensor, centroids: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(-0.5 * mean_k cos(mean of cluster k, c_k), d value / d student), float64, cluster by cluster."""
    student = student.detach().double().requires_grad_(True)
    centroids = centroids.detach().double()
    unit = lambda x: x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # noqa: E731
    nearest = (unit(student) @ unit(centroids).T).argmax(dim=1)
    cosines = []
    for k in range(len(centroids)):
        members = student[nearest == k]
        if len(members) == 0:
            cosines.append(torch.ones((), dtype=torch.float64))
        else:
            mean = members.mean(dim=0)
            cosines.append((mean @ centroids[k]) / (mean.norm() * centroids[k].norm()).clamp_min(1e-8))
    value = -0.5 * torch.stack(cosines).mean()
    (gradient,) = torch.autograd.grad(value, student)
    return float(value.detach()), gradient


def softplus(s: float) -> float:
    return max(s, 0.0) + math.log1p(math.exp(-abs(s)))


def uncertainty_term(loss: float, s: float) -> tuple[float, float, float]:
    """(0.5 exp(-s) L + log(1 + exp(s)), its derivative in L, its derivative in s)."""
    return (0.5 * math.exp(-s) * loss + softplus(s), 0.5 * math.exp(-s),
            -0.5 * math.exp(-s) * loss + 1 / (1 + math.exp(-s)))


# ------------------------------------------------------------------------------- 08 paper figures
def per_class_recall_percent(confusion_matrix) -> list[float]:
    """(K, K) counts -> the recall of each class in percent (0 for a class without images)."""
    counts = np.asarray(confusion_matrix, dtype=np.float64)
    return [100 * counts[k, k] / counts[k].sum() if counts[k].sum() else 0.0 for k in range(len(counts))]
