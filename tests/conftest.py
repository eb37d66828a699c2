"""Shared pytest setup: the tests folder is importable (ckpt_builders), and trained toy pairs are built once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def toy_backdoor(tmp_path_factory):
    """A tiny GPT-2 trained on a made-up language and a fine-tune with a planted trigger -> target backdoor."""
    from mechdiff.toylm import build_pair

    return build_pair(tmp_path_factory.mktemp("toy") / "backdoor", variant="backdoor", progress=False)
