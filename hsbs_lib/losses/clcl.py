"""CLCL contrast terms: deterministic k-means, CLBS and CLFM.

Xie et al., "Cross-Layer Contrastive Learning of Latent Semantics for Facial Expression
Recognition", IEEE Transactions on Image Processing 33:2514-2529, 2024.

Both terms follow one pattern. k-means on detached layer4 ("teacher") vectors gives centroids; every
shallow ("student") vector is assigned by cosine similarity to its nearest centroid; the mean of the
student vectors in each cluster is pulled to that cluster's centroid by negative cosine similarity:

    L = -0.5 * mean_k cos(mean{s_i : assign(s_i) = k}, c_k)

[code] read from the authors' public code (ZhibinPeng/CCLLS): the cosine assignment, the per-cluster
means, the factor 0.5, an empty cluster counting as perfectly aligned (cos = 1, no gradient), K = 7 for
CLBS over the samples of a batch and K = 4 for CLFM over the channels of each image.

[design] our reconstruction or deviation:
- k-means runs in torch on the input's device, with a seeded k-means++ initialisation and a fixed
  number of Lloyd iterations, so a given input always gives the same centroids; with fewer points than
  clusters it uses one cluster per point.
- The teacher is always detached: the deep layer is never pulled toward the shallow ones.
- CLFM: the released code describes each channel by the positions of its two strongest responses
  (top-k indices), which carries no gradient. Here each channel is described by a spatial softmax over
  the positions of the layer4 grid ("channel code"), so the term trains the shallow layers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _squared_distances(points: Tensor, centroids: Tensor, point_norms: Tensor | None = None) -> Tensor:
    """Squared Euclidean distances: (G, N, D), (G, K, D) -> (G, N, K).

    ``point_norms`` (G, N, 1): |x|^2 when the caller has it (k-means reuses it in every iteration).
    |x|^2 - 2 x.c is one batched product (the factor -2 scales exactly), then + |c|^2.
    """
    if point_norms is None:
        point_norms = points.pow(2).sum(-1, keepdim=True)
    cross = torch.baddbmm(point_norms, points, centroids.transpose(1, 2), alpha=-2)
    return (cross + centroids.pow(2).sum(-1).unsqueeze(1)).clamp_min(0)


@torch.no_grad()
def kmeans(points: Tensor, num_clusters: int, *, iters: int = 10, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Batched Lloyd k-means with a seeded k-means++ start; no gradient, float32, on ``points.device``.

    points: (N, D) or (G, N, D) (G independent problems solved together).
    Returns centroids (G, K', D) and labels (G, N) (without the G axis for 2-D input), K' = min(K, N).

    Deterministic: the only randomness is G x K' uniform numbers drawn from a CPU ``torch.Generator``
    seeded with ``seed``; the k-means++ draws use them by inverse-CDF lookup on the device, and the
    centroid updates are one-hot matrix products (no atomic scatter).
    """
    if num_clusters < 1:
        raise ValueError(f"kmeans needs at least one cluster, got num_clusters={num_clusters}")
    squeeze = points.dim() == 2
    if squeeze:
        points = points.unsqueeze(0)
    if points.dim() != 3 or points.shape[1] == 0:
        raise ValueError(f"kmeans expects points of shape (N, D) or (G, N, D) with N >= 1, got {tuple(points.shape)}")
    points = points.detach().float()
    groups, count, dim = points.shape
    k = min(num_clusters, count)
    generator = torch.Generator().manual_seed(int(seed))
    uniforms = torch.rand(groups, k, generator=generator).to(points.device)
    rows = torch.arange(groups, device=points.device)

    # k-means++: the first centre uniformly, each next one with probability proportional to D(x)^2.
    first = (uniforms[:, 0] * count).long().clamp_max(count - 1)
    centroids = [points[rows, first]]                                            # (G, D) each
    nearest = (points - centroids[0].unsqueeze(1)).pow(2).sum(-1)                # (G, N)
    for index in range(1, k):
        # float64: a CUDA scan may round differently from run to run; this keeps draws far from ties.
        cumulative = nearest.double().cumsum(dim=1)
        target = uniforms[:, index:index + 1].double() * cumulative[:, -1:]
        # right=True skips points of zero weight (already chosen); all-zero weights fall back to the last point.
        chosen = torch.searchsorted(cumulative.contiguous(), target.contiguous(), right=True).clamp_max(count - 1)
        centre = points[rows, chosen.squeeze(1)]
        centroids.append(centre)
        nearest = torch.minimum(nearest, (points - centre.unsqueeze(1)).pow(2).sum(-1))
    centroids = torch.stack(centroids, dim=1)                                    # (G, K', D)
    point_norms = points.pow(2).sum(-1, keepdim=True)                            # (G, N, 1), for every iteration
    for _ in range(iters):
        labels = _squared_distances(points, centroids, point_norms).argmin(dim=-1)   # (G, N)
        one_hot = F.one_hot(labels, k).float()                                   # (G, N, K')
        counts = one_hot.sum(dim=1).unsqueeze(-1)                                # (G, K', 1)
        sums = one_hot.transpose(1, 2) @ points                                  # (G, K', D)
        # An emptied cluster keeps its previous centre instead of collapsing to the origin.
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    labels = _squared_distances(points, centroids, point_norms).argmin(dim=-1)
    if squeeze:
        return centroids[0], labels[0]
    return centroids, labels


