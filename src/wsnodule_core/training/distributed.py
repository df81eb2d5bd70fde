"""Several processes (one per GPU) through torch DDP, launched with ``torchrun``.

:func:`init_distributed` reads ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (set by torchrun); with no
such variables the run is a single process and every helper here is a no-op. Only rank 0 writes
checkpoints and logs; the others wait at a barrier while it saves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` picks its GPU)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device | None = None, backend: str | None = None,
                     timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by torchrun's environment variables, if there is one.

    The backend is NCCL on CUDA and gloo otherwise. A process group that already exists is used
    as it is (and left open at the end).
    """
    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, False)
    world = env_world_size()
    if world <= 1 or not dist.is_available():
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if backend is None:
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return DistContext(rank, world, local_rank, True)


def device_for_rank(device: torch.device, ctx: DistContext) -> torch.device:
    """One GPU per process: ``cuda:LOCAL_RANK`` when training on CUDA with several processes."""
    if ctx.enabled and device.type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return device


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The sum of ``values`` over all processes (the tensor itself when single-process)."""
    if ctx.enabled:
        if dist.get_backend() == "nccl" and values.device.type != "cuda":
            moved = values.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            values.copy_(moved.cpu())
        else:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(value, ctx: DistContext):
    """Rank 0's ``value`` on every process."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(ctx: DistContext) -> None:
    if ctx.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def average_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks, so every rank
    holds the same model; DDP only syncs them at the start of each forward pass."""
    if not ctx.enabled:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            all_reduce_sum(buffer.data, ctx)
            buffer.data.div_(ctx.world_size)
