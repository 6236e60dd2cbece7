"""The ingredients of the FER2013 recipes: RandomAffine-style augmentation, mixup and CutMix, Nesterov SGD, an
exponential moving average of the weights, test-time augmentation, sittings that stop early and resume, and a
FER2013 copy without its PrivateTest split."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from hsbs_lib.cli import main
from hsbs_lib.config import Config, ConfigValueError, apply_overrides, validate_config
from hsbs_lib.data.fer2013_files import write_fer2013_csv
from hsbs_lib.data.pipeline.cache import cache_split
from hsbs_lib.data.pipeline.transforms import (AUGMENT_PRESETS, BatchAugment, BatchMix, as_image, augment_spec,
                                               normalize, sample_transform, tta_views)
from hsbs_lib.engine.build import build_splits
from hsbs_lib.engine.checkpoint import load_checkpoint
from hsbs_lib.engine.compare import scored_split
from hsbs_lib.engine.ema import ema_model, warmed_up_decay
from hsbs_lib.engine.evaluate import evaluate
from hsbs_lib.engine.reference import train_reference
from hsbs_lib.engine.train import build_optimizer, fit, resume_config
from hsbs_lib.models.base import ModelOutput

from test_engine import ColourFER, _config, _rows


@pytest.fixture(scope="module")
def splits():
    return (cache_split(ColourFER(96, seed=0), 32), cache_split(ColourFER(56, seed=1, split="test"), 32),
            cache_split(ColourFER(40, seed=2, split="val"), 32))


# ---------------------------------------------------------------------------------------------- augmentation

def _white(count: int = 64, size: int = 32) -> torch.Tensor:
    return torch.full((count, 3, size, size), 255, dtype=torch.uint8)


def _unnormalised(x: torch.Tensor) -> torch.Tensor:
    """Normalised images back to [0, 1] (ImageNet mean and std)."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return x * std + mean


def test_fer_preset_is_the_published_recipe():
    spec = AUGMENT_PRESETS["fer"]
    assert (spec.flip, spec.zoom, spec.shift, spec.rotation, spec.erase) == (0.5, (0.8, 1.2), 0.2, 10.0, 0.5)
    assert spec.affine and spec.geometric


def test_zooming_out_leaves_a_black_frame_and_zooming_in_fills_the_image():
    generator = torch.Generator().manual_seed(0)
    out = _unnormalised(BatchAugment(augment_spec("none", options={"zoom": [0.5, 0.5]}))(_white(), None, generator)[0])
    assert out[:, :, :6, :].max() < 0.01 and out[:, :, :, -6:].max() < 0.01    # the outer quarter is black
    assert out[:, :, 12:20, 12:20].min() > 0.99                                # the image sits in the middle
    out = _unnormalised(BatchAugment(augment_spec("none", options={"zoom": [1.5, 1.5]}))(_white(), None, generator)[0])
    assert out.min() > 0.99


def test_shift_moves_the_image_by_up_to_its_fraction_of_the_side():
    generator = torch.Generator().manual_seed(1)
    out = _unnormalised(BatchAugment(augment_spec("none", options={"shift": 0.25}))(_white(256), None, generator)[0])
    black_columns = (out[:, 0].max(dim=1).values < 0.5).sum(dim=1).float()     # (B,) columns left black
    assert black_columns.max() <= 0.25 * 32 + 1 and black_columns.max() >= 0.2 * 32
    assert 0.15 * 32 < black_columns.mean() * 2 < 0.35 * 32                    # uniform over [0, 8]: mean 4
    assert (black_columns == 0).float().mean() < 0.2


def test_both_pipelines_implement_the_fer_preset_with_the_same_statistics():
    # One image of ramps, augmented 2048 times by each path (as the other presets are compared in
    # test_transforms.py): per-pixel mean and spread agree (two device runs of different seeds differ by
    # 0.014 / 0.015 as measured, device against loader by 0.02-0.05 / 0.018-0.023). Dropping the shift from
    # one path moves the spread gap to 0.37.
    size, count = 24, 2048
    ramp = torch.linspace(0, 255, size)
    image = torch.stack([ramp.view(1, -1).expand(size, size), ramp.view(-1, 1).expand(size, size),
                         torch.full((size, size), 128.0)]).round().to(torch.uint8)
    spec = augment_spec("fer", options={"erase": 0})
    batched, _ = BatchAugment(spec)(image.expand(count, -1, -1, -1).contiguous(), None,
                                    torch.Generator().manual_seed(3))
    torch.manual_seed(3)

    def per_sample(transform):
        return torch.stack([transform(as_image(image.flip(-1) if flip else image)) for flip in torch.rand(count) < 0.5])

    inner = (slice(None), slice(3, -3), slice(3, -3))
    gaps = []
    for other in (spec, augment_spec(spec, options={"shift": 0})):
        loader = per_sample(sample_transform(other, size))
        gaps.append(((batched.mean(0) - loader.mean(0))[inner].abs().mean(),
                     (batched.std(0) - loader.std(0))[inner].abs().mean()))
    (mean_gap, spread_gap), (_, spread_gap_without_shift) = gaps
    assert mean_gap < 0.07 and spread_gap < 0.03, gaps
    assert spread_gap_without_shift > 0.1


