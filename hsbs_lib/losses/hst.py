"""Hierarchical Semantic Transfer (HST): deep-layer attention teaches the shallow layers.

[paper] HSBS uses attention maps of deep-layer features to regularise the model, aligning the latent
semantics of shallow and deep features while ignoring irrelevant noise.

[design] Everything below is our reconstruction (no code is public): activation-based attention
(Zagoruyko & Komodakis, "Paying more attention to attention", ICLR 2017) with layer4 as a detached
teacher. A training-only loss: it adds nothing at inference.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hsbs_lib.losses.casting import as_float as _as_float

HST_MODES = ("deep_to_all", "chain")
HST_TEACHERS = ("activation", "cam", "ema", "frozen", "mask", "blend", "au_mask")
#: The teachers built from the ground-truth regions of the face (the perfect-teacher control): the
#: training batches must carry the region masks (SynthFER's).
REGION_TEACHERS = ("mask", "blend", "au_mask")
HST_POOLINGS = ("registered", "adaptive")
#: "pool": students pooled down to the teacher's grid, L2-normalised (attention transfer); "upsample": the
#: teacher upsampled to each student's grid, both through a spatial softmax (self-attention distillation)
HST_DIRECTIONS = ("pool", "upsample")


def activation_attention(feature: Tensor, p: float = 2) -> Tensor:
    """Activation attention A = mean_c |F_c|^p: (B, C, H, W) -> (B, H, W), computed in float32."""
    feature = _as_float(feature)
    # p = 2 (the default): F^2 is |F|^2, one operator instead of two
    return (feature.square() if p == 2 else feature.abs().pow(p)).mean(dim=1)


def quantile_mask(attention: Tensor, quantile: float) -> Tensor:
    """1 where a map is at or above its own per-sample ``quantile``, else 0: (..., N) -> (..., N) float."""
    threshold = torch.quantile(attention, quantile, dim=-1, keepdim=True)
    return (attention >= threshold).to(attention.dtype)


@functools.lru_cache(maxsize=64)
def _window_weights(cells: int, teacher_cells: int, ratio: int, device: torch.device) -> Tensor:
    """(teacher_cells, cells) averaging weights: row i averages the student cells of teacher cell i's window.

    Built once per shape and device (cached): filled row by row on the GPU, it cost dozens of tiny kernel
    launches in every training step. The cached tensor is a constant; callers must not modify it.
    """
    weights = torch.zeros(teacher_cells, cells)
    half = ratio // 2
    for index in range(teacher_cells):
        start = max(0, ratio * index - half)
        # the last window runs to the end, so border cells past the last teacher cell still count
        stop = cells if index == teacher_cells - 1 else min(cells, ratio * index + half + 1)
        weights[index, start:stop] = 1.0 / (stop - start)
    return weights.to(device)


def pool_to_teacher_grid(attention: Tensor, size: tuple[int, int]) -> Tensor:
    """Average a shallow map (B, H, W) onto a deeper ResNet stage's grid ``size`` = (h, w): (B, h, w).

    A ResNet centres cell i of a stride-s stage on input pixel s*i (see
    :func:`hsbs_lib.models.backbones.cells_to_pixels`), so teacher cell i sits on student cell r*i
    (r = the stride ratio, a power of two). The student is averaged over the r + 1 cells centred there,
    and the last window along each axis extends to the map's edge, so every student cell counts (cells
    no window covers would be a free place for energy). Adaptive pooling would average cells
    r*i .. r*i + r - 1 instead: half a teacher cell further down and right, which teaches the shallow
    layers to look below and right of the evidence.
    """
    height, width = size
    if tuple(attention.shape[-2:]) == (height, width):   # the teacher's own grid: pooling is the identity
        return attention.float()
    ratio = 2 ** max(0, round(math.log2(attention.shape[-2] / height)))
    rows = _window_weights(attention.shape[-2], height, ratio, attention.device)
    columns = _window_weights(attention.shape[-1], width, ratio, attention.device)
    return rows @ attention.float() @ columns.T


@functools.lru_cache(maxsize=64)
def _pooling_matrix(rows: int, columns: int, height: int, width: int, device: torch.device) -> Tensor:
    """(rows * columns, height * width): :func:`pool_to_teacher_grid` as one matrix on flattened maps.

    Entry ((i, j), (k, l)) = R[k, i] * C[l, j] for the row and column window weights R, C, so a flattened map
    times this matrix is the pooled map flattened: one product instead of two. Cached; callers must not modify it.
    """
    ratio = 2 ** max(0, round(math.log2(rows / height)))
    weights = torch.kron(_window_weights(rows, height, ratio, torch.device("cpu")),
                         _window_weights(columns, width, ratio, torch.device("cpu")))
    return weights.T.contiguous().to(device)


def _pooled_attention(feature: Tensor, size: tuple[int, int], p: float, pooling: str = "registered") -> Tensor:
    """Attention pooled to the teacher grid and flattened: (B, C, H, W) -> (B, h*w)."""
    # Average pooling to the coarse layer4 grid suppresses the high-frequency background responses
    # of shallow layers: our reading of "ignoring irrelevant noise".
    attention = activation_attention(feature, p)
    if pooling == "adaptive":   # cells as blocks: kept as an ablation, it misplaces every student cell
        return F.adaptive_avg_pool2d(attention.unsqueeze(1), size).flatten(1)
    if tuple(attention.shape[-2:]) == tuple(size):   # the teacher's own grid: pooling is the identity
        return attention.flatten(1)
    return attention.flatten(1) @ _pooling_matrix(*attention.shape[-2:], *size, attention.device)


@functools.lru_cache(maxsize=64)
def _interpolation_weights(cells: int, teacher_cells: int, ratio: int, device: torch.device,
                           dtype: torch.dtype = torch.float32) -> Tensor:
    """(cells, teacher_cells) linear-interpolation weights: row j reads the teacher grid at position j / ratio.

    Cached per shape, device and dtype, like :func:`_window_weights`; callers must not modify it.
    """
    weights = torch.zeros(cells, teacher_cells, dtype=dtype)
    for index in range(cells):
        # past the last teacher cell the border value holds: nothing is extrapolated
        position = min(index / ratio, teacher_cells - 1)
        low = int(position)
        high, fraction = min(low + 1, teacher_cells - 1), position - low
        weights[index, low] += 1.0 - fraction
        weights[index, high] += fraction
    return weights.to(device)


def upsample_to_student_grid(teacher: Tensor, size: tuple[int, int], pooling: str = "registered") -> Tensor:
    """Bilinear upsampling of a deeper stage's map (B, h, w) onto a shallower stage's grid ``size`` = (H, W).

    ``pooling="registered"`` (the default) keeps the ResNet placement of :func:`pool_to_teacher_grid`: teacher
    cell i sits on student cell r*i, so student cell j reads the teacher at j / r, and cells past the last
    teacher cell take its value (at 65 px, sizes (n - 1) r + 1, this is ``align_corners=True``).
    ``"adaptive"``: ``F.interpolate(align_corners=False)``, the cells-as-blocks reading. Computed in float32,
    or in float64 for float64 maps (the attention scores').
    """
    teacher = teacher if teacher.dtype == torch.float64 else _as_float(teacher)
    if tuple(teacher.shape[-2:]) == tuple(size):
        return teacher
    if pooling == "adaptive":
        return F.interpolate(teacher.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    ratio = 2 ** max(0, round(math.log2(size[0] / teacher.shape[-2])))
    rows = _interpolation_weights(size[0], teacher.shape[-2], ratio, teacher.device, teacher.dtype)
    columns = _interpolation_weights(size[1], teacher.shape[-1], ratio, teacher.device, teacher.dtype)
    return rows @ teacher @ columns.T


def _softmax_transfer(features: Sequence[Tensor], students: list[int], teachers: list[int],
                      weights: Sequence[float], factor: float, teacher: Tensor | None, p: float,
                      pooling: str) -> Tensor:
    """:func:`hst_loss` in the SAD direction: sum_l w_l * factor * sum_{b, n} (softmax(A_l) - softmax(up(T_l)))^2.

    A_l (B, H_l, W_l) is the student's attention, T_l its teacher's (detached), upsampled to the student's grid;
    each softmax runs over the H_l W_l positions of one sample. ``factor`` = scale / (B h w), as in the pool
    direction, so lambda_hst weighs the squared distance between two maps of one sample alike in both.
    """
    total = features[0].new_zeros((), dtype=torch.float32)
    for index, teacher_index in zip(students, teachers):
        student_map = activation_attention(features[index], p)                          # (B, H, W)
        with torch.no_grad():   # a stop-gradient target, as in the pool direction
            target = _as_float(teacher) if teacher is not None else activation_attention(features[teacher_index], p)
            target = upsample_to_student_grid(target, tuple(student_map.shape[-2:]), pooling)
        distance = (student_map.flatten(1).softmax(dim=1) - target.flatten(1).softmax(dim=1)).square().sum()
        total = total + (factor * weights[index]) * distance
    return total


@functools.lru_cache(maxsize=64)
def _layer_weights(weights: tuple[float, ...], device: torch.device, column: bool = False) -> Tensor:
    """(n,) float32 weights, or (n, 1, 1) with ``column``, cached per value and device: one host-to-device copy
    per run, not per step, and no reshaping call either."""
    return torch.tensor(weights, dtype=torch.float32, device=device).view((-1, 1, 1) if column else (-1,))


def class_activation_map(feature: Tensor, classifier_weight: Tensor, labels: Tensor) -> Tensor:
    """CAM of each sample's own class (Zhou et al., CVPR 2016), clamped at 0: (B, C, h, w) -> (B, h, w).

    CAM_y = relu(sum_c W[y, c] F_c): the per-position contribution to the class-y logit of a global-average
    -pooled linear classifier, so it lights up where the evidence for the labelled expression is.
    """
    weight = classifier_weight.detach().float()[labels]            # (B, C)
    return torch.einsum("bchw,bc->bhw", feature.detach().float(), weight).clamp_min(0.0)


def mask_teacher(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """A ground-truth teacher: where the expression is, (B, S, S) on the input's pixels (1 inside, 0 outside),
    pooled onto the layer4 grid ``size`` = (h, w) exactly as the students are: (B, h, w) float32.

    The input is the finest "student": teacher cell i sits on pixel s*i (s the layer's stride) and averages
    the pixels around it (:func:`pool_to_teacher_grid`), so each cell holds the share of its pixels inside.
    """
    return pool_to_teacher_grid(mask, size)


def blended_teacher(first: Tensor, second: Tensor, weight: float = 0.5) -> Tensor:
    """(1 - weight) Q(first) + weight Q(second), Q the L2 normalisation of a flattened map: (B, h, w) -> (B, h, w).

    Each map is normalised first, as HST normalises its teacher, so neither wins by its scale.
    """
    first, second = _as_float(first), _as_float(second)
    mix = ((1 - weight) * F.normalize(first.flatten(1), dim=1) + weight * F.normalize(second.flatten(1), dim=1))
    return mix.view_as(first)


def hst_loss(features: Sequence[Tensor], *, weights: Sequence[float] = (0.5, 1.0, 1.0), mode: str = "deep_to_all",
             mask_quantile: float | None = None, teacher_quantile: float | None = None, p: float = 2,
             teacher: Tensor | None = None, pooling: str = "registered", scale: float = 1.0,
             direction: str = "pool") -> Tensor:
    """HST loss times ``scale`` (1: unscaled) from the stage outputs ``[x1, x2, x3, x4]`` (each (B, C_l, H_l, W_l)).

    L_hst = sum_l w_l * mean_{b, n} (Q_l - sg(Q_T))^2, Q = L2-normalised flattened attention pooled to the
    layer4 grid; ``weights`` are w_1, w_2, w_3 (the student layers). The mean runs over samples and grid
    positions, as in attention transfer, which is why the scale lambda_hst is around 1e3.

    mode "deep_to_all": T = 4 for every student; "chain": 4 teaches 3, 3 teaches 2, 2 teaches 1. Every teacher
    map is detached (stop-gradient), so the deep layers are never pulled toward the shallow ones.
    mask_quantile q: keep only positions where the teacher is at or above its q-quantile, in both maps,
    before normalising (a second "ignore noise" option: those positions stop counting).
    teacher_quantile q: zero the teacher below its q-quantile, the student untouched, so the students are
    pulled off those positions (a third: the noise is suppressed, not ignored). ``teacher`` (B, h, w), e.g. a class activation map
    on the layer4 grid, replaces layer4's activation attention as the teacher of every student (mode
    "deep_to_all" only). ``pooling``: "registered" (:func:`pool_to_teacher_grid`) or "adaptive" (adaptive
    average pooling, the cells-as-blocks reading; an ablation). Returns a float32 scalar.

    ``direction="upsample"`` is self-attention distillation's direction (Hou et al., "Learning lightweight lane
    detection CNNs by self attention distillation", ICCV 2019): each teacher map is upsampled to its student's
    grid (:func:`upsample_to_student_grid`, registered or adaptive as ``pooling`` says) and both maps pass a
    spatial softmax; L = sum_l w_l * (1 / (B h w)) sum_{b, n} (softmax(A_l) - softmax(up(sg(A_T))))^2 over the
    student's H_l W_l positions (h w: the layer4 grid, the pool direction's divisor, so lambda_hst keeps its
    meaning). The attention is the channel mean of |F|^p, as elsewhere here (SAD sums over channels, which
    sharpens the softmax with the width). The quantile options belong to the pool direction and are refused.

    With p = 2 and registered pooling (the defaults) the loss is one autograd node whose backward is the
    gradient in closed form (:class:`_AttentionTransfer`): the same values in far fewer operator calls.
    """
    if len(features) != 4:
        raise ValueError(f"hst_loss expects the 4 stage outputs [x1, x2, x3, x4], got {len(features)}")
    if len(weights) != 3:
        raise ValueError(f"hst_loss expects 3 weights (layer1, layer2, layer3), got {len(weights)}")
    if mode not in HST_MODES:
        raise ValueError(f"unknown HST mode '{mode}'; choose one of {', '.join(HST_MODES)}")
    if pooling not in HST_POOLINGS:
        raise ValueError(f"unknown HST pooling '{pooling}'; choose one of {', '.join(HST_POOLINGS)}")
    if direction not in HST_DIRECTIONS:
        raise ValueError(f"unknown HST direction '{direction}'; choose one of {', '.join(HST_DIRECTIONS)}")
    if direction == "upsample" and (mask_quantile is not None or teacher_quantile is not None):
        raise ValueError("hst_mask_quantile and hst_teacher_quantile act on the teacher's grid: they belong to "
                         "hst_direction 'pool', not 'upsample'")
    grid = tuple(features[-1].shape[-2:])
    if teacher is not None:
        if mode != "deep_to_all":
            raise ValueError("an explicit HST teacher map teaches every student: use mode 'deep_to_all'")
        if tuple(teacher.shape[-2:]) != grid:
            raise ValueError(f"teacher map {tuple(teacher.shape)} is not on the layer4 grid {grid}")
    # Every student and its teacher in one stack (n, B, h*w), so the masks, the normalisation and the
    # distance are one operator each for all layers, not one per layer (a step on a GPU pays per launch).
    students = [index for index, weight in enumerate(weights) if weight != 0]
    if not students:
        return features[0].new_zeros((), dtype=torch.float32)
    teachers = [3 if mode == "deep_to_all" else index + 1 for index in students]
    cells = features[0].shape[0] * grid[0] * grid[1]
    if direction == "upsample":
        return _softmax_transfer(features, students, teachers, weights, scale / cells, teacher, p, pooling)
    if p == 2 and pooling == "registered":
        return _transfer_with_closed_form_gradient(features, students, teachers, weights, scale / cells,
                                                   teacher, teacher_quantile, mask_quantile)
    pooled = {index: _pooled_attention(features[index], grid, p, pooling) for index in sorted({*students, *teachers})
              if index < 3 or (teacher is None and index == 3)}
    if teacher is not None:
        pooled[3] = _as_float(teacher).flatten(1)
    student_maps = torch.stack([pooled[index] for index in students])                     # (n, B, h*w)
    if mode == "deep_to_all":   # one teacher for every student: broadcast, not copied
        teacher_maps = pooled[3].detach().unsqueeze(0)                                    # (1, B, h*w)
    else:
        teacher_maps = torch.stack([pooled[index] for index in teachers]).detach()        # (n, B, h*w)
    if teacher_quantile is not None:
        teacher_maps = teacher_maps * quantile_mask(teacher_maps, teacher_quantile)
    if mask_quantile is not None:
        mask = quantile_mask(teacher_maps, mask_quantile)
        teacher_maps, student_maps = teacher_maps * mask, student_maps * mask
    distance = (F.normalize(student_maps, dim=-1) - F.normalize(teacher_maps, dim=-1)).square()
    # sum_l w_l * mean_{b, n} d_l as one weighted sum over the stack (w_l / (B h w) in one cached tensor)
    return distance.sum(dim=(1, 2)) @ _layer_weights(tuple(scale * weights[index] / cells for index in students),
                                                      distance.device)


def _transfer_with_closed_form_gradient(features: Sequence[Tensor], students: list[int], teachers: list[int],
                                        weights: Sequence[float], factor: float, teacher: Tensor | None,
                                        teacher_quantile: float | None, mask_quantile: float | None) -> Tensor:
    """:func:`hst_loss` for p = 2 and registered pooling, its gradient in closed form (:class:`_AttentionTransfer`).

    The teacher maps are built without a graph (they are stop-gradient targets); ``factor`` = scale / (B h w).
    """
    grid = tuple(features[-1].shape[-2:])
    with torch.no_grad():
        if teacher is not None:
            teacher_maps = _as_float(teacher).flatten(1)                                  # (B, h*w), broadcast
        elif teachers == [3] * len(teachers):   # deep_to_all: one teacher for every student
            teacher_maps = activation_attention(features[3]).flatten(1)                  # (B, h*w)
        else:
            teacher_maps = torch.stack([_pooled_attention(features[index], grid, 2) for index in teachers])
        if teacher_quantile is not None:
            teacher_maps = teacher_maps * quantile_mask(teacher_maps, teacher_quantile)
        mask = None
        if mask_quantile is not None:
            mask = quantile_mask(teacher_maps, mask_quantile)
            teacher_maps = teacher_maps * mask
    device = features[0].device
    pools = [_pooling_pair(*features[index].shape[-2:], *grid, device) for index in students]
    forward_weights = _layer_weights(tuple(factor * weights[index] for index in students), device)
    # dL/dF_l = 2 (dL/dA_l) F_l / C_l, and the loss's own factor 2: folded into one weight per layer
    backward_weights = _layer_weights(tuple(4 * factor * weights[index] / features[index].shape[1]
                                            for index in students), device, column=True)
    return _AttentionTransfer.apply(forward_weights, backward_weights, teacher_maps, mask,
                                    *[pool[0] for pool in pools], *[pool[1] for pool in pools],
                                    *[features[index] for index in students])


@functools.lru_cache(maxsize=64)
def _pooling_pair(rows: int, columns: int, height: int, width: int,
                  device: torch.device) -> tuple[Tensor | None, Tensor | None]:
    """(:func:`_pooling_matrix`, its transpose made contiguous), or (None, None) on the teacher's own grid."""
    if (rows, columns) == (height, width):
        return None, None
    matrix = _pooling_matrix(rows, columns, height, width, device)
    return matrix, matrix.T.contiguous()


