"""Face detection behind one small interface, and alignment by the eyes.

A face detector is any callable ``detector(image) -> list of faces``: ``image`` is a uint8 (H, W, 3) RGB
array, each face a box ``(x, y, w, h)`` in pixels or a :class:`Face` (a box plus, when the detector finds
them, the two eye centres). :class:`HaarDetector` (OpenCV's bundled cascade: boxes only) is the default;
:class:`YuNetDetector` runs OpenCV's ``cv2.FaceDetectorYN`` from an ONNX file you supply (boxes and eyes).
:func:`face_detector` builds one from a spec: a registered name (``haar``), a name with its argument
(``yunet:PATH``) or your own ``module:callable``; :func:`register_face_detector` adds a name.

With the eyes known, :func:`align_face` rotates the image about the eyes' midpoint so that they are level
before the square crop (:func:`crop_face`). Nothing here downloads anything.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from hsbs_lib.data.face_regions import cascade_path

Box = tuple[int, int, int, int]
Point = tuple[float, float]


@dataclass(frozen=True)
class Face:
    """One detected face: its box (x, y, w, h) in pixels, the two eye centres (x, y) when the detector gives
    them (in either order), and its confidence when it has one."""

    box: Box
    eyes: tuple[Point, Point] | None = None
    score: float | None = None


@runtime_checkable
class FaceDetector(Protocol):
    """Anything called with a uint8 (H, W, 3) RGB image that returns its faces, as :class:`Face` objects or
    plain boxes (x, y, w, h)."""

    def __call__(self, image: np.ndarray) -> Sequence[Union[Face, Sequence[int]]]: ...


def as_face(found: Face | Sequence[int]) -> Face:
    """A detector's result as a :class:`Face` (a plain box has no eyes); refuses anything else in one line."""
    if isinstance(found, Face):
        return found
    try:
        x, y, w, h = (int(value) for value in found)
    except (TypeError, ValueError):
        raise ValueError(f"a face detector returned {found!r}; expected a box (x, y, w, h) or a Face") from None
    return Face((x, y, w, h))


def largest_first(faces: Sequence[Face]) -> list[Face]:
    return sorted(faces, key=lambda face: face.box[2] * face.box[3], reverse=True)


# ---------------------------------------------------------------------------------------------- detectors

def haar_cascade_path() -> str:
    """Path of OpenCV's bundled frontal-face cascade (ships inside opencv-python-headless<5)."""
    return str(cascade_path("haarcascade_frontalface_default.xml"))


class HaarDetector:
    """OpenCV's bundled frontal-face Haar cascade on the equalised grey image: boxes, no landmarks."""

    def __init__(self, *, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 24):
        import cv2

        self.cascade = cv2.CascadeClassifier(haar_cascade_path())
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size

    def __call__(self, image: np.ndarray) -> list[Face]:
        import cv2

        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        boxes = self.cascade.detectMultiScale(grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                              minSize=(self.min_size, self.min_size))
        return largest_first([Face(tuple(int(v) for v in box)) for box in (boxes if len(boxes) else [])])


class YuNetDetector:
    """OpenCV's YuNet (``cv2.FaceDetectorYN``) from an ONNX file you supply, e.g.
    ``face_detection_yunet_2023mar.onnx`` of the OpenCV Zoo: boxes, eye centres and scores.

    Each row YuNet returns is x, y, w, h, then five landmarks (right eye, left eye, nose tip, right and left
    mouth corners; x, y each) and the score.
    """

    def __init__(self, path: str | Path, *, score_threshold: float = 0.9, nms_threshold: float = 0.3,
                 top_k: int = 5000):
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"YuNet model {path} not found: --detector yunet:PATH takes the ONNX file you "
                                    f"downloaded (face_detection_yunet_2023mar.onnx from the OpenCV Zoo); hsbs never "
                                    f"downloads it")
        import cv2

        self.path = path
        self.detector = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, top_k)

    def __call__(self, image: np.ndarray) -> list[Face]:
        height, width = image.shape[:2]
        self.detector.setInputSize((width, height))
        _, rows = self.detector.detect(np.ascontiguousarray(image[..., ::-1]))     # YuNet reads BGR
        return largest_first([yunet_face(row) for row in (rows if rows is not None else [])])


