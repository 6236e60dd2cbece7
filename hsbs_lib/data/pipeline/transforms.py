"""Augmentation presets and normalisation, for whole batches on the device and for single samples.

Two implementations of the same presets (none | flip | standard | strong | clcl | fer), each of which
``data.augment_options`` can change field by field (:func:`augment_spec`):

* :class:`BatchAugment` works on a uint8 batch (B, 3, S, S) already on the device. Every sample gets its
  own parameters (flip, noise, crop box, angle, brightness, contrast, erased box), drawn from a CPU
  ``torch.Generator`` so the same (seed, epoch) gives the same batch on CPU and GPU (the one exception:
  the per-pixel Gaussian noise of ``clcl`` is drawn on the device, from a seed taken from that
  generator, so it is reproducible per device but not equal across devices). Flip, crop and
  rotation are one affine warp per sample (a sampling grid + ``grid_sample``), the batched equivalent of
  ``RandomHorizontalFlip`` + ``RandomResizedCrop`` + ``RandomRotation``; the other steps work in place.
* :func:`sample_transform` builds the per-sample ``torchvision.transforms.v2`` pipeline used by the
  DataLoader path. The horizontal flip is left to the caller there, because it must also mirror the
  pose label (a flip negates yaw: pose bin p becomes P - 1 - p), and so is the ``clcl`` choice between a
  flip and Gaussian noise (:func:`add_pixel_noise_`).

Policies that reproduce a paper's released recipe:

* ``clcl``: CCLLS's training augmentation. With probability 0.5 either a horizontal flip or Gaussian
  noise (variance 30 on the 0..255 scale, clipped and truncated to integers), each half the time; then
  RandomErasing (p = 0.5, area 0.02-0.1, value 0 after normalisation). The noise is added to the
  pixels the pipeline holds: the cached, model-size image on the device path, the decoded image before
  resizing on the DataLoader path (as CCLLS does).
* ``none``: MFER's released training uses no augmentation.
* ``fer``: Khaireddin & Chen's FER2013 recipe: RandomAffine (scale 0.8-1.2, shift up to 20 %, rotation up
  to 10 degrees), horizontal flip, RandomErasing.

Both paths end with the same normalisation (ImageNet mean and std, stored in every checkpoint).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from hsbs_lib.constants import IMAGENET_NORMALIZATION
from hsbs_lib.data.regions import REGION_BITS

POSE_BINS = 5
_GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class AugmentSpec:
    """One augmentation preset. Zero or None switches a step off."""

    flip: float = 0.0                                   # probability of a horizontal flip
    crop_scale: tuple[float, float] | None = None       # RandomResizedCrop area fraction range
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)    # crop aspect ratio range
    zoom: tuple[float, float] | None = None             # RandomAffine scale range (above 1 zooms in, below out)
    shift: float = 0.0                                  # RandomAffine translation, fraction of the side, both ways
    rotation: float = 0.0                               # maximum angle in degrees, both directions
    brightness: float = 0.0                             # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.0                               # factor drawn from [1 - c, 1 + c]
    erase: float = 0.0                                  # RandomErasing probability
    erase_scale: tuple[float, float] = (0.02, 0.2)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    flip_or_noise: float = 0.0                          # probability of one of a flip or Gaussian noise, half each
    noise_std: float = 30 ** 0.5                        # Gaussian noise std on the 0..255 scale (CCLLS: variance 30)

    @property
    def geometric(self) -> bool:
        return self.crop_scale is not None or self.zoom is not None or self.shift > 0 or self.rotation > 0

    @property
    def affine(self) -> bool:
        """A RandomAffine-style warp (zoom and shift) rather than a RandomResizedCrop."""
        return self.zoom is not None or self.shift > 0


AUGMENT_PRESETS: dict[str, AugmentSpec] = {
    "none": AugmentSpec(),
    "flip": AugmentSpec(flip=0.5),
    "standard": AugmentSpec(flip=0.5, crop_scale=(0.8, 1.0), rotation=10.0, brightness=0.2, contrast=0.2),
    "strong": AugmentSpec(flip=0.5, crop_scale=(0.6, 1.0), rotation=15.0, brightness=0.4, contrast=0.4,
                          erase=0.5),
    "clcl": AugmentSpec(flip_or_noise=0.5, erase=0.5, erase_scale=(0.02, 0.1)),
    # Khaireddin & Chen 2021's FER2013 recipe (VGGNet, 73.28 % on PublicTest): rescale by 0.8-1.2, shift by up
    # to 20 %, rotate by up to 10 degrees, flip, then RandomErasing.
    "fer": AugmentSpec(flip=0.5, zoom=(0.8, 1.2), shift=0.2, rotation=10.0, erase=0.5),
}

#: AugmentSpec fields that ``data.augment_options`` may set, with the type each takes.
AUGMENT_OPTION_TYPES = {field.name: field.type for field in dataclasses.fields(AugmentSpec)}


def _option_value(name: str, value) -> object:
    """One ``data.augment_options`` value checked and converted to the AugmentSpec field's type."""
    where = f"data.augment_options.{name}"
    if name in ("crop_scale", "crop_ratio", "zoom", "erase_scale", "erase_ratio"):
        if value is None and name in ("crop_scale", "zoom"):
            return None
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                or not 0 < value[0] <= value[1]):
            raise ValueError(f"{where} expects two numbers [low, high] with 0 < low <= high, got {value!r}")
        return (float(value[0]), float(value[1]))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where} expects a number >= 0, got {value!r}")
    if name in ("flip", "erase", "flip_or_noise") and value > 1:
        raise ValueError(f"{where} is a probability in [0, 1], got {value!r}")
    return float(value)


