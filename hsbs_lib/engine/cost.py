"""What a model costs: trainable parameters, multiply-accumulates, training and inference images per second.

Measured on random inputs (no data needed), so ``hsbs compare`` can put the cost beside every row and
``hsbs bench`` can time every registered model. Numbers from a shared machine are noisy: compare models
measured in the same process (:func:`hsbs_lib.bench.compare_model_costs` interleaves them).
"""
from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hsbs_lib.data.regions import REGION_BITS


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, input_size: int, *, batch_size: int = 1) -> int:
    """Multiply-accumulates of one eval forward pass per image (FLOPs / 2, torch's flop counter)."""
    model = model.eval()
    x = torch.zeros(batch_size, 3, input_size, input_size, device=next(model.parameters()).device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // (2 * batch_size)


def _fake_targets(batch_size: int, num_classes: int, device, input_size: int | None = None) -> dict:
    """Labels and pose bins cycling through their values; with ``input_size``, also region masks (every region on
    the middle half of the image), for models whose loss reads them."""
    labels = torch.arange(batch_size, device=device) % num_classes
    targets = {"label": labels, "pose": torch.arange(batch_size, device=device) % 5}
    if input_size is not None:
        regions = torch.zeros(batch_size, input_size, input_size, dtype=torch.uint8, device=device)
        quarter = input_size // 4
        regions[:, quarter:input_size - quarter, quarter:input_size - quarter] = 0xFF
        targets[REGION_BITS] = regions
    return targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_training(model: nn.Module, *, input_size: int, batch_size: int = 32, steps: int = 5,
                     warmup: int = 2, channels_last: bool = True, amp: bool = False) -> float:
    """Training images/s: forward, every loss term, backward and an SGD step on random inputs."""
    device = next(model.parameters()).device
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    x = torch.randn(batch_size, 3, input_size, input_size, device=device).to(memory_format=memory_format)
    targets = _fake_targets(batch_size, getattr(model, "num_classes", 7), device, input_size)
    use_amp = amp and device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            output = model(x)
            loss = sum(model.loss(output, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


@torch.no_grad()
def measure_inference(model: nn.Module, *, input_size: int, batch_size: int = 64, steps: int = 5, warmup: int = 2,
                      channels_last: bool = True) -> float:
    """Eval-mode images/s on random inputs."""
    device = next(model.parameters()).device
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    x = torch.randn(batch_size, 3, input_size, input_size, device=device).to(memory_format=memory_format)
    for _ in range(warmup):
        model(x)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        model(x)
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)
