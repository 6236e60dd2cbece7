"""A decoded, resized uint8 copy of one split: decode every JPEG once, then train from a memory map.

``cache_split(dataset, 64)`` decodes each image through ``dataset.load_image``, resizes it to 64 x 64
and stores an (N, 3, 64, 64) uint8 array under ``$HSBS_CACHE`` (default ``~/.cache/hsbs``), keyed by a
hash of everything that decides its content, each file's size and modification time included. Later
calls memory-map that file and decode nothing. Datasets that already hold their pixels in memory
(``dataset.images``, e.g. SynthFER) skip the disk.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hsbs_lib.constants import progress_disabled
from hsbs_lib.data.base import BadDatasetError, BadEntry, DatasetReport
from hsbs_lib.data.images import ImageDecodeError

log = logging.getLogger(__name__)

# Bump when the stored layout or the resizing changes, so old caches are never reused.
CACHE_FORMAT_VERSION = 1

# Headroom kept free beyond the array itself (labels, meta.json, filesystem slack).
SPACE_MARGIN_BYTES = 16 * 2**20


class CacheSpaceError(ValueError):
    """The cache folder's disk cannot hold the cache; the message names the folder and the way out.

    A ValueError, so the commands print it as one line rather than a traceback."""


@dataclass
class CachedSplit:
    """One split as arrays: ``images`` uint8 (N, 3, S, S) (memory-mapped when cached on disk),
    ``labels`` int64 (N,), ``poses`` int64 (N,) with -1 for unknown or None, ``soft_labels`` float32
    (N, K) or None, plus the label names and the source path of each row. ``region_bits`` uint8 (N, S, S)
    (:mod:`hsbs_lib.data.regions`) is set by the loader when a model trains on the expression regions."""

    images: np.ndarray
    labels: np.ndarray
    poses: np.ndarray | None
    soft_labels: np.ndarray | None
    classes: tuple[str, ...]
    paths: list[str]
    skipped: int = 0
    bad: list[BadEntry] = field(default_factory=list)
    location: Path | None = None    # the cache folder, None when built in memory
    region_bits: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def tensors(self) -> dict[str, torch.Tensor]:
        """Torch views of the arrays (no copy): images uint8 (N, 3, S, S), labels int64 (N,), and
        poses (N,) / soft_labels (N, K) when present."""
        out = {"images": torch.from_numpy(self.images), "labels": torch.from_numpy(self.labels)}
        if self.poses is not None:
            out["poses"] = torch.from_numpy(self.poses)
        if self.soft_labels is not None:
            out["soft_labels"] = torch.from_numpy(self.soft_labels)
        return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("HSBS_CACHE") or Path.home() / ".cache" / "hsbs").expanduser()


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (size, size, 3): scale the shorter side to ``size`` (PIL bilinear, which
    antialiases when shrinking), then crop the centre, so faces keep their aspect ratio."""
    height, width = image.shape[:2]
    if height == width == size:
        return image
    scale = size / min(height, width)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    resized = Image.fromarray(image).resize((new_width, new_height), Image.Resampling.BILINEAR)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)))


def _label_arrays(dataset) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    labels = np.asarray(dataset.targets, dtype=np.int64).reshape(-1)
    poses = getattr(dataset, "poses", None)
    poses = None if poses is None else np.asarray(poses, dtype=np.int64).reshape(-1)
    soft = getattr(dataset, "soft_labels", None)
    soft = None if soft is None else np.asarray(soft, dtype=np.float32)
    return labels, poses, soft


def file_signature(path: str) -> list[int] | None:
    """[size in bytes, modification time in ns] of a file, or None where ``path`` names no file (a csv row
    such as ``fer2013.csv:12``, a missing file)."""
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    return [stat.st_size, stat.st_mtime_ns]


