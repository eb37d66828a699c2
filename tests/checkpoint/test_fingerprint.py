"""Fingerprints hash the tensor bytes: different weights differ, equal weights agree in any file layout,
and the diff's streamed read supplies the digests (no second read)."""

from __future__ import annotations

import pytest
import torch
from ckpt_builders import LLAMA_CONFIG, drift, llama_state, save_folder
from safetensors.torch import save_file

from mechdiff.api import diff_checkpoints
from mechdiff.checkpoint import fingerprint as fp
from mechdiff.checkpoint import open_source
from mechdiff.store import open_results


def test_one_changed_value_changes_the_fingerprint_though_the_header_is_the_same(tmp_path):
    a = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    b = {"w": a["w"].clone()}
    b["w"][2, 3] += 1.0
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    save_file(a, str(tmp_path / "a2.safetensors"))
    fa, fb = open_source(tmp_path / "a.safetensors").fingerprint(), open_source(tmp_path / "b.safetensors").fingerprint()
    assert fa != fb and len(fa) == 16
    assert open_source(tmp_path / "a2.safetensors").fingerprint() == fa  # same weights, another file


@pytest.mark.parametrize("fmt", ["sharded", "bin", "bin-sharded"])
def test_equal_weights_have_one_fingerprint_in_every_layout(tmp_path, fmt):
    state = llama_state(0)
    single = open_source(save_folder(tmp_path / "single", state, LLAMA_CONFIG)).fingerprint()
    assert open_source(save_folder(tmp_path / fmt, state, LLAMA_CONFIG, fmt)).fingerprint() == single
    bf16 = {k: v.to(torch.bfloat16) for k, v in state.items()}  # the dtype is part of the weights
    assert open_source(save_folder(tmp_path / "bf16", bf16, LLAMA_CONFIG)).fingerprint() != single


def test_the_diff_file_names_each_input_by_its_weights_and_hashes_them_while_reading(tmp_path, monkeypatch):
    state = llama_state(0)
    base = save_folder(tmp_path / "base", state, LLAMA_CONFIG)
    ft = save_folder(tmp_path / "ft", drift(state, 0.01), LLAMA_CONFIG)
    twin = save_folder(tmp_path / "twin", state, LLAMA_CONFIG)
    hashed = []
    real = fp.tensor_bytes_digest
    monkeypatch.setattr(fp, "tensor_bytes_digest", lambda t: hashed.append(t.numel()) or real(t))
    diff_checkpoints(base, ft, out=tmp_path / "d.h5", progress=False)
    n_params = sum(t.numel() for t in state.values())
    assert sum(hashed) == 2 * n_params  # each tensor of each model hashed once, in the diff's read
    with open_results(tmp_path / "d.h5") as res:
        attrs = dict(res.file.attrs)
    assert attrs["base_fingerprint"] != attrs["ft_fingerprint"]
    assert attrs["base_fingerprint"] == open_source(twin).fingerprint()
