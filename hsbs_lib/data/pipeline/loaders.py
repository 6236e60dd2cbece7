"""Input pipelines: batches of normalised images plus a dict of target tensors.

Two paths, same batches in distribution and the same normalisation:

* **device**: the split is cached once as a uint8 tensor (N, 3, S, S) and, when it fits
  (``data.device_cache_max_gb``), moved to the device. :class:`DeviceBatchLoader` shuffles indices with a
  generator seeded by (seed, epoch), slices batches on the device and augments whole batches there
  (:class:`~hsbs_lib.data.pipeline.transforms.BatchAugment`). No worker processes, no per-sample Python.
* **loader**: a ``DataLoader`` over the dataset with per-sample ``torchvision.transforms.v2`` presets, for
  data that does not fit. Each sample's randomness is seeded by (seed, epoch, index), so results do not
  depend on the number of workers.

``pipeline="auto"`` picks device when the uint8 split fits. Either way every image is decoded once before
training (the cache build, or :func:`decodable_part` on the loader path): a broken image stops the run
before it starts, naming every one, or with ``data.skip_bad`` is left out and listed in the loader's
``skipped``. Every batch is ``(images, targets)`` with
images float32 (B, 3, S, S) and targets ``{"label": (B,), "pose": (B,), "soft_label": (B, K), "index": (B,)}``;
"pose" is present when the split has pose labels (-1 marks an unknown pose), "soft_label" when the split
has label distributions. A training loader built for a model that asks for ``extra_targets`` adds them:
"region_bits" (B, S, S) uint8, the expression regions moved with each image by every flip and warp
(:mod:`hsbs_lib.data.regions`). Shuffling (and class-balanced sampling) is identical on every rank and
each rank takes its stride of the epoch's indices, the rule DistributedSampler follows.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import tv_tensors

from hsbs_lib.config import Config
from hsbs_lib.constants import IMAGENET_NORMALIZATION
from hsbs_lib.data.base import BadDatasetError, BadEntry, DatasetReport
from hsbs_lib.data.pipeline.cache import cache_split, find_bad_images
from hsbs_lib.data.pipeline.transforms import (POSE_BINS, AugmentSpec, BatchAugment, add_pixel_noise_, as_image,
                                               augment_spec, flip_pose, sample_transform)
from hsbs_lib.data.regions import REGION_BITS, has_region_masks, region_bits_of
from hsbs_lib.data.splits import SplitView

log = logging.getLogger("hsbs_lib.engine")

# Independent random streams derived from the run seed.
STREAM_ORDER, STREAM_AUGMENT, STREAM_SAMPLE, STREAM_GLOBAL, STREAM_MIX = 1, 2, 3, 4, 5


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers such as (seed, epoch, stream, rank)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def epoch_generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


# ---------------------------------------------------------------------------------------------- sources

def labels_of(data: Any) -> np.ndarray:
    """(N,) int64 labels of a dataset (``.targets``) or cached split (``.labels``), without decoding images."""
    labels = data.labels if hasattr(data, "labels") else data.targets
    return np.asarray(labels, dtype=np.int64)


def poses_of(data: Any) -> np.ndarray | None:
    """(N,) int64 pose bins with -1 for unknown, or None when the data has no pose labels at all."""
    poses = getattr(data, "poses", None)
    if poses is None:
        return None
    poses = np.asarray(poses, dtype=np.int64)
    return poses if (poses >= 0).any() else None


def soft_labels_of(data: Any) -> np.ndarray | None:
    soft = getattr(data, "soft_labels", None)
    return None if soft is None else np.asarray(soft, dtype=np.float32)


def is_cached_split(data: Any) -> bool:
    """A CachedSplit-like object: (N, 3, S, S) ``images`` and ``labels``, no per-sample decoding."""
    return hasattr(data, "images") and hasattr(data, "labels") and not hasattr(data, "load_image")


def decodes_from_files(data: Any) -> bool:
    """True for a dataset whose images are decoded from files on each read (not cached, not in memory)."""
    return (hasattr(data, "load_image") and not is_cached_split(data)
            and not isinstance(getattr(data, "images", None), np.ndarray))


def decodable_part(data: Any, *, skip_bad: bool, cache_dir: str | None = None, workers: int = 0
                   ) -> tuple[Any, list[BadEntry]]:
    """``data`` without the images that fail to decode, and those images, found by one decoding pass
    (:func:`~hsbs_lib.data.pipeline.cache.find_bad_images`) before any training.

    Raises BadDatasetError listing every such image unless ``skip_bad``; then they are left out of a
    :class:`SplitView` and returned. Cached and in-memory data pass through unchanged.
    """
    if not decodes_from_files(data):
        return data, []
    bad = find_bad_images(data, cache_dir=cache_dir, workers=workers)
    if not bad:
        return data, []
    if not skip_bad:
        raise BadDatasetError(DatasetReport(getattr(data, "name", type(data).__name__),
                                            str(getattr(data, "root", None)), str(data.split), bad))
    broken = {entry.path for entry in bad}
    keep = [i for i, (path, _) in enumerate(data.samples) if str(path) not in broken]
    return SplitView(data, keep, f"{data.split}-decodable"), bad


def skipped_at_indexing(data: Any) -> list[BadEntry]:
    """The bad entries a dataset skipped while indexing (``skip_bad``: missing files, bad labels)."""
    report = getattr(data, "report", None)
    return list(getattr(report, "bad", None) or [])


def split_nbytes(data: Any, size: int) -> int:
    """Bytes of the uint8 (N, 3, S, S) cache of ``data``."""
    return len(labels_of(data)) * 3 * size * size


def class_sample_weights(labels: np.ndarray, num_classes: int) -> Tensor:
    """Per-sample weights 1 / count(label): every class is drawn equally often in expectation."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.from_numpy(1.0 / np.maximum(counts, 1)[labels])


