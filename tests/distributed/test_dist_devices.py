"""LOCAL_RANK onto the GPUs that exist: more ranks than GPUs share them (warned, over gloo). No GPU needed:
the device count is faked."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from mechdiff import distributed
from mechdiff.diffing.weights.diff import DiffConfig
from mechdiff.distributed import (
    DistContext,
    gpu_for_rank,
    process_group_backend,
    rank_device,
)
from mechdiff.errors import UsageError


@pytest.fixture
def one_gpu(monkeypatch):
    """A machine that reports one CUDA device (an H200 box); nothing is ever placed on it."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_ranks_map_round_robin_onto_the_gpus_there_are():
    assert [gpu_for_rank(r, 2) for r in range(5)] == [0, 1, 0, 1, 0]
    assert [gpu_for_rank(r, 8) for r in range(3)] == [0, 1, 2]
    with pytest.raises(UsageError, match="no CUDA GPU"):
        gpu_for_rank(0, 0)


def test_nccl_only_when_every_rank_has_its_own_gpu():
    assert process_group_backend(2, 2) == "cpu:gloo,cuda:nccl"
    assert process_group_backend(2, 1) == "gloo"  # NCCL refuses two ranks on one device


def test_rank_1_on_a_one_gpu_machine_shares_cuda_0_with_a_warning(one_gpu):
    with pytest.warns(UserWarning, match="shares cuda:0"):
        assert rank_device("cuda", DistContext(rank=1, world=2, local_rank=1)) == "cuda:0"
    assert rank_device("cuda", DistContext(rank=0, world=2, local_rank=0)) == "cuda:0"
    with pytest.warns(UserWarning, match="shares cuda:0"):
        assert DiffConfig(device="auto").resolved_device(1) == torch.device("cuda:0")
    with pytest.warns(UserWarning):
        assert DiffConfig(device="cuda").resolved_device(1) == torch.device("cuda:0")


def test_init_from_env_sets_an_existing_device_and_avoids_nccl_when_sharing(one_gpu, monkeypatch):
    calls = {}
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.setdefault("backend", backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.setdefault("device", index))
    monkeypatch.setattr(distributed.atexit, "register", lambda fn: None)
    monkeypatch.setattr(distributed, "_match_numba_threads", lambda: None)
    with pytest.warns(UserWarning, match="shares cuda:0"):
        ctx = distributed.init_from_env("cuda")
    assert calls == {"backend": "gloo", "device": 0}
    assert (ctx.rank, ctx.world, ctx.local_rank) == (1, 2, 1)
