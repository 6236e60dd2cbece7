"""CLCL: Cross-Layer Contrastive Learning of latent semantics.

Xie et al., "Cross-Layer Contrastive Learning of Latent Semantics for Facial Expression
Recognition", IEEE Transactions on Image Processing 33:2514-2529, 2024.

[paper] Shallow layers are under-trained (their "learning intensity", the magnitude of the gradient
that reaches them, is small); contrastive learning aligns shallow and deep latent semantics, and a
module fuses multi-layer features.

[code] read from the authors' public code (ZhibinPeng/CCLLS):
- MSR head: each stage output x_l is PixelShuffled by r = 2, 4, 8, 16 (layer1..4), a per-layer conv
  (128 out, no bias) maps it to 128x11x11, the four maps are summed, 3x3 conv + BN, the channel mean
  gives one 11x11 map, flattened to 121 and classified by one linear layer. Conv kernel/stride/padding
  at 224 px: 4/11/1, 8/11/3, 16/10/2, 32/8/0 (the released code has no other input size).
- The released head adds the batch mean of the fused map to every sample's map.
- CLBS projections: sigmoid, 3x3 conv 128 -> 4 (with bias), flattened to 4*11*11 = 484.
- Loss: CE + sum_l lambda_l (L_clfm + L_clbs); released weights align layer2 only, lambda_2 = 0.1.

[design] our reconstruction or deviation:
- The conv sizes at 112 px, 2/5/0, 4/5/1, 8/5/1, 16/5/1, are our choice (not in the released code).
- Any input size: the conv geometry is chosen at construction for ``input_size`` (the released numbers
  at 224 px and ours at 112 px with the standard stem, derived ones otherwise, see :func:`msr_geometry`). If a
  batch of another size arrives, each shuffled map is resized (bilinear) to the size the geometry was
  built for, so the grid stays 11x11; set ``input_size`` to the data's size to avoid that resize.
- The batch-mean map is optional (``batch_mean``). Training adds the batch's mean map and updates a
  running mean of it (momentum 0.1, as BatchNorm); evaluation adds the running mean, so the classifier
  sees the same bias in both modes and a prediction never depends on the rest of its batch.
- CLBS teacher: the layer4 projection is detached before k-means, so it would never be trained; it is
  a fixed random projection kept as buffers rather than parameters that never get a gradient.
- CLFM: the released term is built from top-k indices and carries no gradient, so it does not change
  training. The default follows it: ``clfm=False`` (no term); ``clfm="detached"`` computes our CLFM on
  detached features and reports it, like the released code, without training anything;
  ``clfm="trainable"`` is the trainable variant of :mod:`hsbs_lib.losses.clcl` (an ablation row).
- Without MSR (``msr=False``) the classifier is global average pooling + linear on layer4 (the
  baseline). CLFM still works (it contrasts the stage outputs); CLBS contrasts the MSR per-layer maps
  and therefore requires ``msr=True`` (a clear error otherwise).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hsbs_lib.constants import STAGE_NAMES
from hsbs_lib.losses.clcl import CLBSLoss, CLFMLoss
from hsbs_lib.losses.hst import activation_attention
from hsbs_lib.models.backbones import stage_sizes
from hsbs_lib.models.base import FERModel, ModelOutput
from hsbs_lib.models.registry import register_model

log = logging.getLogger(__name__)

LAYERS = STAGE_NAMES
#: PixelShuffle factor per stage: each stage is twice as coarse as the previous one, and layer1 itself
#: is upsampled x2, so every shuffled map has (about) twice the layer1 resolution.
SHUFFLE_FACTORS = (2, 4, 8, 16)
MSR_GRID = 11
#: [code] (kernel, stride, padding) of the per-layer MSR convs in the released code (224 px, standard stem).
RELEASED_GEOMETRY = {
    224: ((4, 11, 1), (8, 11, 3), (16, 10, 2), (32, 8, 0)),
}
#: [design] Fixed sizes at other inputs (standard stem), chosen by us: the released code has 224 px only.
DESIGN_GEOMETRY = {
    112: ((2, 5, 0), (4, 5, 1), (8, 5, 1), (16, 5, 1)),
}


class ConvGeometry(NamedTuple):
    """One MSR conv: kernel, stride, padding and the (square) shuffled input size it was built for."""

    kernel: int
    stride: int
    padding: int
    in_size: int


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _derived_geometry(size: int, grid: int) -> ConvGeometry:
    """[design] A conv taking a size x size map to grid x grid, chosen for the least window overlap.

    With padding p, S = size + 2p, stride s = S // grid and kernel k = S - (grid - 1) s give exactly
    ``grid`` windows covering the padded map; p in 0..3 is picked to make k - s (the overlap) smallest.
    """
    if size < grid:
        # Only for inputs far below 48 px: the map is resized up to the grid and a 1x1 conv is used.
        return ConvGeometry(1, 1, 0, grid)
    best = None
    for padding in range(4):
        padded = size + 2 * padding
        stride = padded // grid
        kernel = padded - (grid - 1) * stride
        if kernel < stride or padding >= kernel:
            continue
        key = (kernel - stride, padding)
        if best is None or key < best[0]:
            best = (key, ConvGeometry(kernel, stride, padding, size))
    return best[1]


def msr_geometry(input_size: int = 224, *, stem: str = "standard", grid: int = MSR_GRID) -> tuple[ConvGeometry, ...]:
    """The four MSR conv geometries for a square ``input_size`` input, each giving a grid x grid map.

    224 px with the standard stem uses the released numbers and 112 px ours (:data:`DESIGN_GEOMETRY`);
    other sizes use :func:`_derived_geometry` on the shuffled map sizes (stage size x shuffle factor).
    """
    shuffled = [size * factor for size, factor in zip(stage_sizes(input_size, stem=stem), SHUFFLE_FACTORS)]
    fixed = {**RELEASED_GEOMETRY, **DESIGN_GEOMETRY}
    if stem == "standard" and grid == MSR_GRID and input_size in fixed:
        geometry = tuple(ConvGeometry(k, s, p, size) for (k, s, p), size in zip(fixed[input_size], shuffled))
    else:
        geometry = tuple(_derived_geometry(size, grid) for size in shuffled)
    for item in geometry:
        assert conv_output_size(item.in_size, item.kernel, item.stride, item.padding) == grid, item
    return geometry


def _next_multiple(value: int, step: int) -> int:
    return -(-value // step) * step


class MultiScaleHead(nn.Module):
    """[code] The MSR fusion of the four stage outputs into one width x 11 x 11 map.

    forward([x1, x2, x3, x4]) -> (per_layer, fused): per_layer is four (B, width, 11, 11) maps (one per
    stage, before summing; CLBS projects them), fused is (B, width, 11, 11) after the 3x3 conv and BN.
    """

    def __init__(self, channels: Sequence[int], *, input_size: int = 224, stem: str = "standard",
                 width: int = 128):
        super().__init__()
        self.input_size = input_size
        self.geometry = msr_geometry(input_size, stem=stem)
        # The shuffle folds factor^2 channels into one: a stage whose channels it cannot divide (a backbone
        # narrower than the paper's, e.g. model.backbone_width=24) is first widened by a 1x1 convolution to
        # the next multiple. At the paper's widths (multiples of 32) every stage divides and nothing is added.
        self.widen = nn.ModuleList(
            nn.Identity() if channel % (factor * factor) == 0
            else nn.Conv2d(channel, _next_multiple(channel, factor * factor), kernel_size=1, bias=False)
            for channel, factor in zip(channels, SHUFFLE_FACTORS))
        self.shuffles = nn.ModuleList(nn.PixelShuffle(factor) for factor in SHUFFLE_FACTORS)
        self.projections = nn.ModuleList(
            nn.Conv2d(_next_multiple(channel, factor ** 2) // factor ** 2, width, kernel_size=geo.kernel,
                      stride=geo.stride, padding=geo.padding, bias=False)
            for channel, factor, geo in zip(channels, SHUFFLE_FACTORS, self.geometry))
        self.fuse = nn.Sequential(nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(width))
        self._warned_resize = False

    def forward(self, stages: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        per_layer = []
        for stage, widen, shuffle, projection, geo in zip(stages, self.widen, self.shuffles, self.projections,
                                                          self.geometry):
            shuffled = shuffle(widen(stage))
            if tuple(shuffled.shape[-2:]) != (geo.in_size, geo.in_size):
                if not self._warned_resize:
                    log.warning("CLCL MSR head built for %d px inputs got a %dx%d shuffled map where %d was expected: "
                                "resizing; set model option input_size to the data's size to avoid it",
                                self.input_size, shuffled.shape[-2], shuffled.shape[-1], geo.in_size)
                    self._warned_resize = True
                shuffled = F.interpolate(shuffled, size=(geo.in_size, geo.in_size), mode="bilinear",
                                         align_corners=False)
            per_layer.append(projection(shuffled))
        fused = self.fuse(torch.stack(per_layer).sum(0))
        return per_layer, fused


def _layer_weights(weights: Sequence[float] | Mapping) -> dict[str, float]:
    """Normalise (w1, w2, w3, w4) or {"layer2": 0.1} / {2: 0.1} to {"layer1": w1, ...}."""
    if isinstance(weights, Mapping):
        resolved = dict.fromkeys(LAYERS, 0.0)
        for key, value in weights.items():
            name = f"layer{key}" if isinstance(key, int) or str(key).isdigit() else str(key)
            if name not in resolved:
                raise ValueError(f"unknown layer '{key}' in layer_weights; use layer1..layer4")
            resolved[name] = float(value)
    else:
        weights = list(weights)
        if len(weights) != 4:
            raise ValueError(f"layer_weights needs 4 values (layer1..layer4), got {len(weights)}")
        resolved = {name: float(value) for name, value in zip(LAYERS, weights)}
    if resolved["layer4"] != 0:
        raise ValueError("layer4 is the teacher of every CLCL contrast term; its weight in layer_weights must be 0")
    return resolved


CLFM_MODES = ("off", "detached", "trainable")


def _clfm_mode(clfm: bool | str) -> str:
    """The ``clfm`` option as one of :data:`CLFM_MODES` (False -> "off", True -> "trainable")."""
    if isinstance(clfm, bool):
        return "trainable" if clfm else "off"
    if clfm not in CLFM_MODES:
        raise ValueError(f"model.options.clfm must be false, 'detached' or 'trainable', got {clfm!r}")
    return clfm


@register_model("clcl")
class CLCL(FERModel):
    """CLCL on a ResNet backbone (see the module docstring for [code] and [design] parts).

    Options (keyword-only; the switches give the ablation rows baseline / +MSR / +MSR+CLBS / +all):
        msr: the multi-scale head; False gives GAP + linear on layer4.
        clbs: the cross-layer batch-sample contrast (needs msr).
        clfm: the cross-layer feature-map contrast: False (default, as released: the released term has
            no gradient), "detached" (reported, no gradient) or "trainable" (True means "trainable").
        layer_weights: lambda_l for layer1..4, a 4-sequence or a dict such as {"layer2": 0.1};
            the released default aligns layer2 only. layer4 is the teacher and must stay 0.
        batch_mean: add the batch-mean fused map (the released head): the batch's own in training, a
            running mean of it (``batch_mean_momentum``, as BatchNorm) in evaluation.
        clbs_clusters, clfm_clusters: K of the two k-means (7 and 4 as released).
        kmeans_iters, kmeans_seed: fixed Lloyd iterations and the seed of the k-means++ start.
        clfm_temperature: temperature of the spatial softmax that makes the CLFM channel codes.
        input_size: the input side the MSR conv geometry is built for (other sizes are resized).
        width: channels of the MSR maps (128 as released).
        stem, backbone_width: the backbone's stem and width (see hsbs_lib.models.backbones).

    forward(x: (B, 3, H, W)) -> ModelOutput with logits (B, K); features (B, 121) with msr (the
    flattened map the classifier sees) else (B, C4); maps "features/layer1..4" (raw stage outputs),
    "attention/layer1..4" (B, H_l, W_l) = mean_c F^2, and with msr "msr_map" (B, 11, 11), the channel
    mean of the fused map; extras "clbs/layerN" (B, 484) projections for the weighted layers and layer4.
    """

    def __init__(self, num_classes: int = 7, backbone: str = "resnet18", pretrained: str | None = None,
                 *, stem: str = "standard", backbone_width: int = 64, msr: bool = True, clbs: bool = True,
                 clfm: bool | str = False,
                 layer_weights: Sequence[float] | Mapping = (0.0, 0.1, 0.0, 0.0), batch_mean: bool = False,
                 batch_mean_momentum: float = 0.1,
                 clbs_clusters: int = 7, clfm_clusters: int = 4, kmeans_iters: int = 10, kmeans_seed: int = 0,
                 clfm_temperature: float = 1.0, input_size: int = 224, width: int = 128):
        super().__init__(num_classes, backbone, pretrained, stem=stem, backbone_width=backbone_width)
        if clbs and not msr:
            raise ValueError("CLBS contrasts the per-layer maps of the MSR head: with msr=False set clbs=False "
                             "(CLFM works without MSR)")
        if not 0.0 <= batch_mean_momentum <= 1.0:
            raise ValueError(f"batch_mean_momentum must be in [0, 1], got {batch_mean_momentum}")
        for name, value in (("clbs_clusters", clbs_clusters), ("clfm_clusters", clfm_clusters),
                            ("kmeans_iters", kmeans_iters)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value}")
        if not clfm_temperature > 0:
            raise ValueError(f"clfm_temperature must be > 0, got {clfm_temperature}")
        self.clfm_mode = _clfm_mode(clfm)
        self.msr, self.clbs, self.clfm, self.batch_mean = msr, clbs, self.clfm_mode != "off", batch_mean
        weights = _layer_weights(layer_weights)
        self.layer_weights = {name: weight for name, weight in weights.items() if weight != 0}
        channels = self.backbone.channels
        if msr:
            self.head = MultiScaleHead(channels, input_size=input_size, stem=stem, width=width)
            self.classifier = nn.Linear(MSR_GRID * MSR_GRID, num_classes)
            if batch_mean:
                # What evaluation adds in place of the batch's mean map, tracked like BatchNorm's running mean.
                self.batch_mean_momentum = float(batch_mean_momentum)
                self.register_buffer("running_batch_mean", torch.zeros(MSR_GRID, MSR_GRID))
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(self.backbone.out_channels, num_classes)
        if clbs:
            # Student projections only where they are used, so every parameter receives a gradient. The
            # teacher projection is detached before k-means and could never learn: a fixed random
            # projection kept as buffers (saved with the model, invisible to the optimiser).
            self.clbs_projections = nn.ModuleDict({
                name: nn.Sequential(nn.Sigmoid(), nn.Conv2d(width, 4, kernel_size=3, padding=1))
                for name in self.layer_weights})
            teacher = nn.Conv2d(width, 4, kernel_size=3, padding=1)
            self.register_buffer("clbs_teacher_weight", teacher.weight.detach().clone())
            self.register_buffer("clbs_teacher_bias", teacher.bias.detach().clone())
            self.clbs_loss = CLBSLoss(clbs_clusters, iters=kmeans_iters, seed=kmeans_seed)
        if clfm:
            self.clfm_loss = CLFMLoss(clfm_clusters, iters=kmeans_iters, seed=kmeans_seed,
                                      temperature=clfm_temperature)

    def forward(self, x: Tensor) -> ModelOutput:
        stages = self.backbone(x)
        maps: dict[str, Tensor] = {}
        for name, stage in zip(LAYERS, stages):
            maps[f"features/{name}"] = stage
            maps[f"attention/{name}"] = activation_attention(stage)
        extras: dict[str, Tensor] = {}
        if self.msr:
            per_layer, fused = self.head(stages)
            channel_mean = fused.mean(dim=1)                                     # (B, 11, 11)
            head_input = channel_mean
            if self.batch_mean:
                head_input = channel_mean + self._batch_mean_map(fused)
            features = head_input.flatten(1)                                     # (B, 121)
            maps["msr_map"] = channel_mean
            if self.clbs:
                for name, projection in self.clbs_projections.items():
                    extras[f"clbs/{name}"] = projection(per_layer[LAYERS.index(name)]).flatten(1)   # (B, 484)
                extras["clbs/layer4"] = F.conv2d(torch.sigmoid(per_layer[3]), self.clbs_teacher_weight,
                                                 self.clbs_teacher_bias, padding=1).flatten(1)
        else:
            features = self.pool(stages[-1]).flatten(1)
        logits = self.classifier(features)
        return ModelOutput(logits=logits, features=features, maps=maps, extras=extras)

    def _batch_mean_map(self, fused: Tensor) -> Tensor:
        """(B, width, 11, 11) -> (11, 11): the batch's mean map in training (the running mean is updated
        from it), the running mean in evaluation."""
        if not self.training:
            return self.running_batch_mean.to(fused.dtype)
        batch_map = fused.mean(dim=(0, 1))
        with torch.no_grad():
            self.running_batch_mean.lerp_(batch_map.detach().float(), self.batch_mean_momentum)
        return batch_map

    def loss(self, output: ModelOutput, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """"ce" plus lambda_l-weighted "clbs/layerN" and "clfm/layerN" for every layer with lambda_l != 0."""
        terms = {"ce": self.classification_loss(output.logits, targets)}
        if self.clbs:
            teacher = output.extras["clbs/layer4"]
            for name, weight in self.layer_weights.items():
                terms[f"clbs/{name}"] = weight * self.clbs_loss(output.extras[f"clbs/{name}"], teacher)
        if self.clfm:
            teacher = output.maps["features/layer4"]
            for name, weight in self.layer_weights.items():
                student = output.maps[f"features/{name}"]
                if self.clfm_mode == "detached":
                    student = student.detach()
                terms[f"clfm/{name}"] = weight * self.clfm_loss(student, teacher)
        return terms