class _AttentionTransfer(torch.autograd.Function):
    """sum_l w_l sum_{b, n} (Q_l - T)^2 with Q_l = normalize(pool(mean_c F_l^2)), its backward written out.

    forward(w (n,), w' (n, 1, 1), T (n or 1 or -, B, N) raw teacher maps, mask (like T) or None,
    n pooling matrices (H_l W_l, N) or None, their n transposes, n features (B, C_l, H_l, W_l)) -> scalar.
    Autograd's chain (square, mean, view, product, stack, norm, clamp, division, difference, square, sum,
    product) costs dozens of backward operators; the gradient in closed form costs a few per layer:
    with r = |a| and Q = a / max(r, eps),  dL/da = 2 w ((Q - T) - Q (Q . (Q - T)) [r >= eps]) / max(r, eps),
    then dL/dF = (2 / C) F (dL/dA) with dL/dA = dL/da pooled back (the transposed matrix).
    """

    @staticmethod
    def forward(ctx, forward_weights, backward_weights, teacher_maps, mask, *pools_and_features):
        count = len(pools_and_features) // 3
        pools, transposes = pools_and_features[:count], pools_and_features[count:2 * count]
        features = pools_and_features[2 * count:]
        maps = []
        for feature, pool in zip(features, pools):
            attention = _exact(feature).square().mean(dim=1).flatten(1)                   # (B, H*W)
            maps.append(attention if pool is None else attention @ pool)                  # (B, N)
        students = torch.stack(maps)                                                      # (n, B, N)
        if mask is not None:
            students = students * mask
        norms = torch.linalg.vector_norm(students, dim=-1, keepdim=True)                 # (n, B, 1)
        clamped = norms.clamp_min(_EPS)
        normalised = students / clamped
        difference = normalised - teacher_maps / torch.linalg.vector_norm(
            teacher_maps, dim=-1, keepdim=True).clamp_min(_EPS)
        ctx.save_for_backward(backward_weights, mask, normalised, difference, norms, clamped, *transposes, *features)
        ctx.count = count
        return difference.square().sum(dim=(1, 2)) @ forward_weights

    @staticmethod
    def backward(ctx, grad_output):
        backward_weights, mask, normalised, difference, norms, clamped, *rest = ctx.saved_tensors
        transposes, features = rest[:ctx.count], rest[ctx.count:]
        # Q . (Q - T), kept only where the norm was not clamped (there Q is a / eps, a plain scaling)
        projection = (normalised * difference).sum(dim=-1, keepdim=True) * (norms >= _EPS)
        scaling = backward_weights * grad_output / clamped                              # (n, B, 1)
        gradient = torch.addcmul(difference, normalised, projection, value=-1) * scaling
        if mask is not None:
            gradient = gradient * mask
        grads = []
        needs_grad = ctx.needs_input_grad[4 + 2 * ctx.count:]
        for needs, layer_gradient, feature, transpose in zip(needs_grad, gradient.unbind(0), features, transposes):
            if not needs:
                grads.append(None)
                continue
            pooled_back = layer_gradient if transpose is None else layer_gradient @ transpose   # (B, H*W)
            grads.append(_exact(feature) * pooled_back.view(feature.shape[0], 1, *feature.shape[2:]))
        return (None, None, None, None) + (None,) * (2 * ctx.count) + tuple(grads)