# ---------------------------------------------------------------------------------------------- sampler

class EpochSampler(Sampler[int]):
    """Indices for one epoch, a pure function of (seed, epoch, rank).

    Shuffled (``torch.randperm``), class-weighted with replacement (``torch.multinomial``, as
    WeightedRandomSampler) or in order. Under DDP the epoch's index list is padded to a multiple of the
    world size and rank r takes positions r, r + W, ..., exactly as DistributedSampler does.
    """

    def __init__(self, size: int, *, seed: int = 0, shuffle: bool = True, weights: Tensor | None = None,
                 rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.shuffle, self.weights = size, seed, shuffle, weights
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> Tensor:
        generator = epoch_generator(self.seed, self.epoch, STREAM_ORDER)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        elif self.shuffle:
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        if self.world_size > 1:
            total = math.ceil(self.size / self.world_size) * self.world_size
            order = torch.cat([order, order[: total - self.size]])[self.rank:total:self.world_size]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)


def _num_batches(count: int, batch_size: int, drop_last: bool, max_steps: int | None) -> int:
    batches = count // batch_size if drop_last and count >= batch_size else math.ceil(count / batch_size)
    return min(batches, max_steps) if max_steps else batches


# ---------------------------------------------------------------------------------------------- device path

class DeviceBatchLoader:
    """Batches sliced from a uint8 split tensor on the device, augmented as whole batches.

    ``split``: an object with ``images`` (N, 3, S, S) uint8, ``labels`` (N,), optional ``poses``,
    ``soft_labels`` and ``region_bits`` (a CachedSplit). The images go to ``device`` once when they take at
    most ``max_gb``; otherwise they stay in host memory and each batch is copied over.
    """

    def __init__(self, split: Any, *, batch_size: int, device: str | torch.device = "cpu", shuffle: bool = False,
                 augment: str | AugmentSpec = "none", normalization: dict | None = None, seed: int = 0,
                 drop_last: bool = False, balanced: bool = False, num_classes: int | None = None,
                 rank: int = 0, world_size: int = 1, max_steps: int | None = None, pose_bins: int = POSE_BINS,
                 max_gb: float = 4.0):
        self.device = torch.device(device)
        self.batch_size, self.drop_last, self.max_steps, self.seed, self.rank = batch_size, drop_last, max_steps, seed, rank
        self.normalization = normalization or IMAGENET_NORMALIZATION
        self.augment = BatchAugment(augment, normalization=self.normalization, pose_bins=pose_bins)
        images = np.asarray(split.images)
        fits = images.nbytes <= max_gb * 1e9
        # Copy out of a read-only memmap when it fits; otherwise index the memmap batch by batch.
        images = torch.from_numpy(np.array(images) if fits else images)
        self.images = images.to(self.device) if fits else images
        labels = labels_of(split)
        target_device = self.images.device
        self.targets: dict[str, Tensor] = {"label": torch.from_numpy(labels).to(target_device)}
        poses, soft = poses_of(split), soft_labels_of(split)
        if poses is not None:
            self.targets["pose"] = torch.from_numpy(poses).to(target_device)
        if soft is not None:
            self.targets["soft_label"] = torch.from_numpy(soft).to(target_device)
        region_bits = getattr(split, REGION_BITS, None)
        if region_bits is not None:
            self.targets[REGION_BITS] = torch.from_numpy(np.ascontiguousarray(region_bits)).to(target_device)
        weights = class_sample_weights(labels, num_classes or int(labels.max()) + 1) if balanced else None
        self.sampler = EpochSampler(len(labels), seed=seed, shuffle=shuffle, weights=weights, rank=rank,
                                    world_size=world_size)
        self.epoch = 0
        self.skipped: list[BadEntry] = []     # bad entries data.skip_bad left out (set by make_loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def sample_labels(self) -> np.ndarray:
        """(N,) int64 labels of the samples this loader draws from (bad entries left out)."""
        return self.targets["label"].cpu().numpy()

    def __len__(self) -> int:
        return _num_batches(len(self.sampler), self.batch_size, self.drop_last, self.max_steps)

    def __iter__(self) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        order = self.sampler.indices().to(self.images.device)
        generator = epoch_generator(self.seed, self.epoch, STREAM_AUGMENT, self.rank)
        for batch in range(len(self)):
            index = order[batch * self.batch_size:(batch + 1) * self.batch_size]
            images = self.images[index].to(self.device, non_blocking=True)
            targets = {key: value[index].to(self.device, non_blocking=True) for key, value in self.targets.items()}
            targets["index"] = index.to(self.device)
            images, pose, regions = self.augment.augment_with_regions(images, targets.get("pose"),
                                                                      targets.get(REGION_BITS), generator)
            if pose is not None:
                targets["pose"] = pose
            if regions is not None:
                targets[REGION_BITS] = regions
            yield images, targets


