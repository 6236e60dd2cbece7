"""Deep Smooth Feature (DSF) loss of MFER: a label-smoothed center loss with a margin between centres.

Xu et al., "Multiscale Facial Expression Recognition Based on Dynamic Global and Static Local
Attention" (MFER), IEEE Transactions on Affective Computing 16(2):683-696 (online 2024). The paper
names the loss but its exact form is not public: the equation below is our reconstruction [design].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hsbs_lib.losses.casting import as_dtype, as_float


class DeepSmoothFeatureLoss(nn.Module):
    """L = 0.5 * mean_i ||x_i - c^_i||^2 + mu * mean_{k != k'} max(0, m - ||c_k - c_k'||)^2.

    The soft target centre of sample i is c^_i = sum_k q_ik c_k with q = (1 - eps) * onehot(y_i) + eps / K:
    like label smoothing for the classifier, a feature is pulled toward its own class centre but
    slightly toward the others too, so the model is not forced onto one point for ambiguous faces.
    The second term keeps every pair of centres at least ``margin`` apart, so the pull term cannot be
    lowered by letting the centres collapse together. With eps = 0 and mu = 0 this is the center loss.

    Args:
        num_classes: K.
        feat_dim: D, the size of the pooled feature.
        eps: smoothing of the target centre (0.1).
        mu: weight of the centre-separation term (0.1).
        margin: m, in feature units. Default 10.0: pooled (ReLU, average-pooled) ResNet-18 features have
            norms of about 20 and sample-to-sample distances of about 14 at initialisation, so m = 10
            asks the centres to be about as far apart as typical samples. Rescale it for features of
            another size (ResNet-50's 2048-d features are larger) or normalised features.
        init_std: centres start as N(0, init_std^2).
    """

    def __init__(self, num_classes: int, feat_dim: int, *, eps: float = 0.1, mu: float = 0.1,
                 margin: float = 10.0, init_std: float = 0.01):
        super().__init__()
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must be in [0, 1), got {eps}")
        if num_classes < 2:
            raise ValueError("DSF needs at least two classes")
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.eps = float(eps)
        self.mu = float(mu)
        self.margin = float(margin)
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim) * init_std)

    def soft_targets(self, labels: Tensor) -> Tensor:
        """labels (B,) int, or (B, K) label distributions (e.g. FERPlus votes) -> q (B, K)."""
        if labels.ndim == 1:
            distribution = F.one_hot(as_dtype(labels, torch.long), self.num_classes).float()
        elif labels.ndim == 2 and labels.shape[1] == self.num_classes:
            distribution = as_float(labels)
        else:
            raise ValueError(f"labels must be (B,) class indices or (B, {self.num_classes}) distributions, "
                             f"got {tuple(labels.shape)}")
        return (1.0 - self.eps) * distribution + self.eps / self.num_classes

    def pull(self, features: Tensor, labels: Tensor) -> Tensor:
        """0.5 * mean_i ||x_i - c^_i||^2 for features (B, D)."""
        if features.ndim != 2 or features.shape[1] != self.feat_dim:
            raise ValueError(f"expected features of shape (B, {self.feat_dim}), got {tuple(features.shape)}")
        target_centers = self.soft_targets(labels) @ as_float(self.centers)
        return 0.5 * (as_float(features) - target_centers).pow(2).sum(dim=1).mean()

    def separation(self) -> Tensor:
        """mean over the K(K-1) ordered pairs k != k' of max(0, m - ||c_k - c_k'||)^2."""
        centers = as_float(self.centers)
        # pdist: the K(K-1)/2 distances k < k', each once (the ordered pairs count each twice, which leaves the
        # mean as it is); the diagonal (distance 0) would add a constant m^2 per class and a zero-norm gradient.
        return F.relu(self.margin - F.pdist(centers)).pow(2).mean()

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """features (B, D), labels (B,) or (B, K) -> scalar."""
        loss = self.pull(features, labels)
        if self.mu > 0:
            loss = loss + self.mu * self.separation()
        return loss

    @torch.no_grad()
    def mean_center_distance(self) -> float:
        """Average distance between two different centres (logged to watch the margin act)."""
        distances = torch.cdist(self.centers.float(), self.centers.float())
        return float(distances.sum() / (self.num_classes * (self.num_classes - 1)))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, eps={self.eps}, mu={self.mu}, "
                f"margin={self.margin}")