def yunet_face(row: Sequence[float]) -> Face:
    """One row of ``cv2.FaceDetectorYN.detect`` (15 numbers) as a :class:`Face`."""
    x, y, w, h = (int(round(float(value))) for value in row[:4])
    eyes = ((float(row[4]), float(row[5])), (float(row[6]), float(row[7])))
    return Face((x, y, w, h), eyes=eyes, score=float(row[14]))


#: name -> factory(argument or None) -> detector; ``face_detector("NAME:ARG")`` calls factory("ARG").
FACE_DETECTORS: dict[str, Callable[[str | None], FaceDetector]] = {}


def register_face_detector(name: str, factory: Callable[[str | None], FaceDetector]) -> None:
    """Make ``face_detector(name)`` (and ``--detector name[:ARG]``) build ``factory(ARG or None)``."""
    FACE_DETECTORS[name] = factory


def _no_argument(name: str, build: Callable[[], FaceDetector]) -> Callable[[str | None], FaceDetector]:
    def factory(argument: str | None) -> FaceDetector:
        if argument:
            raise ValueError(f"face detector '{name}' takes no argument, got '{name}:{argument}'")
        return build()
    return factory


def _needs_path(argument: str | None) -> FaceDetector:
    if not argument:
        raise ValueError("face detector 'yunet' needs the ONNX file: yunet:PATH")
    return YuNetDetector(argument)


register_face_detector("haar", _no_argument("haar", HaarDetector))
register_face_detector("yunet", _needs_path)


def face_detector(spec: str | FaceDetector | None = None) -> FaceDetector:
    """The detector a spec names: None or ``haar`` (the default), ``yunet:PATH``, any registered
    ``NAME[:ARG]``, or ``package.module:callable`` (imported; a class is instantiated without arguments, so
    its instances are the detector). A detector object is returned as it is."""
    if spec is None:
        spec = "haar"
    if not isinstance(spec, str):
        if not callable(spec):
            raise TypeError(f"a face detector is a callable image -> boxes, got {type(spec).__name__}")
        return spec
    name, _, argument = spec.partition(":")
    if name in FACE_DETECTORS:
        return FACE_DETECTORS[name](argument or None)
    if not argument:
        raise ValueError(f"unknown face detector '{spec}'; choose {', '.join(FACE_DETECTORS)} (yunet:PATH), or "
                         f"module:callable for your own")
    try:
        found: Any = importlib.import_module(name)
    except ImportError as error:
        raise ValueError(f"face detector '{spec}': cannot import module '{name}' ({error})") from None
    for part in argument.split("."):
        if not hasattr(found, part):
            raise ValueError(f"face detector '{spec}': module '{name}' has no '{argument}'")
        found = getattr(found, part)
    detector = found() if isinstance(found, type) else found
    if not callable(detector):
        raise ValueError(f"face detector '{spec}' is not callable (a function image -> boxes, or a class whose "
                         f"instances are)")
    return detector


# ---------------------------------------------------------------------------------------------- alignment

def eye_angle(eyes: tuple[Point, Point]) -> float:
    """The angle in degrees of the line from the left-hand eye (smaller x) to the other one, measured in image
    coordinates (y down): positive when the right-hand eye sits lower."""
    (x1, y1), (x2, y2) = sorted(eyes)
    return math.degrees(math.atan2(y2 - y1, x2 - x1))


def align_face(image: np.ndarray, face: Face) -> tuple[np.ndarray, Box]:
    """Rotate ``image`` about the midpoint of ``face``'s eyes so that they are level; returns the rotated
    image (same size, borders replicated) and the face's box moved with it (same size, its centre rotated).
    A face without eyes comes back unchanged."""
    if face.eyes is None:
        return image, face.box
    import cv2

    (x1, y1), (x2, y2) = face.eyes
    centre = ((x1 + x2) / 2, (y1 + y2) / 2)
    # getRotationMatrix2D turns counter-clockwise on screen for a positive angle: by the eye line's angle
    # brings the lower eye up to the other's height.
    matrix = cv2.getRotationMatrix2D(centre, eye_angle(face.eyes), 1.0)
    height, width = image.shape[:2]
    rotated = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    x, y, w, h = face.box
    cx, cy = matrix @ np.array([x + w / 2, y + h / 2, 1.0])
    return rotated, (int(round(cx - w / 2)), int(round(cy - h / 2)), w, h)