def cluster_alignment_loss(student: Tensor, centroids: Tensor, *, scale: float = 0.5) -> Tensor:
    """[code] -scale * mean_k cos(mean of the students assigned to k, c_k); float32 scalar.

    student: (G, N, D) vectors that receive the gradient; centroids: (G, K, D), treated as constants.
    Each student goes to the centroid of highest cosine similarity; an empty cluster counts as cos = 1.
    """
    student = student.float()
    centroids = centroids.detach().float()
    similarity = F.normalize(student, dim=-1) @ F.normalize(centroids, dim=-1).transpose(1, 2)   # (G, N, K)
    one_hot = F.one_hot(similarity.argmax(dim=-1), centroids.shape[1]).to(student.dtype)        # (G, N, K)
    counts = one_hot.sum(dim=1)                                                                  # (G, K)
    cluster_means = (one_hot.transpose(1, 2) @ student) / counts.clamp_min(1).unsqueeze(-1)    # (G, K, D)
    cosine = F.cosine_similarity(cluster_means, centroids, dim=-1, eps=1e-8)                     # (G, K)
    cosine = torch.where(counts > 0, cosine, torch.ones_like(cosine))
    return -scale * cosine.mean()


def channel_codes(feature: Tensor, grid: tuple[int, int], *, temperature: float = 1.0) -> Tensor:
    """[design] Describe every channel by where it fires: (B, C, H, W) -> (B, C, h*w).

    The map is average-pooled to the ``grid`` (the layer4 grid, so every layer shares one code length)
    and each channel becomes a softmax over the h*w positions (rows sum to 1).
    """
    pooled = F.adaptive_avg_pool2d(feature.float(), grid).flatten(2)
    return torch.softmax(pooled / temperature, dim=-1)


class CLBSLoss(nn.Module):
    """Cross-layer batch-sample contrast: samples of one batch are the points.

    forward(student (B, D), teacher (B, D)) -> scalar. k-means (K = ``num_clusters``) on the detached
    teacher vectors (layer4 projections) gives the centroids; the shallow projections are aligned to them
    with :func:`cluster_alignment_loss`. With B < K there is one cluster per sample.
    """

    def __init__(self, num_clusters: int = 7, *, iters: int = 10, seed: int = 0, scale: float = 0.5):
        super().__init__()
        self.num_clusters, self.iters, self.seed, self.scale = num_clusters, iters, seed, scale

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        if student.shape != teacher.shape or student.dim() != 2:
            raise ValueError(f"CLBS expects student and teacher of one shape (B, D), got {tuple(student.shape)} "
                             f"and {tuple(teacher.shape)}")
        centroids, _ = kmeans(teacher, self.num_clusters, iters=self.iters, seed=self.seed)
        return cluster_alignment_loss(student.unsqueeze(0), centroids.unsqueeze(0), scale=self.scale)


class CLFMLoss(nn.Module):
    """Cross-layer feature-map contrast, trainable variant: channels of one image are the points.

    forward(student (B, C_s, H_s, W_s), teacher (B, C_t, h, w)) -> scalar. Per image, k-means
    (K = ``num_clusters``) on the detached layer4 channel codes (:func:`channel_codes`, length h*w) gives
    the centroids; the shallow channel codes, pooled to the same h x w grid, are aligned to them.
    A 1x1 layer4 grid makes every code the constant 1 and the term carries no signal (inputs >= 48 px
    give at least 2x2).
    """

    def __init__(self, num_clusters: int = 4, *, iters: int = 10, seed: int = 0, scale: float = 0.5,
                 temperature: float = 1.0):
        super().__init__()
        self.num_clusters, self.iters, self.seed, self.scale = num_clusters, iters, seed, scale
        self.temperature = temperature

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        if student.dim() != 4 or teacher.dim() != 4 or student.shape[0] != teacher.shape[0]:
            raise ValueError(f"CLFM expects stage outputs (B, C, H, W) with one batch size, got "
                             f"{tuple(student.shape)} and {tuple(teacher.shape)}")
        grid = tuple(teacher.shape[-2:])
        teacher_codes = channel_codes(teacher.detach(), grid, temperature=self.temperature)   # (B, C_t, h*w)
        student_codes = channel_codes(student, grid, temperature=self.temperature)            # (B, C_s, h*w)
        centroids, _ = kmeans(teacher_codes, self.num_clusters, iters=self.iters, seed=self.seed)
        return cluster_alignment_loss(student_codes, centroids, scale=self.scale)
