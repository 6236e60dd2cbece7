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


@torch.no_grad()
def kmeans(points: Tensor, num_clusters: int, *, iters: int = 10, seed: int = 0,
           with_labels: bool = True) -> tuple[Tensor, Tensor] | Tensor:
    """Batched Lloyd k-means with a seeded k-means++ start; no gradient, float32, on ``points.device``.

    points: (N, D) or (G, N, D) (G independent problems solved together).
    Returns centroids (G, K', D) and labels (G, N) (without the G axis for 2-D input), K' = min(K, N);
    the centroids alone with ``with_labels=False`` (the final assignment is then not computed).

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
    # no detach needed under no_grad; a float32 tensor is not cast (a cast would still be an operator call)
    points = points if points.dtype == torch.float32 else points.float()
    groups, count, dim = points.shape
    k = min(num_clusters, count)
    generator = torch.Generator().manual_seed(int(seed))
    uniforms = torch.rand(groups, k, generator=generator).to(points.device)
    rows = torch.arange(groups, device=points.device).unsqueeze(1)                 # (G, 1)

    # k-means++: the first centre uniformly, each next one with probability proportional to D(x)^2.
    first = (uniforms[:, :1] * count).long().clamp_max(count - 1)                 # (G, 1)
    centroids = [points[rows, first]]                                            # (G, 1, D) each
    # float64: a CUDA scan may round differently from run to run; this keeps draws far from ties. The
    # minimum of a float64 and a float32 distance is exact, so the weights stay float64 throughout.
    nearest = (points - centroids[0]).pow(2).sum(-1).double()                    # (G, N)
    draws = uniforms.double().unsqueeze(-1).unbind(1)                            # K' of (G, 1)
    for index in range(1, k):
        cumulative = nearest.cumsum(dim=1)
        target = draws[index] * cumulative[:, -1:]
        # right=True skips points of zero weight (already chosen); all-zero weights fall back to the last point.
        chosen = torch.searchsorted(cumulative, target, right=True).clamp_max(count - 1)   # (G, 1)
        centre = points[rows, chosen]
        centroids.append(centre)
        if index < k - 1:   # the last centre's distances would go unused
            nearest = torch.minimum(nearest, (points - centre).pow(2).sum(-1))
    # The Lloyd iterations keep the centres transposed, (G, D, K'): the distance product and the centroid
    # sums then need no transposition, and the counts come out in the shape that divides the sums.
    centres = torch.cat(centroids, dim=1).transpose(1, 2)                        # (G, D, K')
    point_norms = points.pow(2).sum(-1, keepdim=True)                            # (G, N, 1), for every iteration
    points_t = points.transpose(1, 2)                                            # (G, D, N)
    for _ in range(iters):
        labels = _squared_distances(points, centres, point_norms).argmin(dim=-1)  # (G, N)
        one_hot = F.one_hot(labels, k).float()                                   # (G, N, K')
        counts = one_hot.sum(dim=1, keepdim=True)                                # (G, 1, K')
        # An emptied cluster keeps its previous centre instead of collapsing to the origin (its 0 / 0 is
        # computed and discarded by the selection).
        centres = torch.where(counts > 0, (points_t @ one_hot) / counts, centres)
    centroids = centres.transpose(1, 2)                                          # (G, K', D)
    if not with_labels:
        return centroids[0] if squeeze else centroids
    labels = _squared_distances(points, centres, point_norms).argmin(dim=-1)
    if squeeze:
        return centroids[0], labels[0]
    return centroids, labels


def _squared_distances(points: Tensor, centres: Tensor, point_norms: Tensor) -> Tensor:
    """Squared Euclidean distances |x|^2 - 2 x.c + |c|^2: points (G, N, D), centres transposed (G, D, K) and
    |x|^2 (G, N, 1) -> (G, N, K). |x|^2 - 2 x.c is one batched product (the factor -2 scales exactly)."""
    cross = torch.baddbmm(point_norms, points, centres, alpha=-2)
    return (cross + centres.square().sum(1, keepdim=True)).clamp_min(0)


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
        # one problem of B points, kept 3-D: no squeezing out and back of the group axis
        centroids = kmeans(teacher.unsqueeze(0), self.num_clusters, iters=self.iters, seed=self.seed, with_labels=False)
        return cluster_alignment_loss(student.unsqueeze(0), centroids, scale=self.scale)


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
        centroids = kmeans(teacher_codes, self.num_clusters, iters=self.iters, seed=self.seed, with_labels=False)
        return cluster_alignment_loss(student_codes, centroids, scale=self.scale)