def test_augment_options_replace_fields_of_the_preset_and_refuse_bad_values():
    assert augment_spec("fer", options={"erase": 0}).erase == 0.0
    assert augment_spec("fer", options={"zoom": None, "shift": 0}).affine is False
    assert augment_spec("flip", options={"rotation": 15}).rotation == 15.0
    with pytest.raises(ValueError, match="unknown augmentation option 'data.augment_options.blur'"):
        augment_spec("fer", options={"blur": 1})
    with pytest.raises(ValueError, match=r"data.augment_options.zoom expects two numbers \[low, high\]"):
        augment_spec("fer", options={"zoom": [1.2, 0.8]})
    with pytest.raises(ValueError, match=r"data.augment_options.flip is a probability in \[0, 1\]"):
        augment_spec("fer", options={"flip": 2})
    with pytest.raises(ValueError, match="data.augment_options.shift expects a number >= 0"):
        augment_spec("fer", options={"shift": "far"})


# ---------------------------------------------------------------------------------------------- mixup / CutMix

def _indexed_batch(count: int = 16, size: int = 8):
    """Images whose every pixel is the sample's index, labels 0..6 cycling."""
    images = torch.arange(count, dtype=torch.float32).view(-1, 1, 1, 1).expand(count, 3, size, size).contiguous()
    return images, {"label": torch.arange(count) % 7}


def test_mixup_mixes_images_and_labels_by_the_same_share():
    images, targets = _indexed_batch(count=7)          # labels 0..6: sample i is class i
    mixed, mixed_targets = BatchMix(7, mixup=0.4)(images, targets, torch.Generator().manual_seed(0))
    soft = mixed_targets["soft_label"]
    assert soft.shape == (7, 7) and torch.allclose(soft.sum(1), torch.ones(7))
    shares = []
    for i in range(7):
        partners = [j for j in range(7) if j != i and soft[i, j] > 0]
        assert len(partners) <= 1
        j = partners[0] if partners else i
        share = float(soft[i, i])
        assert float(mixed[i, 0, 0, 0]) == pytest.approx(share * i + (1 - share) * j, abs=1e-5)
        assert int(mixed_targets["label"][i]) == (i if share >= 0.5 else j)
        if partners:
            shares.append(share)
    assert shares and max(shares) - min(shares) < 1e-6        # one share per batch


def test_cutmix_share_is_the_pasted_area():
    images, targets = _indexed_batch(size=32)
    mixed, mixed_targets = BatchMix(7, cutmix=1.0)(images, targets, torch.Generator().manual_seed(5))
    for i in range(16):
        own = float((mixed[i, 0] == i).float().mean())
        if own < 1:
            assert float(mixed_targets["soft_label"][i, i % 7]) >= own - 1e-6     # ties of classes add up
            assert mixed_targets["soft_label"][i].max() >= max(own, 1 - own) - 1e-6


def test_mixing_is_a_function_of_the_generator_and_keeps_soft_labels():
    images, targets = _indexed_batch()
    targets["soft_label"] = torch.softmax(torch.randn(16, 7, generator=torch.Generator().manual_seed(2)), 1)
    first = BatchMix(7, mixup=0.2, cutmix=1.0)(images, targets, torch.Generator().manual_seed(9))
    second = BatchMix(7, mixup=0.2, cutmix=1.0)(images, targets, torch.Generator().manual_seed(9))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1]["soft_label"], second[1]["soft_label"])
    assert torch.allclose(first[1]["soft_label"].sum(1), torch.ones(16))
    assert BatchMix(7)(images, targets, torch.Generator())[0] is images      # off: untouched


# ---------------------------------------------------------------------------------------------- optimiser, EMA

