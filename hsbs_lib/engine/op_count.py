"""Operator calls of one training step: what bounds a small model's step on a GPU (one launch each).

:func:`step_op_counts` runs one training step exactly as :func:`hsbs_lib.engine.train.train_one_epoch` does
(forward and every loss term in one :class:`~hsbs_lib.engine.train.ModelWithLoss` call, the terms summed by
:func:`~hsbs_lib.engine.train.total_loss`,
``zero_grad``, backward, optimiser step) under ``torch.profiler`` and counts its **outermost aten
operators**: every ``aten::*`` event that no other ``aten::*`` event encloses. That is one count per operator
called from Python, from the autograd engine (each backward node's operators) or from the optimiser, and none
for the operators a composite operator calls inside itself. Views and no-op casts count like any other call
(each is a dispatch); kernels an operator launches are not counted. A first, unprofiled step creates the
optimiser's state, so the counted step is the steady one; the count is deterministic (CPU, fixed inputs).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from hsbs_lib.engine.train import total_loss

PHASES = ("forward", "backward", "optimizer")


@dataclass
class StepOps:
    """Outermost aten operator calls of one training step, per phase, by operator name."""

    by_phase: dict[str, collections.Counter] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.phase(name) for name in PHASES)

    def phase(self, name: str) -> int:
        return sum(self.by_phase.get(name, collections.Counter()).values())

    def operators(self) -> collections.Counter:
        """All phases together: operator name -> calls."""
        merged: collections.Counter = collections.Counter()
        for counter in self.by_phase.values():
            merged.update(counter)
        return merged


def _phase_of(event) -> str | None:
    """The phase of an outermost aten event (None when an aten event encloses it, or outside every phase)."""
    phase, parent = None, event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return None
        if parent.name in PHASES:
            phase = parent.name
        parent = parent.cpu_parent
    return phase


def step_op_counts(step_module: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                   targets: dict[str, torch.Tensor]) -> StepOps:
    """Operator calls of one training step of ``step_module`` (a ModelWithLoss: ``(images (B, 3, H, W),
    targets) -> (output, {name: scalar term})``) with ``optimizer``; see the module docstring for what counts."""
    step_module.train()

    def step() -> None:
        with record_function("forward"):
            _, terms = step_module(images, targets)
            total = total_loss(terms)
        with record_function("optimizer"):
            optimizer.zero_grad(set_to_none=True)
        with record_function("backward"):
            total.backward()
        with record_function("optimizer"):
            optimizer.step()

    step()      # the optimiser's state is created in its first step: count the steady one
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    counts = StepOps({name: collections.Counter() for name in PHASES})
    for event in profiler.events():
        if event.name.startswith("aten::"):
            phase = _phase_of(event)
            if phase is not None:
                counts.by_phase[phase][event.name] += 1
    return counts
