"""The methods' extra terms computed in fewer operators give the values and gradients of their earlier,
per-layer formulations, kept here as the reference."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from hsbs_lib.losses.bsa import BatchSimilarityAttention, similarity_supervision_loss, supervision_from_logits
from hsbs_lib.losses.hst import HST_MODES, hst_loss, pool_to_teacher_grid, quantile_mask
from hsbs_lib.models import create_model


def reference_hst_loss(features, *, weights=(0.5, 1.0, 1.0), mode="deep_to_all", mask_quantile=None,
                       teacher_quantile=None, p=2, teacher=None, pooling="registered"):
    """HST as it was written before: one attention map, one pooling and one distance per layer, in a loop."""
    grid = tuple(features[-1].shape[-2:])

    def pooled(feature):
        attention = feature.float().abs().pow(p).mean(dim=1)
        if pooling == "adaptive":
            return F.adaptive_avg_pool2d(attention.unsqueeze(1), grid).flatten(1)
        return pool_to_teacher_grid(attention, grid).flatten(1)

    maps = [pooled(feature) for feature in features[:-1]]
    maps.append(teacher.float().flatten(1) if teacher is not None else pooled(features[-1]))
    teacher_of = {0: 3, 1: 3, 2: 3} if mode == "deep_to_all" else {0: 1, 1: 2, 2: 3}
    total = maps[0].new_zeros(())
    for student, weight in enumerate(weights):
        if weight == 0:
            continue
        teacher_map, student_map = maps[teacher_of[student]].detach(), maps[student]
        if teacher_quantile is not None:
            teacher_map = teacher_map * quantile_mask(teacher_map, teacher_quantile)
        if mask_quantile is not None:
            mask = quantile_mask(teacher_map, mask_quantile)
            teacher_map, student_map = teacher_map * mask, student_map * mask
        total = total + weight * (F.normalize(student_map, dim=1) - F.normalize(teacher_map, dim=1)).pow(2).mean()
    return total


def reference_bsa(bsa: BatchSimilarityAttention, z):
    """BSA as it was written before: three projections, queries and keys normalised one by one."""
    queries, keys = bsa.query(z), bsa.key(z)
    if bsa.kind == "cosine":
        scores = F.normalize(queries.float(), dim=1) @ F.normalize(keys.float(), dim=1).T / bsa.temperature
    else:
        scores = queries @ keys.transpose(0, 1) / math.sqrt(bsa.attn_dim)
    if bsa.mask_diagonal and z.shape[0] > 1:
        scores = scores.masked_fill(torch.eye(z.shape[0], dtype=torch.bool), float("-inf"))
    similarity = scores.float().softmax(dim=1).to(z.dtype)
    mixed = bsa.out(similarity @ bsa.value(z))
    return bsa.norm(z + bsa.gamma * mixed), similarity


def _close(new, old, *, rtol=1e-4, atol=1e-7):
    return torch.allclose(new, old, rtol=rtol, atol=atol)


def _stages(seed=0, batch=3):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, s, s, generator=generator, requires_grad=True)
            for c, s in ((8, 33), (16, 17), (32, 9), (64, 5))]


CASES = [dict(mode=mode, mask_quantile=mask, teacher_quantile=teacher, p=p, pooling=pooling, weights=weights)
         for mode, mask, teacher, p, pooling, weights in itertools.product(
             HST_MODES, (None, 0.5), (None, 0.3), (2, 3.0), ("registered", "adaptive"), ((0.5, 1.0, 1.0), (0.0, 1.0, 0.25)))]


@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(str(v) for v in case.values()))
def test_batched_hst_equals_the_per_layer_loss_with_its_gradients(case):
    stages = _stages()
    new, old = hst_loss(stages, **case), reference_hst_loss(stages, **case)
    assert _close(new, old, rtol=1e-5)
    for new_grad, old_grad in zip(torch.autograd.grad(new, stages, allow_unused=True),
                                  torch.autograd.grad(old, stages, allow_unused=True)):
        assert (new_grad is None) == (old_grad is None)
        if new_grad is not None:
            assert _close(new_grad, old_grad, atol=1e-9)


def test_batched_hst_with_a_cam_teacher_equals_the_per_layer_loss():
    stages = _stages(seed=1)
    teacher = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(2))
    new, old = hst_loss(stages, teacher=teacher), reference_hst_loss(stages, teacher=teacher)
    assert _close(new, old, rtol=1e-5)
    assert all(_close(a, b, atol=1e-9) for a, b in zip(torch.autograd.grad(new, stages[:3]),
                                                        torch.autograd.grad(old, stages[:3])))


@pytest.mark.parametrize("similarity,mask_diagonal", [("cosine", False), ("dot", False), ("cosine", True)])
def test_bsa_in_one_projection_equals_the_three_projections_with_gradients(similarity, mask_diagonal):
    torch.manual_seed(0)
    bsa = BatchSimilarityAttention(32, 16, similarity=similarity, mask_diagonal=mask_diagonal, gamma_init=0.7)
    z = torch.randn(6, 32, requires_grad=True)
    (new_mixed, new_similarity), (old_mixed, old_similarity) = bsa(z), reference_bsa(bsa, z)
    assert _close(new_similarity, old_similarity) and _close(new_mixed, old_mixed)
    weights = torch.randn_like(new_mixed)
    inputs = [z, *bsa.parameters()]
    new_grads = torch.autograd.grad((new_mixed * weights).sum() + new_similarity.square().sum(), inputs)
    old_grads = torch.autograd.grad((old_mixed * weights).sum() + old_similarity.square().sum(), inputs)
    assert all(_close(a, b, atol=1e-6) for a, b in zip(new_grads, old_grads))


def test_supervision_from_the_logits_equals_the_kl_of_the_similarity_with_gradients():
    logits = (3 * torch.randn(8, 8, generator=torch.Generator().manual_seed(0))).requires_grad_()
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 3])
    new = supervision_from_logits(logits, labels)
    old = similarity_supervision_loss(logits.softmax(dim=1), labels)
    assert _close(new, old, rtol=1e-5)
    assert _close(torch.autograd.grad(new, logits)[0], torch.autograd.grad(old, logits)[0], atol=1e-7)


def test_the_hsbs_model_terms_and_gradients_match_the_reference_formulation():
    torch.manual_seed(0)
    model = create_model("hsbs", num_classes=7, hst_warmup_epochs=0.0, stem="no_maxpool", backbone_width=16).train()
    images, labels = torch.randn(8, 3, 65, 65), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    output = model(images)
    terms = model.loss(output, {"label": labels})
    stages = output.extras["stages"]
    z_mixed, similarity = reference_bsa(model.bsa, output.features)
    reference = {"ce": F.cross_entropy(output.logits, labels),
                 "ce_bsa": F.cross_entropy(model.classifier(z_mixed), labels),
                 "hst": model.hst.scale(25) * reference_hst_loss(stages),
                 "bsa_sim": model.bsa_supervision * similarity_supervision_loss(similarity, labels)}
    assert terms.keys() == reference.keys()
    for name in terms:
        assert _close(terms[name], reference[name], rtol=1e-5), name
    parameters = [p for p in model.parameters() if p.requires_grad]
    new_grads = torch.autograd.grad(sum(terms.values()), parameters, retain_graph=True)
    old_grads = torch.autograd.grad(sum(reference.values()), parameters)
    for parameter_name, a, b in zip([n for n, p in model.named_parameters() if p.requires_grad], new_grads, old_grads):
        assert _close(a, b, rtol=1e-3, atol=1e-6), parameter_name


def test_uncertainty_weighting_of_all_terms_at_once_equals_the_loop_per_term_with_gradients():
    from hsbs_lib.losses.uncertainty import UncertaintyWeighting

    weighting = UncertaintyWeighting(("ce", "ce/layer2", "pose"))
    with torch.no_grad():
        weighting.log_variance.copy_(torch.tensor([0.3, -0.7, 1.2]))
    for names in (("ce", "ce/layer2", "pose"), ("ce", "pose"), ("pose", "ce")):   # every term, a subset, reordered
        losses = {name: torch.tensor(1.0 + index, requires_grad=True) for index, name in enumerate(names)}
        new = weighting(losses)
        old = {name: 0.5 * torch.exp(-weighting.log_variance[weighting.names.index(name)]) * loss
               + F.softplus(weighting.log_variance[weighting.names.index(name)]) for name, loss in losses.items()}
        assert list(new) == list(old) and all(_close(new[name], old[name], rtol=1e-6) for name in old)
        inputs = [weighting.log_variance, *losses.values()]
        for a, b in zip(torch.autograd.grad(sum(new.values()), inputs), torch.autograd.grad(sum(old.values()), inputs)):
            assert _close(a, b, rtol=1e-6)


def test_dsf_separation_by_pdist_equals_the_ordered_pairs_with_gradients():
    from hsbs_lib.losses.dsf import DeepSmoothFeatureLoss

    torch.manual_seed(0)
    loss = DeepSmoothFeatureLoss(7, 16, margin=3.0, init_std=0.5)
    centers = loss.centers
    off_diagonal = ~torch.eye(7, dtype=torch.bool)
    old = F.relu(3.0 - (centers[:, None, :] - centers[None, :, :])[off_diagonal].norm(dim=1)).pow(2).mean()
    new = loss.separation()
    assert 0 < float(new.detach()) and _close(new, old, rtol=1e-5)
    assert _close(torch.autograd.grad(new, centers)[0], torch.autograd.grad(old, centers)[0], atol=1e-7)


@torch.no_grad()
def reference_kmeans(points, num_clusters, *, iters=10, seed=0):
    """k-means as it was written before: centres (G, K, D), 18 calls per Lloyd iteration, labels at the end."""
    squeeze = points.dim() == 2
    if squeeze:
        points = points.unsqueeze(0)
    points = points.detach().float()
    groups, count, _ = points.shape
    k = min(num_clusters, count)
    uniforms = torch.rand(groups, k, generator=torch.Generator().manual_seed(int(seed)))
    rows = torch.arange(groups)
    first = (uniforms[:, 0] * count).long().clamp_max(count - 1)
    centroids = [points[rows, first]]
    nearest = (points - centroids[0].unsqueeze(1)).pow(2).sum(-1)
    for index in range(1, k):
        cumulative = nearest.double().cumsum(dim=1)
        target = uniforms[:, index:index + 1].double() * cumulative[:, -1:]
        chosen = torch.searchsorted(cumulative.contiguous(), target.contiguous(), right=True).clamp_max(count - 1)
        centre = points[rows, chosen.squeeze(1)]
        centroids.append(centre)
        nearest = torch.minimum(nearest, (points - centre.unsqueeze(1)).pow(2).sum(-1))
    centroids = torch.stack(centroids, dim=1)

    def distances(centroids):
        cross = points @ centroids.transpose(1, 2)
        return (points.pow(2).sum(-1, keepdim=True) - 2 * cross + centroids.pow(2).sum(-1).unsqueeze(1)).clamp_min(0)

    for _ in range(iters):
        one_hot = F.one_hot(distances(centroids).argmin(dim=-1), k).float()
        counts = one_hot.sum(dim=1).unsqueeze(-1)
        sums = one_hot.transpose(1, 2) @ points
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    labels = distances(centroids).argmin(dim=-1)
    return (centroids[0], labels[0]) if squeeze else (centroids, labels)


@pytest.mark.parametrize("shape,clusters,seed", [((40, 24), 7, 0), ((3, 40, 24), 7, 1), ((5, 30, 4), 4, 2),
                                                  ((2, 6, 3), 9, 3), ((1, 8, 1), 6, 1)])
def test_kmeans_in_fewer_calls_gives_the_former_assignments_and_centres(shape, clusters, seed):
    from hsbs_lib.losses.clcl import kmeans

    points = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    if shape[-1] == 1:   # repeated points: some of the starting centres are left without a point
        points = points.round()
        start, labels = kmeans(points, clusters, iters=0, seed=seed)
        assert (F.one_hot(labels, start.shape[1]).sum(dim=1) == 0).any()
    new_centroids, new_labels = kmeans(points, clusters, iters=10, seed=seed)
    old_centroids, old_labels = reference_kmeans(points, clusters, iters=10, seed=seed)
    assert torch.equal(new_labels, old_labels)
    assert new_centroids.shape == old_centroids.shape and _close(new_centroids, old_centroids, atol=1e-6)
    assert _close(kmeans(points, clusters, iters=10, seed=seed, with_labels=False), new_centroids, atol=0)


@pytest.mark.parametrize("masked,per_student_teacher", [(False, False), (True, False), (False, True)])
def test_the_closed_form_hst_gradient_passes_a_gradient_check_in_double(masked, per_student_teacher):
    from hsbs_lib.losses.hst import _AttentionTransfer, _pooling_matrix

    generator = torch.Generator().manual_seed(3)
    features = [torch.randn(2, c, s, s, generator=generator, dtype=torch.float64, requires_grad=True)
                for c, s in ((3, 9), (4, 5), (5, 3))]
    pools = [_pooling_matrix(9, 9, 3, 3, torch.device("cpu")).double(),
             _pooling_matrix(5, 5, 3, 3, torch.device("cpu")).double(), None]   # the last on the teacher's grid
    teacher = torch.rand((3, 2, 9) if per_student_teacher else (2, 9), generator=generator, dtype=torch.float64)
    mask = (teacher > 0.3).double() if masked else None
    weights = torch.tensor([0.5, 1.0, 0.25], dtype=torch.float64)
    backward_weights = (4 * weights / torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64)).view(-1, 1, 1)
    transposes = [None if pool is None else pool.T.contiguous() for pool in pools]

    def loss(*inputs):
        return _AttentionTransfer.apply(weights, backward_weights, teacher * mask if masked else teacher, mask,
                                        *pools, *transposes, *inputs)

    assert torch.autograd.gradcheck(loss, tuple(features))


def test_the_default_hst_loss_is_one_autograd_node_over_the_stage_outputs():
    stages = _stages()
    loss = hst_loss(stages)
    assert type(loss.grad_fn).__name__ == "_AttentionTransferBackward"
    # the layer4 teacher is a stop-gradient target: the loss does not reach it
    assert torch.autograd.grad(loss, stages[3], allow_unused=True)[0] is None


def test_the_terms_sum_in_float32_without_casting_float32_terms():
    from hsbs_lib.engine.train import total_loss

    terms = {"ce": torch.tensor(1.25, requires_grad=True), "hst": torch.tensor(0.5, dtype=torch.bfloat16)}
    total = total_loss(terms)
    assert total.dtype == torch.float32 and float(total.detach()) == 1.75
    assert torch.equal(torch.stack([value.float() for value in terms.values()]).sum(), total)
    float32_terms = {"ce": terms["ce"], "other": 2 * terms["ce"]}
    with torch.profiler.profile() as profiler:
        total_loss(float32_terms)
    assert "aten::to" not in {event.name for event in profiler.events()}


@pytest.mark.parametrize("used", ["all", "mixed", "logits"])
def test_the_written_out_bsa_backward_passes_a_gradient_check_in_double(used):
    from hsbs_lib.losses.bsa import _CosineBatchAttention

    generator = torch.Generator().manual_seed(5)
    inputs = [torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
              for shape in ((5, 6), (3, 6), (3, 6), (3, 6), (3,), (3,), (3,), (6, 3), (6,), ())]

    def outputs(*tensors):
        mixed, similarity, logits = _CosineBatchAttention.apply(*tensors, 0.5)
        # every output, or only some: the unused ones come to the backward as None
        return {"all": (mixed, similarity, logits), "mixed": (mixed,), "logits": (logits,)}[used]

    assert torch.autograd.gradcheck(outputs, tuple(inputs))


def test_the_default_bsa_is_one_autograd_node():
    bsa = BatchSimilarityAttention(32, 16, similarity="cosine")
    mixed, similarity = bsa(torch.randn(6, 32))
    assert type(mixed.grad_fn).__name__ == "_CosineBatchAttentionBackward"


def test_a_cast_to_the_tensors_own_dtype_is_no_operator_call():
    from hsbs_lib.losses.casting import as_dtype, as_float

    single, half = torch.randn(3), torch.randn(3, dtype=torch.bfloat16)
    with torch.profiler.profile() as profiler:
        same, labels = as_float(single), as_dtype(torch.arange(3), torch.long)
    assert same is single and labels.dtype == torch.long
    assert not [event.name for event in profiler.events() if event.name == "aten::to"]
    assert as_float(half).dtype == torch.float32 and torch.equal(as_float(half), half.float())
