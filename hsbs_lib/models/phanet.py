"""PhaNet: Pose-adaptive Hierarchical Attention Network (Liu et al., arXiv 1905.10059).

[paper] Expression and head pose are recognised jointly; attention at hierarchical scales finds the
regions that matter; the most informative scales are selected, per image, to learn pose-invariant
features; training combines hierarchical attention losses, the FER loss and a pose loss with
dynamically learned loss weights.

[design] No code is public, so everything below is our reconstruction of that description:

- scales layer2, layer3, layer4 of a ResNet; per scale an attention branch (1x1 conv C -> C/8, ReLU,
  1x1 conv -> 1, softmax over the H*W positions) pools the stage output into f_s (B, C_s), then
  Linear -> embed_dim, BatchNorm, ReLU; an auxiliary expression classifier on each f_s gives the
  "hierarchical attention loss" of that scale;
- a pose head on the average-pooled layer4 output predicts P yaw bins;
- a scale gate g = softmax(MLP([softmax(pose logits); f_2; f_3; f_4]) / tau), shape (B, n_scales),
  selects the scales; fused f = sum_s g_s f_s feeds the expression classifier;
- loss terms CE fused ("ce"), CE per scale ("ce/layerN"), CE pose ("pose"), each weighted by a learned
  uncertainty (:class:`~hsbs_lib.losses.uncertainty.UncertaintyWeighting`).

Pose labels are bins 0..P-1 ordered by yaw, -1 where unknown. A horizontal flip mirrors the yaw, so the
training engine must map a flipped sample's bin p to P-1-p (unknown stays -1); the model never sees
whether an image was flipped.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hsbs_lib.losses.casting import as_dtype, as_float
from hsbs_lib.losses.uncertainty import UncertaintyWeighting
from hsbs_lib.models.base import FERModel, ModelOutput
from hsbs_lib.models.registry import register_model


class SpatialAttentionPool(nn.Module):
    """Attention pooling of one stage output over its spatial positions.

    forward(x: (B, C, H, W)) -> (pooled (B, C), attention (B, H, W)); the attention of each image is a
    softmax over its H*W positions, so it sums to 1 and pooled is the attention-weighted mean of x.
    """

    def __init__(self, channels: int, *, reduction: int = 8):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.score = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            # No bias: the softmax over positions is shift-invariant, so a bias could never be trained.
            nn.Conv2d(hidden, 1, kernel_size=1, bias=False),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        batch, _, height, width = x.shape
        scores = self.score(x).flatten(1)                           # (B, H*W)
        attention = as_dtype(torch.softmax(as_float(scores), dim=1), x.dtype)
        pooled = torch.bmm(x.flatten(2), attention.unsqueeze(2)).squeeze(2)   # (B, C)
        return pooled, attention.view(batch, height, width)


@register_model("phanet")
class PhaNet(FERModel):
    """[design] PhaNet on a ResNet backbone (see the module docstring for what is reconstructed).

    Options (keyword-only; each switch gives one ablation row):
        num_poses: P, the number of yaw bins of the pose head.
        scales: the stages with an attention branch, default ("layer2", "layer3", "layer4").
        embed_dim: E, the width of every per-scale feature f_s and of the fused feature.
        gate: True learns the pose-adaptive scale gate; False uses fixed equal weights 1/n_scales
            (a plain average of the scales).
        gate_temperature: tau of the gate softmax; larger values give flatter gates.
        learned_weights: True learns one uncertainty sigma per loss term; False weights every term by 1.
        aux_losses: the per-scale auxiliary classifiers and their "ce/layerN" terms.
        pose_loss: the "pose" term (used only for samples whose pose label is >= 0).
        single_scale: e.g. "layer4" to keep that one scale only (no gate: nothing to select).
        stem, backbone_width: the backbone's stem and width (see hsbs_lib.models.backbones).

    forward(x: (B, 3, H, W)) -> ModelOutput with
        logits (B, K), features = fused f (B, E);
        maps: "attention/<scale>" (B, H_s, W_s) spatial softmax per scale, "scale_gates" (B, n_scales) in
            the order of ``self.scales``, "pose_logits" (B, P) when a pose head exists,
            "features/layer1..layer4" the raw stage outputs;
        extras: "scale_logits" {scale: (B, K)} and "pose_logits" for the loss.

    The pose head exists when the gate or the pose loss needs it. Its posterior enters the gate without
    being detached, so without pose labels it still trains as a latent "view" code that helps select
    scales; with labels the pose loss anchors it to yaw.
    """

    def __init__(self, num_classes: int = 7, backbone: str = "resnet18", pretrained: str | None = None, *,
                 num_poses: int = 5, scales: Sequence[str] = ("layer2", "layer3", "layer4"),
                 embed_dim: int = 256, gate: bool = True, gate_temperature: float = 1.0,
                 learned_weights: bool = True, aux_losses: bool = True, pose_loss: bool = True,
                 single_scale: str | None = None, stem: str = "standard", backbone_width: int = 64):
        super().__init__(num_classes, backbone, pretrained, stem=stem, backbone_width=backbone_width)
        scales = (single_scale,) if single_scale is not None else tuple(scales)
        unknown = [scale for scale in scales if scale not in self.feature_layers]
        if not scales or unknown or len(set(scales)) != len(scales):
            raise ValueError(f"PhaNet scales must be distinct names from {self.feature_layers}, got {scales}")
        if num_poses < 1:
            raise ValueError(f"num_poses must be >= 1, got {num_poses}")
        if gate_temperature <= 0:
            raise ValueError(f"gate_temperature must be > 0, got {gate_temperature}")

        self.scales: tuple[str, ...] = scales
        self.num_poses = int(num_poses)
        self.embed_dim = int(embed_dim)
        self.gate_temperature = float(gate_temperature)
        self.use_gate = bool(gate) and len(scales) > 1
        self.use_aux_losses = bool(aux_losses)
        self.use_pose_loss = bool(pose_loss)
        stage_channels = dict(zip(self.feature_layers, self.backbone.channels))

        self.attention = nn.ModuleDict({s: SpatialAttentionPool(stage_channels[s]) for s in scales})
        self.embed = nn.ModuleDict({
            s: nn.Sequential(nn.Linear(stage_channels[s], embed_dim), nn.BatchNorm1d(embed_dim), nn.ReLU(inplace=True))
            for s in scales
        })
        self.aux_classifiers = (nn.ModuleDict({s: nn.Linear(embed_dim, num_classes) for s in scales})
                                if self.use_aux_losses else None)
        needs_pose_head = self.use_gate or self.use_pose_loss
        self.pose_head = nn.Linear(self.backbone.out_channels, num_poses) if needs_pose_head else None
        self.gate = (nn.Sequential(nn.Linear(num_poses + len(scales) * embed_dim, embed_dim), nn.ReLU(inplace=True),
                                   nn.Linear(embed_dim, len(scales)))
                     if self.use_gate else None)
        self.classifier = nn.Linear(embed_dim, num_classes)

        term_names = ["ce"]
        if self.use_aux_losses:
            term_names += [f"ce/{s}" for s in scales]
        if self.use_pose_loss:
            term_names.append("pose")
        self.loss_terms: tuple[str, ...] = tuple(term_names)
        self.loss_weighting = UncertaintyWeighting(term_names) if learned_weights else None

    def forward(self, x: Tensor) -> ModelOutput:
        stages = dict(zip(self.feature_layers, self.backbone(x)))
        maps: dict[str, Tensor] = {f"features/{name}": stage for name, stage in stages.items()}

        scale_features = []
        for scale in self.scales:
            pooled, attention = self.attention[scale](stages[scale])
            scale_features.append(self.embed[scale](pooled))          # (B, E)
            maps[f"attention/{scale}"] = attention
        stacked = torch.stack(scale_features, dim=1)                    # (B, n_scales, E)

        pose_logits = None
        if self.pose_head is not None:
            pose_logits = self.pose_head(stages["layer4"].mean(dim=(2, 3)))   # (B, P)
            maps["pose_logits"] = pose_logits

        if self.gate is not None:
            gate_input = torch.cat([torch.softmax(pose_logits, dim=1), stacked.flatten(1)], dim=1)
            gates = torch.softmax(as_float(self.gate(gate_input)) / self.gate_temperature, dim=1)
            gates = as_dtype(gates, stacked.dtype)
        else:
            gates = stacked.new_full(stacked.shape[:2], 1.0 / len(self.scales))
        maps["scale_gates"] = gates

        fused = (gates.unsqueeze(2) * stacked).sum(dim=1)               # (B, E)
        logits = self.classifier(fused)

        extras: dict = {"pose_logits": pose_logits}
        if self.aux_classifiers is not None:
            extras["scale_logits"] = {s: self.aux_classifiers[s](f) for s, f in zip(self.scales, scale_features)}
        return ModelOutput(logits=logits, features=fused, maps=maps, extras=extras)

    def raw_losses(self, output: ModelOutput, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """The unweighted terms: "ce", "ce/<scale>" and "pose" (absent when no sample has a pose >= 0)."""
        losses = {"ce": self.classification_loss(output.logits, targets)}
        for scale, scale_logits in output.extras.get("scale_logits", {}).items():
            losses[f"ce/{scale}"] = self.classification_loss(scale_logits, targets)
        pose = targets.get("pose")
        if self.use_pose_loss and pose is not None:
            pose = as_dtype(torch.as_tensor(pose, device=output.logits.device), torch.long)
            known = pose >= 0
            # One host sync for both checks: skip the term when no pose is known, refuse bins out of range.
            n_known, largest = torch.stack([known.sum(), pose.max()]).tolist()
            if n_known > 0:
                if largest >= self.num_poses:
                    raise ValueError(f"pose label {largest} out of range: PhaNet was built with num_poses="
                                     f"{self.num_poses} (bins 0..{self.num_poses - 1}, -1 for unknown)")
                losses["pose"] = F.cross_entropy(as_float(output.extras["pose_logits"][known]), pose[known])
        return losses

    def loss(self, output: ModelOutput, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """Named terms, already weighted: L_i / (2 sigma_i^2) + log(1 + sigma_i^2), or L_i when weights are fixed."""
        losses = self.raw_losses(output, targets)
        if self.loss_weighting is None:
            return losses
        return self.loss_weighting(losses)

    def epoch_end(self, epoch: int) -> dict[str, float]:
        """The learned sigma of every term, {"sigma/ce": ..., "sigma/pose": ...}; empty with fixed weights."""
        if self.loss_weighting is None:
            return {}
        return {f"sigma/{name}": value for name, value in self.loss_weighting.sigmas().items()}
