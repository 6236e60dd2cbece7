"""Eye and mouth regions of real faces, found offline by OpenCV's bundled Haar cascades.

SynthFER renders a mask of its expression regions for every face; real faces (FER2013's 48 px grey crops)
come without. :func:`find_face_regions` finds them: each image is taken to be the face (FER2013's crops
are), upscaled so that its longer side is ``detect_size`` pixels (an eye of a 48 px face is about 10 px,
under the eye cascade's smallest window of 20 px), histogram-equalised, and searched with

* ``haarcascade_eye.xml`` in the upper 60 % of the face: at most two eyes are kept (:func:`pick_eyes`);
* ``haarcascade_smile.xml`` in the lower half, the bundled cascade nearest to a mouth detector: at most one
  mouth is kept (:func:`pick_mouth`).

Each kept box becomes the image pixels whose centres lie inside it once the upscale is undone
(:func:`boxes_to_mask`), so the masks are bool (N, R, H, W) at the image's own resolution, regions in the
order of :data:`REGION_NAMES`. A face counts as **found** when at least one eye and the mouth are; only
found faces have a meaningful mask.

The cascades know eyes and smiling mouths: brows, the nose's wrinkles and the forehead, where several
expressions show too, are not in the masks; and at 48 px a share of the faces is missed (the detection
rate says how many). Nothing here downloads anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

#: The regions of the masks, in their order along axis 1.
REGION_NAMES: tuple[str, ...] = ("eyes", "mouth")
#: The OpenCV cascade file that finds each region.
CASCADE_FILES: dict[str, str] = {"eyes": "haarcascade_eye.xml", "mouth": "haarcascade_smile.xml"}

#: A box (x, y, w, h) in the pixels of the upscaled face the cascades searched.
Box = tuple[int, int, int, int]


def cascade_folder() -> Path:
    """Where OpenCV keeps its bundled cascades (``cv2.data.haarcascades``)."""
    import cv2

    return Path(cv2.data.haarcascades)


def cascade_path(name: str, folder: str | Path | None = None) -> Path:
    """The cascade file ``name`` in ``folder`` (default: OpenCV's own); one-line FileNotFoundError when absent."""
    path = Path(folder if folder is not None else cascade_folder()) / name
    if not path.is_file():
        raise FileNotFoundError(f"OpenCV's Haar cascade {name} is missing: it should be at {path} (cv2.data."
                                f"haarcascades, bundled with opencv-python-headless<5, not with version 5; nothing "
                                f"is downloaded)")
    return path


def load_cascade(name: str, folder: str | Path | None = None):
    """A ``cv2.CascadeClassifier`` read from :func:`cascade_path`; a file that does not read is refused."""
    import cv2

    path = cascade_path(name, folder)
    cascade = cv2.CascadeClassifier()
    try:
        loaded = cascade.load(str(path))
    except cv2.error:
        loaded = False
    if not loaded or cascade.empty():
        raise ValueError(f"OpenCV could not read the Haar cascade {path}: the file is damaged; reinstall "
                         f"opencv-python-headless<5")
    return cascade


# -------------------------------------------------------------------------------- pure geometry

def _centre(box: Sequence[float]) -> tuple[float, float]:
    x, y, w, h = box
    return x + w / 2, y + h / 2


def _inside(point: tuple[float, float], box: Sequence[float]) -> bool:
    x, y, w, h = box
    return x <= point[0] < x + w and y <= point[1] < y + h


def heaviest_apart(boxes: Sequence[Box], weights: Sequence[float]) -> list[tuple[Box, float]]:
    """(box, weight) pairs heaviest first, each dropped when its centre lies in a heavier box already kept: one
    detection per eye or mouth where the cascade fired on overlapping windows."""
    kept: list[tuple[Box, float]] = []
    for box, weight in sorted(zip(boxes, weights), key=lambda pair: -pair[1]):
        if not any(_inside(_centre(box), other) for other, _ in kept):
            kept.append((tuple(int(v) for v in box), float(weight)))
    return kept


def pick_eyes(boxes: Sequence[Box], weights: Sequence[float], side: int) -> list[Box]:
    """At most two plausible eyes among the cascade's boxes, in the pixels of a face ``side`` px wide.

    Plausible: centre in rows 0.2-0.55 and columns 0.1-0.9 of the side, width 0.1-0.4 of it. Of these the
    heaviest pair that looks like two eyes (centres 0.2-0.65 of the side apart horizontally, at most 0.12
    vertically, widths within a factor 1.5) is kept, left eye of the image first; without such a pair, the
    single heaviest eye.
    """
    plausible = [(box, weight) for box, weight in heaviest_apart(boxes, weights)
                 if 0.2 * side <= _centre(box)[1] <= 0.55 * side and 0.1 * side <= _centre(box)[0] <= 0.9 * side
                 and 0.1 * side <= box[2] <= 0.4 * side]
    best: tuple[float, list[Box]] | None = None
    for i, (first, weight_1) in enumerate(plausible):
        for second, weight_2 in plausible[i + 1:]:
            (x1, y1), (x2, y2) = _centre(first), _centre(second)
            pair = (0.2 * side <= abs(x1 - x2) <= 0.65 * side and abs(y1 - y2) <= 0.12 * side
                    and max(first[2], second[2]) <= 1.5 * min(first[2], second[2]))
            if pair and (best is None or weight_1 + weight_2 > best[0]):
                best = (weight_1 + weight_2, sorted([first, second]))
    if best is not None:
        return best[1]
    return [plausible[0][0]] if plausible else []


def pick_mouth(boxes: Sequence[Box], weights: Sequence[float], side: int, eyes: Sequence[Box] = ()) -> Box | None:
    """The heaviest plausible mouth among the smile cascade's boxes, or None.

    Plausible: centre in rows 0.6-0.95 and columns 0.3-0.7 of the side, width 0.2-0.7 of it; with eyes
    found, at least 0.2 of the side below their mean height, and with two eyes, its centre between them
    (0.1 of the side of slack on either hand).
    """
    for box, _ in heaviest_apart(boxes, weights):
        x, y = _centre(box)
        if not (0.6 * side <= y <= 0.95 * side and 0.3 * side <= x <= 0.7 * side and
                0.2 * side <= box[2] <= 0.7 * side):
            continue
        centres = [_centre(eye) for eye in eyes]
        if centres and y - np.mean([cy for _, cy in centres]) < 0.2 * side:
            continue
        if len(centres) == 2 and not (min(cx for cx, _ in centres) - 0.1 * side <= x
                                      <= max(cx for cx, _ in centres) + 0.1 * side):
            continue
        return box
    return None


def boxes_to_mask(boxes: Sequence[Sequence[float]], shape: tuple[int, int], *, scale: float = 1.0) -> np.ndarray:
    """The pixels of an image of ``shape`` = (H, W) covered by boxes found on it upscaled by ``scale``: bool (H, W).

    A box (x, y, w, h) in the upscaled pixels covers [x, x + w) x [y, y + h) there, and image pixel (r, c),
    the square [c, c + 1) x [r, r + 1), is upscaled to [c * scale, (c + 1) * scale) and so on: the pixel is
    in the mask when its centre ((c + 0.5) * scale, (r + 0.5) * scale) lies in the box.
    """
    height, width = shape
    mask = np.zeros((height, width), dtype=bool)
    rows = (np.arange(height) + 0.5) * scale
    columns = (np.arange(width) + 0.5) * scale
    for x, y, w, h in boxes:
        mask |= ((rows >= y) & (rows < y + h))[:, None] & ((columns >= x) & (columns < x + w))[None, :]
    return mask


# ------------------------------------------------------------------------------------- detection

@dataclass
class FaceRegions:
    """What :func:`find_face_regions` found on N faces.

    ``masks``: bool (N, R, H, W), regions in the order of ``names``; ``found``: bool (N,), at least one eye and
    the mouth; ``boxes``: per face, {region: boxes (x, y, w, h)} in the upscaled face's pixels; ``scale``: the
    upscale (upscaled pixels per image pixel).
    """

    masks: np.ndarray
    found: np.ndarray
    boxes: list[dict[str, list[Box]]] = field(repr=False)
    scale: float
    names: tuple[str, ...] = REGION_NAMES

    @property
    def rate(self) -> float:
        """The share of faces found (0 for no faces)."""
        return float(self.found.mean()) if len(self.found) else 0.0

    def kept(self) -> np.ndarray:
        """The masks of the found faces: bool (n_found, R, H, W)."""
        return self.masks[self.found]


class RegionFinder:
    """The eye and smile cascades, loaded once, applied to one face at a time (:meth:`boxes`).

    ``detect_size``: the longer side, in pixels, the face is upscaled to before the search; ``cascades``: the
    folder holding the cascade files (default OpenCV's); ``scale_factor``, ``min_neighbors``: the cascades'
    own settings (the smile cascade, which fires on many mouth-like textures, asks for more neighbours).
    """

    def __init__(self, *, detect_size: int = 192, cascades: str | Path | None = None, scale_factor: float = 1.1,
                 eye_neighbors: int = 3, mouth_neighbors: int = 5):
        if detect_size < 48:
            raise ValueError(f"detect_size must be at least 48 pixels (the eye cascade's window is 20 px wide, the "
                             f"smile cascade's 36 px), got {detect_size}")
        self.detect_size = int(detect_size)
        self.eyes = load_cascade(CASCADE_FILES["eyes"], cascades)
        self.mouth = load_cascade(CASCADE_FILES["mouth"], cascades)
        self.scale_factor, self.eye_neighbors, self.mouth_neighbors = scale_factor, eye_neighbors, mouth_neighbors

    def upscaled(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """A uint8 (H, W) or (H, W, 3) face -> its equalised grey copy with the longer side ``detect_size``, and
        the scale."""
        import cv2

        grey = np.asarray(image)
        if grey.ndim == 3:
            grey = cv2.cvtColor(np.ascontiguousarray(grey), cv2.COLOR_RGB2GRAY)
        if grey.ndim != 2 or grey.dtype != np.uint8:
            raise ValueError(f"a face must be uint8 (H, W) or (H, W, 3), got {grey.dtype} {np.asarray(image).shape}")
        scale = self.detect_size / max(grey.shape)
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        return cv2.equalizeHist(cv2.resize(grey, size, interpolation=cv2.INTER_CUBIC)), scale

    def _search(self, cascade, grey: np.ndarray, top: int, neighbors: int, min_size: tuple[int, int],
                max_size: tuple[int, int]) -> tuple[list[Box], list[float]]:
        boxes, _, weights = cascade.detectMultiScale3(grey, scaleFactor=self.scale_factor, minNeighbors=neighbors,
                                                      minSize=min_size, maxSize=max_size, outputRejectLevels=True)
        if len(boxes) == 0:
            return [], []
        return ([(int(x), int(y) + top, int(w), int(h)) for x, y, w, h in boxes],
                [float(weight) for weight in np.ravel(weights)])

    def boxes(self, image: np.ndarray) -> tuple[dict[str, list[Box]], float]:
        """The kept boxes of one face, {"eyes": up to two, "mouth": up to one}, in the upscaled pixels, and the scale."""
        grey, scale = self.upscaled(image)
        side = max(grey.shape)
        upper = int(0.6 * grey.shape[0])
        lower = int(0.5 * grey.shape[0])
        small, large = int(0.1 * side), int(0.4 * side)
        eyes = pick_eyes(*self._search(self.eyes, grey[:upper], 0, self.eye_neighbors, (small, small),
                                       (large, large)), side)
        mouth = pick_mouth(*self._search(self.mouth, grey[lower:], lower, self.mouth_neighbors,
                                         (int(0.2 * side), small), (int(0.7 * side), int(0.35 * side))), side, eyes)
        return {"eyes": eyes, "mouth": [mouth] if mouth is not None else []}, scale

    def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> FaceRegions:
        """Masks and the found flags of faces uint8 (N, H, W) or (N, H, W, 3), all of one size."""
        images = np.asarray(images)
        if images.ndim not in (3, 4) or images.dtype != np.uint8:
            raise ValueError(f"faces must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} {images.shape}")
        shape = images.shape[1:3]
        masks = np.zeros((len(images), len(REGION_NAMES), *shape), dtype=bool)
        found = np.zeros(len(images), dtype=bool)
        all_boxes, scale = [], self.detect_size / max(shape)
        for index, image in enumerate(images):
            boxes, scale = self.boxes(image)
            for region, name in enumerate(REGION_NAMES):
                masks[index, region] = boxes_to_mask(boxes[name], shape, scale=scale)
            found[index] = bool(boxes["eyes"]) and bool(boxes["mouth"])
            all_boxes.append(boxes)
        return FaceRegions(masks=masks, found=found, boxes=all_boxes, scale=scale)


def find_face_regions(images: np.ndarray | Sequence[np.ndarray], *, detect_size: int = 192,
                      cascades: str | Path | None = None) -> FaceRegions:
    """Eye and mouth masks of faces uint8 (N, H, W) or (N, H, W, 3): see the module's docstring and
    :class:`FaceRegions`. ``cascades``: the folder of the cascade files (default OpenCV's own)."""
    return RegionFinder(detect_size=detect_size, cascades=cascades)(images)
