"""The one model contract every method follows.

``out = model(images)`` returns a :class:`ModelOutput`; ``model.loss(out, targets)`` returns a dict of
named loss terms whose sum is the training loss. The engine knows no method by name: everything
method-specific lives in the method's module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hsbs_lib.constants import STAGE_NAMES
from hsbs_lib.models.backbones import build_backbone


@dataclass
class ModelOutput:
    """What a forward pass returns.

    logits:   (B, K) class scores used for prediction.
    features: (B, C) pooled features (t-SNE, BSA, feature losses).
    maps:     named tensors the figures need (attention maps (B, h, w), similarity (B, B), gates, ...).
    extras:   tensors only the method's own loss needs (auxiliary logits, projections, ...).
    """

    logits: Tensor
    features: Tensor
    maps: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


class LogitsOnly(nn.Module):
    """Wraps a package model so that ``forward(x)`` returns only the logits (B, K): what export and
    pytorch-grad-cam expect (a model that already returns a tensor passes it through)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        output = self.model(x)
        return output.logits if hasattr(output, "logits") else output


class FERModel(nn.Module):
    """Base class: a ResNet or ConvNeXt backbone with feature taps plus the shared classification loss.

    Subclasses implement ``forward(x) -> ModelOutput`` and may extend ``loss``. The engine calls
    ``configure_criterion`` once (label smoothing, class weights) before training.
    """

    #: names of the backbone stages that Grad-CAM and attention figures target
    feature_layers: tuple[str, ...] = STAGE_NAMES

    def __init__(self, num_classes: int = 7, backbone: str = "resnet18", pretrained: str | None = None, *,
                 stem: str = "standard", backbone_width: int = 64, drop_path: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = build_backbone(backbone, pretrained=pretrained, stem=stem, width=backbone_width,
                                       drop_path=drop_path)
        self.label_smoothing = 0.0
        self.register_buffer("class_weights", torch.ones(num_classes), persistent=False)
        # Decided once here, not per step: testing the weights in every step would make a GPU wait.
        self.class_weighted = False

    def configure_criterion(self, *, label_smoothing: float = 0.0, class_weights: Tensor | None = None) -> None:
        """Set the options of the shared cross-entropy (used by every classification term)."""
        self.label_smoothing = float(label_smoothing)
        if class_weights is not None:
            self.class_weights = class_weights.detach().float().to(self.class_weights.device)
            self.class_weighted = bool((self.class_weights != 1).any())

    def classification_loss(self, logits: Tensor, targets: dict[str, Tensor],
                            label_smoothing: float | None = None) -> Tensor:
        """Cross-entropy against ``targets['soft_label']`` (B, K) when present, else ``targets['label']`` (B,)."""
        smoothing = self.label_smoothing if label_smoothing is None else label_smoothing
        weight = self.class_weights if self.class_weighted else None
        soft = targets.get("soft_label")
        if soft is not None:
            soft = soft.to(logits.dtype)
            if smoothing > 0:
                soft = soft * (1 - smoothing) + smoothing / logits.shape[1]
            log_probs = F.log_softmax(logits.float(), dim=1)
            per_sample = -(soft.float() * log_probs * (weight if weight is not None else 1.0)).sum(dim=1)
            return per_sample.mean()
        # float32 logits as they are: .float() would still be an operator call in every step
        logits = logits if logits.dtype == torch.float32 else logits.float()
        return F.cross_entropy(logits, targets["label"], weight=weight, label_smoothing=smoothing)

    @classmethod
    def extra_targets(cls, options: dict) -> dict[str, str]:
        """Training targets beyond the labels that ``loss`` reads when built with ``options`` (``model.options``),
        each with the option that asks for it, so data without it is refused before training, naming the option;
        {} (the labels only) for most models."""
        return {}

    def loss(self, output: ModelOutput, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """Named loss terms; the base model has only the classification term."""
        return {"ce": self.classification_loss(output.logits, targets)}

    def epoch_end(self, epoch: int) -> dict[str, float]:
        """Hook for per-epoch quantities a method wants logged (e.g. learned loss weights)."""
        return {}

    def step_end(self, step: int) -> None:
        """Hook called after every optimiser step (``step`` steps taken), e.g. to update a moving-average
        teacher; the base model does nothing."""
