"""Shared pytest setup: the tests folder is importable (ckpt_builders), and trained toy pairs are built once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def toy_backdoor(tmp_path_factory):
    """A tiny GPT-2 trained on a made-up language and a fine-tune with a planted trigger -> target backdoor."""
    from mechdiff.toylm import build_pair

    return build_pair(tmp_path_factory.mktemp("toy") / "backdoor", variant="backdoor", progress=False)


@pytest.fixture
def one_torch_thread():
    """Run tiny models on one torch thread: on the shared 2-core test machine two threads ran the
    architecture lens tests 20-30x slower than one (each op waits for a thread on a busy core)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
