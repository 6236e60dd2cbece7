"""Batch-wise Similarity Attention (BSA) and its optional similarity supervision.

[paper] BSA learns similarity relations between the features of different samples in a batch, to
counter class imbalance: a minority-class sample borrows evidence from similar samples.

[design] The layer below is our reconstruction (no code is public): single-head attention across the
batch dimension on pooled features with a learnable residual gate that starts open (gamma = 1) and no
LayerNorm by default; both choices are measured in docs/BENCHMARKS.md. With W_q = W_k = 0 the similarity
is uniform and BSA reduces to adding the (projected) batch mean, the ARM / CLCL head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hsbs_lib.losses.casting import as_dtype as _cast, as_float as _as_float


SIMILARITIES = ("dot", "cosine")


class BatchSimilarityAttention(nn.Module):
    """z~ = z + gamma * W_o (S W_v z),  S = softmax_j(score(q_i, k_j)); optionally LayerNorm(z~).

    score = q_i . k_j / sqrt(d) (``similarity="dot"``) or cos(q_i, k_j) / tau (``"cosine"``, tau =
    ``temperature``). With dot products the scores grow with the norms of the keys, and one sample with a
    large key can take every row's softmax: measured on SynthFER, the dot-product similarity collapsed onto
    a single column. Cosine scores are bounded by 1 / tau, so no key can win by its norm alone.

    forward(z: (B, C)) -> (z~: (B, C), S: (B, B)); every row of S sums to 1.

    The values are projected to ``attn_dim`` and back to C by an output projection W_o (our choice: 2*C*d
    weights instead of C^2, and the same width as the queries and keys). gamma is a learnable scalar.

    ``gamma_init`` (default 1): with gamma = 0 the queries, keys and values receive no gradient at all
    (they are multiplied by gamma), and gamma's own gradient is a random projection of the loss gradient,
    so the attention path never opens: measured on SynthFER, CE(W z) and CE(W z~) stayed equal to four
    decimals for a whole run. Starting the gate open trains S from the first step. ``gamma_init=0`` with
    ``norm=True`` is the variant of the method description (z~ = LayerNorm(z + gamma S v), gamma = 0).
    ``norm``: LayerNorm on z~ (and then the model puts its plain path through the same norm).
    ``mask_diagonal`` forbids a sample from attending to itself.
    """

    def __init__(self, dim: int, attn_dim: int = 128, *, mask_diagonal: bool = False, gamma_init: float = 1.0,
                 norm: bool = False, similarity: str = "dot", temperature: float = 0.1):
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown BSA similarity '{similarity}'; choose one of {', '.join(SIMILARITIES)}")
        if temperature <= 0:
            raise ValueError(f"BSA temperature must be > 0, got {temperature}")
        if int(attn_dim) != attn_dim or attn_dim < 1:
            raise ValueError(f"BSA attention size (model.options.bsa_dim) must be a whole number >= 1, got {attn_dim}")
        attn_dim = int(attn_dim)
        self.attn_dim = attn_dim
        self.kind = similarity
        self.temperature = float(temperature)
        self.mask_diagonal = mask_diagonal
        self.query = nn.Linear(dim, attn_dim)
        self.key = nn.Linear(dim, attn_dim)
        self.value = nn.Linear(dim, attn_dim)
        self.out = nn.Linear(attn_dim, dim)
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def scores(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C) -> (the similarity's logits (B, B), float32, values W_v z (B, d)): S = softmax of the logits.

        The three projections are applied as one product with their weights side by side, and the queries and
        keys are normalised together (cosine): one operator each where three and two would do the same sum.
        """
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        projected = F.linear(z, weight, bias)                                   # (B, 3d): q | k | v
        values = projected[:, 2 * self.attn_dim:]
        if self.kind == "cosine":
            pair = F.normalize(_as_float(projected[:, :2 * self.attn_dim]).unflatten(1, (2, self.attn_dim)), dim=-1)
            logits = pair[:, 0] @ pair[:, 1].T / self.temperature
        else:
            queries, keys = projected[:, :self.attn_dim], projected[:, self.attn_dim:2 * self.attn_dim]
            logits = _as_float(queries @ keys.T / math.sqrt(self.attn_dim))
        # A batch of one has nobody else to attend to; masking its only entry would give NaN.
        if self.mask_diagonal and z.shape[0] > 1:
            eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
            logits = logits.masked_fill(eye, float("-inf"))
        return logits, values

    def similarity(self, z: Tensor) -> Tensor:
        """Row-stochastic batch similarity S: (B, C) -> (B, B)."""
        return _cast(self.scores(z)[0].softmax(dim=1), z.dtype)

    def extra_repr(self) -> str:
        temperature = f", temperature={self.temperature}" if self.kind == "cosine" else ""
        return f"similarity={self.kind}{temperature}, mask_diagonal={self.mask_diagonal}"

    def attend(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, C) -> (z~ (B, C), S (B, B), the logits of S (B, B), float32, for :func:`supervision_from_logits`).

        Cosine similarity without a masked diagonal (the default) runs as one autograd node whose backward is
        written out (:class:`_CosineBatchAttention`): the same values and gradients in fewer operator calls.
        """
        if self.kind == "cosine" and not self.mask_diagonal:
            mixed, similarity, logits = _CosineBatchAttention.apply(
                z, self.query.weight, self.key.weight, self.value.weight, self.query.bias, self.key.bias,
                self.value.bias, self.out.weight, self.out.bias, self.gamma, self.temperature)
            return self.norm(_cast(mixed, z.dtype)), _cast(similarity, z.dtype), logits
        logits, values = self.scores(z)
        similarity = _cast(logits.softmax(dim=1), z.dtype)
        # z + gamma * W_o (S v) as one operator (addcmul), not a product and a sum
        return self.norm(torch.addcmul(z, self.gamma, self.out(similarity @ values))), similarity, logits

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        mixed, similarity, _ = self.attend(z)
        return mixed, similarity


class _CosineBatchAttention(torch.autograd.Function):
    """z + gamma * W_o (S v) with S = softmax(cos(q_i, k_j) / tau), its backward written out.

    forward(z (B, C), W_q, W_k, W_v (d, C), b_q, b_k, b_v (d,), W_o (C, d), b_o (C,), gamma (), tau)
    -> (z + gamma W_o S v (B, C), S (B, B), the logits cos / tau (B, B)), in float32.
    Autograd's chain (the weights' concatenation, slices, the normalisation's division and clamp, the
    transposes) costs about twice the operators of the gradient written out: through the output projection
    and the gate, S's softmax backward, the two products of the normalised queries and keys, then the
    normalisation's backward dL/dq = (g - n (n . g) [r >= eps]) / max(r, eps) for queries and keys at once.
    Under CUDA autocast it runs in float32 (the similarity's softmax needs it anyway).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, z, query_weight, key_weight, value_weight, query_bias, key_bias, value_bias, out_weight,
                out_bias, gamma, temperature):
        size = query_weight.shape[0]
        weight = torch.cat([query_weight, key_weight, value_weight])            # (3d, C)
        projected = F.linear(z, weight, torch.cat([query_bias, key_bias, value_bias]))   # (B, 3d): q | k | v
        pair, values = projected.split([2 * size, size], dim=1)                 # (B, 2d): q | k, (B, d)
        pair = pair.unflatten(1, (2, size))                                     # (B, 2, d)
        norms = torch.linalg.vector_norm(pair, dim=-1, keepdim=True)           # (B, 2, 1)
        clamped = norms.clamp_min(_EPS)
        normalised = pair / clamped
        queries, keys = normalised.unbind(1)
        logits = torch.inner(queries, keys) / temperature                       # (B, B)
        similarity = logits.softmax(dim=1)
        mixed = similarity @ values                                             # (B, d)
        out = F.linear(mixed, out_weight, out_bias)                             # (B, C)
        ctx.save_for_backward(z, weight, out_weight, gamma, normalised, norms, clamped, values, similarity, mixed,
                              out)
        ctx.temperature = temperature
        ctx.set_materialize_grads(False)   # an output no loss uses brings None, not a tensor of zeros
        return torch.addcmul(z, gamma, out), similarity, logits

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_mixed, grad_similarity, grad_logits):
        z, weight, out_weight, gamma, normalised, norms, clamped, values, similarity, mixed, out = ctx.saved_tensors
        if grad_mixed is None:   # only the logits are used (a loss on S alone)
            grad_mixed = torch.zeros_like(z)
        grad_out = grad_mixed * gamma                                           # (B, C)
        grad_gamma = (grad_mixed * out).sum()
        grad_out_weight, grad_out_bias = grad_out.t() @ mixed, grad_out.sum(dim=0)
        grad_mixed_values = grad_out @ out_weight                               # (B, d): dL/d(S v)
        grad_values = similarity.t() @ grad_mixed_values
        grad_similarity_total = torch.inner(grad_mixed_values, values)          # (B, B): dL/dS
        if grad_similarity is not None:
            grad_similarity_total = grad_similarity_total + grad_similarity
        grad_scores = torch._softmax_backward_data(grad_similarity_total, similarity, 1, similarity.dtype)
        if grad_logits is not None:
            grad_scores = grad_scores + grad_logits
        grad_scores = grad_scores / ctx.temperature                             # (B, B): dL/d(q_n . k_n)
        queries, keys = normalised.unbind(1)
        grad_pair = torch.stack([grad_scores @ keys, grad_scores.t() @ queries], dim=1)   # (B, 2, d)
        # the normalisation's backward; where the norm was clamped, n = q / eps is a plain scaling
        projection = (normalised * grad_pair).sum(dim=-1, keepdim=True) * (norms >= _EPS)
        grad_pair = torch.addcmul(grad_pair, normalised, projection, value=-1) / clamped
        grad_projected = torch.cat([grad_pair.flatten(1), grad_values], dim=1)  # (B, 3d)
        grad_weights = (grad_projected.t() @ z).chunk(3)
        grad_biases = grad_projected.sum(dim=0).chunk(3)
        grad_z = torch.addmm(grad_mixed, grad_projected, weight)
        return (grad_z, *grad_weights, *grad_biases, grad_out_weight, grad_out_bias, grad_gamma, None)