def augment_spec(preset: str | AugmentSpec, *, erase_scale: Sequence[float] | None = None,
                 options: dict | None = None) -> AugmentSpec:
    """The :class:`AugmentSpec` of a preset name (an AugmentSpec passes through).

    ``erase_scale``: (low, high) area fractions of RandomErasing replacing the preset's (data.erase_scale).
    ``options``: AugmentSpec fields replacing the preset's (``data.augment_options``), e.g. ``{"erase": 0}``
    for the preset without RandomErasing, ``{"zoom": None}`` without rescaling: the ablation rows.
    """
    if isinstance(preset, AugmentSpec):
        spec = preset
    elif preset not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset '{preset}'; choose one of {', '.join(AUGMENT_PRESETS)}")
    else:
        spec = AUGMENT_PRESETS[preset]
    if options:
        unknown = sorted(set(options) - set(AUGMENT_OPTION_TYPES))
        if unknown:
            raise ValueError(f"unknown augmentation option 'data.augment_options.{unknown[0]}'; the options are: "
                             f"{', '.join(AUGMENT_OPTION_TYPES)}")
        spec = dataclasses.replace(spec, **{name: _option_value(name, value) for name, value in options.items()})
    if erase_scale is None:
        return spec
    values = list(erase_scale)
    if len(values) != 2 or not 0 < values[0] <= values[1] < 1:
        raise ValueError(f"data.erase_scale must be two area fractions [low, high] with 0 < low <= high < 1, "
                         f"got {list(erase_scale)}")
    if spec.erase <= 0:
        name = preset if isinstance(preset, str) else "this preset"
        raise ValueError(f"data.erase_scale is set but augmentation '{name}' does not erase; "
                         f"use a preset with RandomErasing (strong, clcl)")
    return dataclasses.replace(spec, erase_scale=(float(values[0]), float(values[1])))


