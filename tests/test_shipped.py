"""Models shipped inside the package: writing one from a run, its card, loading it by name, and the FER2013
model the package ships (``hsbs predict photo.jpg`` with no checkpoint)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hsbs_lib.cli import main
from hsbs_lib.config import Config
from hsbs_lib.data.fer2013_files import load_fer2013_npz, write_fer2013_csv
from hsbs_lib.data.labels import canonical_name, class_names
from hsbs_lib.data.pipeline.cache import cache_split
from hsbs_lib.data.pipeline.transforms import model_inputs, tta_views
from hsbs_lib.engine import checkpoint as checkpoints
from hsbs_lib.engine import shipped
from hsbs_lib.engine.checkpoint import SHIPPED_FOLDER, load_checkpoint, load_model_from_checkpoint, resolve_checkpoint
from hsbs_lib.engine.train import fit
from hsbs_lib.tutorial import train_or_load

from test_engine import ColourFER, _config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    data = [cache_split(ColourFER(96, seed=0), 32), cache_split(ColourFER(40, seed=2, split="val"), 32),
            cache_split(ColourFER(56, seed=1, split="test"), 32)]
    fit(_config(run, "train.epochs=1", "model.backbone_width=16"), train_data=data[0], val_data=data[1],
        test_data=data[2])
    return run


def test_a_shipped_file_is_the_run_in_half_precision_with_its_report_and_card(finished_run, tmp_path):
    out = shipped.write_shipped_model(finished_run / "best.pt", "fer2013", folder=tmp_path)
    stored = load_checkpoint(out)
    assert all(value.dtype == torch.float16 for value in stored["model"].values() if value.is_floating_point())
    assert stored["optimizer"] is None and "raw_model" not in stored
    report = json.loads((finished_run / "eval.json").read_text())
    assert stored["metrics"]["report"] == {**report, "checkpoint": f"{stored['config']['out']}/best.pt"}
    assert stored["config"]["data"]["root"] is None      # the training machine's paths are not shipped
    # the same function as the run's best.pt, to half precision
    original, _ = load_model_from_checkpoint(finished_run / "best.pt")
    copy, _ = load_model_from_checkpoint(out)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(copy(images).logits, original(images).logits, rtol=0, atol=2e-2)
    card = (tmp_path / "fer2013.md").read_text()
    assert f"{100 * report['accuracy']:.1f} %" in card and f"{100 * report['mean_class_accuracy']:.1f} %" in card
    assert "research" in card and f"epoch {stored['epoch']}" in card


def test_a_shipped_file_over_five_megabytes_is_refused(finished_run, tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "MAX_SHIPPED_BYTES", 1000)
    with pytest.raises(ValueError, match=r"over the 0 MB the repository keeps: ship a narrower network"):
        shipped.write_shipped_model(finished_run / "best.pt", "fer2013", folder=tmp_path)
    assert not (tmp_path / "fer2013.pt").exists()


def test_a_run_without_its_report_cannot_be_shipped(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="eval.json not found: ship the best.pt of a finished run"):
        shipped.write_shipped_model(tmp_path / "best.pt", "fer2013", folder=tmp_path)


def test_a_shipped_name_resolves_to_its_file_and_an_unknown_one_is_one_line(finished_run, tmp_path, monkeypatch):
    shipped.write_shipped_model(finished_run / "best.pt", "fer2013", folder=tmp_path)
    monkeypatch.setattr(checkpoints, "SHIPPED_FOLDER", tmp_path)
    assert resolve_checkpoint("fer2013") == tmp_path / "fer2013.pt"
    monkeypatch.setattr(checkpoints, "SHIPPED_FOLDER", tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="the shipped model 'fer2013' should be at .* which this installation"):
        resolve_checkpoint("fer2013")
    with pytest.raises(FileNotFoundError, match="no shipped model named 'affectnet'"):
        checkpoints.shipped_checkpoint("affectnet")


# ---------------------------------------------------------------------------------------------- the FER2013 model

SHIPPED_FILE = SHIPPED_FOLDER / "fer2013.pt"


def test_the_fer2013_model_is_shipped_small_and_matches_its_card():
    assert SHIPPED_FILE.is_file(), "the package ships hsbs_lib/shipped/fer2013.pt"
    assert SHIPPED_FILE.stat().st_size <= shipped.MAX_SHIPPED_BYTES
    model, stored = load_model_from_checkpoint("fer2013")
    config = stored["config"]
    assert stored["classes"] == list(class_names(7)) and stored["input_size"] == 48
    assert config["data"]["name"] == "fer2013" and config["model"]["name"] == "baseline"
    card = SHIPPED_FILE.with_suffix(".md").read_text()
    assert card == shipped.model_card(stored, "fer2013"), "the card is written from the file (make shipped)"
    report = stored["metrics"]["report"]
    assert report["split"] == "val" and report["n"] == 3589 and report["selected_on"] == "fer2013 val split"
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 48, 48)).logits
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()


@pytest.mark.skipif(not (SHARED / "fer2013_publictest.npz").is_file(),
                    reason="FER2013's PublicTest faces not found at ../shared/data/fer2013_publictest.npz "
                           "(development machines only)")
def test_the_fer2013_model_scores_its_card_on_publictest():
    model, stored = load_model_from_checkpoint("fer2013")
    images, names = load_fer2013_npz(SHARED / "fer2013_publictest.npz")
    labels = np.array([stored["classes"].index(canonical_name(name)) for name in names])
    inputs = model_inputs(np.repeat(images[..., None], 3, axis=-1), stored["normalization"])
    with torch.no_grad():
        tta = stored["metrics"]["report"]["tta"]
        probabilities = sum(model(view).logits.softmax(1) for view in tta_views(inputs, tta))
    accuracy = float((probabilities.argmax(1).numpy() == labels).mean())
    # half-precision weights move a few faces at most
    assert abs(accuracy - stored["metrics"]["report"]["accuracy"]) < 0.003


def test_the_notebooks_loader_takes_the_shipped_models_name():
    run = train_or_load(Config(), checkpoint="fer2013")
    assert run.run_dir is None and not run.model.training
    assert run.classes == list(class_names(7)) and run.checkpoint["input_size"] == 48


def test_hsbs_predict_uses_the_shipped_model_when_no_checkpoint_is_given(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for index in range(3):
        face = np.clip(rng.normal(120, 40, (64, 64)), 0, 255).astype(np.uint8)
        Image.fromarray(face, mode="L").save(tmp_path / f"face{index}.png")
    assert main(["predict", str(tmp_path), "--no-detect", "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    assert "using the shipped model 'fer2013'" in captured.err
    records = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    assert len(records) == 3
    for record in records:
        assert set(record["probabilities"]) == set(class_names(7))
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_evaluating_a_shipped_model_writes_its_report_in_the_current_folder(tmp_path, monkeypatch, fer_csv):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", "fer2013", "--split", "val", "--root", str(fer_csv)]) == 0
    assert (tmp_path / "eval_fer2013_val.json").is_file()
    assert not list(SHIPPED_FOLDER.glob("eval_*.json"))


@pytest.fixture
def fer_csv(tmp_path):
    rng = np.random.default_rng(1)
    names = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"] * 3
    faces = rng.integers(0, 255, (len(names), 48, 48)).astype(np.uint8)
    write_fer2013_csv(tmp_path / "copy" / "fer2013.csv", faces, names,
                      ["Training"] * 7 + ["PublicTest"] * 7 + ["PrivateTest"] * 7)
    return tmp_path / "copy"
