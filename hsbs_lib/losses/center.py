"""Center loss: pull every feature toward a learnable centre of its class.

Wen, Zhang, Li, Qiao, "A Discriminative Feature Learning Approach for Deep Face Recognition", ECCV 2016.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from hsbs_lib.losses.casting import as_float


class CenterLoss(nn.Module):
    """L = 0.5 * mean_i ||x_i - c_{y_i}||^2 with learnable centres c (K, D).

    The paper updates the centres with their own rule (rate alpha); here they are ordinary parameters
    trained by the optimizer with the rest of the model, so the loss is a plain ``nn.Module``.

    Args:
        num_classes: K.
        feat_dim: D, the size of the pooled feature.
        init_std: centres start as N(0, init_std^2): close to the origin, so the first steps move the
            centres toward the features rather than the features toward random points.
    """

    def __init__(self, num_classes: int, feat_dim: int, *, init_std: float = 0.01):
        super().__init__()
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim) * init_std)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """features (B, D), labels (B,) int -> scalar."""
        if features.ndim != 2 or features.shape[1] != self.feat_dim:
            raise ValueError(f"expected features of shape (B, {self.feat_dim}), got {tuple(features.shape)}")
        target_centers = self.centers[labels]
        return 0.5 * (as_float(features) - as_float(target_centers)).pow(2).sum(dim=1).mean()

    @torch.no_grad()
    def mean_center_distance(self) -> float:
        """Average distance between two different centres."""
        distances = torch.cdist(self.centers.float(), self.centers.float())
        return float(distances.sum() / (self.num_classes * (self.num_classes - 1)))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feat_dim={self.feat_dim}"
