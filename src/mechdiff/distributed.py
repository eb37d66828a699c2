"""torch.distributed for the same commands under torchrun: who am I, what is mine, gather to rank 0.

Outside torchrun (no WORLD_SIZE > 1 in the environment) everything here is a no-op on one rank.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import warnings
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


SINGLE = DistContext()
"""The context of a run without torchrun: rank 0 of 1."""


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
        backend = "gloo"
        if device.startswith("cuda"):
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            backend = process_group_backend(local_world, torch.cuda.device_count())
            torch.cuda.set_device(local_gpu(local_rank))
        dist.init_process_group(backend=backend)
        atexit.register(_destroy_group)
        _match_numba_threads()
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank)


def gpu_for_rank(local_rank: int, n_gpus: int) -> int:
    """LOCAL_RANK mapped onto the GPUs that exist: rank r uses GPU r mod n_gpus (more ranks than GPUs share)."""
    if n_gpus < 1:
        from mechdiff.errors import UsageError

        raise UsageError("a CUDA device was asked for but no CUDA GPU is available; use --device cpu")
    return local_rank % n_gpus


def local_gpu(local_rank: int) -> int:
    """This rank's GPU index on this machine; warns when it shares the GPU with a lower rank."""
    n_gpus = torch.cuda.device_count()
    index = gpu_for_rank(local_rank, n_gpus)
    if local_rank >= n_gpus:
        warnings.warn(f"local rank {local_rank} shares cuda:{index} with another rank: torchrun started more ranks "
                      f"on this machine than it has GPUs ({n_gpus}); collectives go over gloo", stacklevel=2)
    return index


def process_group_backend(local_world: int, n_gpus: int) -> str:
    """gloo for CPU tensors; NCCL for CUDA tensors unless ranks share a GPU, which NCCL refuses."""
    return "cpu:gloo,cuda:nccl" if local_world <= n_gpus else "gloo"


def _match_numba_threads() -> None:
    """Give numba's kernels the threads torch has on this rank (torchrun sets OMP_NUM_THREADS).

    Why: numba otherwise starts one thread per core in every rank, so N ranks on one
    machine would run N x cores kernel threads beside torch's OMP_NUM_THREADS per rank.
    """
    import numba

    from mechdiff.kernels.resolver import prefer_workqueue_threads

    prefer_workqueue_threads()  # before numba starts its thread pool: the layer is fixed then
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _destroy_group() -> None:
    """Tear the process group down while the interpreter is still whole.

    For exits that do not go through `leave`: a failed command, or a user's own script.
    Why: left to interpreter finalization, gloo's worker threads can release tensors
    after Python is gone and the process dies of SIGABRT (pytorch/pytorch#179291).
    It does not prevent every exit-time abort; a finished rank calls `leave` instead.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def leave(code: int = 0) -> None:
    """End this rank of a torchrun job that finished normally: wait for every rank, flush, exit with ``code``.

    Without a process group (one process) this returns and the caller exits as usual.
    Call it last: the process ends here, without torch's C++ teardown and without
    other ``atexit`` handlers, so results must already be written and files closed.

    Why: a rank that had written correct results still died at exit now and then,
    in gloo/torch C++ teardown (SIGABRT, "terminate called without an active
    exception"; 1 in 166 two-rank launches beside two busy loops), which
    failed the whole job. The barrier keeps a rank from closing its connections
    while another still talks to it; after it there is nothing left to tear down.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when a GPU is there, else "cpu"; "cuda" without a GPU is a usage error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from mechdiff.errors import UsageError

        raise UsageError(f"--device {device} was asked for but no CUDA GPU is available; use --device cpu or auto")
    return device


def rank_device(device: str, ctx: DistContext) -> str:
    """The device this rank runs on: "cuda" means this rank's GPU under torchrun (see `local_gpu`)."""
    if ctx.active and device == "cuda":
        return f"cuda:{local_gpu(ctx.local_rank)}"
    return device


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


def all_gather(ctx: DistContext, obj: T) -> list[T]:
    """One picklable object per rank, on every rank (in rank order); [obj] on one rank."""
    if not ctx.active:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * ctx.world
    dist.all_gather_object(gathered, obj)
    return gathered


_OPS = {"sum": "SUM", "min": "MIN", "max": "MAX"}


def all_reduce(ctx: DistContext, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce `tensor` in place across ranks ("sum", "min" or "max") and return it."""
    if ctx.active:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, _OPS[op]))
    return tensor


def average_gradients(ctx: DistContext, params: list[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over ranks: one all-reduce of one flat buffer.

    What DistributedDataParallel does, for modules whose training step is not a single
    forward() (the crosscoder's sparse encode/decode). Parameters without a gradient
    are skipped; every rank must run the same code path so the sets agree.
    """
    if not ctx.active:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = all_reduce(ctx, torch.cat([g.reshape(-1) for g in grads]))
    flat /= ctx.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_module(ctx: DistContext, module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical starting points)."""
    if not ctx.active:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def strided_shard(n_items: int, ctx: DistContext) -> list[int]:
    """Indices rank, rank + world, ... of n_items: this rank's share of an ordered list."""
    return list(range(ctx.rank, n_items, ctx.world))


def share_of(total: int, ctx: DistContext) -> int:
    """This rank's part of a budget split as evenly as integers allow."""
    return total // ctx.world + (ctx.rank < total % ctx.world)


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()
