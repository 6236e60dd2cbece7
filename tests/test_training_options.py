"""Training options of the engine: precision (fp32, bf16, fp16 with a gradient scaler), gradient
accumulation, and the moving average of the weights (train.ema), through the engine's own step."""
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hsbs_lib.config import Config, ConfigValueError, apply_overrides, config_from_dict, same_recipe, validate_config
from hsbs_lib.data.pipeline.cache import cache_split
from hsbs_lib.engine.checkpoint import load_checkpoint
from hsbs_lib.engine.ema import ema_model
from hsbs_lib.engine.train import fit, optimizer_step, precision_policy, resume_config, train_one_epoch
from hsbs_lib.models.base import ModelOutput

from test_engine import ColourFER, _config, _rows


@pytest.fixture(scope="module")
def splits():
    return (cache_split(ColourFER(96, seed=0), 32), cache_split(ColourFER(56, seed=1, split="test"), 32),
            cache_split(ColourFER(40, seed=2, split="val"), 32))


class TinyLinear(nn.Module):
    """A linear classifier on the flattened image, with the engine's model interface and no BatchNorm."""

    def __init__(self, pixels: int = 3 * 4 * 4, classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(pixels, classes)

    def forward(self, x):
        logits = self.fc(x.flatten(1))
        return ModelOutput(logits=logits, features=logits)

    def loss(self, output, targets):
        return {"ce": F.cross_entropy(output.logits, targets["label"])}


def _batches(images, labels, size):
    return [(images[i:i + size], {"label": labels[i:i + size]}) for i in range(0, len(images), size)]


def _data(count=8):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(count, 3, 4, 4, generator=generator), torch.randint(0, 3, (count,), generator=generator)


def _one_epoch(model, loader, **options):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)      # plain SGD: the update is lr times the gradient
    _, steps = train_one_epoch(model, loader, optimizer, device=torch.device("cpu"), epoch=0, **options)
    return steps


# ---------------------------------------------------------------------------------------------- accumulation

