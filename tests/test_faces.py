"""Face detection behind one interface (hsbs_lib.data.faces): a detector the caller supplies, the spec
``--detector`` takes, YuNet's missing file, and alignment by the eyes."""
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from hsbs_lib.cli import main
from hsbs_lib.data import faces as faces_module
from hsbs_lib.data.faces import (Face, HaarDetector, YuNetDetector, align_face, eye_angle, face_detector,
                                 register_face_detector)
from hsbs_lib.inference import Predictor, face_crop, predict

CLASSES = ("neutral", "happy")


class RecordingPredictor(Predictor):
    """predict()'s classifier, replaced by one that keeps the crops it is given (no checkpoint needed)."""

    def __init__(self):
        self.classes, self.crops = list(CLASSES), []

    def classify(self, faces, *, with_attention=False):
        self.crops.extend(faces)
        return torch.tensor([[0.25, 0.75]] * len(faces)), None


class TwoBoxes:
    """A detector chosen by the test: one plain box and one Face."""

    def __call__(self, image):
        return [(10, 20, 30, 30), Face((50, 5, 20, 20), score=0.9)]


def _gradient_image(height=60, width=90):
    y, x = np.mgrid[:height, :width]
    return np.stack([x * 2, y * 4, (x + y) % 256], axis=-1).astype(np.uint8)


def test_a_supplied_detector_chooses_the_boxes_and_the_crops_follow_them(tmp_path):
    image = _gradient_image()
    Image.fromarray(image).save(tmp_path / "photo.png")
    predictor = RecordingPredictor()
    found = predict(predictor, tmp_path / "photo.png", detector=TwoBoxes(), margin=0.0)
    assert [face.box for face in found] == [(10, 20, 30, 30), (50, 5, 20, 20)]
    assert [face.label for face in found] == ["happy", "happy"]
    assert np.array_equal(predictor.crops[0], image[20:50, 10:40])
    assert np.array_equal(predictor.crops[1], image[5:25, 50:70])


def test_a_detector_that_finds_nothing_skips_the_file(tmp_path):
    Image.fromarray(_gradient_image()).save(tmp_path / "empty.png")
    skipped = []
    assert predict(RecordingPredictor(), tmp_path / "empty.png", detector=lambda image: [], skipped=skipped) == []
    assert [item.reason for item in skipped] == ["no face detected (try --no-detect for aligned crops)"]


def test_detector_specs_names_modules_and_registrations():
    assert isinstance(face_detector(None), HaarDetector) and isinstance(face_detector("haar"), HaarDetector)
    assert isinstance(face_detector("test_faces:TwoBoxes"), TwoBoxes)          # a class: its instance
    stub = TwoBoxes()
    assert face_detector(stub) is stub
    register_face_detector("fixed", lambda argument: (lambda image: [(0, 0, int(argument), int(argument))]))
    try:
        assert face_detector("fixed:7")(np.zeros((9, 9, 3), np.uint8)) == [(0, 0, 7, 7)]
    finally:
        del faces_module.FACE_DETECTORS["fixed"]
    for spec, message in (("hog", "unknown face detector 'hog'; choose haar, yunet (yunet:PATH), or module:callable"),
                          ("no_such_module_xyz:detect", "cannot import module 'no_such_module_xyz'"),
                          ("test_faces:missing", "module 'test_faces' has no 'missing'"),
                          ("test_faces:CLASSES", "is not callable"),
                          ("haar:fast", "face detector 'haar' takes no argument"),
                          ("yunet", "face detector 'yunet' needs the ONNX file: yunet:PATH")):
        with pytest.raises(ValueError, match=re.escape(message)):
            face_detector(spec)


def test_yunet_with_a_missing_file_is_one_line_naming_the_path(tmp_path):
    missing = tmp_path / "face_detection_yunet.onnx"
    with pytest.raises(FileNotFoundError) as error:
        YuNetDetector(missing)
    assert str(missing) in str(error.value) and "\n" not in str(error.value) and "never downloads" in str(error.value)
    with pytest.raises(FileNotFoundError, match="face_detection_yunet.onnx"):
        face_detector(f"yunet:{missing}")