#: F.normalize's default eps, so the written-out backward normalises exactly as autograd's does
_EPS = 1e-12


def supervision_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """:func:`similarity_supervision_loss` of S = softmax(logits) without a masked diagonal, in a few operators.

    Every row has a partner (itself), and P_i is uniform over the n_i samples sharing y_i, so
    KL(P_i || S_i) = -log n_i + CE(logits_i, P_i): one cross-entropy with probability targets, its
    log-softmax exact where the general form clamps S at 1e-12 (the two agree wherever S >= 1e-12).
    logits (B, B), labels (B,) -> scalar.
    """
    same = labels.unsqueeze(1) == labels                                        # (B, B), by broadcasting
    counts = same.sum(dim=1, keepdim=True)                                      # (B, 1): n_i
    # the log of the integer counts is float32 already: no cast of its own
    return F.cross_entropy(_as_float(logits), same / counts) - counts.log().mean()


def same_label_targets(labels: Tensor, *, mask_diagonal: bool = False) -> Tensor:
    """Same-label matrix normalised per row: (B,) -> (B, B); a row with no partner is all zero."""
    same = (labels[:, None] == labels[None, :]).float()
    if mask_diagonal:
        same.fill_diagonal_(0.0)
    return same / same.sum(dim=1, keepdim=True).clamp_min(1.0)