# ---------------------------------------------------------------------------------------------- loader path

class TransformedDataset(Dataset):
    """Per-sample pipeline over a FERDataset (decoded with ``load_image``) or a cached split.

    Item i of epoch e is a pure function of (seed, e, i): the v2 transforms draw from torch's global
    generator, which is seeded per sample inside ``fork_rng``. The flip is done here so the pose label
    can be mirrored with the image, and so is the ``clcl`` policy's choice of a flip or Gaussian noise
    (the noise goes on the decoded image, before resizing, as in CCLLS).

    ``region_bits`` (N, H, W) uint8 at the images' own size: each sample's go through the same flip and the
    same v2 transforms as its image (a ``tv_tensors.Mask``: resized, cropped and rotated by nearest neighbour,
    left alone by colour, normalisation and erasing) and come out as ``target["region_bits"]`` (S, S).
    """

    def __init__(self, data: Any, *, size: int, augment: str | AugmentSpec = "none",
                 normalization: dict | None = None, seed: int = 0, pose_bins: int = POSE_BINS,
                 region_bits: np.ndarray | None = None):
        self.data = data
        self.spec = augment_spec(augment)
        self.transform = sample_transform(self.spec, size, normalization=normalization)
        self.labels = labels_of(data)
        self.poses, self.soft_labels = poses_of(data), soft_labels_of(data)
        self.region_bits = region_bits
        self.seed, self.pose_bins, self.epoch = seed, pose_bins, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def _image(self, index: int) -> Tensor:
        if is_cached_split(self.data):
            return torch.from_numpy(np.array(self.data.images[index]))
        return torch.from_numpy(np.ascontiguousarray(self.data.load_image(index))).permute(2, 0, 1)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image = self._image(index)
        regions = None if self.region_bits is None else tv_tensors.Mask(torch.from_numpy(self.region_bits[index]))
        target = {"label": torch.tensor(self.labels[index]), "index": torch.tensor(index)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, self.epoch, STREAM_SAMPLE, index))
            flipped, noisy = bool(torch.rand(()) < self.spec.flip), False
            if self.spec.flip_or_noise > 0 and bool(torch.rand(()) < self.spec.flip_or_noise):
                if bool(torch.rand(()) < 0.5):
                    noisy = True
                else:
                    flipped = True
            if flipped:
                image = image.flip(-1)
                regions = None if regions is None else regions.flip(-1)
            if noisy:
                image = add_pixel_noise_(image.float(), self.spec.noise_std).to(torch.uint8)
            if regions is None:
                image = self.transform(as_image(image))
            else:
                # One call, so the mask gets the image's crop and angle (v2 draws them once per call).
                with warnings.catch_warnings():
                    # RandomErasing passes masks through, as wanted: the teacher still says where the face is
                    warnings.filterwarnings("ignore", message="RandomErasing.*passing through")
                    image, regions = self.transform(as_image(image), regions)
                target[REGION_BITS] = regions.as_subclass(Tensor)
        if self.poses is not None:
            target["pose"] = flip_pose(torch.tensor(self.poses[index]), torch.tensor(flipped), self.pose_bins)
        if self.soft_labels is not None:
            target["soft_label"] = torch.from_numpy(self.soft_labels[index])
        return image.as_subclass(Tensor), target


