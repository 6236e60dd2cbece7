"""Every figure of a trained run, and the side-by-side versions of two runs (what ``hsbs figures`` draws).

For a run directory (config.yaml, metrics.csv, best.pt) it writes, with stable names:
``RUN_curves``, ``RUN_confusion_counts``, ``RUN_confusion``, ``RUN_per_class``, ``RUN_tsne``,
``RUN_attention`` (+ ``RUN_attention_scores`` and its .md table when the data is SynthFER, whose masks
say where the expression is), ``RUN_gradcam``, ``RUN_bsa_similarity`` / ``RUN_class_similarity``
(models with BSA), ``RUN_scale_attention_by_pose`` (PhaNet), ``RUN_ds_attention`` (MFER) and
``RUN_intensity`` (when learning intensity was logged). A comparison adds ``RUN_vs_BASE_*``. Runs are
read with :mod:`hsbs_lib.engine.runs`; the command itself lives in :mod:`hsbs_lib.demo`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from hsbs_lib.constants import STAGE_NAMES
from hsbs_lib.engine.runs import EvalData, RunArtifacts, load_eval_data, load_run, model_inputs, predict_batches
from hsbs_lib.losses.bsa import similarity_statistics
from hsbs_lib.outputs import OutputFolder
from hsbs_lib.viz.attention import attention_maps, plot_ds_attention, plot_layer_attention, plot_scale_attention_by_pose
from hsbs_lib.viz.confusion import confusion, per_class_recall, plot_confusion, plot_confusion_pair
from hsbs_lib.viz.curves import plot_per_class_accuracy, plot_training_curves
from hsbs_lib.viz.embedding import plot_tsne, tsne_embedding
from hsbs_lib.viz.gradcam import gradcam, plot_gradcam_per_class
from hsbs_lib.viz.intensity import plot_learning_intensity
from hsbs_lib.viz.saliency import attention_score_table, plot_attention_scores, score_saliency
from hsbs_lib.viz.similarity import (ClassSimilarityAccumulator, batch_similarity_maps, plot_class_similarity,
                                     plot_similarity_matrix)
from hsbs_lib.viz.style import figures_dir, save_figure


@dataclass
class RunSummary:
    """Numbers one run's figures computed, reused by the comparison figures."""

    name: str
    counts: np.ndarray
    recalls: dict[str, float]
    maps: dict[str, Tensor]
    display_index: np.ndarray
    scores: dict[str, dict] = field(default_factory=dict)
    embedding: np.ndarray | None = None
    embedding_labels: np.ndarray | None = None
    paths: list[Path] = field(default_factory=list)
    bsa_statistics: dict[str, float] = field(default_factory=dict)