def test_accumulating_four_micro_batches_steps_as_one_batch():
    images, labels = _data(8)
    whole, micro = TinyLinear(), TinyLinear()
    assert _one_epoch(whole, _batches(images, labels, 8)) == 1
    assert _one_epoch(micro, _batches(images, labels, 2), accumulate=4) == 1
    start = TinyLinear()
    assert not torch.allclose(whole.fc.weight, start.fc.weight, atol=1e-3)       # it did move
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(micro.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    # without accumulation the same micro-batches take four steps and land elsewhere
    separate = TinyLinear()
    assert _one_epoch(separate, _batches(images, labels, 2)) == 4
    assert not torch.allclose(separate.fc.weight, whole.fc.weight, atol=1e-3)


def test_the_last_short_group_of_an_epoch_is_averaged_over_its_own_micro_batches():
    images, labels = _data(6)
    # three micro-batches of 2 with accumulate=2: steps on (0, 1), then on (2) alone at the epoch's end
    micro = TinyLinear()
    assert _one_epoch(micro, _batches(images, labels, 2), accumulate=2) == 2
    expected = TinyLinear()
    _one_epoch(expected, _batches(images[:4], labels[:4], 4))
    _one_epoch(expected, _batches(images[4:], labels[4:], 2))
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(micro.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------- fp16 scaler

def test_the_scaler_skips_a_step_with_inf_gradients_and_the_next_one_is_taken():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    before = copy.deepcopy(model.state_dict())
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    model.weight.grad[0, 0] = float("inf")
    assert optimizer_step(model, optimizer, scaler=scaler, grad_clip=1.0) is False
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert scaler.get_scale() == 4.0
    optimizer.zero_grad()
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    assert optimizer_step(model, optimizer, scaler=scaler) is True
    # d(sum)/dw = 1 for every weight: one SGD step of 0.1, the scale divided out
    torch.testing.assert_close(model.weight, before["weight"] - 0.1)
    torch.testing.assert_close(model.bias, before["bias"] - 0.1)


def test_an_epoch_skips_the_inf_step_and_trains_on_the_next_batch():
    images, labels = _data(8)
    model = TinyLinear()
    poisoned = {"left": 1}

    def inf_once(grad):
        if poisoned["left"]:
            poisoned["left"] -= 1
            return torch.full_like(grad, float("inf"))
        return grad

    model.fc.weight.register_hook(inf_once)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    # fp32 arithmetic with the scaler: scaling by a power of two is exact, so the result can be compared
    assert _one_epoch(model, _batches(images, labels, 4), scaler=scaler) == 2
    assert scaler.get_scale() == 2.0 ** 9 and poisoned["left"] == 0
    only_second = TinyLinear()
    _one_epoch(only_second, _batches(images[4:], labels[4:], 4))
    for name, value in only_second.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------- precision

@pytest.mark.parametrize("precision, amp, device, dtype, scaled", [
    ("auto", True, "cpu", None, False),            # train.amp's old meaning: bf16 on CUDA only
    ("auto", True, "cuda", torch.bfloat16, False),
    ("auto", False, "cuda", None, False),
    ("fp32", True, "cuda", None, False),           # an explicit precision overrides train.amp
    ("bf16", False, "cpu", torch.bfloat16, False),
    ("fp16", True, "cpu", torch.float16, True),
])
def test_precision_policy(precision, amp, device, dtype, scaled):
    config = apply_overrides(Config(), [f"train.precision={precision}", f"train.amp={amp}"])
    autocast_dtype, scaler = precision_policy(config.train, torch.device(device))
    assert autocast_dtype == dtype and (scaler is not None) == scaled
    if scaled:
        assert scaler.is_enabled() and scaler.get_scale() == 2.0 ** 16


@pytest.mark.parametrize("override, message", [
    ("train.precision=fp8", "'train.precision' expects auto, fp32, bf16 or fp16, got 'fp8'"),
    ("train.accumulate=0", "'train.accumulate' expects at least 1 micro-batch per optimiser step, got 0"),
])
def test_new_training_keys_are_validated(override, message):
    with pytest.raises(ConfigValueError, match=message):
        validate_config(apply_overrides(Config(), [override]))


def test_a_config_saved_before_precision_and_accumulate_still_loads_as_the_same_recipe():
    stored = Config().to_dict()
    del stored["train"]["precision"], stored["train"]["accumulate"]
    stored["train"]["amp"] = False
    config = config_from_dict(stored)
    assert (config.train.precision, config.train.accumulate, config.train.amp) == ("auto", 1, False)
    assert same_recipe(stored, config)
    assert not same_recipe(stored, apply_overrides(copy.deepcopy(config), ["train.accumulate=2"]))


# ---------------------------------------------------------------------------------------------- through fit

def test_fp16_with_accumulation_counts_optimiser_steps_and_resumes_exactly(tmp_path, splits):
    overrides = ["train.precision=fp16", "train.accumulate=2", "train.max_steps_per_epoch=5",
                 "train.warmup_epochs=0.5", "train.deterministic=true"]
    straight = fit(_config(tmp_path / "straight", "train.epochs=2", *overrides),
                   train_data=splits[0], val_data=splits[2], test_data=splits[1])
    # 5 micro-batches an epoch in groups of 2: 3 optimiser steps, the schedule counted in them
    assert [int(row["step"]) for row in _rows(tmp_path / "straight")] == [3, 6]
    checkpoint = load_checkpoint(tmp_path / "straight" / "last.pt")
    assert checkpoint["scheduler"]["last_epoch"] == 6 and checkpoint["scaler"]["scale"] > 0
    fit(_config(tmp_path / "split", "train.epochs=2", "train.stop_after_epoch=1", *overrides),
        train_data=splits[0], val_data=splits[2], test_data=splits[1])
    resumed = fit(resume_config(tmp_path / "split"), resume=tmp_path / "split",
                  train_data=splits[0], val_data=splits[2], test_data=splits[1])
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert load_checkpoint(tmp_path / "split" / "last.pt")["scaler"] == checkpoint["scaler"]


# ---------------------------------------------------------------------------------------------- EMA

def test_ema_update_rule_for_two_steps_in_numbers():
    model = nn.Linear(1, 1, bias=False)
    averaged = ema_model(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    averaged.update_parameters(model)          # the first update copies the weights
    assert averaged.module.weight.item() == 1.0
    with torch.no_grad():
        model.weight.fill_(2.0)
    averaged.update_parameters(model)          # decay min(0.9, 2/11): 2/11 * 1 + 9/11 * 2 = 20/11
    assert averaged.module.weight.item() == pytest.approx(20 / 11, abs=1e-6)
    with torch.no_grad():
        model.weight.fill_(0.0)
    averaged.update_parameters(model)          # decay min(0.9, 3/12) = 1/4: 1/4 * 20/11 + 3/4 * 0 = 5/11
    assert averaged.module.weight.item() == pytest.approx(5 / 11, abs=1e-6)


def test_with_ema_validation_and_best_pt_use_the_averaged_weights(tmp_path, splits):
    result = fit(_config(tmp_path, "train.epochs=1", "train.max_steps_per_epoch=3", "train.ema=0.5",
                         "train.accumulate=2", "train.lr=0.05"),
                 train_data=splits[0], val_data=splits[2], test_data=splits[1])
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    for name, value in result.model.state_dict().items():    # the returned (evaluated) model is the average
        assert torch.equal(best["model"][name], value) and torch.equal(last["model"][name], value), name
    assert any(not torch.equal(last["raw_model"][name], value) for name, value in last["model"].items()
               if value.is_floating_point())