def add_pixel_noise_(pixels: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """In place: add N(0, std^2) noise to float pixels on the 0..255 scale, clip to 0..255 and truncate to
    integers (CCLLS's ``add_gaussian_noise``, which casts to uint8). Any shape; returns ``pixels``."""
    noise = torch.randn(pixels.shape, generator=generator, device=pixels.device, dtype=pixels.dtype)
    return pixels.add_(noise.mul_(std)).clamp_(0, 255).floor_()


def flip_pose(pose: Tensor, flipped: Tensor, pose_bins: int = POSE_BINS) -> Tensor:
    """Mirror yaw bins of flipped samples: p -> P - 1 - p; unknown poses (-1) stay -1. Shapes (B,)."""
    return torch.where(flipped & (pose >= 0), pose_bins - 1 - pose, pose)


def normalize(images: Tensor, normalization: dict | None = None) -> Tensor:
    """uint8 (B, 3, H, W) -> float32 normalised, exactly as ``ToDtype(scale=True)`` + ``Normalize``."""
    floats = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    # .float() returns a float32 input itself: copy it so the caller's tensor is left alone
    return _normalize_(floats.clone() if floats is images else floats, normalization or IMAGENET_NORMALIZATION)


def model_inputs(images: np.ndarray | Tensor | Sequence[np.ndarray], normalization: dict | None = None, *,
                 size: int | None = None) -> Tensor:
    """uint8 images -> the normalised float32 batch (N, 3, S, S) a model takes, as the evaluation pipeline
    feeds it. The one conversion used by figures, inference, the interactive explorers and the notebooks.

    ``images``: uint8 (N, H, W, 3) or (N, 3, H, W), as an array or a tensor, or a list of (h, w, 3)
    arrays of any sizes (face crops; then give ``size``). Float images are taken to be in [0, 1].
    ``size``: resize each image to (size, size) first (bilinear, antialiased). ``normalization``: the
    checkpoint's mean and std (default ImageNet's).
    """
    if isinstance(images, (list, tuple)):
        batch = [torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1) for image in images]
    else:
        batch = images if isinstance(images, Tensor) else torch.from_numpy(np.ascontiguousarray(images))
        if batch.shape[-1] == 3 and batch.shape[1] != 3:
            batch = batch.permute(0, 3, 1, 2)
    if size is not None:
        # Resized on the 0..255 scale, then scaled: the order the inference path has always used.
        resized = [F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True,
                                 align_corners=False) for image in batch]
        return normalize(torch.cat(resized) / 255.0, normalization)
    return normalize(torch.stack(batch) if isinstance(batch, list) else batch, normalization)