def similarity_supervision_loss(similarity: Tensor, labels: Tensor, *, mask_diagonal: bool = False) -> Tensor:
    """KL divergence pulling S (B, B) toward the row-normalised same-label matrix P. [design]

    L = mean_i KL(P_i || S_i) = mean_i sum_j P_ij (log P_ij - log S_ij). The divergence is taken with P as the
    reference because P has zeros (different labels) where S is positive, which would make KL(S || P)
    infinite. Rows with no same-label partner (possible with ``mask_diagonal``) are skipped.
    """
    targets = same_label_targets(labels, mask_diagonal=mask_diagonal)
    # Rows are weighted 0 / 1 rather than selected: selecting (or testing whether any row is left) would
    # make a GPU wait for its queue to drain in every training step. A row without partner has P = 0, so
    # its divergence is 0 and it adds nothing; with no such row at all the loss is 0.
    has_partner = (targets.sum(dim=1) > 0).float()
    log_similarity = similarity.float().clamp_min(1e-12).log()
    per_row = F.kl_div(log_similarity, targets, reduction="none").sum(dim=1)
    return (per_row * has_partner).sum() / has_partner.sum().clamp_min(1.0)


def similarity_statistics(similarity: Tensor, labels: Tensor) -> dict[str, float]:
    """How structured a row-stochastic batch similarity S (B, B) is, for labels (B,).

    ``row_entropy``: mean entropy of the rows (nats), against ``max_entropy`` = log B for uniform rows;
    ``max_column_mass``: the largest column sum divided by B, the share of all attention that one sample
    receives (1 / B when spread evenly, 1 when every row picks the same sample: the collapse);
    ``same_to_different``: mean S over same-label pairs (diagonal excluded) divided by the mean over
    different-label pairs (1 = no class structure; NaN when the batch lacks either kind of pair).
    """
    s = similarity.detach().double().cpu()
    labels = labels.detach().cpu()
    size = s.shape[0]
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(size, dtype=torch.bool)
    same_pairs, different_pairs = s[same & off_diagonal], s[~same]
    ratio = (float(same_pairs.mean() / different_pairs.mean())
             if same_pairs.numel() and different_pairs.numel() and float(different_pairs.mean()) > 0 else float("nan"))
    return {"row_entropy": float(-(s * s.clamp_min(1e-12).log()).sum(dim=1).mean()),
            "max_entropy": math.log(size),
            "max_column_mass": float(s.sum(dim=0).max() / size),
            "same_to_different": ratio}
