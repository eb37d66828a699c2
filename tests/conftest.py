"""Shared pytest setup: the tests folder is importable (ckpt_builders), and trained toy pairs are built once."""

from __future__ import annotations

import os

import pytest

# Every process the tests start (the CLI, torchrun ranks) inherits one OpenMP thread too.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def toy_backdoor(tmp_path_factory):
    """A tiny GPT-2 trained on a made-up language and a fine-tune with a planted trigger -> target backdoor."""
    from mechdiff.toylm import build_pair

    return build_pair(tmp_path_factory.mktemp("toy") / "backdoor", variant="backdoor", progress=False)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Run the suite on one torch thread. On the shared 2-core test machine, with other work keeping
    both cores busy, two OpenMP threads made tiny-model tests 8-30x slower than one (each op waits
    at a barrier for a thread whose core is taken). The whole suite beside two busy loops:
    3454 s with torch's default threads, 697 s with one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
