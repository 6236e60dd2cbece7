"""The plain ResNet baseline: global average pooling and one linear classifier."""
from __future__ import annotations

from torch import Tensor, nn

from hsbs_lib.models.base import FERModel, ModelOutput
from hsbs_lib.models.registry import register_model


@register_model("baseline")
class Baseline(FERModel):
    """ResNet -> global average pool -> dropout -> linear. The reference every method is compared to.

    maps: ``features/layer1..layer4`` (B, C_l, H_l, W_l), the raw stage outputs, so attention and
    learning-intensity figures can be drawn for the baseline exactly as for the methods.
    """

    def __init__(self, num_classes: int = 7, backbone: str = "resnet18", pretrained: str | None = None,
                 *, stem: str = "standard", backbone_width: int = 64, dropout: float = 0.0):
        super().__init__(num_classes, backbone, pretrained, stem=stem, backbone_width=backbone_width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.backbone.out_channels, num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        stages = self.backbone(x)
        features = self.pool(stages[-1]).flatten(1)
        # Dropout at p = 0 is the identity; skipping it saves an operator call.
        logits = self.classifier(self.dropout(features) if self.dropout.p > 0 else features)
        maps = {f"features/{name}": stage for name, stage in zip(self.feature_layers, stages)}
        return ModelOutput(logits=logits, features=features, maps=maps)
