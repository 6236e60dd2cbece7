"""Inference on photos: face detection on a real photo, the crop path, predict, overlays, export."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from hsbs_lib.cli import main
from hsbs_lib.inference import (LogitsOnly, Predictor, crop_face, detect_faces, draw_overlay, export_model,
                                predict)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny baseline trained for one short epoch on SynthFER, saved the way `hsbs train` saves it."""
    from hsbs_lib.config import load_config
    from hsbs_lib.engine.train import fit

    out = tmp_path_factory.mktemp("run")
    config = load_config(None, ["model.name=baseline", "data.n_train=64", "data.n_val=32", "data.n_test=32", "train.epochs=1",
                                "train.batch_size=32", "train.progress=false", f"out={out}"])
    fit(config)
    return out / "best.pt"


def test_haar_cascade_finds_the_astronaut_face():
    skimage_data = pytest.importorskip("skimage.data")
    image = skimage_data.astronaut()
    boxes = detect_faces(image)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    # Eileen Collins' face sits in the upper middle of the 512x512 photo.
    assert 150 < x + w / 2 < 300 and 50 < y + h / 2 < 200 and 60 < w < 200


def test_crop_face_is_square_with_margin_and_pads_at_borders():
    image = np.arange(100 * 80 * 3, dtype=np.uint8).reshape(100, 80, 3)
    crop = crop_face(image, (60, 70, 20, 30), margin=0.5)
    assert crop.shape == (60, 60, 3)
    inside = crop_face(image, (20, 20, 40, 40), margin=0.0)
    assert np.array_equal(inside, image[20:60, 20:60])


def test_predict_on_a_synthfer_face_pasted_into_a_larger_image(checkpoint, tmp_path):
    from hsbs_lib.data.synthfer import SynthFER

    face = SynthFER(split="test", n=1, size=96, seed=3).images[0]
    canvas = np.full((300, 400, 3), 40, np.uint8)
    canvas[100:196, 150:246] = face
    Image.fromarray(canvas).save(tmp_path / "scene.png")
    Image.fromarray(face).save(tmp_path / "aligned.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")

    predictor = Predictor(checkpoint)
    # The known box path (the cascade is made for real faces, not necessarily drawn ones).
    direct = predictor.classify([crop_face(canvas, (150, 100, 96, 96), margin=0.0)])[0]
    aligned = predict(predictor, [tmp_path / "aligned.png"], detect=False)
    assert len(aligned) == 1 and aligned[0].box == (0, 0, 96, 96)
    assert torch.allclose(direct[0], torch.tensor([aligned[0].probabilities[c] for c in predictor.classes]),
                          atol=1e-4)
    assert abs(sum(aligned[0].probabilities.values()) - 1) < 1e-4
    assert aligned[0].label in predictor.classes

    skipped = []
    results = predict(predictor, [tmp_path], detect=False, skipped=skipped, with_attention=True)
    assert {r.path.split("/")[-1] for r in results} == {"scene.png", "aligned.png"}
    assert [s.path.split("/")[-1] for s in skipped] == ["broken.jpg"]
    overlay = draw_overlay(canvas, [r for r in results if r.path.endswith("scene.png")])
    assert overlay.shape == canvas.shape and not np.array_equal(overlay, canvas)


def test_detector_path_end_to_end_on_a_real_photo(checkpoint, tmp_path, capsys):
    skimage_data = pytest.importorskip("skimage.data")
    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.png")
    code = main(["predict", "--checkpoint", str(checkpoint), str(tmp_path), "--format", "jsonl",
                 "--save-overlay", str(tmp_path / "overlays"), "--attention"])
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(records) == 1 and len(records[0]["box"]) == 4
    assert set(records[0]["probabilities"]) == set(Predictor(checkpoint).classes)
    assert (tmp_path / "overlays" / "astronaut_pred.png").stat().st_size > 0


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_model_gives_the_same_logits(checkpoint, tmp_path, fmt):
    predictor = Predictor(checkpoint)
    x = torch.randn(3, 3, predictor.input_size, predictor.input_size)
    with torch.no_grad():
        expected = LogitsOnly(predictor.model).eval()(x)
    path = export_model(checkpoint, tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt"), format=fmt)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["classes"] == predictor.classes
    if fmt == "torchscript":
        got = torch.jit.load(str(path))(x)
    else:
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    assert torch.allclose(got, expected, atol=1e-4)