def test_nesterov_sgd_is_built_and_needs_momentum():
    model = nn.Linear(3, 2)
    config = apply_overrides(Config(), ["train.optimizer=sgd", "train.nesterov=true", "train.momentum=0.9"])
    assert build_optimizer(model, config.train).param_groups[0]["nesterov"] is True
    config = apply_overrides(Config(), ["train.optimizer=sgd", "train.nesterov=true", "train.momentum=0"])
    with pytest.raises(ValueError, match="train.nesterov=true needs train.momentum > 0"):
        build_optimizer(model, config.train)


def test_ema_follows_the_warmed_up_average_of_parameters_and_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    averaged = ema_model(model, decay=0.9)
    expected = {name: value.clone().float() for name, value in model.state_dict().items()}
    for update in range(6):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(1.0)
            model[1].running_mean.add_(2.0)
            model[1].num_batches_tracked.add_(1)
        averaged.update_parameters(model)
        decay = 0.0 if update == 0 else warmed_up_decay(0.9, update)
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                expected[name] = decay * expected[name] + (1 - decay) * value
    for name, value in averaged.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
        else:
            assert torch.equal(value, model.state_dict()[name])
    assert warmed_up_decay(0.999, 0) == pytest.approx(0.1) and warmed_up_decay(0.999, 10 ** 6) == 0.999
    assert not any(p.requires_grad for p in averaged.module.parameters())
    with pytest.raises(ValueError, match="train.ema is a decay between 0 and 1"):
        ema_model(model, 1.5)


@pytest.mark.slow
def test_ema_and_mixup_runs_resume_exactly_and_best_pt_holds_the_average(tmp_path, splits):
    overrides = ["data.augment=fer", "train.max_steps_per_epoch=3", "train.ema=0.9", "train.mixup=0.2",
                 "train.cutmix=1.0", "train.optimizer=sgd", "train.nesterov=true", "train.lr=0.05",
                 "train.deterministic=true"]
    straight = fit(_config(tmp_path / "straight", "train.epochs=3", *overrides),
                   train_data=splits[0], val_data=splits[2], test_data=splits[1])
    # the same run in two sittings: the first stops after epoch 1 of the 3-epoch schedule
    first = fit(_config(tmp_path / "split", "train.epochs=3", "train.stop_after_epoch=1", *overrides),
                train_data=splits[0], val_data=splits[2], test_data=splits[1])
    assert first.best == {} and not (tmp_path / "split" / "eval.json").exists()
    checkpoint = load_checkpoint(tmp_path / "split" / "last.pt")
    assert checkpoint["epoch"] == 1 and "raw_model" in checkpoint
    assert any(not torch.equal(checkpoint["model"][k], checkpoint["raw_model"][k]) for k in checkpoint["model"])
    config = resume_config(tmp_path / "split")
    assert config.train.stop_after_epoch is None
    resumed = fit(config, resume=tmp_path / "split", train_data=splits[0], val_data=splits[2], test_data=splits[1])
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert [int(row["epoch"]) for row in _rows(tmp_path / "split")] == [1, 2, 3]
    report = json.loads((tmp_path / "split" / "eval.json").read_text())
    assert report["accuracy"] == straight.best["accuracy"]
    # best.pt's "model" is the average: the model the run returns evaluates to the last row's validation score
    assert float(_rows(tmp_path / "straight")[-1]["val/accuracy"]) == pytest.approx(
        evaluate(straight.model, splits[2])["accuracy"])


# ---------------------------------------------------------------------------------------------- test-time augmentation

class HalfSighted(nn.Module):
    """Logits from the mean brightness of the left half of the image: not mirror invariant."""

    num_classes = 2

    def forward(self, x):
        left = x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3))
        logits = torch.stack([left, -left], dim=1)
        return ModelOutput(logits=logits, features=logits)


def test_tta_views_and_their_averaged_predictions():
    images = torch.randn(4, 3, 48, 48)
    assert len(tta_views(images, "none")) == 1 and len(tta_views(images, "flip")) == 2
    views = tta_views(images, "tencrop")
    assert len(views) == 10 and all(view.shape == images.shape for view in views)
    # the fifth view is the centre crop (42 of 48 px) resized back; the last five are the crops of the mirror image
    centre = torch.nn.functional.interpolate(images[..., 3:45, 3:45], size=(48, 48), mode="bilinear",
                                             align_corners=False)
    torch.testing.assert_close(views[4], centre)
    torch.testing.assert_close(views[5], torch.nn.functional.interpolate(
        images.flip(-1)[..., :42, :42], size=(48, 48), mode="bilinear", align_corners=False))
    with pytest.raises(ValueError, match="test-time augmentation must be one of none, flip, tencrop"):
        tta_views(images, "fivecrop")


