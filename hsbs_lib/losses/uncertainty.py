"""Learned uncertainty weighting of several loss terms (multi-task loss balancing).

For each named term L_i one scalar sigma_i is learned jointly with the network:

    L_total = sum_i  L_i / (2 sigma_i^2) + log(1 + sigma_i^2)

The first part is the homoscedastic-uncertainty weighting of Kendall, Gal and Cipolla, "Multi-Task
Learning Using Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018. Their
regulariser log(sigma_i^2) is replaced by log(1 + sigma_i^2) (Liebel and Koerner, "Auxiliary Tasks in
Multi-task Learning", 2018), which keeps every weighted term positive and stops a term with a tiny loss
from driving sigma_i to zero. For a fixed L_i the optimum is sigma_i^2 = (L_i + sqrt(L_i^2 + 8 L_i)) / 4:
a term with a large loss is down-weighted, one with a small loss up-weighted.

Parametrisation: the module learns s_i = log sigma_i^2 (initialised at 0, i.e. sigma_i = 1), so that

    L_i / (2 sigma_i^2) + log(1 + sigma_i^2) = 0.5 * exp(-s_i) * L_i + softplus(s_i),

which needs no positivity constraint and uses the overflow-safe ``softplus``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class UncertaintyWeighting(nn.Module):
    """One learnable sigma per named loss term.

    Args:
        names: the term names, e.g. ``("ce", "ce/layer2", "pose")``; their order fixes the parameter layout.
        init_log_variance: initial s_i = log sigma_i^2 for every term (0 means sigma_i = 1).

    ``forward(losses)`` takes a dict of raw scalar losses (any subset of ``names``; a term that is absent
    in a batch, such as a pose loss without pose labels, is simply skipped and its sigma gets no gradient)
    and returns a dict with the same keys holding the weighted terms, regulariser included, so that
    their sum is the total loss.
    """

    def __init__(self, names: Iterable[str], *, init_log_variance: float = 0.0):
        super().__init__()
        self.names: tuple[str, ...] = tuple(names)
        if not self.names:
            raise ValueError("UncertaintyWeighting needs at least one term name")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate term names: {self.names}")
        self._index = {name: i for i, name in enumerate(self.names)}
        # s_i = log sigma_i^2, shape (n_terms,)
        self.log_variance = nn.Parameter(torch.full((len(self.names),), float(init_log_variance)))
        self._position_cache: dict[tuple, Tensor] = {}

    def forward(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        unknown = [name for name in losses if name not in self._index]
        if unknown:
            raise KeyError(f"no learned weight for loss term(s) {unknown}; known terms: {list(self.names)}")
        if not losses:
            return {}
        # All terms at once: the weighting is elementwise, so one stack and a few vector operators give every
        # term, where a loop spent seven operators (and their backward) per term.
        log_variance = self.log_variance
        if tuple(losses) != self.names:   # a subset (no pose labels in this batch): their s_i, in their order
            log_variance = log_variance[self._positions(tuple(losses), log_variance.device)]
        stacked = torch.stack([loss if loss.dtype == torch.float32 else loss.float() for loss in losses.values()])
        weighted = 0.5 * torch.exp(-log_variance) * stacked + F.softplus(log_variance)
        return dict(zip(losses, weighted.unbind()))

    def _positions(self, names: tuple[str, ...], device: torch.device) -> Tensor:
        """The (n,) indices of ``names`` in :attr:`names`, cached per subset and device."""
        key = (names, str(device))
        if key not in self._position_cache:
            self._position_cache[key] = torch.tensor([self._index[name] for name in names], device=device)
        return self._position_cache[key]

    def sigmas(self) -> dict[str, float]:
        """The current sigma_i = exp(s_i / 2) per term, as plain floats for logging."""
        values = torch.exp(0.5 * self.log_variance.detach().float()).cpu().tolist()
        return dict(zip(self.names, values))

    def extra_repr(self) -> str:
        return f"names={list(self.names)}"
