"""torch.distributed for the same commands under torchrun: who am I, what is mine, gather to rank 0.

Outside torchrun (no WORLD_SIZE > 1 in the environment) everything here is a no-op on one rank.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_from_env(device: str = "cpu") -> DistContext:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); no-op without one.

    Args:
        device: "cpu" or "cuda"; picks the backend.

    Returns:
        The context (rank 0 of 1 when not launched by torchrun).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        atexit.register(_destroy_group)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank)


def _destroy_group() -> None:
    """Tear the process group down while the interpreter is still whole.

    Why: left to interpreter finalization, gloo's worker threads can release tensors
    after Python is gone and the process dies of SIGABRT (pytorch/pytorch#179291);
    under load this failed one rank of a finished, correct run.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def shard_by_size(sizes: list[int], world: int) -> list[list[int]]:
    """Greedy largest-first assignment of items to ranks, balancing total size.

    Args:
        sizes: cost of each item (e.g. parameters of a tensor pair).
        world: number of ranks.

    Returns:
        For each rank, the indices of its items in their original order.
    """
    loads = [0] * world
    owned: list[list[int]] = [[] for _ in range(world)]
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        owned[rank].append(index)
        loads[rank] += sizes[index]
    return [sorted(items) for items in owned]


def gather_to_main(ctx: DistContext, obj: T) -> list[T] | None:
    """Collect one picklable object per rank on rank 0 (None elsewhere); [obj] on one rank."""
    if not ctx.active:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] | None = [None] * ctx.world if ctx.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()
