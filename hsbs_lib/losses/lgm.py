"""Large-margin Gaussian Mixture (LGM) loss.

Wan, Zhong, Li, Chen, "Rethinking Feature Distribution for Loss Functions in Image Classification",
CVPR 2018.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LGMLoss(nn.Module):
    """L = L_cls + lambda * L_lkd, features modelled as a mixture of K Gaussians N(mu_k, diag(sigma_k^2)).

    With equal priors and d_k(x) = 0.5 * sum_j (x_j - mu_kj)^2 / sigma_kj^2 (half the Mahalanobis distance):

    - margin logits  z_k = -(1 + alpha * [k = y]) * d_k - 0.5 * log|Sigma_k|; the true class is scored
      as if it were (1 + alpha) times farther, so it must win by a margin;
    - L_cls = cross-entropy(z, y);
    - L_lkd = mean_i ( d_{y_i}(x_i) + 0.5 * log|Sigma_{y_i}| ), the negative log-likelihood of each
      feature under its own class Gaussian (up to a constant), which is what pulls features together.

    ``forward`` returns the combined scalar; :meth:`terms` returns both parts and the logits.
    Here LGM is an auxiliary feature loss: the model still predicts with its own classifier.

    Args:
        num_classes: K.
        feat_dim: D.
        alpha: classification margin (0.1 in the paper).
        lambda_: weight of the likelihood term (0.01 here; the paper tunes it per task).
        learn_covariance: learn a diagonal covariance per class (as in the paper); False fixes it at I.
        init_std: means start as N(0, init_std^2), near the origin, so the first logits are nearly equal.
    """

    def __init__(self, num_classes: int, feat_dim: int, alpha: float = 0.1, lambda_: float = 0.01, *,
                 learn_covariance: bool = True, init_std: float = 0.01):
        super().__init__()
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.alpha = float(alpha)
        self.lambda_ = float(lambda_)
        self.means = nn.Parameter(torch.randn(num_classes, feat_dim) * init_std)
        log_variances = torch.zeros(num_classes, feat_dim)
        if learn_covariance:
            self.log_variances = nn.Parameter(log_variances)
        else:
            self.register_buffer("log_variances", log_variances)

    def half_distances(self, features: Tensor) -> Tensor:
        """features (B, D) -> d (B, K), d_k = 0.5 * (x - mu_k)^T Sigma_k^-1 (x - mu_k)."""
        if features.ndim != 2 or features.shape[1] != self.feat_dim:
            raise ValueError(f"expected features of shape (B, {self.feat_dim}), got {tuple(features.shape)}")
        differences = features.float()[:, None, :] - self.means.float()[None, :, :]
        inverse_variances = torch.exp(-self.log_variances.float())
        return 0.5 * (differences.pow(2) * inverse_variances[None]).sum(dim=2)

    def logits(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """(B, K) Gaussian-mixture logits; with ``labels`` the true class carries the margin alpha."""
        distances = self.half_distances(features)
        if labels is not None and self.alpha > 0:
            distances = distances * (1.0 + self.alpha * F.one_hot(labels.long(), self.num_classes).float())
        half_log_determinant = 0.5 * self.log_variances.float().sum(dim=1)
        return -distances - half_log_determinant[None]

    def terms(self, features: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """{'classification': L_cls, 'likelihood': L_lkd, 'logits': margin logits (B, K)}."""
        distances = self.half_distances(features)
        one_hot = F.one_hot(labels.long(), self.num_classes).float()
        half_log_determinant = 0.5 * self.log_variances.float().sum(dim=1)
        margin_logits = -distances * (1.0 + self.alpha * one_hot) - half_log_determinant[None]
        classification = F.cross_entropy(margin_logits, labels.long())
        likelihood = ((distances + half_log_determinant[None]) * one_hot).sum(dim=1).mean()
        return {"classification": classification, "likelihood": likelihood, "logits": margin_logits}

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """features (B, D), labels (B,) int -> L_cls + lambda * L_lkd (scalar)."""
        parts = self.terms(features, labels)
        return parts["classification"] + self.lambda_ * parts["likelihood"]

    @torch.no_grad()
    def mean_center_distance(self) -> float:
        """Average Euclidean distance between two different class means."""
        distances = torch.cdist(self.means.float(), self.means.float())
        return float(distances.sum() / (self.num_classes * (self.num_classes - 1)))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, alpha={self.alpha}, "
                f"lambda_={self.lambda_}")
