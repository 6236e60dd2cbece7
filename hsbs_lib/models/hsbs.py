"""HSBS = Hierarchical Semantic Transfer (HST) + Batch-wise Similarity Attention (BSA).

[paper] HST uses attention maps of deep-layer features to regularise the model, aligning shallow and
deep latent semantics while ignoring irrelevant noise; BSA learns similarity relations between the
samples of a batch to counter class imbalance.

[design] The concrete modules are our reconstruction (see hsbs_lib.losses.hst and hsbs_lib.losses.bsa):
activation attention with a detached layer4 teacher, and single-head attention across the batch on the
pooled feature with one classifier shared by z and z~. BSA is bypassed at evaluation by default, so a
prediction never depends on the rest of its batch.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hsbs_lib.data.labels import class_names
from hsbs_lib.data.regions import REGION_BITS, region_bit_mask, regions_union
from hsbs_lib.data.synthfer.params import REGION_NAMES, expression_regions
from hsbs_lib.losses.bsa import BatchSimilarityAttention, similarity_supervision_loss, supervision_from_logits
from hsbs_lib.losses.hst import (HST_TEACHERS, REGION_TEACHERS, HSTLoss, activation_attention, blended_teacher,
                                 class_activation_map, mask_teacher)
from hsbs_lib.models.base import FERModel, ModelOutput
from hsbs_lib.models.hst_teachers import FrozenTeacher, MovingAverageTeacher
from hsbs_lib.models.registry import register_model

#: what the BSA branch's logits come from: the shared classifier (the default), a head of its own (the main
#: classifier then sees only z, as at evaluation), or the shared classifier behind a stop-gradient
BSA_HEADS = ("shared", "own", "stop_gradient")


@register_model("hsbs")
class HSBS(FERModel):
    """ResNet -> pooled z -> shared classifier W, trained with CE(W z) + CE(W z~) + lambda_hst * L_hst.

    Switches (the ablation rows): ``hst`` and ``bsa``; with both off the model is the baseline, parameter
    for parameter. ``bsa_at_eval=True`` keeps BSA at evaluation (batch-dependent variant: logits = W z~).

    Defaults, each chosen by measurement on SynthFER's validation split (docs/METHODS.md, BENCHMARKS.md):
    HST with layer4's activation attention as teacher (``hst_teacher="activation"``, detached; ``"cam"``,
    the class activation map of the true class, is the measured alternative; ``"mask"``, ``"blend"`` and
    ``"au_mask"`` are the ground-truth teachers of the perfect-teacher control, see :meth:`hst_teacher_map`),
    shallow maps pooled onto the cells the teacher sits on (``hst_pooling="adaptive"``
    is the misregistered ablation), ``lambda_hst=None`` = 0.8 per teacher cell up to 20 (5 x 5), ramped in
    over ``hst_warmup_epochs=2`` (the layer4 teacher is random at first). BSA with cosine similarity at
    temperature 0.1 (``bsa_similarity="dot"``, scaled dot products, collapsed onto one sample) and a KL term
    pulling S toward the same-label matrix (``bsa_supervision=0.1``; 0 turns it off). ``bsa_gamma_init``
    and ``bsa_norm`` are documented on BatchSimilarityAttention.

    Variants from the literature (none is a default, docs/METHODS.md): ``hst_start_fraction`` (HST's
    weight is 0 until that share of ``train_epochs``, which the engine passes from train.epochs, then ramps
    in); ``hst_teacher="ema"`` (a moving average of the backbone, decay ``hst_ema_decay``, updated in
    :meth:`step_end`) and ``"frozen"`` (the backbone of a trained run, ``hst_teacher_checkpoint``);
    ``hst_direction="upsample"`` (SAD: the teacher upsampled, spatial softmax); ``bsa_prototypes`` (a
    class-prototype memory appended to BSA's keys, momentum ``bsa_prototype_momentum``); ``bsa_head`` ("own":
    a classifier of its own for z~; "stop_gradient": the shared one, not trained by CE(W z~)).

    forward(x: (B, 3, H, W), *, with_similarity=False) -> ModelOutput with
      logits (B, K) = W z (W LN(z) with bsa_norm; W z~ only in eval with bsa_at_eval); features (B, C) = z;
      maps: ``features/layer1..4`` (B, C_l, H_l, W_l) raw stage outputs (their activation attention is
            what HST aligns; ``attention_maps`` computes it for figures);
            ``bsa_similarity`` (B, B) whenever BSA runs (training, bsa_at_eval, or with_similarity=True,
            which computes it in eval without changing the logits);
      extras: ``stages`` for HST, ``logits_bsa`` and ``similarity`` for the BSA terms (training only);
            ``hst_teacher_map`` (B, h, w) from the ema or frozen teacher while HST's weight is not 0.
    With ``bsa_prototypes`` ``bsa_similarity`` is the batch block (B, B) of S (its rows sum to 1 less the
    mass on the prototypes) and ``bsa_prototype_similarity`` (B, K) the rest.
    """

    def __init__(self, num_classes: int = 7, backbone: str = "resnet18", pretrained: str | None = None, *,
                 hst: bool = True, bsa: bool = True, hst_mode: str = "deep_to_all", hst_teacher: str = "activation",
                 hst_mask_quantile: float | None = None, hst_teacher_quantile: float | None = None,
                 hst_p: float = 2.0, hst_pooling: str = "registered", hst_weights: Sequence[float] = (0.5, 1.0, 1.0),
                 lambda_hst: float | None = None, hst_warmup_epochs: float = 2.0, bsa_dim: int = 128,
                 bsa_at_eval: bool = False, bsa_mask_diagonal: bool = False, bsa_supervision: float = 0.1,
                 bsa_gamma_init: float = 1.0, bsa_norm: bool = False, bsa_similarity: str = "cosine",
                 bsa_temperature: float = 0.1, stem: str = "standard",
                 backbone_width: int = 64, dropout: float = 0.0, hst_start_fraction: float = 0.0,
                 hst_direction: str = "pool", hst_ema_decay: float = 0.99, hst_teacher_checkpoint: str | None = None,
                 bsa_prototypes: bool = False, bsa_prototype_momentum: float = 0.9, bsa_head: str = "shared",
                 train_epochs: int | None = None):
        super().__init__(num_classes, backbone, pretrained, stem=stem, backbone_width=backbone_width)
        # Same module names and creation order as the baseline, so hst=bsa=False is the baseline exactly.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.backbone.out_channels, num_classes)
        if hst_teacher not in HST_TEACHERS:
            raise ValueError(f"unknown hst_teacher '{hst_teacher}'; choose one of {', '.join(HST_TEACHERS)}")
        if hst_teacher != "activation" and hst_mode != "deep_to_all":
            raise ValueError(f"model.options.hst_teacher={hst_teacher} teaches every student layer itself: use "
                             f"model.options.hst_mode=deep_to_all, not {hst_mode}")
        self.hst_teacher = hst_teacher
        if hst_teacher == "au_mask":
            # Per class, the bits of the regions its action units move (SynthFER's classes in canonical order);
            # not persistent, so checkpoints and the baseline's state dict stay as they were.
            if num_classes not in (7, 8):
                raise ValueError(f"model.options.hst_teacher=au_mask knows SynthFER's 7 or 8 expressions, not "
                                 f"{num_classes} classes")
            bits = [region_bit_mask(expression_regions(name), REGION_NAMES) for name in class_names(num_classes)]
            self.register_buffer("class_region_bits", torch.tensor(bits, dtype=torch.uint8), persistent=False)
        self.hst = HSTLoss(weights=hst_weights, mode=hst_mode, mask_quantile=hst_mask_quantile,
                           teacher_quantile=hst_teacher_quantile, p=hst_p, pooling=hst_pooling,
                           lambda_hst=lambda_hst, warmup_epochs=hst_warmup_epochs,
                           start_epoch=_start_epoch(hst_start_fraction, train_epochs),
                           direction=hst_direction) if hst else None
        self.bsa = BatchSimilarityAttention(self.backbone.out_channels, bsa_dim, mask_diagonal=bsa_mask_diagonal,
                                            gamma_init=bsa_gamma_init, norm=bsa_norm, similarity=bsa_similarity,
                                            temperature=bsa_temperature,
                                            memory_classes=num_classes if bsa_prototypes else 0,
                                            prototype_momentum=bsa_prototype_momentum) if bsa else None
        self.bsa_at_eval = bsa_at_eval
        if bsa_head not in BSA_HEADS:
            raise ValueError(f"unknown bsa_head '{bsa_head}'; choose one of {', '.join(BSA_HEADS)}")
        self.bsa_head = bsa_head
        # Created last, and only when asked: the default model keeps its modules, parameters and initialisation.
        self.bsa_classifier = nn.Linear(self.backbone.out_channels, num_classes) if bsa and bsa_head == "own" else None
        if (hst_teacher_checkpoint is not None) != (hst_teacher == "frozen"):
            raise ValueError("hst_teacher=frozen reads its teacher from hst_teacher_checkpoint (a finished baseline "
                             "run folder or its best.pt), and only it does: give both or neither")
        self.teacher_network = None
        if hst and hst_teacher == "ema":
            self.teacher_network = MovingAverageTeacher(self.backbone, hst_ema_decay)
        elif hst and hst_teacher == "frozen":
            self.teacher_network = FrozenTeacher(self.backbone, hst_teacher_checkpoint, {
                "backbone": backbone, "stem": stem, "backbone_width": backbone_width})
        if not (math.isfinite(bsa_supervision) and bsa_supervision >= 0):
            # A negative weight would silently turn the same-label term off (it is applied when > 0).
            raise ValueError(f"bsa_supervision must be a finite number >= 0 (0 turns the same-label term off), "
                             f"got {bsa_supervision}")
        self.bsa_supervision = float(bsa_supervision)

    def forward(self, x: Tensor, *, with_similarity: bool = False) -> ModelOutput:
        stages = self.backbone(x)
        z = self.pool(stages[-1]).flatten(1)
        # With bsa_norm the mixed feature is LayerNorm(z + gamma S v), and the plain path goes through the
        # same LayerNorm, so the shared classifier never serves two feature scales at once.
        z_plain = self.bsa.norm(z) if self.bsa is not None else z
        logits = self.classifier(self._dropout(z_plain))
        # Like the baseline, only the raw stage outputs: figures compute activation attention from them
        # (hsbs_lib.viz.attention.attention_maps), so neither training nor inference pays for maps.
        maps: dict[str, Tensor] = {f"features/{name}": stage for name, stage in zip(self.feature_layers, stages)}
        extras: dict = {"stages": stages} if self.training else {}
        if self.training and self.teacher_network is not None and self.hst.ramp() > 0:
            extras["hst_teacher_map"] = self.teacher_network.attention(x, self.hst.p)

        mix_logits = self.training or self.bsa_at_eval
        if self.bsa is not None and (mix_logits or with_similarity):
            z_mixed, similarity, similarity_logits = self.bsa.attend(z)
            maps["bsa_similarity"] = similarity[:, :z.shape[0]] if self.bsa.memory_classes else similarity
            if self.bsa.memory_classes:
                maps["bsa_prototype_similarity"] = similarity[:, z.shape[0]:]
            if self.training:
                extras["logits_bsa"] = self._bsa_logits(self._dropout(z_mixed))
                extras["similarity"] = similarity
                extras["similarity_logits"] = similarity_logits
            elif self.bsa_at_eval:
                logits = self._bsa_logits(z_mixed)
        return ModelOutput(logits=logits, features=z, maps=maps, extras=extras)

    def _bsa_logits(self, z_mixed: Tensor) -> Tensor:
        """Logits of the mixed feature (B, C) -> (B, K), from the head ``bsa_head`` names."""
        if self.bsa_classifier is not None:
            return self.bsa_classifier(z_mixed)
        if self.bsa_head == "stop_gradient":   # z~ still trains BSA and the backbone; W learns from CE(W z) only
            return F.linear(z_mixed, self.classifier.weight.detach(), self.classifier.bias.detach())
        return self.classifier(z_mixed)

    def _dropout(self, z: Tensor) -> Tensor:
        # Dropout at p = 0 is the identity; skipping it saves an operator call per use.
        return self.dropout(z) if self.dropout.p > 0 else z

    def similarity(self, x: Tensor) -> Tensor:
        """BSA similarity (B, B) of a batch of images, in any mode, without touching the logits path."""
        if self.bsa is None:
            raise RuntimeError("this HSBS model was built with bsa=False, so it has no similarity matrix")
        return self(x, with_similarity=True).maps["bsa_similarity"]

    @classmethod
    def extra_targets(cls, options: dict) -> dict[str, str]:
        """The ground-truth teachers train on the region masks: {"region_bits": "model.options.hst_teacher=..."}."""
        teacher = options.get("hst_teacher", "activation")
        if options.get("hst", True) and teacher in REGION_TEACHERS:
            return {REGION_BITS: f"model.options.hst_teacher={teacher}"}
        return {}

    def hst_teacher_map(self, stages: list[Tensor], targets: dict[str, Tensor]) -> Tensor | None:
        """The HST teacher on layer4's grid (B, h, w), or None for layer4's own activation attention.

        ``"cam"``: the class activation map of the true class (``"ema"`` and ``"frozen"`` come from their teacher
        network, in the forward pass, not from here). The perfect-teacher control, which asks whether
        HST transfers a good teacher at all: ``"mask"`` is SynthFER's ground truth, the union of the expression
        regions (brows, eyes, nose, mouth) pooled onto the teacher grid as the students are
        (:func:`~hsbs_lib.losses.hst.mask_teacher`); ``"blend"`` is half layer4's activation map, half the mask,
        each L2-normalised; ``"au_mask"`` is the class-specific ground truth, the union of only the regions the
        true class's action units move (:func:`~hsbs_lib.data.synthfer.expression_regions`). The region masks
        come with the batch as ``targets["region_bits"]`` (B, S, S) uint8, flipped and warped with the images.
        """
        if self.hst_teacher in ("activation", "ema", "frozen"):
            return None
        labels = _hard_labels(targets)
        if self.hst_teacher == "cam":
            return class_activation_map(stages[-1], self.classifier.weight, labels)
        bits = targets.get(REGION_BITS)
        if bits is None:
            raise ValueError(f"model.options.hst_teacher={self.hst_teacher} needs the expression's region masks in "
                             f"every training batch (targets['{REGION_BITS}']): this dataset has no region masks "
                             f"(only SynthFER renders them)")
        grid = tuple(stages[-1].shape[-2:])
        selected = self.class_region_bits[labels] if self.hst_teacher == "au_mask" else (1 << len(REGION_NAMES)) - 1
        truth = mask_teacher(regions_union(bits, selected), grid)
        if self.hst_teacher == "blend":
            return blended_teacher(activation_attention(stages[-1].detach()), truth)
        return truth

    def loss(self, output: ModelOutput, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """{"ce": CE(W z), "ce_bsa": CE(W z~), "hst": lambda_hst * L_hst, "bsa_sim": KL term}, each when active."""
        terms = {"ce": self.classification_loss(output.logits, targets)}
        if "logits_bsa" in output.extras:
            terms["ce_bsa"] = self.classification_loss(output.extras["logits_bsa"], targets)
        if self.hst is not None and "stages" in output.extras:
            stages = output.extras["stages"]
            if self.teacher_network is not None:
                teacher = output.extras.get("hst_teacher_map")
                if teacher is None:
                    # before HST's start its weight is 0 and the teacher network was not run: an exact zero term
                    terms["hst"] = stages[0].new_zeros((), dtype=torch.float32)
                else:
                    terms["hst"] = self.hst(stages, teacher=teacher)
            else:
                terms["hst"] = self.hst(stages, teacher=self.hst_teacher_map(stages, targets))
        if "similarity" in output.extras:          # BSA ran in this training step
            labels = _hard_labels(targets)
            if self.bsa_supervision > 0:
                seen = self.bsa.prototype_seen if self.bsa.memory_classes else None
                if self.bsa.mask_diagonal or seen is not None or "similarity_logits" not in output.extras:
                    kl = similarity_supervision_loss(output.extras["similarity"], labels,
                                                     mask_diagonal=self.bsa.mask_diagonal, prototypes_seen=seen)
                else:   # the same KL from the logits in fewer operators
                    kl = supervision_from_logits(output.extras["similarity_logits"], labels)
                terms["bsa_sim"] = self.bsa_supervision * kl
            if self.bsa.memory_classes:
                # after the KL term, whose targets must see the memory the forward pass attended to
                self.bsa.update_prototypes(output.features, labels)
        return terms

    def step_end(self, step: int) -> None:
        """After every optimiser step: move the moving-average HST teacher toward the backbone."""
        if isinstance(self.teacher_network, MovingAverageTeacher):
            self.teacher_network.update(self.backbone)

    def epoch_end(self, epoch: int) -> dict[str, float]:
        """Advance the HST warm-up; log the HST weight and the BSA gate."""
        logged = {}
        if self.hst is not None:
            self.hst.set_epoch(epoch + 1)
            logged["hst/ramp"] = self.hst.ramp()
        if self.bsa is not None:
            logged["bsa/gamma"] = float(self.bsa.gamma.detach())
        return logged


def _hard_labels(targets: dict[str, Tensor]) -> Tensor:
    """The batch's class indices (B,): ``label``, or the largest share of ``soft_label`` (mixed batches)."""
    return targets["label"] if "label" in targets else targets["soft_label"].argmax(dim=1)


def _start_epoch(fraction: float, epochs: int | None) -> int:
    """The first epoch (0-based) with HST for ``hst_start_fraction`` of ``epochs``: ceil(fraction * epochs)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"hst_start_fraction is a share of training in [0, 1), got {fraction}")
    if fraction == 0:
        return 0
    if epochs is None:
        raise ValueError("hst_start_fraction needs the run's number of epochs: create_model(..., train_epochs=N) "
                         "(the engine passes train.epochs)")
    # rounded first, so that 0.75 * 8 is epoch 6, not 7 through a float's last digit
    return math.ceil(round(fraction * epochs, 9))