def _normalize_(images: Tensor, normalization: dict) -> Tensor:
    """In-place :func:`normalize` of a float32 batch in [0, 1]."""
    mean = torch.tensor(normalization["mean"], device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(normalization["std"], device=images.device).view(1, -1, 1, 1)
    return images.sub_(mean).div_(std)


def _uniform(low: float, high: float, count: int, generator: torch.Generator) -> Tensor:
    return torch.rand(count, generator=generator) * (high - low) + low


class BatchAugment:
    """Per-sample augmentation of a whole uint8 batch on its device, then normalisation.

    ``augment(images (B, 3, S, S) uint8, pose (B,) or None, generator)`` returns
    ``(float32 (B, 3, S, S) normalised, pose with flipped samples mirrored)``.
    """

    def __init__(self, preset: str | AugmentSpec = "none", *, normalization: dict | None = None,
                 pose_bins: int = POSE_BINS):
        self.spec = augment_spec(preset)
        self.normalization = normalization or IMAGENET_NORMALIZATION
        self.pose_bins = pose_bins

    def __call__(self, images: Tensor, pose: Tensor | None, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor | None]:
        x, pose, _ = self.augment_with_regions(images, pose, None, generator)
        return x, pose

    def augment_with_regions(self, images: Tensor, pose: Tensor | None, regions: Tensor | None,
                             generator: torch.Generator) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """As calling the augmentation, and ``regions`` (B, S, S) uint8 region bits (:mod:`hsbs_lib.data.regions`)
        moved with each image: flipped with it and warped with it (nearest neighbour, 0 outside the image, so bits
        stay bits). Colour, noise and erasing leave them as they are. No extra random draws: the images come out
        exactly as without ``regions``."""
        spec, batch, device = self.spec, images.shape[0], images.device
        # One float copy of the batch, then every step works in place: on a CPU the page faults of a
        # fresh 10 MB tensor per step cost more than the arithmetic.
        x = images.float()
        flipped = None
        if spec.flip > 0:
            flipped = torch.rand(batch, generator=generator) < spec.flip
        if spec.flip_or_noise > 0:
            chosen = torch.rand(batch, generator=generator) < spec.flip_or_noise
            noise_not_flip = torch.rand(batch, generator=generator) < 0.5
            either_flip = chosen & ~noise_not_flip
            flipped = either_flip if flipped is None else flipped | either_flip
            self._noise(x, chosen & noise_not_flip, generator)
        if flipped is not None and pose is not None:
            pose = flip_pose(pose, flipped.to(pose.device), self.pose_bins)
        x.div_(255.0)
        if spec.geometric:
            # The flip rides along in the warp (mirrored sampling grid), saving a pass over the batch.
            grid = self._sampling_grid(x, generator, flipped)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            if regions is not None:
                regions = F.grid_sample(regions[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                                        align_corners=False)[:, 0].to(torch.uint8)
        elif flipped is not None and flipped.any():
            # Exact pixel mirror (no interpolation), so a flip preset alone never blurs.
            chosen = flipped.nonzero().squeeze(1).to(device)
            x[chosen] = x[chosen].flip(-1)
            if regions is not None:
                regions = regions.clone()       # the loader's own copy of the split stays unflipped
                regions[chosen] = regions[chosen].flip(-1)
        if spec.brightness > 0 or spec.contrast > 0:
            self._colour(x, generator)
        _normalize_(x, self.normalization)
        if spec.erase > 0:
            self._erase(x, generator)
        return x, pose, regions

    def _noise(self, x: Tensor, noisy: Tensor, generator: torch.Generator) -> None:
        """Gaussian noise in place on the samples ``noisy`` (B,) of a 0..255 float batch.

        Per-pixel draws from a CPU generator would cost a host-to-device copy of the batch, so they come
        from a device generator seeded from ``generator`` (one draw, taken whether or not a sample is noisy).
        """
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        if not noisy.any():
            return
        device_generator = torch.Generator(device=x.device).manual_seed(seed)
        chosen = noisy.nonzero().squeeze(1).to(x.device)
        x[chosen] = add_pixel_noise_(x[chosen], self.spec.noise_std, device_generator)

    def _sampling_grid(self, x: Tensor, generator: torch.Generator, flipped: Tensor | None = None) -> Tensor:
        """Flip, random resized crop and rotation as one affine map per sample (output -> input coordinates):
        the (B, H, W, 2) grid that ``grid_sample`` warps the batch (B, C, H, W) with."""
        spec, (batch, _, height, width) = self.spec, x.shape
        crop_w = crop_h = torch.ones(batch)
        if spec.zoom is not None:
            # RandomAffine's scale s shows 1/s of the image (s > 1 zooms in; s < 1 zooms out, black around).
            crop_w = crop_h = 1.0 / _uniform(*spec.zoom, batch, generator)
        if spec.crop_scale is not None:
            area = _uniform(*spec.crop_scale, batch, generator)
            log_ratio = _uniform(math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1]), batch, generator)
            ratio = log_ratio.exp()
            # Side lengths as fractions of the image; clamped where torchvision would fall back to a centre crop.
            crop_w = (area * ratio).sqrt().clamp(max=1.0)
            crop_h = (area / ratio).sqrt().clamp(max=1.0)
        if not spec.affine:
            centre_x = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - crop_w)
            centre_y = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - crop_h)
        angle = _uniform(-spec.rotation, spec.rotation, batch, generator) * (math.pi / 180)
        cos, sin = angle.cos(), angle.sin()
        if spec.affine:
            # RandomAffine shifts the *output* by whole pixels, up to ``shift`` of the side either way; in the
            # output -> input map that is a shift of -A t, with A the rotation-and-scale part below.
            shift_x = _uniform(-spec.shift * width, spec.shift * width, batch, generator).round() * 2 / width
            shift_y = _uniform(-spec.shift * height, spec.shift * height, batch, generator).round() * 2 / height
            centre_x = -(crop_w * cos * shift_x - crop_w * sin * shift_y)
            centre_y = -(crop_h * sin * shift_x + crop_h * cos * shift_y)
        theta = torch.stack([
            torch.stack([crop_w * cos, -crop_w * sin, centre_x], dim=1),
            torch.stack([crop_h * sin, crop_h * cos, centre_y], dim=1),
        ], dim=1)                                                                 # (B, 2, 3)
        if flipped is not None:
            # Flipping the input first reads it at (-x, y): negate the row that produces x.
            theta[:, 0] *= 1 - 2 * flipped.float().view(-1, 1)
        # Sampled with zeros padding: black only where the rotated crop reaches outside the image. v2 rotates
        # the already cropped image, so its black corners are larger (the two differ at the border only).
        return affine_sampling_grid(theta.to(x.device), height, width)

    def _colour(self, x: Tensor, generator: torch.Generator) -> None:
        """Brightness then contrast in place, torchvision's blend formulas with one factor per sample."""
        spec, batch = self.spec, x.shape[0]
        brightness = _uniform(1 - spec.brightness, 1 + spec.brightness, batch, generator).to(x.device)
        contrast = _uniform(1 - spec.contrast, 1 + spec.contrast, batch, generator).to(x.device)
        x.mul_(brightness.view(-1, 1, 1, 1)).clamp_(0, 1)
        grey_mean = x.mean(dim=(2, 3)) @ torch.tensor(_GREY_WEIGHTS, device=x.device)   # (B,) mean luma
        offset = (1 - contrast) * grey_mean
        x.mul_(contrast.view(-1, 1, 1, 1)).add_(offset.view(-1, 1, 1, 1)).clamp_(0, 1)

    def _erase(self, x: Tensor, generator: torch.Generator) -> None:
        """RandomErasing in place with value 0 (the mean colour after normalisation), one box per chosen sample."""
        spec, (batch, _, height, width) = self.spec, x.shape
        apply = torch.rand(batch, generator=generator) < spec.erase
        area = _uniform(*spec.erase_scale, batch, generator) * height * width
        ratio = _uniform(math.log(spec.erase_ratio[0]), math.log(spec.erase_ratio[1]), batch, generator).exp()
        box_h = (area * ratio).sqrt().round().clamp(1, height - 1)
        box_w = (area / ratio).sqrt().round().clamp(1, width - 1)
        top = (torch.rand(batch, generator=generator) * (height - box_h + 1)).floor()
        left = (torch.rand(batch, generator=generator) * (width - box_w + 1)).floor()
        rows = torch.arange(height).view(1, -1, 1)
        cols = torch.arange(width).view(1, 1, -1)
        inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))
                  & (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1)))
        mask = (inside & apply.view(-1, 1, 1)).to(x.device).unsqueeze(1)        # (B, 1, H, W)
        x.masked_fill_(mask, 0.0)


