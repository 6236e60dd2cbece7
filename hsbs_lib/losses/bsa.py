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

    ``memory_classes`` K > 0 adds a class-prototype memory: K extra keys and values, the per-class moving
    average of z (:meth:`update_prototypes`, momentum ``prototype_momentum`` per step in which the class
    occurs), so S is (B, B + K) and a face always has a same-class key, however rare its class. A prototype
    not yet seen is masked out. The memory is two buffers (saved and resumed with the model), detached: the
    projections learn from it, the prototypes only follow the features.
    [design] Prototypes rather than a cross-batch queue of past features: a queue holds a class in proportion
    to its frequency (fear, about 2 % of SynthFER's faces, would have about 5 entries in a queue of 256, and
    some batches none), while the memory holds every class once, at K extra keys instead of hundreds, and
    averages over many steps instead of keeping single features computed by older weights.
    """

    def __init__(self, dim: int, attn_dim: int = 128, *, mask_diagonal: bool = False, gamma_init: float = 1.0,
                 norm: bool = False, similarity: str = "dot", temperature: float = 0.1, memory_classes: int = 0,
                 prototype_momentum: float = 0.9):
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
        if int(memory_classes) != memory_classes or memory_classes < 0:
            raise ValueError(f"the BSA prototype memory needs a whole number of classes >= 0, got {memory_classes}")
        if not 0.0 <= prototype_momentum < 1.0:
            raise ValueError(f"bsa_prototype_momentum must be in [0, 1), got {prototype_momentum}")
        self.memory_classes = int(memory_classes)
        self.prototype_momentum = float(prototype_momentum)
        if self.memory_classes:   # buffers only when asked: checkpoints without the memory still load
            self.register_buffer("class_prototypes", torch.zeros(self.memory_classes, dim))
            self.register_buffer("prototype_seen", torch.zeros(self.memory_classes, dtype=torch.bool))

    def scores(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C) -> (the similarity's logits (B, B), float32, values W_v z (B, d)): S = softmax of the logits.

        With the prototype memory the logits are (B, B + K) and the values (B + K, d): the prototypes' keys and
        values follow the batch's.
        The three projections are applied as one product with their weights side by side, and the queries and
        keys are normalised together (cosine): one operator each where three and two would do the same sum.
        """
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        projected = F.linear(z, weight, bias)                                   # (B, 3d): q | k | v
        values = projected[:, 2 * self.attn_dim:]
        if self.memory_classes:
            return self._scores_with_memory(z, projected, weight[self.attn_dim:], bias[self.attn_dim:])
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

    def _scores_with_memory(self, z: Tensor, projected: Tensor, key_value_weight: Tensor,
                            key_value_bias: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`scores` with the K prototypes appended as keys and values: logits (B, B + K), values (B + K, d)."""
        size = self.attn_dim
        # a copy: the loss updates the memory in place after this forward, and the product keeps its input for backward
        prototypes = self.class_prototypes.to(projected.dtype, copy=True)
        memory = F.linear(prototypes, key_value_weight, key_value_bias)                    # (K, 2d): k | v
        queries = projected[:, :size]
        keys = torch.cat([projected[:, size:2 * size], memory[:, :size]])                 # (B + K, d)
        values = torch.cat([projected[:, 2 * size:], memory[:, size:]])                   # (B + K, d)
        if self.kind == "cosine":
            logits = F.normalize(_as_float(queries), dim=-1) @ F.normalize(_as_float(keys), dim=-1).T / self.temperature
        else:
            logits = _as_float(queries @ keys.T / math.sqrt(size))
        batch = z.shape[0]
        # a prototype never filled is no partner; the diagonal is masked in the batch block only
        hidden = torch.cat([torch.zeros(batch, dtype=torch.bool, device=z.device), ~self.prototype_seen])
        logits = logits.masked_fill(hidden, float("-inf"))
        if self.mask_diagonal and batch > 1:
            eye = torch.eye(batch, logits.shape[1], dtype=torch.bool, device=z.device)
            logits = logits.masked_fill(eye, float("-inf"))
        return logits, values

    @torch.no_grad()
    def update_prototypes(self, z: Tensor, labels: Tensor) -> None:
        """Move each class's prototype toward the mean of that class's z (B, C) in the batch, labels (B,).

        p_k <- m p_k + (1 - m) mean_{y_i = k} z_i for the classes present; a class's first batch sets p_k to its
        mean. Tensor operations only (no host sync): called in every training step.
        """
        if not self.memory_classes:
            return
        z = z.detach().float()
        sums = torch.zeros_like(self.class_prototypes).index_add_(0, labels, z)
        # counted by index_add, not bincount: on a GPU bincount reads the largest label on the host
        counts = z.new_zeros(self.memory_classes, 1).index_add_(0, labels, z.new_ones(labels.shape[0], 1))   # (K, 1)
        means = sums / counts.clamp_min(1.0)
        momentum = self.prototype_momentum
        blended = torch.where(self.prototype_seen.unsqueeze(1),
                              momentum * self.class_prototypes + (1 - momentum) * means, means)
        present = counts > 0
        self.class_prototypes.copy_(torch.where(present, blended, self.class_prototypes))
        self.prototype_seen |= present.squeeze(1)

    def similarity(self, z: Tensor) -> Tensor:
        """Row-stochastic batch similarity S: (B, C) -> (B, B) ((B, B + K) with the prototype memory)."""
        return _cast(self.scores(z)[0].softmax(dim=1), z.dtype)

    def extra_repr(self) -> str:
        temperature = f", temperature={self.temperature}" if self.kind == "cosine" else ""
        memory = f", memory_classes={self.memory_classes}" if self.memory_classes else ""
        return f"similarity={self.kind}{temperature}, mask_diagonal={self.mask_diagonal}{memory}"

    def attend(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, C) -> (z~ (B, C), S (B, B), the logits of S (B, B), float32, for :func:`supervision_from_logits`).

        Cosine similarity without a masked diagonal (the default) runs as one autograd node whose backward is
        written out (:class:`_CosineBatchAttention`): the same values and gradients in fewer operator calls.
        """
        if self.kind == "cosine" and not self.mask_diagonal and not self.memory_classes:
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


def same_label_targets(labels: Tensor, *, mask_diagonal: bool = False,
                       prototypes_seen: Tensor | None = None) -> Tensor:
    """Same-label matrix normalised per row: (B,) -> (B, B); a row with no partner is all zero.

    ``prototypes_seen`` (K,) bool, with the prototype memory: K more columns, 1 at the sample's own class when
    that prototype has been filled, so the target is (B, B + K) and the prototype is one partner among its
    same-label samples.
    """
    same = (labels[:, None] == labels[None, :]).float()
    if mask_diagonal:
        same.fill_diagonal_(0.0)
    if prototypes_seen is not None:
        classes = torch.arange(prototypes_seen.shape[0], device=labels.device)
        own_prototype = (labels[:, None] == classes[None, :]) & prototypes_seen[None, :]
        same = torch.cat([same, own_prototype.float()], dim=1)
    return same / same.sum(dim=1, keepdim=True).clamp_min(1.0)


def similarity_supervision_loss(similarity: Tensor, labels: Tensor, *, mask_diagonal: bool = False,
                                prototypes_seen: Tensor | None = None) -> Tensor:
    """KL divergence pulling S (B, B) toward the row-normalised same-label matrix P. [design]

    L = mean_i KL(P_i || S_i) = mean_i sum_j P_ij (log P_ij - log S_ij). The divergence is taken with P as the
    reference because P has zeros (different labels) where S is positive, which would make KL(S || P)
    infinite. Rows with no same-label partner (possible with ``mask_diagonal``) are skipped. With the
    prototype memory S is (B, B + K) and ``prototypes_seen`` (K,) adds the own-class prototype to P.
    """
    targets = same_label_targets(labels, mask_diagonal=mask_diagonal, prototypes_seen=prototypes_seen)
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