class SampleBatchLoader:
    """A DataLoader over :class:`TransformedDataset` with the same interface as DeviceBatchLoader."""

    def __init__(self, data: Any, *, size: int, batch_size: int, shuffle: bool = False,
                 augment: str | AugmentSpec = "none",
                 normalization: dict | None = None, seed: int = 0, drop_last: bool = False,
                 balanced: bool = False, num_classes: int | None = None, rank: int = 0, world_size: int = 1,
                 max_steps: int | None = None, workers: int = 0, pin_memory: bool = False,
                 pose_bins: int = POSE_BINS, region_bits: np.ndarray | None = None):
        self.dataset = TransformedDataset(data, size=size, augment=augment, normalization=normalization,
                                          seed=seed, pose_bins=pose_bins, region_bits=region_bits)
        labels = self.dataset.labels
        weights = class_sample_weights(labels, num_classes or int(labels.max()) + 1) if balanced else None
        self.sampler = EpochSampler(len(labels), seed=seed, shuffle=shuffle, weights=weights, rank=rank,
                                    world_size=world_size)
        self.batch_size, self.drop_last, self.max_steps = batch_size, drop_last, max_steps
        self.loader = DataLoader(self.dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                 pin_memory=pin_memory, drop_last=drop_last and len(self.sampler) >= batch_size)
        self.skipped: list[BadEntry] = []     # bad entries data.skip_bad left out (set by make_loader)

    def set_epoch(self, epoch: int) -> None:
        # Workers are started per epoch (not persistent), so they pick up the new epoch.
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)

    def sample_labels(self) -> np.ndarray:
        """(N,) int64 labels of the samples this loader draws from (bad entries left out)."""
        return self.dataset.labels

    def __len__(self) -> int:
        return _num_batches(len(self.sampler), self.batch_size, self.drop_last, self.max_steps)

    def __iter__(self) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        for batch, item in enumerate(self.loader):
            if batch >= len(self):
                break
            yield item


# ---------------------------------------------------------------------------------------------- building

