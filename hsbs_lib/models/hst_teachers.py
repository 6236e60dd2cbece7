"""Teacher networks for HST: a moving average of the backbone, or a frozen trained baseline's backbone.

[design] Both give the teacher map of :func:`hsbs_lib.losses.hst.hst_loss` as the layer4 activation attention
of another network on the same batch, in place of the student's own layer4:

* :class:`MovingAverageTeacher` (``hst_teacher="ema"``): an exponential moving average of the backbone's
  weights (a mean teacher, Tarvainen & Valpola, NeurIPS 2017), updated after every optimiser step;
* :class:`FrozenTeacher` (``hst_teacher="frozen"``): the backbone of a finished run (a converged baseline),
  read from a local checkpoint and never trained.

The copy's weights are buffers, not parameters: the optimiser never sees them, a test that every parameter
gets a gradient still holds, and ``.to(device)`` moves them with the model. The teacher runs in eval mode
(BatchNorm on its running statistics) and without a graph.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hsbs_lib.losses.hst import activation_attention, mirror_count_on_host
from hsbs_lib.models.weights_file import load_weights_file


def frozen_copy(network: nn.Module, *, persistent: bool = True) -> nn.Module:
    """A deep copy of ``network`` whose parameters are buffers (``persistent``: kept in the state dict)."""
    clone = copy.deepcopy(network)
    for module in clone.modules():
        for name, parameter in list(module._parameters.items()):
            del module._parameters[name]
            # an absent parameter (a convolution's bias=None) stays an absent attribute, as a None buffer
            module.register_buffer(name, None if parameter is None else parameter.detach().clone(),
                                   persistent=persistent)
        if not persistent:   # BatchNorm's statistics go with the weights: the whole copy is the file's
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:
                    module.register_buffer(name, buffer, persistent=False)
    return clone.eval()


class _TeacherNetwork(nn.Module):
    """A frozen backbone copy in ``self.network``, always in eval mode; :meth:`attention` gives its map."""

    network: nn.Module

    def train(self, mode: bool = True) -> "_TeacherNetwork":
        super().train(mode)
        self.network.eval()    # the teacher's BatchNorm never updates its statistics from the student's batches
        return self

    @torch.no_grad()
    def attention(self, images: Tensor, p: float = 2.0) -> Tensor:
        """Layer4 activation attention of the teacher: (B, 3, H, W) -> (B, h, w), float32, no graph."""
        return activation_attention(self.network(images)[-1], p)


def mean_teacher_decay(decay: float, updates: int) -> float:
    """The decay of update ``updates`` + 1: min(1 - 1 / (n + 1), decay), the mean teacher's ramp, so that the
    average of the first steps is not held at the random initialisation."""
    return min(1.0 - 1.0 / (updates + 1), decay)


class MovingAverageTeacher(_TeacherNetwork):
    """teacher = d * teacher + (1 - d) * backbone after every optimiser step (:meth:`update`), with the decay
    ramped by :func:`mean_teacher_decay`. Floating buffers (BatchNorm's running statistics) are averaged alike;
    counters are copied. The copy and the update count are persistent buffers: saved in every checkpoint,
    so a resumed run continues the average exactly.
    """

    def __init__(self, backbone: nn.Module, decay: float = 0.99):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"hst_ema_decay must be between 0 and 1 (e.g. 0.99), got {decay}")
        self.decay = float(decay)
        self.network = frozen_copy(backbone, persistent=True)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        mirror_count_on_host(self, "updates", "_updates")     # the decay ramp reads it in every step

    @torch.no_grad()
    def update(self, backbone: nn.Module) -> None:
        """Move the average toward ``backbone``'s current weights and buffers (matched by name)."""
        source = backbone.state_dict(keep_vars=True)
        averaged, current = [], []
        for name, mine in self.network.named_buffers():
            theirs = source[name].detach()
            if mine.is_floating_point():
                averaged.append(mine)
                current.append(theirs.to(mine.dtype))
            else:
                mine.copy_(theirs)
        torch._foreach_lerp_(averaged, current, 1.0 - mean_teacher_decay(self.decay, self._updates))
        self._updates += 1
        self.updates.fill_(self._updates)

    def extra_repr(self) -> str:
        return f"decay={self.decay}"


def _architecture(config: dict) -> dict[str, Any]:
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    return {key: model.get(key) for key in ("backbone", "stem", "backbone_width")}


class FrozenTeacher(_TeacherNetwork):
    """The backbone of a trained run, read from ``checkpoint`` (a run folder, then its best.pt, or a .pt file).

    ``backbone`` is the student's, copied for its architecture; ``architecture`` = {backbone, stem,
    backbone_width} of the student, compared with the checkpoint's config so that a mismatch is one line, not a
    list of tensor shapes. The weights are non-persistent buffers: the run's checkpoints do not repeat them,
    so the file is read whenever the model is built (keep it where the run's config names it). Local files
    only: nothing is downloaded.
    """

    def __init__(self, backbone: nn.Module, checkpoint: str | os.PathLike, architecture: dict[str, Any]):
        super().__init__()
        path = resolve_teacher_checkpoint(checkpoint)
        state = load_weights_file(path, "HST teacher checkpoint (model.options.hst_teacher_checkpoint)")
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise ValueError(f"HST teacher checkpoint {path} is not an hsbs_lib checkpoint (no 'model' state dict)")
        theirs = _architecture(state.get("config") or {})
        differing = [key for key, value in architecture.items() if theirs.get(key) not in (None, value)]
        if differing:
            raise ValueError(f"HST teacher checkpoint {path} has another architecture ("
                             + ", ".join(f"{key} {theirs[key]} where this model has {architecture[key]}"
                                         for key in differing) + "): the teacher needs the student's backbone")
        weights = {name.removeprefix("backbone."): tensor for name, tensor in state["model"].items()
                   if name.startswith("backbone.")}
        self.network = frozen_copy(backbone, persistent=False)
        # non-persistent buffers are left out of state_dict(): compare against every buffer by name
        expected = {name: tensor.shape for name, tensor in self.network.named_buffers()}
        missing = sorted(set(expected) - set(weights))
        reshaped = sorted(name for name in set(expected) & set(weights) if weights[name].shape != expected[name])
        if missing or reshaped:
            names = missing or reshaped
            raise ValueError(f"HST teacher checkpoint {path} does not match this model's backbone: "
                             f"{len(missing)} tensors missing, {len(reshaped)} of another shape (e.g. {names[0]})")
        with torch.no_grad():
            for name, buffer in self.network.named_buffers():
                buffer.copy_(weights[name])
        self.source = str(path)

    def extra_repr(self) -> str:
        return f"source={self.source}"


def resolve_teacher_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """A run folder -> its best.pt; a file -> itself. FileNotFoundError of one line when there is none."""
    path = Path(checkpoint)
    if path.is_dir():
        if not (path / "best.pt").is_file():
            raise FileNotFoundError(f"HST teacher run {path} has no best.pt: train the baseline first (its "
                                    f"run folder or best.pt is model.options.hst_teacher_checkpoint)")
        return path / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"HST teacher checkpoint {path} not found: model.options.hst_teacher_checkpoint "
                                f"names a finished baseline run (its folder or best.pt) with the same backbone")
    return path