def test_flip_tta_averages_the_softmax_of_the_image_and_its_mirror():
    from hsbs_lib.engine.evaluate import predict_logits
    images = torch.rand(6, 3, 8, 8)
    data = [(images, {"label": torch.zeros(6, dtype=torch.long), "index": torch.arange(6)})]
    model = HalfSighted()
    plain = predict_logits(model, data)["logits"]
    flipped = predict_logits(model, data, tta="flip")["logits"]
    expected = ((model(images).logits.softmax(1) + model(images.flip(-1)).logits.softmax(1)) / 2).log()
    torch.testing.assert_close(flipped, expected)
    assert not torch.allclose(flipped, plain.log_softmax(1))


# ---------------------------------------------------------------------------------------------- FER2013 without PrivateTest

@pytest.fixture(scope="module")
def fer_copy(tmp_path_factory):
    """A fer2013.csv with Training and PublicTest rows only (random faces with a class-dependent brightness)."""
    root = tmp_path_factory.mktemp("fer2013")
    rng = np.random.default_rng(0)
    names = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    rows, usage = [], []
    for split, count in (("Training", 12), ("PublicTest", 5)):
        for k, name in enumerate(names):
            faces = np.clip(rng.normal(30 + 30 * k, 20, (count, 48, 48)), 0, 255).astype(np.uint8)
            rows += [(face, name) for face in faces]
            usage += [split] * count
    write_fer2013_csv(root / "fer2013.csv", np.stack([face for face, _ in rows]), [name for _, name in rows], usage)
    return root


def test_a_copy_without_privatetest_reports_the_validation_split_labelled(tmp_path, fer_copy, caplog):
    config = apply_overrides(Config(), ["data.name=fer2013", f"data.root={fer_copy}", "data.input_size=48",
                                        "model.name=baseline", "model.backbone_width=8", "train.epochs=1",
                                        "train.batch_size=16", "train.progress=false", "train.tta=flip",
                                        f"out={tmp_path / 'run'}"])
    splits = build_splits(config)
    assert splits.test is None and splits.test_absent == "fer2013: this copy has no test split"
    assert len(splits.val) == 35 and splits.val_name == "val"
    with caplog.at_level("WARNING"):
        result = fit(config)
    assert caplog.text.count("this copy has no test split") == 1
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["split"] == "val" and report["n"] == 35 and report["tta"] == "flip"
    assert "validation numbers" in report["note"] and report["selected_on"] == "fer2013 val split"
    assert result.best["accuracy"] == report["accuracy"]


def test_the_reference_trainer_reports_the_validation_split_of_a_copy_without_privatetest(tmp_path, fer_copy):
    config = apply_overrides(Config(), ["data.name=fer2013", f"data.root={fer_copy}", "data.input_size=48",
                                        "train.trainer=reference", "train.epochs=1", "train.batch_size=16",
                                        "train.progress=false", f"out={tmp_path / 'run'}"])
    report = train_reference(config)
    written = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["split"] == written["split"] == "val" and "validation numbers" in written["note"]
    assert written["n"] == 35 and 0.0 <= written["accuracy"] <= 1.0


def test_a_comparison_says_which_split_its_runs_scored():
    assert scored_split([{"split": "test"}, {"split": "test", "tta": "none"}]) == "test split"
    labelled = scored_split([{"split": "val", "note": "no test split", "tta": "tencrop"}])
    assert labelled == "val split (validation numbers: no test split in the copy), test-time augmentation tencrop"


def test_hsbs_eval_takes_tta_and_labels_it(tmp_path, fer_copy, capsys):
    config = apply_overrides(Config(), ["data.name=fer2013", f"data.root={fer_copy}", "data.input_size=48",
                                        "model.name=baseline", "model.backbone_width=8", "train.epochs=1",
                                        "train.batch_size=16", "train.progress=false", f"out={tmp_path / 'run'}"])
    fit(config)
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--split", "val", "--tta", "tencrop",
                 "--out", str(tmp_path / "tencrop.json")]) == 0
    assert "test-time augmentation tencrop" in capsys.readouterr().out
    report = json.loads((tmp_path / "tencrop.json").read_text())
    assert report["tta"] == "tencrop" and report["n"] == 35


def test_recipe_values_out_of_range_are_refused():
    for override, message in (("train.tta=fivecrop", "train.tta' expects none, flip or tencrop"),
                              ("train.ema=1", "train.ema' expects a decay"),
                              ("train.mixup=-1", "train.mixup' expects"),
                              ("train.stop_after_epoch=0", "train.stop_after_epoch' expects at least 1")):
        with pytest.raises(ConfigValueError, match=message):
            validate_config(apply_overrides(Config(), [override]))
