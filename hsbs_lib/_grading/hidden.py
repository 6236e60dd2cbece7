"""Cases a teacher grades with that are not in the notebooks (left out of the student bundle).

Each entry runs one check's comparisons on other inputs: other shapes, other label orders, other seeds,
another device_type, a figure of three runs on four classes. An answer that was fitted to the notebook's
cases (a value typed in, a shape assumed) passes the notebook's check and fails here.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from hsbs_lib import exercises as E

LABEL_LOOKUPS = (
    ("three classes with contempt", {"Contempt": 0, "neutral": 1, "Fear": 2}, [7, 6, 1]),
    ("four classes listed out of order", {"surprise": 3, "disgust": 0, "sad": 2, "angry": 1}, [2, 5, 4, 0]),
)


def _majority(answer: Callable) -> None:
    E._check_majority_baseline(answer, {
        "a tie between two training classes (the smaller index wins)":
            (np.array([4, 4, 2, 2, 0]), np.array([2, 2, 4, 0, 0, 0, 3])),
        "eight classes": (np.repeat(np.arange(8), [5, 1, 1, 9, 4, 2, 6, 1]), np.repeat(np.arange(8), [2, 1, 0, 3, 1, 1, 2, 1])),
    })


def _label_mapping(answer: Callable) -> None:
    E._check_label_mapping(answer, LABEL_LOOKUPS)


def _train_step(answer: Callable) -> None:
    E._check_train_step(answer, {"a batch of 5, device_type 'cuda'": (5, "cuda"), "a batch of 3": (3, "cpu")})


def _training_loop(answer: Callable) -> None:
    E._check_training_loop(answer, {"5 epochs, model 2": (2, 0, (6, 6, 6), (3, 3, 1), 0.3, 5),
                                    "5 epochs, model 5": (5, 0, (6, 6, 6), (3, 3, 1), 0.5, 5)})


def _activation_attention(answer: Callable) -> None:
    generator = torch.Generator().manual_seed(7)
    E._check_activation_attention(answer, {"a (4, 5, 7, 3) batch": torch.randn(4, 5, 7, 3, generator=generator),
                                           "one channel (2, 1, 6, 6)": torch.randn(2, 1, 6, 6, generator=generator)})


def _hst_loss(answer: Callable) -> None:
    E._check_hst_loss(answer, ((2, 16, 4), (3, 9, 5), (2, 5, 5)))


def _uniform_similarity(bsa, z, similarity) -> None:
    E._check_uniform_similarity(bsa, z, similarity, (1, 2, 17))


def _bsa_forward(answer: Callable) -> None:
    E._check_bsa_forward(answer, E._bsa_cases(seed=1))


def _mean_class_accuracy(answer: Callable) -> None:
    E._check_mean_class_accuracy(answer, {"a 4-class matrix with an empty last row": [[3, 1, 0, 0], [2, 2, 0, 1],
                                                                                       [0, 0, 5, 0], [0, 0, 0, 0]],
                                          "one class only": [[4]]})


def _row_normalised_confusion(answer: Callable) -> None:
    E._check_row_normalised_confusion(answer, {
        "8 classes, only the first three seen": (np.array([0, 0, 1, 2]), np.array([2, 0, 1, 1]), 8),
        "every image wrong": (np.array([0, 1, 2, 3]), np.array([1, 2, 3, 0]), 4)})


def _gradcam(answer: Callable) -> None:
    E._check_gradcam(answer, 1, 10)


def _layer_intensity(answer: Callable) -> None:
    E._check_layer_intensity(answer, E._intensity_cases(seed=1))


def _cluster_alignment(answer: Callable) -> None:
    generator = torch.Generator().manual_seed(3)
    E._check_cluster_alignment(answer, {
        "12 vectors of 6 dims, 5 centroids": (torch.randn(12, 6, generator=generator), torch.randn(5, 6, generator=generator)),
        "two students, two clusters": (torch.tensor([[2.0, 0.1], [0.1, 3.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))})


def _uncertainty_weighting(answer: Callable) -> None:
    E._check_uncertainty_weighting(answer, {"a large negative log-variance": ({"ce": 0.3}, {"ce": -30.0}),
                                            "two terms": ({"a": 5.0, "b": 0.01}, {"a": 2.0, "b": -1.0})})


def _paper_figure(answer: Callable) -> None:
    classes = ("happiness", "sadness", "anger", "neutral")
    E._check_paper_figure(answer, {"three runs on four RAF-DB classes, one without a package colour": {
        "baseline": ([[20, 1, 0, 2], [1, 9, 2, 3], [0, 1, 6, 1], [2, 4, 0, 12]], classes, "rafdb"),
        "clcl": ([[21, 0, 0, 2], [2, 10, 1, 2], [0, 2, 5, 1], [1, 3, 1, 13]], classes, "rafdb"),
        "mine": ([[22, 0, 1, 0], [0, 11, 1, 3], [1, 0, 7, 0], [1, 2, 1, 14]], classes, "rafdb")}})


#: check name -> the hidden cases, called with the same arguments as the check.
HIDDEN: dict[str, Callable] = {
    "check_majority_baseline": _majority,
    "check_label_mapping": _label_mapping,
    "check_train_step": _train_step,
    "check_training_loop": _training_loop,
    "check_activation_attention": _activation_attention,
    "check_hst_loss": _hst_loss,
    "check_uniform_similarity": _uniform_similarity,
    "check_bsa_forward": _bsa_forward,
    "check_mean_class_accuracy": _mean_class_accuracy,
    "check_row_normalised_confusion": _row_normalised_confusion,
    "check_gradcam": _gradcam,
    "check_layer_intensity": _layer_intensity,
    "check_cluster_alignment": _cluster_alignment,
    "check_uncertainty_weighting": _uncertainty_weighting,
    "check_paper_figure": _paper_figure,
}
