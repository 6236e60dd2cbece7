"""MFER: dynamic global and static local (DS) attention, a multiscale classifier and a feature loss.

Xu et al., "Multiscale Facial Expression Recognition Based on Dynamic Global and Static Local
Attention", IEEE Transactions on Affective Computing 16(2):683-696 (online 2024); ConvNeXt backbone,
face-pretrained.

What comes from where:

- [code] DS attention (from the authors' public code): value V = linear(X); dynamic global key
  K = MLP(C -> C/8 -> C, GELU)(X) * X; static local query Q = LayerNorm(GELU(conv7x7(X))) with the
  LayerNorm over channels; output = softmax over spatial positions, per channel, of (Q + K), times V,
  plus X.
- [code] Msc, the multiscale classifier: the pooled C-dim feature is cut into 4 chunks; three heads
  see the first 2, 3 and 4 chunks; each head is Linear(d, d), GELU, Linear(d, K); the logits are the
  sum of the three heads, and each head is trained with label-smoothing cross-entropy (0.1).
- [design] Placement on ResNet: DS attention after layer3 and after layer4 (the released model wraps
  ConvNeXt stages); the attended layer3 map feeds layer4.
- [code] On ConvNeXt (``backbone="convnext_base"``, the released backbone) the same placement is the
  released one: attention closes stages 3 and 4, the pooled feature passes a LayerNorm, and the blocks
  use stochastic depth 0.25 (``drop_path``, ramped linearly over the blocks).
- [design] ``depthwise=True`` (default) makes the 7x7 query convolution depthwise. The released code
  uses a full C -> C convolution: 12.8M parameters after ResNet-18's layer4 and 205M after ResNet-50's,
  against 25k / 100k depthwise. ``depthwise=False`` gives the released form.
- [design] DSF loss, center loss and LGM (see :mod:`hsbs_lib.losses`) on the pooled feature, the
  last as comparison arms.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from hsbs_lib.constants import STAGE_NAMES
from hsbs_lib.losses.casting import as_dtype, as_float
from hsbs_lib.losses.center import CenterLoss
from hsbs_lib.losses.dsf import DeepSmoothFeatureLoss
from hsbs_lib.losses.lgm import LGMLoss
from hsbs_lib.models.backbones import is_convnext
from hsbs_lib.models.base import FERModel, ModelOutput
from hsbs_lib.models.registry import register_model

STAGES = STAGE_NAMES
#: [code] the stochastic depth the released model trains its ConvNeXt-Base with (drop_path_rate=0.25).
RELEASED_DROP_PATH = {"convnext_base": 0.25}

#: feature loss name -> (loss class, default weight in the total loss).
#: DSF 1e-3 is MFER's weight; center loss gets the same weight, so the comparison isolates smoothing
#: and margin (with eps = mu = 0 DSF *is* the center loss); LGM's margin cross-entropy grows with the
#: feature-to-mean distance (about 25 on an untrained ResNet-18 at 64 px), so 1e-2 keeps it an
#: auxiliary term next to the three heads.
FEATURE_LOSSES: dict[str, tuple[type[nn.Module], float]] = {
    "dsf": (DeepSmoothFeatureLoss, 1e-3),
    "center": (CenterLoss, 1e-3),
    "lgm": (LGMLoss, 1e-2),
}


class DSAttention(nn.Module):
    """Dynamic global / static local attention [code]; residual, shape-preserving.

    forward(x: (B, C, H, W)) -> (out (B, C, H, W), attention map (B, H, W)); the map is the channel
    mean of the per-channel softmax weights, so it also sums to 1 over positions.

    Args:
        channels: C.
        kernel_size: odd size of the static local (query) convolution, 7 as released.
        depthwise: depthwise query convolution [design, default]; False gives the released full conv.
    """

    def __init__(self, channels: int, kernel_size: int = 7, depthwise: bool = True):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the grid size, got {kernel_size}")
        hidden = max(channels // 8, 1)
        # 1x1 convolutions are the per-position linear layers of the released code, without permutes.
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.key = nn.Sequential(nn.Conv2d(channels, hidden, kernel_size=1), nn.GELU(),
                                 nn.Conv2d(hidden, channels, kernel_size=1))
        self.query_conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2,
                                    groups=channels if depthwise else 1)
        self.query_act = nn.GELU()
        self.query_norm = nn.LayerNorm(channels)
        self.channels = channels
        self.depthwise = depthwise

    def attention_weights(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> softmax weights (B, C, H, W), each channel summing to 1 over H*W."""
        b, c, h, w = x.shape
        key = self.key(x) * x
        query = self.query_act(self.query_conv(x))
        query = self.query_norm(query.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        scores = as_float((query + key).flatten(2))
        return torch.softmax(scores, dim=-1).view(b, c, h, w)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        weights = self.attention_weights(x)
        out = as_dtype(weights, x.dtype) * self.value(x) + x
        return out, weights.mean(dim=1)


class ClassifierHead(nn.Module):
    """Linear(d, d), GELU, Linear(d, K): one Msc head [code]."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, in_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MultiScaleClassifier(nn.Module):
    """Msc [code]: heads on the first 2/4, 3/4 and 4/4 of the feature.

    forward(features (B, C)) -> list of three (B, K) head logits; the prediction is their sum.
    """

    def __init__(self, in_features: int, num_classes: int, *, chunks: int = 4, first: int = 2):
        super().__init__()
        if in_features % chunks:
            raise ValueError(f"feature size {in_features} is not divisible into {chunks} chunks")
        chunk = in_features // chunks
        self.input_sizes = tuple(chunk * n for n in range(first, chunks + 1))
        self.heads = nn.ModuleList(ClassifierHead(size, num_classes) for size in self.input_sizes)

    def forward(self, features: Tensor) -> list[Tensor]:
        return [head(features[:, :size]) for head, size in zip(self.heads, self.input_sizes)]


def activation_attention(feature: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H, W): mean over channels of F^2."""
    return as_float(feature).pow(2).mean(dim=1)


@register_model("mfer")
class MFER(FERModel):
    """ResNet + DS attention after layer3/layer4 + multiscale classifier + feature loss.

    Options (each can be switched off for the ablation rows):
        ds_attention: add DS attention after the stages in ``ds_layers`` (default layer3, layer4).
        ds_kernel_size, depthwise: the query convolution (7, depthwise; see the module docstring).
        msc: multiscale classifier; False gives one linear head on the pooled feature.
        feature_loss: "dsf" (default), "center", "lgm" or "none", on the pooled feature.
        feature_loss_weight: its weight in the total; None takes the per-loss default
            (dsf 1e-3, center 1e-3, lgm 1e-2; see ``FEATURE_LOSSES``).
        feature_loss_options: keyword arguments of the loss (e.g. ``{"eps": 0.1, "margin": 10.0}``).
        label_smoothing: applied to each head's cross-entropy (0.1 as in MFER); it takes precedence over
            the engine's ``train.label_smoothing``; None follows the engine's value instead.
        drop_path: stochastic depth of a ConvNeXt backbone; None takes the released 0.25 on convnext_base
            and 0 on every other backbone (ResNets have none).
        feature_norm: LayerNorm on the pooled feature, as the released ConvNeXt model ends; None turns it
            on for ConvNeXt backbones and off for ResNets.

    Loss terms: ``ce/head1``, ``ce/head2``, ``ce/head3`` (``ce`` when msc=False) and ``dsf`` / ``center``
    / ``lgm`` (already weighted) when a feature loss is on. The DSF term uses ``soft_label`` when the
    batch carries label distributions; center and LGM use the hard ``label``.

    maps:
        ``features/layer1..4`` (B, C_l, H_l, W_l): the backbone stage outputs *before* DS attention,
        so learning-intensity and Grad-CAM figures read the same tensors as for the baseline (the
        layer4 input is the DS-attended layer3, so DS attention still shapes them);
        ``attention/layer1..4`` (B, H_l, W_l): activation attention (channel mean of F^2) of those;
        ``attention/ds_layer3``, ``attention/ds_layer4`` (B, H_l, W_l): the DS attention maps.
    extras: ``head_logits`` (list of (B, K)).
    """

    def __init__(self, num_classes: int = 7, backbone: str = "resnet18", pretrained: str | None = None,
                 *, stem: str = "standard", backbone_width: int = 64, ds_attention: bool = True,
                 ds_layers: Sequence[str] = ("layer3", "layer4"), ds_kernel_size: int = 7,
                 depthwise: bool = True, msc: bool = True, feature_loss: str = "dsf",
                 feature_loss_weight: float | None = None, feature_loss_options: dict[str, Any] | None = None,
                 label_smoothing: float | None = 0.1, drop_path: float | None = None,
                 feature_norm: bool | None = None):
        if label_smoothing is not None and not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), or null to follow train.label_smoothing; "
                             f"got {label_smoothing}")
        if drop_path is None:
            drop_path = RELEASED_DROP_PATH.get(backbone, 0.0)
        super().__init__(num_classes, backbone, pretrained, stem=stem, backbone_width=backbone_width,
                         drop_path=drop_path)
        channels = dict(zip(STAGES, self.backbone.channels))
        ds_layers = tuple(ds_layers) if ds_attention else ()
        unknown = [name for name in ds_layers if name not in channels]
        if unknown:
            raise ValueError(f"ds_layers {unknown} not among {STAGES}")
        self.ds_layers = ds_layers
        self.ds_attention = nn.ModuleDict(
            {name: DSAttention(channels[name], ds_kernel_size, depthwise) for name in ds_layers})

        feature_dim = self.backbone.out_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        if feature_norm is None:
            feature_norm = is_convnext(backbone)
        self.feature_norm = nn.LayerNorm(feature_dim, eps=1e-6) if feature_norm else nn.Identity()
        self.msc = msc
        self.classifier = (MultiScaleClassifier(feature_dim, num_classes) if msc
                           else nn.Linear(feature_dim, num_classes))

        if feature_loss not in (*FEATURE_LOSSES, "none"):
            raise ValueError(f"feature_loss must be one of {', '.join(FEATURE_LOSSES)}, none; got '{feature_loss}'")
        self.feature_loss_name = feature_loss
        self.feature_loss: nn.Module | None = None
        self.feature_loss_weight = 0.0
        if feature_loss != "none":
            loss_class, default_weight = FEATURE_LOSSES[feature_loss]
            self.feature_loss = loss_class(num_classes, feature_dim, **(feature_loss_options or {}))
            self.feature_loss_weight = default_weight if feature_loss_weight is None else float(feature_loss_weight)
        self.head_label_smoothing = label_smoothing

    def forward(self, x: Tensor) -> ModelOutput:
        net = self.backbone
        current = net.forward_stem(x)
        maps: dict[str, Tensor] = {}
        for name in STAGES:
            current = getattr(net, name)(current)
            maps[f"features/{name}"] = current
            maps[f"attention/{name}"] = activation_attention(current)
            if name in self.ds_attention:
                current, ds_map = self.ds_attention[name](current)
                maps[f"attention/ds_{name}"] = ds_map
        features = self.feature_norm(self.pool(current).flatten(1))
        if self.msc:
            head_logits = self.classifier(features)
            logits = torch.stack(head_logits).sum(dim=0)
        else:
            logits = self.classifier(features)
            head_logits = [logits]
        return ModelOutput(logits=logits, features=features, maps=maps, extras={"head_logits": head_logits})

    def loss(self, output: ModelOutput, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        smoothing = self.head_label_smoothing  # None -> the engine's configured value
        head_logits = output.extras["head_logits"]
        if self.msc:
            terms = {f"ce/head{i}": self.classification_loss(logits, targets, label_smoothing=smoothing)
                     for i, logits in enumerate(head_logits, start=1)}
        else:
            terms = {"ce": self.classification_loss(head_logits[0], targets, label_smoothing=smoothing)}
        if self.feature_loss is not None:
            labels = targets["label"]
            if self.feature_loss_name == "dsf" and targets.get("soft_label") is not None:
                labels = targets["soft_label"]
            terms[self.feature_loss_name] = self.feature_loss_weight * self.feature_loss(output.features, labels)
        return terms

    def epoch_end(self, epoch: int) -> dict[str, float]:
        """Mean distance between class centres, to watch DSF's margin (or its absence) at work."""
        if self.feature_loss is None:
            return {}
        return {f"{self.feature_loss_name}/center_distance": self.feature_loss.mean_center_distance()}
