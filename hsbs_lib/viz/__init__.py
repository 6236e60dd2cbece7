"""Figures: every plot a notebook or ``hsbs figures`` draws. Each function returns a matplotlib Figure;
``save_figure(fig, name)`` writes figures/NAME.png and .pdf."""
from hsbs_lib.constants import MINORITY_CLASSES
from hsbs_lib.viz.style import (CLASS_COLORS, METHOD_COLORS, apply_style, class_color,
                                class_palette, figures_dir, save_figure)
from hsbs_lib.viz.attention import (activation_attention, attention_maps, overlay, plot_ds_attention,
                                    plot_layer_attention, plot_scale_attention_by_pose, to_display_images,
                                    upsample_to)
from hsbs_lib.viz.saliency import (attention_score_table, energy_inside, plot_attention_scores, pointing_game,
                                   score_saliency)
from hsbs_lib.viz.gradcam import gradcam, gradcam_target_layer, plot_gradcam_per_class
from hsbs_lib.viz.similarity import (ClassSimilarityAccumulator, batch_similarity_maps, class_similarity,
                                     plot_class_similarity, plot_similarity_matrix, sort_by_label)
from hsbs_lib.viz.confusion import confusion, normalize_rows, per_class_recall, plot_confusion, plot_confusion_pair
from hsbs_lib.viz.embedding import plot_tsne, tsne_embedding
from hsbs_lib.viz.intensity import LearningIntensityRecorder, plot_learning_intensity, read_intensity
from hsbs_lib.viz.curves import plot_curves_by_row, plot_per_class_accuracy, plot_training_curves, read_metrics

__all__ = [
    "CLASS_COLORS", "METHOD_COLORS", "MINORITY_CLASSES", "apply_style", "class_color", "class_palette",
    "figures_dir", "save_figure",
    "activation_attention", "attention_maps", "overlay", "plot_ds_attention", "plot_layer_attention",
    "plot_scale_attention_by_pose", "to_display_images", "upsample_to",
    "attention_score_table", "energy_inside", "plot_attention_scores", "pointing_game", "score_saliency",
    "gradcam", "gradcam_target_layer", "plot_gradcam_per_class",
    "ClassSimilarityAccumulator", "batch_similarity_maps", "class_similarity", "plot_class_similarity",
    "plot_similarity_matrix", "sort_by_label",
    "confusion", "normalize_rows", "per_class_recall", "plot_confusion", "plot_confusion_pair",
    "plot_tsne", "tsne_embedding",
    "LearningIntensityRecorder", "plot_learning_intensity", "read_intensity",
    "plot_curves_by_row", "plot_per_class_accuracy", "plot_training_curves", "read_metrics",
]
