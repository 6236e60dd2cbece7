"""SynthFER: procedural faces with expressions, pose, identities, nuisances and region masks.

Every image is a pure function of ``(seed, split, index)``: its parameters come from a counter-based
hash of those three numbers, never from a shared random stream, so an image is the same whatever batch
or chunk it is rendered in. Identity (face shape, feature spacing, skin tone, hair, glasses) is a pure
function of the subject id, and the train / val / test splits draw subjects from disjoint pools
(subject id modulo 3), so results on SynthFER are subject-independent like the KDEF and CK+ protocols.

Expressions are drawn as action-unit-like deformations (brow raise / lower / inner raise, eye opening,
lid tightening, lip-corner pull / depress, lip stretch, mouth opening, upper-lip raise, nose wrinkle,
lip press) scaled by an intensity in (0, 1]. At low intensity every class fades into the subject's
resting face, and the classes that share action units (fear / surprise, anger / disgust,
sadness / neutral) stay confusable.

Rendering is vectorised over the batch: every shape is a soft signed-distance test evaluated on
(N, S, S) coordinate grids with numpy broadcasting.

Modules: ``params`` (tables, ranges and the counter-based draws), ``render`` (parameters -> faces and
region masks), ``dataset`` (:class:`SynthFER`, a split in memory), ``writer`` (the RAF-DB basic layout on
disk and ``hsbs synth``).
"""
from hsbs_lib.data.synthfer.dataset import SynthFER
from hsbs_lib.data.synthfer.params import (EXPRESSION_CLASSES, INTENSITY_RANGE, POSE_BINS, POSE_YAW_DEGREES,
                                           RAFDB_TRAIN_DISTRIBUTION, REGION_NAMES, SPLITS, SUBJECTS_PER_SPLIT,
                                           class_distribution, expression_regions, sample_parameters,
                                           subject_parameters)
from hsbs_lib.data.synthfer.render import render_parameters, render_synthfer
from hsbs_lib.data.synthfer.writer import write_rafdb_layout

__all__ = ["EXPRESSION_CLASSES", "INTENSITY_RANGE", "POSE_BINS", "POSE_YAW_DEGREES", "RAFDB_TRAIN_DISTRIBUTION",
           "REGION_NAMES", "SPLITS", "SUBJECTS_PER_SPLIT", "SynthFER", "class_distribution", "expression_regions",
           "render_parameters",
           "render_synthfer", "sample_parameters", "subject_parameters", "write_rafdb_layout"]
