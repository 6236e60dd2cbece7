"""Checkpoints: atomic writes, weights_only loading, readable errors, RNG and model round trips."""
import random

import numpy as np
import pytest
import torch

from hsbs_lib.config import Config, apply_overrides
from hsbs_lib.engine import checkpoint as ckpt
from hsbs_lib.engine.build import build_model
from hsbs_lib.engine.train import build_optimizer, build_scheduler
from hsbs_lib.models.backbones import build_backbone, load_pretrained

CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
# A narrow baseline: every checkpoint key and behaviour of a full one, a sixteenth of the bytes to write.
SMALL = ["model.name=baseline", "model.backbone_width=16", "data.input_size=32"]


def _parts(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    config = apply_overrides(Config(), SMALL)
    model = build_model(config, CLASSES)
    optimizer = build_optimizer(model, config.train)
    scheduler = build_scheduler(optimizer, config.train, steps_per_epoch=4)
    model(torch.randn(2, 3, 32, 32)).logits.sum().backward()
    optimizer.step()
    scheduler.step()
    return ckpt.build_checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, config=config,
                                 classes=CLASSES, input_size=32, normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
                                 epoch=1, step=1, metrics={"test/accuracy": 0.5})


def test_checkpoint_has_every_key_and_loads_with_weights_only(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "last.pt", **_parts())
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"model", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "config", "classes",
                        "input_size", "normalization", "metrics", "version"}
    loaded = ckpt.load_checkpoint(tmp_path)   # a run directory means its last.pt
    assert loaded["classes"] == list(CLASSES) and loaded["epoch"] == 1 and loaded["input_size"] == 32
    assert loaded["config"]["model"]["name"] == "baseline"
    assert loaded["optimizer"]["state"], "optimizer moments are stored"


def test_failed_save_leaves_the_previous_file_and_no_partial_file(tmp_path, monkeypatch):
    path = ckpt.save_checkpoint(tmp_path / "last.pt", **_parts(seed=0))
    before = path.read_bytes()
    real_save = torch.save

    def save_then_fail(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)     # the bytes reach the temporary file ...
        raise OSError("disk full")                 # ... and then the write fails

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, **_parts(seed=1))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert ckpt.load_checkpoint(path)["epoch"] == 1


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    truncated = tmp_path / "truncated.pt"        # a copy cut short
    whole = ckpt.save_checkpoint(tmp_path / "whole.pt", **_parts()).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": {}, "payload": object()}, pickled)    # arbitrary objects are refused
    for path, reason in ((broken, "not a file written by torch.save"), (truncated, "truncated"),
                         (pickled, "Python objects other than tensors")):
        with pytest.raises(ValueError) as raised:
            ckpt.load_checkpoint(path)
        message = str(raised.value)
        assert str(path) in message and reason in message and "\n" not in message, message
        assert "weights_only=False" not in message      # torch's advice to run arbitrary code is not passed on


def test_a_pretrained_file_that_is_not_weights_is_one_line(tmp_path):
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"<html>404 Not Found</html>")       # what a failed download leaves
    with pytest.raises(ValueError) as raised:
        load_pretrained(build_backbone("resnet18", width=16), str(garbage))
    assert str(garbage) in str(raised.value) and "\n" not in str(raised.value)


def test_rng_state_round_trip_restores_every_generator(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    ckpt.save_checkpoint(tmp_path / "rng.pt", model={}, rng=ckpt.rng_state())
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    ckpt.restore_rng_state(ckpt.load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_load_model_from_checkpoint_rebuilds_the_same_function(tmp_path):
    parts = _parts()
    path = ckpt.save_checkpoint(tmp_path / "best.pt", **parts)
    model, checkpoint = ckpt.load_model_from_checkpoint(path)
    assert not model.training and checkpoint["normalization"]["std"] == [0.25] * 3
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, parts["model"][name]), name
    reference = build_model(apply_overrides(Config(), SMALL), CLASSES, load_pretrained=False)
    reference.load_state_dict(parts["model"])
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x).logits, reference.eval()(x).logits)
