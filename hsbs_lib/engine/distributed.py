"""DistributedDataParallel under ``torchrun``: process group, device, model wrapping, reductions.

``torchrun --nproc_per_node=N -m hsbs_lib.cli train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; the engine
then trains one replica per process (gloo on CPU, nccl on CUDA). Every rank sees its own shard of each
epoch's samples, gradients are averaged by DDP, and only rank 0 logs and writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistributedContext:
    """Who this process is. ``world_size == 1`` means a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group when started by torchrun; otherwise return a single-process context."""
    if not launched_by_torchrun():
        return DistributedContext()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank)


def cleanup_distributed(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(module: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """DDP wrapper under torchrun, the module itself otherwise.

    ``find_unused_parameters`` is on because some heads are idle for some data (a pose head without pose
    labels); it costs one graph traversal per step.
    """
    if not context.enabled:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def all_reduce_sums(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum each value over ranks (identity in a single process). Keys must match on every rank."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return dict(zip(keys, tensor.tolist()))


def sync_buffers(module: nn.Module, context: DistributedContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last step of an epoch every rank
    holds running statistics of its own last batch; syncing them makes evaluation and checkpoints agree.
    """
    if context.enabled and dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def barrier(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.barrier()