def _exact(tensor: Tensor) -> Tensor:
    """float32 for half and bfloat16 (as :func:`_as_float`), float64 kept (for a gradient check in double)."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


#: F.normalize's default eps, so the closed form normalises exactly as the autograd formulation does
_EPS = 1e-12


#: lambda_hst per cell of the teacher grid when lambda_hst is None (see :class:`HSTLoss`): 20 on the
#: 5 x 5 grid of the SynthFER demo scale, where it was chosen on the validation split (docs/BENCHMARKS.md).
LAMBDA_PER_CELL = 0.8
#: The per-cell rule stops growing at this many cells (lambda 20): on 7 x 7 and 9 x 9 teachers the
#: per-cell weight (39, 65) held training back where 20 did not (docs/BENCHMARKS.md, "The default weight
#: on finer grids").
LAMBDA_MAX_CELLS = 25


def _refresh_host_mirror(buffer: str, mirror: str, module: nn.Module, incompatible_keys) -> None:
    setattr(module, mirror, int(getattr(module, buffer)))


def mirror_count_on_host(module: nn.Module, buffer: str, mirror: str) -> None:
    """Keep the integer attribute ``mirror`` equal to ``module``'s scalar counter buffer ``buffer``.

    A count read in every training step is read from the mirror: reading the buffer on a GPU would wait for the
    GPU each time. The buffer is what checkpoints keep; loading one refreshes the mirror (a post-load hook), and
    whoever advances the count sets both.
    """
    _refresh_host_mirror(buffer, mirror, module, None)
    module.register_load_state_dict_post_hook(functools.partial(_refresh_host_mirror, buffer, mirror))


class HSTLoss(nn.Module):
    """Hierarchical Semantic Transfer loss, scaled: ramp * lambda_hst * L_hst (see :func:`hst_loss`).

    L_hst = sum_{l=1..3} w_l * mean || Q_l - sg(Q_T(l)) ||^2,  Q_l = normalize(flatten(pool(mean_c F_l^2)))

    forward([x1, x2, x3, x4]) -> scalar. [design]

    ``lambda_hst``: a number, or None (the default) for ``LAMBDA_PER_CELL`` * min(N, ``LAMBDA_MAX_CELLS``)
    on a teacher grid of N cells. L_hst averages over the N positions, so on coarse grids the weight grows
    with N: 3.2 on FER2013's 2 x 2 grid at 48 px, about 13 on 4 x 4, 20 on the 5 x 5 grid of the SynthFER
    demo. Finer grids keep 20 (7 x 7 at 224 px, 9 x 9): there the per-cell weight slowed or stopped
    training in measured runs. The reference weight of attention transfer, 1e3, swamps the cross-entropy:
    measured on FER2013 at 48 px it kept training accuracy at chance for four epochs.
    ``warmup_epochs``: the weight ramps linearly from 0 over that many epochs (0 in the first). At
    initialisation the layer4 teacher is random and its HST gradient on layer1 is several times the
    cross-entropy's; teaching starts once the teacher has learnt something. The number of finished epochs
    is a buffer, so a resumed run continues the ramp exactly; the model advances it with :meth:`set_epoch`.
    ``start_epoch``: the weight is exactly 0 for the epochs before it (0-based), then ramps in over
    ``warmup_epochs``: 1/w, 2/w, ..., 1 from the start epoch on. A late start is self-attention distillation's
    schedule (Hou et al. add it to a network already partly trained); at a start of 0 the first epoch's weight
    is 0 instead, since the teacher is random then. It needs no state of its own: the ramp is a function of
    the epochs done. ``direction``: "pool" (attention transfer) or "upsample" (SAD), see :func:`hst_loss`.
    """

    def __init__(self, weights: Sequence[float] = (0.5, 1.0, 1.0), mode: str = "deep_to_all",
                 mask_quantile: float | None = None, teacher_quantile: float | None = None,
                 lambda_hst: float | None = None, p: float = 2, pooling: str = "registered",
                 warmup_epochs: float = 0.0, start_epoch: int = 0, direction: str = "pool"):
        super().__init__()
        if mode not in HST_MODES:
            raise ValueError(f"unknown HST mode '{mode}'; choose one of {', '.join(HST_MODES)}")
        for name, value in (("mask_quantile", mask_quantile), ("teacher_quantile", teacher_quantile)):
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs (model.options.hst_warmup_epochs) must be >= 0, got {warmup_epochs}")
        if not p > 0:
            raise ValueError(f"the attention exponent (model.options.hst_p) must be > 0, got {p}")
        if int(start_epoch) != start_epoch or start_epoch < 0:
            raise ValueError(f"the HST start epoch must be a whole number >= 0, got {start_epoch}")
        if direction not in HST_DIRECTIONS:
            raise ValueError(f"unknown HST direction (model.options.hst_direction) '{direction}'; "
                             f"choose one of {', '.join(HST_DIRECTIONS)}")
        if direction == "upsample" and (mask_quantile is not None or teacher_quantile is not None):
            raise ValueError("hst_mask_quantile and hst_teacher_quantile act on the teacher's grid: they belong to "
                             "hst_direction 'pool', not 'upsample'")
        weights = tuple(weights)
        if len(weights) != 3 or not all(math.isfinite(w) and w >= 0 for w in weights):
            # Checked here, not in the first training step, so a bad value stops the command before it starts.
            raise ValueError(f"hst_weights must be 3 numbers >= 0 (layer1, layer2, layer3), got {list(weights)}")
        if lambda_hst is not None and not (math.isfinite(lambda_hst) and lambda_hst >= 0):
            # A negative weight would train the shallow maps away from the teacher without any warning.
            raise ValueError(f"lambda_hst must be a finite number >= 0, or null for the grid's default; "
                             f"got {lambda_hst}")
        self.weights = tuple(float(w) for w in weights)
        self.mode = mode
        self.mask_quantile = mask_quantile
        self.teacher_quantile = teacher_quantile
        self.pooling = pooling
        self.lambda_hst = None if lambda_hst is None else float(lambda_hst)
        self.p = p
        self.warmup_epochs = float(warmup_epochs)
        self.start_epoch = int(start_epoch)
        self.direction = direction
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))
        mirror_count_on_host(self, "epochs_done", "_epochs_done")     # the ramp reads it in every step

    def scale(self, grid_positions: int) -> float:
        """lambda_hst for a teacher grid of ``grid_positions`` cells (the auto rule when lambda_hst is None)."""
        if self.lambda_hst is not None:
            return self.lambda_hst
        return LAMBDA_PER_CELL * min(grid_positions, LAMBDA_MAX_CELLS)

    def ramp(self) -> float:
        """The warm-up factor in [0, 1] for the current epoch: 0 before ``start_epoch``, then the ramp."""
        if self._epochs_done < self.start_epoch:
            return 0.0
        if self.warmup_epochs <= 0:
            return 1.0
        # a late start's teacher is trained: its first epoch is taught (1/w), where a start at 0 waits one epoch
        taught = self._epochs_done - self.start_epoch + (1 if self.start_epoch > 0 else 0)
        return min(1.0, taught / self.warmup_epochs)

    def set_epoch(self, epochs_done: int) -> None:
        self.epochs_done.fill_(int(epochs_done))
        self._epochs_done = int(epochs_done)

    def forward(self, features: Sequence[Tensor], teacher: Tensor | None = None) -> Tensor:
        grid_positions = features[-1].shape[-2] * features[-1].shape[-1]
        # the weight is folded into the per-layer weights: no product (and no backward node) of its own
        return hst_loss(features, weights=self.weights, mode=self.mode, mask_quantile=self.mask_quantile,
                        teacher_quantile=self.teacher_quantile, p=self.p, pooling=self.pooling,
                        teacher=teacher, scale=self.ramp() * self.scale(grid_positions), direction=self.direction)

    def extra_repr(self) -> str:
        lam = (f"auto ({LAMBDA_PER_CELL} * min(N, {LAMBDA_MAX_CELLS}))" if self.lambda_hst is None
               else self.lambda_hst)
        return (f"weights={self.weights}, mode={self.mode}, mask_quantile={self.mask_quantile}, "
                f"teacher_quantile={self.teacher_quantile}, p={self.p}, "
                f"lambda_hst={lam}, warmup_epochs={self.warmup_epochs}, start_epoch={self.start_epoch}, "
                f"direction={self.direction}")