def display_indices(labels: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` sample indices, one per class in turn, so shown faces span the expressions."""
    labels = np.asarray(labels)
    per_class = [list(np.flatnonzero(labels == k)) for k in np.unique(labels)]
    chosen = []
    while len(chosen) < count and any(per_class):
        for members in per_class:
            if members and len(chosen) < count:
                chosen.append(members.pop(0))
    return np.asarray(chosen, dtype=int)


def _attention_over(model: nn.Module, inputs: Tensor, *, batch_size: int = 128) -> dict[str, Tensor]:
    """attention_maps over many inputs, concatenated: {name: (N, h, w)}."""
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, len(inputs), batch_size):
        for name, value in attention_maps(model, inputs[start:start + batch_size]).items():
            parts.setdefault(name, []).append(value)
    return {name: torch.cat(values) for name, values in parts.items()}


class FigureWriter:
    """Saves figures into one folder in the given formats, closes them, and remembers every path.

    ``out``: a folder (written as ``hsbs figures`` under the output rule, :mod:`hsbs_lib.outputs`) or a
    command's :class:`~hsbs_lib.outputs.OutputFolder` (with its ``--force``)."""

    def __init__(self, out=None, formats: Sequence[str] = ("png", "pdf")):
        self.outputs = out if isinstance(out, OutputFolder) else OutputFolder(figures_dir(out), "figures")
        self.out = self.outputs.folder
        self.formats = tuple(formats)
        self.paths: list[Path] = []

    def save(self, fig, name: str) -> None:
        try:
            self.paths.extend(save_figure(fig, name, formats=self.formats, outputs=self.outputs))
        finally:
            plt.close(fig)

    def write_text(self, file_name: str, text: str) -> None:
        self.paths.append(self.outputs.write_text(file_name, text))


def write_run_figures(run: RunArtifacts, data: EvalData | None, out=None, *, show: int = 6,
                      tsne_samples: int = 400, cam_samples: int = 64, cam_method: str = "gradcam",
                      seed: int = 0, formats: Sequence[str] = ("png", "pdf")) -> RunSummary:
    """Draw every figure of one run into ``out``; returns the numbers the comparison figures reuse."""
    name, classes = run.name, run.classes
    writer = FigureWriter(out, formats)
    if run.metrics:
        writer.save(plot_training_curves({name: run.metrics}), f"{name}_curves")
    if run.intensity:
        writer.save(plot_learning_intensity({name: run.intensity}), f"{name}_intensity")
    if data is None or run.model is None:
        empty = np.zeros((len(classes), len(classes)), int)
        return RunSummary(name, empty, {}, {}, np.zeros(0, int), paths=writer.paths)

    inputs = model_inputs(data.images, run.normalization)
    logits, features = predict_batches(run.model, inputs)
    preds = logits.argmax(axis=1)
    counts = confusion(data.labels, preds, len(classes))
    recalls = per_class_recall(counts, classes)
    writer.save(plot_confusion(counts, classes, normalize=False, title=name), f"{name}_confusion_counts")
    writer.save(plot_confusion(counts, classes, normalize=True, title=name), f"{name}_confusion")
    writer.save(plot_per_class_accuracy({name: recalls}, classes), f"{name}_per_class")

    subset = np.sort(np.random.default_rng(seed).permutation(len(features))[:tsne_samples])
    embedding = tsne_embedding(features[subset], seed=seed) if len(subset) >= 5 else None
    if embedding is not None:
        writer.save(plot_tsne({name: (embedding, data.labels[subset])}, classes), f"{name}_tsne")

    maps = _attention_over(run.model, inputs)
    shown = display_indices(data.labels, show)
    layers = [layer for layer in STAGE_NAMES if layer in maps]
    shown_maps = {layer: value[shown] for layer, value in maps.items()}
    writer.save(plot_layer_attention(data.images[shown], {name: shown_maps}, layers,
                                     row_labels=[classes[k] for k in data.labels[shown]]), f"{name}_attention")
    if any(key.startswith("ds_") for key in maps):
        writer.save(plot_ds_attention(data.images[shown], shown_maps), f"{name}_ds_attention")

    cam_index = display_indices(data.labels, cam_samples)
    cams = gradcam(run.model, inputs[cam_index], method=cam_method)
    writer.save(plot_gradcam_per_class(data.images[cam_index], cams, data.labels[cam_index], preds[cam_index],
                                       classes, per_class=2), f"{name}_gradcam")

    scores: dict[str, dict] = {}
    if data.masks is not None:
        scores = {layer: score_saliency(maps[layer], data.masks, region_names=data.region_names) for layer in layers}
        scores[cam_method] = score_saliency(cams, data.masks[cam_index], region_names=data.region_names)
        writer.save(plot_attention_scores({name: scores}, title=f"{name}: attention vs expression regions"),
                    f"{name}_attention_scores")
        writer.write_text(f"{name}_attention_scores.md", attention_score_table({name: scores}))

    bsa_statistics = _method_specific_figures(run, data, inputs, shown, writer)
    if bsa_statistics:
        writer.write_text(f"{name}_bsa_statistics.md",
                          f"{name}: BSA similarity over {len(inputs)} test images in batches of "
                          f"{bsa_statistics['batch_size']}: {similarity_caption(bsa_statistics)} "
                          f"(uniform rows: entropy {bsa_statistics['max_entropy']:.2f}, column "
                          f"{1 / bsa_statistics['batch_size']:.3f}; no class structure: same/diff 1)\n")
    return RunSummary(name, counts, recalls, maps, shown, scores, embedding,
                      data.labels[subset] if embedding is not None else None, writer.paths, bsa_statistics)


def similarity_caption(statistics: dict) -> str:
    """One line of :func:`~hsbs_lib.losses.bsa.similarity_statistics` for a figure title."""
    return (f"row entropy {statistics['row_entropy']:.2f} of {statistics['max_entropy']:.2f}, "
            f"largest column {statistics['max_column_mass']:.3f}, same/diff class {statistics['same_to_different']:.2f}")


def _method_specific_figures(run: RunArtifacts, data: EvalData, inputs: Tensor, shown: np.ndarray,
                             writer: FigureWriter, *, batch_size: int = 64) -> dict[str, float]:
    """BSA similarity (HSBS) and per-pose scale attention (PhaNet), when the model returns them.

    Returns the BSA similarity statistics averaged over the test batches (empty without BSA)."""
    name, classes, model = run.name, run.classes, run.model
    similarity = _similarity(model, inputs[:batch_size])
    statistics: dict[str, float] = {}
    if similarity is not None:
        shown_stats = similarity_statistics(similarity, torch.as_tensor(data.labels[:batch_size]))
        writer.save(plot_similarity_matrix(similarity, data.labels[:batch_size], classes,
                                           title=f"{name}: BSA similarity\n{similarity_caption(shown_stats)}"),
                    f"{name}_bsa_similarity")
        accumulator = ClassSimilarityAccumulator(len(classes))
        per_batch = []
        for start in range(0, len(inputs), batch_size):
            batch_similarity = _similarity(model, inputs[start:start + batch_size])
            batch_labels = data.labels[start:start + batch_size]
            accumulator.update(batch_similarity, batch_labels)
            if len(batch_labels) > 1:
                per_batch.append(similarity_statistics(batch_similarity, torch.as_tensor(batch_labels)))
        statistics = {key: float(np.nanmean([batch[key] for batch in per_batch])) for key in per_batch[0]}
        statistics["batch_size"] = batch_size
        writer.save(plot_class_similarity(accumulator.compute(), classes, title=f"{name}: class-to-class similarity"),
                    f"{name}_class_similarity")

    if data.poses is not None and "scale_gates" in _eval_maps(model, inputs[shown[:1]]):
        by_pose = display_indices(data.poses, int(np.unique(data.poses).size))
        gates = _eval_maps(model, inputs[by_pose])["scale_gates"]
        writer.save(plot_scale_attention_by_pose(data.images[by_pose], data.poses[by_pose],
                                                 attention_maps(model, inputs[by_pose]), gates=gates),
                    f"{name}_scale_attention_by_pose")
    return statistics


@torch.no_grad()
def _eval_maps(model: nn.Module, inputs: Tensor) -> dict[str, Tensor]:
    was_training = model.training
    model.eval()
    try:
        return model(inputs.to(next(model.parameters()).device)).maps
    finally:
        model.train(was_training)


@torch.no_grad()
def _similarity(model: nn.Module, inputs: Tensor) -> Tensor | None:
    """BSA's S for a batch: the model's own ``similarity(x)`` when it has one, else a frozen training pass."""
    if callable(getattr(model, "similarity", None)) and getattr(model, "bsa", None) is not None:
        was_training = model.training
        model.eval()
        try:
            return model.similarity(inputs.to(next(model.parameters()).device)).float().cpu()
        finally:
            model.train(was_training)
    if getattr(model, "bsa", "absent") is None:  # a BSA model built with bsa=False
        return None
    return batch_similarity_maps(model, inputs)


def write_comparison_figures(method: RunSummary, baseline: RunSummary, runs: tuple[RunArtifacts, RunArtifacts],
                             data: EvalData | None, out=None, *, formats: Sequence[str] = ("png", "pdf")
                             ) -> list[Path]:
    """Side-by-side figures of a method run against a baseline run on the same test images."""
    method_run, baseline_run = runs
    stem, classes = f"{method.name}_vs_{baseline.name}", method_run.classes
    writer = FigureWriter(out, formats)
    if method_run.metrics and baseline_run.metrics:
        writer.save(plot_training_curves({baseline.name: baseline_run.metrics, method.name: method_run.metrics}),
                    f"{stem}_curves")
    if method_run.intensity and baseline_run.intensity:
        writer.save(plot_learning_intensity({baseline.name: baseline_run.intensity,
                                             method.name: method_run.intensity}), f"{stem}_intensity")
    if data is None or not method.recalls or not baseline.recalls:
        return writer.paths
    writer.save(plot_confusion_pair(baseline.counts, method.counts, classes, (baseline.name, method.name)),
                f"{stem}_confusion")
    writer.save(plot_per_class_accuracy({baseline.name: baseline.recalls, method.name: method.recalls}, classes),
                f"{stem}_per_class")
    shown = method.display_index
    layers = [layer for layer in STAGE_NAMES if layer in method.maps]
    maps_by_model = {baseline.name: {layer: baseline.maps[layer][shown] for layer in layers if layer in baseline.maps},
                     method.name: {layer: method.maps[layer][shown] for layer in layers}}
    writer.save(plot_layer_attention(data.images[shown], maps_by_model, layers,
                                     row_labels=[classes[k] for k in data.labels[shown]]), f"{stem}_attention")
    if method.embedding is not None and baseline.embedding is not None:
        writer.save(plot_tsne({baseline.name: (baseline.embedding, baseline.embedding_labels),
                               method.name: (method.embedding, method.embedding_labels)}, classes), f"{stem}_tsne")
    if method.scores and baseline.scores:
        scores = {baseline.name: baseline.scores, method.name: method.scores}
        writer.save(plot_attention_scores(scores, title="attention inside the expression regions"),
                    f"{stem}_attention_scores")
        writer.write_text(f"{stem}_attention_scores.md", attention_score_table(scores))
    return writer.paths


def draw_figures(run_dir: str | Path, compare_dir: str | Path | None = None, out=None, *,
                 checkpoint: str = "best.pt", device: str = "cpu", samples: int = 512, cam_method: str = "gradcam",
                 seed: int = 0, formats: Sequence[str] = ("png", "pdf"),
                 data_overrides: Sequence[str] = (), force: bool = False) -> list[Path]:
    """Every figure of ``run_dir``, and with ``compare_dir`` those of the second run and the side-by-side
    ones, drawn on the same test images. ``data_overrides`` (``data.root=...``) are the user's data settings,
    which win over the run's stored ones. Returns the written paths. ``out`` follows the output rule
    (:mod:`hsbs_lib.outputs`): a file hsbs figures did not write there is replaced only with ``force``."""
    options = dict(cam_method=cam_method, seed=seed, formats=formats)
    run = load_run(run_dir, checkpoint=checkpoint, device=device)
    data = load_eval_data(run, max_samples=samples, overrides=data_overrides)
    out = out if isinstance(out, OutputFolder) else OutputFolder(figures_dir(out), "figures", force=force)
    summary = write_run_figures(run, data, out, **options)
    paths = list(summary.paths)
    if compare_dir is not None:
        baseline_run = load_run(compare_dir, checkpoint=checkpoint, device=device)
        if baseline_run.classes != run.classes or baseline_run.input_size != run.input_size:
            raise ValueError(f"{compare_dir} and {run_dir} differ in classes or input size: cannot compare them")
        baseline_summary = write_run_figures(baseline_run, data, out, **options)
        paths += baseline_summary.paths
        paths += write_comparison_figures(summary, baseline_summary, (run, baseline_run), data, out, formats=formats)
    return paths