def test_hsbs_predict_reports_the_missing_yunet_file_before_any_work(tmp_path, capsys):
    Image.fromarray(_gradient_image()).save(tmp_path / "photo.png")
    missing = tmp_path / "yunet.onnx"
    assert main(["predict", str(tmp_path / "photo.png"), "--detector", f"yunet:{missing}"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("hsbs predict: error: YuNet model ") and str(missing) in error
    assert main(["predict", str(tmp_path / "photo.png"), "--no-detect", "--align"]) == 1
    assert "--no-detect takes each image as a face" in capsys.readouterr().err


def test_yunet_rows_become_faces_with_eyes(tmp_path, monkeypatch):
    import cv2

    model = tmp_path / "yunet.onnx"
    model.write_bytes(b"stand-in: cv2.FaceDetectorYN is replaced below")
    calls = {}

    class FakeYuNet:
        def setInputSize(self, size):
            calls["size"] = size

        def detect(self, image):
            calls["first_pixel"] = tuple(image[0, 0])
            row = [10, 12, 40, 44, 20.5, 25, 38.5, 26, 30, 35, 22, 45, 36, 45, 0.97]
            small = [60, 60, 10, 10, 62, 63, 67, 63, 64, 65, 62, 67, 66, 67, 0.91]
            return 1, np.array([small, row], dtype=np.float32)

    monkeypatch.setattr(cv2.FaceDetectorYN, "create", lambda *args: FakeYuNet())
    image = np.zeros((80, 100, 3), np.uint8)
    image[0, 0] = (255, 0, 0)                           # red in RGB
    found = YuNetDetector(model)(image)
    assert calls == {"size": (100, 80), "first_pixel": (0, 0, 255)}       # YuNet is given BGR
    assert [face.box for face in found] == [(10, 12, 40, 44), (60, 60, 10, 10)]    # largest first
    assert found[0].eyes == ((20.5, 25.0), (38.5, 26.0)) and found[0].score == pytest.approx(0.97)


# ---------------------------------------------------------------------------------------------- alignment

def _tilted_face(angle_degrees: float, size: int = 120):
    """A grey image with two dark eye discs 40 px apart around (60, 50), the line between them turned by
    ``angle_degrees`` (y down), and the Face a landmark detector would report for it."""
    image = np.full((size, size, 3), 200, np.uint8)
    centre, half = np.array([60.0, 50.0]), 20.0
    turn = math.radians(angle_degrees)
    offset = half * np.array([math.cos(turn), math.sin(turn)])
    eyes = (tuple(centre - offset), tuple(centre + offset))
    y, x = np.mgrid[:size, :size]
    for ex, ey in eyes:
        image[(x - ex) ** 2 + (y - ey) ** 2 <= 16] = 0
    return image, Face((30, 30, 60, 60), eyes=eyes)


def _dark_centroids(image):
    """Centroids (x, y) of the dark pixels left and right of the dark pixels' mean x."""
    ys, xs = np.nonzero(image[..., 0] < 100)
    middle = xs.mean()
    return [(xs[side].mean(), ys[side].mean()) for side in (xs < middle, xs >= middle)]


@pytest.mark.parametrize("angle", [25.0, -15.0])
def test_alignment_levels_the_eyes(angle):
    image, face = _tilted_face(angle)
    assert eye_angle(face.eyes) == pytest.approx(angle)
    (lx, ly), (rx, ry) = _dark_centroids(image)
    assert abs(ry - ly) > 8                                       # tilted before
    rotated, box = align_face(image, face)
    (lx, ly), (rx, ry) = _dark_centroids(rotated)
    assert abs(ry - ly) < 1.0 and math.hypot(rx - lx, ry - ly) == pytest.approx(40, abs=1.0)
    assert box[2:] == (60, 60)
    # the eyes' midpoint stays where it was, and so does the box (it is centred on the midpoint's column)
    assert ((lx + rx) / 2, (ly + ry) / 2) == pytest.approx((60, 50), abs=1.0)
    crop = face_crop(image, face, margin=0.0, align=True)
    (lx, ly), (rx, ry) = _dark_centroids(crop)
    assert crop.shape == (60, 60, 3) and abs(ry - ly) < 1.0
    unaligned = face_crop(image, face, margin=0.0)
    assert np.array_equal(unaligned, image[30:90, 30:90])


def test_a_face_without_eyes_is_not_rotated():
    image, face = _tilted_face(25.0)
    rotated, box = align_face(image, Face(face.box))
    assert rotated is image and box == face.box
