"""An exponential moving average of a model's weights (``train.ema``) on torch's ``AveragedModel``.

After every optimiser step ``ema = d * ema + (1 - d) * weights`` for every parameter and buffer (BatchNorm's
running statistics included: ``use_buffers=True``), with the decay warmed up as d_n = min(d, (1 + n) / (10 + n))
after n updates (timm's ``ModelEmaV2`` and the TensorFlow recipe do the same) so that the average of a short
run is not held at the random initialisation. Validation, ``best.pt`` and the final report use the averaged
weights; ``last.pt`` keeps the optimiser's own weights too (``raw_model``), to resume.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay of update ``updates`` + 1: min(decay, (1 + n) / (10 + n))."""
    return min(decay, (1 + updates) / (10 + updates))


def ema_model(model: nn.Module, decay: float) -> AveragedModel:
    """An ``AveragedModel`` of ``model`` (its ``.module`` is the averaged network, in eval mode) that
    ``update_parameters(model)`` moves toward ``model`` by the warmed-up exponential average."""
    if not 0 < decay < 1:
        raise ValueError(f"train.ema is a decay between 0 and 1 (e.g. 0.999), got {decay}")

    @torch.no_grad()
    def average(averaged: list[Tensor], current: list[Tensor], updates: Tensor) -> None:
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1 - warmed_up_decay(decay, int(updates)))
        else:                                  # counters such as num_batches_tracked follow the model
            for mine, theirs in zip(averaged, current):
                mine.copy_(theirs)

    averaged_model = AveragedModel(model, multi_avg_fn=average, use_buffers=True)
    averaged_model.module.eval()
    for parameter in averaged_model.module.parameters():
        parameter.requires_grad_(False)
    return averaged_model