def cache_key(dataset, size: int) -> str:
    """Hash of (dataset name, split, samples with each file's size and modification time, poses, soft
    labels, classes, size, format version): an image replaced after caching gives another key."""
    labels, poses, soft = _label_arrays(dataset)
    digest = hashlib.sha256()
    digest.update(json.dumps([getattr(dataset, "name", type(dataset).__name__), str(dataset.split),
                              [[str(path), int(label), file_signature(str(path))] for path, label in dataset.samples],
                              list(dataset.classes), int(size), CACHE_FORMAT_VERSION]).encode())
    for array in (poses, soft):
        digest.update(b"none" if array is None else np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def cache_split(dataset, size: int, *, cache_dir: str | os.PathLike | None = None,
                skip_bad: bool | None = None) -> CachedSplit:
    """Decode, resize and store a split once; later calls memory-map it and decode nothing.

    Args:
        dataset: a FERDataset (``samples``, ``load_image``, ``classes``; optional ``poses``,
            ``soft_labels``, ``images``).
        size: output side in pixels.
        cache_dir: where cache folders go (default ``$HSBS_CACHE``, else ``~/.cache/hsbs``).
        skip_bad: skip undecodable images (counted in ``skipped``) instead of raising
            BadDatasetError; ``None`` follows ``dataset.skip_bad``.
    """
    if skip_bad is None:
        skip_bad = bool(getattr(dataset, "skip_bad", False))
    in_memory = getattr(dataset, "images", None)
    if isinstance(in_memory, np.ndarray):
        return _from_memory(dataset, in_memory, size)

    name = getattr(dataset, "name", type(dataset).__name__)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = root / f"{name}-{dataset.split}-{size}px-{cache_key(dataset, size)[:20]}"
    if not (folder / "meta.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(root)
        _build(dataset, size, folder, skip_bad)
    cached = _load(folder)
    if cached.bad and not skip_bad:
        # written earlier by a run that skipped them: this caller asked not to skip
        report = DatasetReport(name, str(getattr(dataset, "root", None)), str(dataset.split), list(cached.bad))
        raise BadDatasetError(report)
    return cached


class _DecodeCheck(torch.utils.data.Dataset):
    """Item i: "" when sample i of ``dataset`` decodes, else the reason it does not (for DataLoader workers)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.samples)

    def __getitem__(self, index: int) -> str:
        try:
            self.dataset.load_image(index)
        except (ImageDecodeError, OSError) as error:
            return getattr(error, "reason", str(error)) or type(error).__name__
        return ""


def find_bad_images(dataset, *, cache_dir: str | os.PathLike | None = None, workers: int = 0) -> list[BadEntry]:
    """Decode every image of ``dataset`` once and return those that fail: the DataLoader path's counterpart
    of the cache build, run before training so a broken file never stops a run halfway.

    The answer is remembered in the cache folder under the same key as a cache (each file's size and
    modification time included), so a later run on an unchanged copy decodes nothing here.
    ``workers`` decoding processes share the pass (0: this process).
    """
    name = getattr(dataset, "name", type(dataset).__name__)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    record = root / f"{name}-{dataset.split}-decodes-{cache_key(dataset, 0)[:20]}.json"
    if record.is_file():
        return [BadEntry(path, reason) for path, reason in json.loads(record.read_text())["bad"]]
    n = len(dataset.samples)
    log.info("decoding each of %d %s/%s images once before training", n, name, dataset.split)
    loader = torch.utils.data.DataLoader(_DecodeCheck(dataset), batch_size=64, num_workers=workers,
                                         collate_fn=list)
    reasons = [reason for batch in _progress(loader, len(loader), f"decode {name}/{dataset.split}", "batch")
               for reason in batch]
    bad = [BadEntry(str(path), reason) for (path, _), reason in zip(dataset.samples, reasons) if reason]
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(root)
        temporary = _temporary_name(record)
        temporary.write_text(json.dumps({"bad": [[entry.path, entry.reason] for entry in bad]}))
        os.replace(temporary, record)
    except OSError as error:     # a read-only or full cache folder: the pass is simply not remembered
        log.debug("could not remember the decode pass in %s: %s", root, error)
    return bad


def _from_memory(dataset, images: np.ndarray, size: int) -> CachedSplit:
    """(N, H, W, 3) uint8 already in memory -> CachedSplit without touching the disk."""
    labels, poses, soft = _label_arrays(dataset)
    if images.shape[1:3] == (size, size):
        channels_first = np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2))
    else:
        channels_first = np.empty((len(images), 3, size, size), np.uint8)
        for i, image in enumerate(images):
            channels_first[i] = resize_square(np.asarray(image), size).transpose(2, 0, 1)
    return CachedSplit(channels_first, labels, poses, soft, tuple(dataset.classes),
                       [str(path) for path, _ in dataset.samples])


def _progress(iterable, total: int, description: str, unit: str = "img"):
    if progress_disabled():
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=description, unit=unit, leave=False)


# .NAME.tmp-HOST-PID-XXXXXXXX: the host and process that build it, so a later build can tell a folder
# left by a killed process from one another process is still writing.
_TEMPORARY = re.compile(r"^\..+\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True            # another user's live process
    return True


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete the temporary folders and files that builds on this host left when they were killed;
    returns them."""
    host, removed = socket.gethostname(), []
    for entry in root.iterdir() if root.is_dir() else ():
        match = _TEMPORARY.match(entry.name)
        if match and match["host"] == host and not _process_alive(int(match["pid"])):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
            log.info("removed %s, left by an interrupted cache build", entry)
    return removed


def _space_error(root: Path, problem: str) -> CacheSpaceError:
    return CacheSpaceError(f"{problem}; free some space in {root} or point data.cache_dir (or $HSBS_CACHE) at a "
                           f"disk with room")


def _reserve(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now: a full disk then fails here with ENOSPC instead of
    killing the process with SIGBUS when a page of the map is written."""
    with open(path, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise   # ENOSPC, EDQUOT; a filesystem without fallocate relies on the free-space check


def _open_rows(path: Path, n: int, size: int) -> np.memmap:
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    _reserve(path)
    return images


def _build(dataset, size: int, folder: Path, skip_bad: bool) -> None:
    """Decode into a temporary folder, then rename it into place (atomic: readers never see half).

    Free space is checked first; a disk that fills up anyway (ENOSPC, EDQUOT) raises CacheSpaceError and
    the temporary folder is removed."""
    name = getattr(dataset, "name", type(dataset).__name__)
    n = len(dataset.samples)
    what = f"{name}/{dataset.split} at {size}px"
    needed, free = n * 3 * size * size + SPACE_MARGIN_BYTES, shutil.disk_usage(folder.parent).free
    if free < needed:
        raise _space_error(folder.parent, f"not enough space to cache {what} in {folder.parent}: it needs "
                                          f"{needed / 1e6:.1f} MB, {free / 1e6:.1f} MB are free")
    temporary = _temporary_name(folder)
    temporary.mkdir(parents=True)
    try:
        _write(dataset, size, folder, temporary, skip_bad)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _space_error(folder.parent, f"the disk of the cache folder {folder.parent} filled up while caching "
                                          f"{what} ({error.strerror or error})") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _write(dataset, size: int, folder: Path, temporary: Path, skip_bad: bool) -> None:
    """Decode every image into ``temporary``, store the rows and labels kept, rename it to ``folder``."""
    name = getattr(dataset, "name", type(dataset).__name__)
    labels, poses, soft = _label_arrays(dataset)
    n = len(dataset.samples)
    log.info("caching %d %s/%s images at %dpx in %s", n, name, dataset.split, size, folder)
    images = _open_rows(temporary / "images.npy", n, size) if n else None
    good = np.ones(n, dtype=bool)
    bad: list[BadEntry] = []
    for i in _progress(range(n), n, f"cache {name}/{dataset.split}"):
        try:
            images[i] = resize_square(dataset.load_image(i), size).transpose(2, 0, 1)
        except (ImageDecodeError, OSError) as error:
            good[i] = False
            bad.append(BadEntry(str(dataset.samples[i][0]), getattr(error, "reason", str(error))))
    if bad and not skip_bad:
        raise BadDatasetError(DatasetReport(name, str(getattr(dataset, "root", None)), str(dataset.split), bad))
    _store_kept_rows(temporary, images, good, size)
    del images
    np.save(temporary / "labels.npy", labels[good])
    if poses is not None:
        np.save(temporary / "poses.npy", poses[good])
    if soft is not None:
        np.save(temporary / "soft_labels.npy", soft[good])
    meta = {"version": CACHE_FORMAT_VERSION, "dataset": name, "split": str(dataset.split), "size": size,
            "classes": list(dataset.classes),
            "paths": [str(path) for (path, _), keep in zip(dataset.samples, good) if keep],
            "bad": [[entry.path, entry.reason] for entry in bad]}
    (temporary / "meta.json").write_text(json.dumps(meta))
    try:
        os.replace(temporary, folder)
    except OSError:
        if not (folder / "meta.json").is_file():   # not a concurrent writer that won the race
            raise


def _store_kept_rows(folder: Path, images: np.ndarray | None, good: np.ndarray, size: int,
                     chunk: int = 4096) -> None:
    """Leave ``folder/images.npy`` holding only the rows marked good, copying in chunks so a
    large split never has to fit in memory."""
    n_good = int(good.sum())
    if n_good == 0:
        np.save(folder / "images.npy", np.empty((0, 3, size, size), np.uint8))
        return
    images.flush()
    if n_good == len(good):
        return
    kept = _open_rows(folder / "images_kept.npy", n_good, size)
    rows = np.flatnonzero(good)
    for start in range(0, n_good, chunk):
        kept[start:start + chunk] = images[rows[start:start + chunk]]
    kept.flush()
    del kept
    os.replace(folder / "images_kept.npy", folder / "images.npy")


class CacheCorruptError(ValueError):
    """A cache folder whose files are not what :func:`cache_split` writes (edited, truncated, or replaced)."""


def _load(folder: Path) -> CachedSplit:
    """The cached split in ``folder``; files that are not what :func:`_build` writes (an ``images.npy`` of
    Python objects, a truncated array, a broken meta.json) raise :class:`CacheCorruptError` naming the folder."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        n = len(meta["paths"])
        # copy-on-write map: writable for torch.from_numpy, yet nothing is ever written back to disk
        images = np.load(folder / "images.npy", mmap_mode="c" if n else None, allow_pickle=False)
        optional = {key: np.load(folder / f"{key}.npy", allow_pickle=False) if (folder / f"{key}.npy").is_file()
                    else None for key in ("poses", "soft_labels")}
        labels = np.load(folder / "labels.npy", allow_pickle=False)
        bad = [BadEntry(path, reason) for path, reason in meta["bad"]]
        classes = tuple(meta["classes"])
    except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CacheCorruptError(f"cache {folder} is unreadable ({problem}); delete that folder and the next run "
                                f"rebuilds it (data.cache_dir sets where caches go)") from None
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != n or len(labels) != n:
        raise CacheCorruptError(f"cache {folder} holds {images.dtype} images of shape {images.shape} for {n} listed "
                                f"images; delete that folder and the next run rebuilds it")
    return CachedSplit(images, labels, optional["poses"], optional["soft_labels"],
                       classes, meta["paths"], skipped=len(bad), bad=bad, location=folder)