@dataclass
class Loaders:
    """What :func:`build_loaders` returns."""

    train: DeviceBatchLoader | SampleBatchLoader | None
    test: DeviceBatchLoader | SampleBatchLoader | None
    pipeline: str
    normalization: dict
    classes: tuple[str, ...]
    train_labels: np.ndarray | None
    val: DeviceBatchLoader | SampleBatchLoader | None = None
    skipped: dict[str, list[BadEntry]] = field(default_factory=dict)   # "train"/"val"/"test" -> entries left out


def choose_pipeline(requested: str, nbytes: int, max_gb: float) -> str:
    """``device`` or ``loader``; ``auto`` picks device when the uint8 split fits in ``max_gb``."""
    if requested not in ("auto", "device", "loader"):
        raise ValueError(f"data.pipeline must be auto, device or loader, got '{requested}'")
    if requested != "auto":
        return requested
    return "device" if nbytes <= max_gb * 1e9 else "loader"


def as_cached_split(data: Any, size: int, *, cache_dir: str | None = None, skip_bad: bool | None = None) -> Any:
    """A cached uint8 split of ``data`` (a CachedSplit passes through)."""
    if is_cached_split(data):
        return data
    return cache_split(data, size, cache_dir=cache_dir, skip_bad=skip_bad)


def pose_bins_for(data: Any, config: Config) -> int:
    """The number of yaw bins P that a flip mirrors pose labels around (bin p becomes P - 1 - p).

    The model's ``num_poses`` option when given, else the dataset's ``pose_bins``; the two must agree.
    A source that says neither is taken to use one bin more than its largest pose label. Raises
    ValueError when a pose label does not fit in P bins (a flip would make it negative).
    """
    declared = getattr(data, "pose_bins", None)
    requested = config.model.options.get("num_poses")
    name = getattr(data, "name", type(data).__name__)
    if requested is not None and declared is not None and int(requested) != int(declared):
        raise ValueError(f"model.options.num_poses={requested} but dataset '{name}' has {declared} pose bins")
    bins = requested if requested is not None else declared
    poses = poses_of(data)
    if poses is None:
        return int(bins) if bins is not None else POSE_BINS    # no pose labels: nothing to mirror
    largest = int(poses.max())
    if bins is None:
        log.warning("dataset '%s' does not say how many pose bins it has: assuming %d (0..%d, its largest "
                    "label); set model.options.num_poses if that is wrong, or a flip mislabels poses",
                    name, largest + 1, largest)
        return largest + 1
    if largest >= int(bins):
        raise ValueError(f"dataset '{name}' has pose label {largest}, out of range for {bins} pose bins "
                         f"(model.options.num_poses or the dataset's pose_bins)")
    return int(bins)


def check_extra_targets(data: Any, extra_targets: dict[str, str] | None) -> None:
    """Refuse, in one line, data that lacks a target the model trains on.

    ``extra_targets``: {target key: what asks for it, e.g. "model.options.hst_teacher=mask"}.
    """
    for key, asked_by in (extra_targets or {}).items():
        if key != REGION_BITS:
            raise ValueError(f"{asked_by} asks for the training target '{key}', which no input pipeline provides")
        if not has_region_masks(data):
            name = getattr(data, "name", type(data).__name__)
            raise ValueError(f"{asked_by} needs the expression's region masks, but dataset '{name}' has no "
                             f"region masks (only SynthFER renders them)")