class BatchMix:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a normalised batch with a shuffled copy of itself.

    ``mix(images (B, 3, S, S), targets, generator)`` returns the mixed images and targets with
    ``soft_label`` (B, K) = lam * y_i + (1 - lam) * y_perm(i) (one-hot labels, or the batch's own soft labels),
    which the models' classification terms use; ``label`` (B,) becomes the label with the larger share, for
    the accuracy and for loss terms that need a hard label; ``region_bits``, when present, follow the pixels.
    lam ~ Beta(alpha, alpha), one per batch (as timm); CutMix pastes a box of area 1 - lam and sets lam to the
    pasted box's exact share. With both alphas above 0, each batch takes one of the two at random. Draws come
    from ``generator`` (CPU), so a seeded epoch mixes the same pairs on every device.
    """

    def __init__(self, num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0):
        if mixup < 0 or cutmix < 0:
            raise ValueError(f"mixup and cutmix alphas must be >= 0, got {mixup} and {cutmix}")
        self.num_classes, self.mixup, self.cutmix = num_classes, float(mixup), float(cutmix)

    @property
    def enabled(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def _beta(self, alpha: float, generator: torch.Generator) -> float:
        # Beta(a, a) = X / (X + Y) with X, Y ~ Gamma(a): torch's Gamma takes no generator, numpy's does.
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        return float(np.random.default_rng(seed).beta(alpha, alpha))

    def __call__(self, images: Tensor, targets: dict[str, Tensor], generator: torch.Generator
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        if not self.enabled or images.shape[0] < 2:
            return images, targets
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or bool(torch.rand(1, generator=generator) < 0.5))
        lam = self._beta(self.cutmix if use_cutmix else self.mixup, generator)
        order = torch.randperm(images.shape[0], generator=generator).to(images.device)
        if use_cutmix:
            height, width = images.shape[-2:]
            cut_h, cut_w = round(height * math.sqrt(1 - lam)), round(width * math.sqrt(1 - lam))
            centre_y = int(torch.randint(0, height, (1,), generator=generator))
            centre_x = int(torch.randint(0, width, (1,), generator=generator))
            top, bottom = max(centre_y - cut_h // 2, 0), min(centre_y + (cut_h + 1) // 2, height)
            left, right = max(centre_x - cut_w // 2, 0), min(centre_x + (cut_w + 1) // 2, width)
            images = images.clone()
            images[..., top:bottom, left:right] = images[order][..., top:bottom, left:right]
            lam = 1 - (bottom - top) * (right - left) / (height * width)
        else:
            images = images * lam + images[order] * (1 - lam)
        soft = targets.get("soft_label")
        if soft is None:
            soft = F.one_hot(targets["label"], self.num_classes).float()
        mixed = dict(targets)
        mixed["soft_label"] = soft * lam + soft[order] * (1 - lam)
        regions = targets.get(REGION_BITS)
        if regions is not None:
            # Where the expression is, in the mixed image: CutMix pastes the partner's regions with its pixels;
            # Mixup shows both faces, so both faces' regions count.
            if use_cutmix:
                regions = regions.clone()
                regions[..., top:bottom, left:right] = regions[order][..., top:bottom, left:right]
            else:
                regions = regions | regions[order]
            mixed[REGION_BITS] = regions
        if lam < 0.5:
            mixed["label"] = targets["label"][order]
        return images, mixed


#: test-time augmentation modes (``train.tta``, ``hsbs eval --tta``)
TTA_MODES = ("none", "flip", "tencrop")
#: side of the ten-crop views as a fraction of the input (42 of 48 px), each resized back to the input
TENCROP_FRACTION = 0.875


def tta_views(images: Tensor, mode: str = "none") -> list[Tensor]:
    """The views of a normalised batch (B, 3, S, S) whose predictions test-time augmentation averages.

    ``none``: the batch itself; ``flip``: it and its mirror image; ``tencrop``: the four corner crops and the
    centre crop of side ``TENCROP_FRACTION * S`` (torchvision's ``ten_crop``) with their mirror images, each
    resized back to S x S (bilinear), since the models are trained at S.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"test-time augmentation must be one of {', '.join(TTA_MODES)}, got '{mode}'")
    if mode == "none":
        return [images]
    if mode == "flip":
        return [images, images.flip(-1)]
    height, width = images.shape[-2:]
    crop = (max(1, round(TENCROP_FRACTION * height)), max(1, round(TENCROP_FRACTION * width)))
    return [F.interpolate(view, size=(height, width), mode="bilinear", align_corners=False)
            for view in v2.functional.ten_crop(images, list(crop))]


def affine_sampling_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """``F.affine_grid(theta, (B, C, H, W), align_corners=False)`` by broadcasting: (B, 2, 3) -> (B, H, W, 2).

    Same values; about twice as fast on a CPU, where affine_grid goes through a batched matmul.
    """
    xs = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1
    theta = theta.view(-1, 1, 1, 2, 3)                                        # (B, 1, 1, 2, 3)
    return theta[..., 0] * xs.view(1, 1, -1, 1) + (theta[..., 1] * ys.view(1, -1, 1, 1) + theta[..., 2])


def sample_transform(preset: str | AugmentSpec, size: int, *, normalization: dict | None = None) -> v2.Compose:
    """Per-sample v2 pipeline for a uint8 ``tv_tensors.Image`` (3, H, W) -> float32 (3, size, size).

    The horizontal flip and the Gaussian noise of the preset are not included: the caller flips (and mirrors
    the pose label) and adds the noise (see TransformedDataset).
    With preset "none" this is the eval transform: resize to ``size`` and normalise.
    """
    spec = augment_spec(preset)
    normalization = normalization or IMAGENET_NORMALIZATION
    steps: list = [v2.Resize((size, size), antialias=True)]
    if spec.crop_scale is not None:
        steps.append(v2.RandomResizedCrop((size, size), scale=spec.crop_scale, ratio=spec.crop_ratio,
                                          antialias=True))
    if spec.affine:
        steps.append(v2.RandomAffine(spec.rotation, translate=(spec.shift, spec.shift) if spec.shift else None,
                                     scale=spec.zoom, interpolation=v2.InterpolationMode.BILINEAR))
    elif spec.rotation > 0:
        steps.append(v2.RandomRotation(spec.rotation, interpolation=v2.InterpolationMode.BILINEAR))
    if spec.brightness > 0 or spec.contrast > 0:
        steps.append(v2.ColorJitter(brightness=spec.brightness or None, contrast=spec.contrast or None))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(normalization["mean"], normalization["std"])]
    if spec.erase > 0:
        steps.append(v2.RandomErasing(p=spec.erase, scale=spec.erase_scale, ratio=spec.erase_ratio, value=0))
    return v2.Compose(steps)


def eval_transform(size: int, *, normalization: dict | None = None) -> v2.Compose:
    """Resize to ``size`` and normalise; no augmentation."""
    return sample_transform("none", size, normalization=normalization)


def as_image(chw_uint8: Tensor) -> tv_tensors.Image:
    """Mark a (3, H, W) uint8 tensor as an image for the v2 transforms."""
    return tv_tensors.Image(chw_uint8)