def make_loader(data: Any, config: Config, *, train: bool, device: torch.device, pipeline: str,
                context: Any = None, normalization: dict | None = None,
                extra_targets: dict[str, str] | None = None) -> DeviceBatchLoader | SampleBatchLoader:
    """One loader for a training (shuffled, augmented, sharded) or evaluation split.

    ``context``: who this process is under DistributedDataParallel (``rank``, ``world_size``, ``enabled``:
    the engine's DistributedContext); None for a single process. ``extra_targets``: targets beyond the labels
    that the model's loss reads ({key: the option asking for it}; :func:`check_extra_targets`).
    """
    check_extra_targets(data, extra_targets)
    wants_regions = REGION_BITS in (extra_targets or {})
    d, t = config.data, config.train
    sharded = train and context is not None and context.enabled
    augment = augment_spec(d.augment, erase_scale=d.erase_scale, options=d.augment_options) if train else "none"
    options = dict(batch_size=t.batch_size if train else t.eval_batch_size, shuffle=train, augment=augment,
                   normalization=normalization, seed=t.seed,
                   drop_last=train, balanced=train and d.sampler == "balanced", num_classes=d.num_classes,
                   rank=context.rank if sharded else 0, world_size=context.world_size if sharded else 1,
                   max_steps=t.max_steps_per_epoch if train else None,
                   pose_bins=pose_bins_for(data, config))
    if d.sampler not in ("none", "balanced"):
        raise ValueError(f"data.sampler must be none or balanced, got '{d.sampler}'")
    skipped = skipped_at_indexing(data)
    if pipeline == "device":
        split = as_cached_split(data, d.input_size, cache_dir=d.cache_dir, skip_bad=d.skip_bad)
        if wants_regions:
            split = dataclasses.replace(split, region_bits=_rows_of(region_bits_of(data, d.input_size), split))
        loader = DeviceBatchLoader(split, device=device, max_gb=d.device_cache_max_gb, **options)
        skipped += list(getattr(split, "bad", None) or [])
    else:
        # Decode every image once now, as the cache build does, so no broken file stops training midway.
        data, undecodable = decodable_part(data, skip_bad=d.skip_bad, cache_dir=d.cache_dir, workers=d.workers)
        loader = SampleBatchLoader(data, size=d.input_size, workers=d.workers, pin_memory=device.type == "cuda",
                                   region_bits=region_bits_of(data) if wants_regions else None, **options)
        skipped += undecodable
    loader.skipped = skipped
    return loader


def _rows_of(region_bits: np.ndarray, split: Any) -> np.ndarray:
    """``region_bits`` when they have one row per image of ``split`` (a cache that left images out cannot match)."""
    if len(region_bits) != len(labels_of(split)):
        raise ValueError(f"the region masks have {len(region_bits)} rows but the cached split has "
                         f"{len(labels_of(split))} images")
    return region_bits


def build_loaders(config: Config, train_data: Any, test_data: Any, *, val_data: Any = None,
                  device: str | torch.device = "cpu", context: Any = None,
                  extra_targets: dict[str, str] | None = None) -> Loaders:
    """Train, validation and test loaders for ``config`` (any split may be None).

    ``extra_targets``: targets the model's loss reads beyond the labels ({key: the option asking for it}, from
    :func:`hsbs_lib.engine.build.model_extra_targets`); only the training loader carries them.
    """
    device = torch.device(device)
    size, max_gb = config.data.input_size, config.data.device_cache_max_gb
    present = [data for data in (train_data, val_data, test_data) if data is not None]
    pipeline = choose_pipeline(config.data.pipeline, sum(split_nbytes(data, size) for data in present), max_gb)
    normalization = dict(IMAGENET_NORMALIZATION)
    classes = tuple(getattr(present[0], "classes", ())) if present else ()
    log.info("input pipeline: %s", pipeline)
    build = dict(config=config, device=device, pipeline=pipeline, context=context, normalization=normalization)
    # Every split is built (and each image decoded once) before training starts: a bad test image is
    # found now, not after the last epoch.
    loaders = {role: make_loader(data, train=role == "train", extra_targets=extra_targets if role == "train" else None,
                                 **build) if data is not None else None
               for role, data in (("train", train_data), ("val", val_data), ("test", test_data))}
    train_loader = loaders["train"]
    return Loaders(
        train=train_loader, test=loaders["test"], pipeline=pipeline, normalization=normalization, classes=classes,
        train_labels=None if train_loader is None else train_loader.sample_labels(),
        val=loaders["val"],
        skipped={role: loader.skipped for role, loader in loaders.items() if loader is not None and loader.skipped})
