"""The data-free weight diff: planted low-rank edits must outrank larger diffuse drift."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ckpt_builders import (
    GPT2_CONFIG,
    LLAMA_CONFIG,
    LLAMA_DOWN,
    LLAMA_Q0,
    drift,
    gpt2_state,
    llama_state,
    low_rank,
    planted_llama,
    save_folder,
)

from mechdiff.api import diff_checkpoints
from mechdiff.diffing.weights.result import load_weight_diff
from mechdiff.results import open_results

DOWN, Q0 = LLAMA_DOWN, LLAMA_Q0


def _planted_pair(tmp_path, **sizes):
    state, ft, cfg = planted_llama(**sizes)
    return save_folder(tmp_path / "base", state, cfg), save_folder(tmp_path / "ft", ft, cfg)


def test_planted_edits_rank_first_over_larger_drift(tmp_path):
    base, ft = _planted_pair(tmp_path)
    result = diff_checkpoints(base, ft, out=tmp_path / "out.h5", progress=False)
    top = {c.tensor: c.rank for c in result.changes[:2]}
    assert top == {DOWN: 1, Q0: 2}
    assert all(c.rank == 0 for c in result.changes[2:])  # 1-3% drift everywhere else
    head = result.heads[0]
    assert (head.layer, head.head, head.kind, head.rank) == (0, 2, "attn", 2)
    assert result.heads[1].score < head.score / 10
    down = next(c for c in result.changes if c.tensor == DOWN)
    assert down.structured_fraction > 0.1 and abs(down.score - 0.01) < 0.002  # score ~ edit size / ||W||


def test_mid_size_model_detects_a_one_percent_head_edit(tmp_path):
    base, ft = _planted_pair(tmp_path, d=384, ffn=768, n_heads=6, n_kv=2, head_dim=64, head_rel=0.01)
    result = diff_checkpoints(base, ft, progress=False)
    assert {c.tensor: c.rank for c in result.changes[:2]} == {DOWN: 1, Q0: 2}
    assert (result.heads[0].layer, result.heads[0].head) == (0, 2)


@pytest.mark.parametrize("rel", [0.001, 0.03, 0.3])
def test_pure_drift_of_any_size_has_rank_zero(tmp_path, rel):
    state = llama_state(1)
    base = save_folder(tmp_path / "b", state, LLAMA_CONFIG)
    ft = save_folder(tmp_path / "f", drift(state, rel, seed=11), LLAMA_CONFIG)
    result = diff_checkpoints(base, ft, progress=False)
    assert [c.rank for c in result.changes] == [0] * len(result.changes)
    assert all(h.rank == 0 for h in result.heads)
    matrices = [c for c in result.changes if len(c.shape) == 2]
    assert all(abs(c.rel_delta - rel) < 1e-3 * max(rel, 1e-3) * 10 for c in matrices)


def test_gpt2_conv1d_head_edit_in_fused_qkv(tmp_path):
    state = gpt2_state(0)
    ft = drift(state, 0.01, seed=3)
    name = "transformer.h.1.attn.c_attn.weight"  # [in=64, out=192]: v block of head 3 = columns 128+48..128+64
    edit = torch.zeros_like(state[name])
    edit[:, 176:192] = low_rank((64, 16), 2, 0.03 * float(state[name].norm()), seed=4)
    ft[name] = ft[name] + edit
    result = diff_checkpoints(save_folder(tmp_path / "b", state, GPT2_CONFIG),
                              save_folder(tmp_path / "f", ft, GPT2_CONFIG), progress=False)
    assert result.changes[0].tensor == name and result.changes[0].rank == 2
    head = result.heads[0]
    assert (head.layer, head.head, head.rank) == (1, 3, 2)
    assert head.parts["attn_v"]["rank"] == 2 and head.parts["attn_q"]["rank"] == 0


def test_lora_adapter_comes_out_as_exactly_its_rank(tmp_path):
    from safetensors.torch import save_file

    state = llama_state(0)
    base = save_folder(tmp_path / "b", state, LLAMA_CONFIG)
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(3, 128, generator=g), torch.randn(64, 3, generator=g) * 0.01
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 3, "lora_alpha": 6}))
    module = "model.layers.0.mlp.down_proj"
    save_file({f"base_model.model.{module}.lora_A.weight": a, f"base_model.model.{module}.lora_B.weight": b},
              str(adapter / "adapter_model.safetensors"))
    result = diff_checkpoints(base, adapter=adapter, progress=False)
    top = result.changes[0]
    expected_rel = float(torch.linalg.norm((b @ a) * 2.0) / torch.linalg.norm(state[module + ".weight"]))
    assert top.tensor == module + ".weight" and top.rank == 3
    assert top.rel_delta == pytest.approx(expected_rel, rel=1e-5)
    assert top.structured_fraction == pytest.approx(1.0, abs=1e-4)
    assert all(c.rel_delta == 0 for c in result.changes[1:])


def test_nan_in_ft_is_flagged_and_other_tensors_unaffected(tmp_path):
    state = llama_state(0)
    ft = drift(state, 0.01, seed=2)
    clean = diff_checkpoints(save_folder(tmp_path / "b", state, LLAMA_CONFIG),
                             save_folder(tmp_path / "f0", ft, LLAMA_CONFIG), progress=False)
    ft[DOWN] = ft[DOWN].clone()
    ft[DOWN][0, :3] = float("nan")
    ft[DOWN][1, 0] = float("inf")
    result = diff_checkpoints(tmp_path / "b", save_folder(tmp_path / "f1", ft, LLAMA_CONFIG), progress=False)
    bad = next(c for c in result.changes if c.tensor == DOWN)
    assert (bad.nan_ft, bad.inf_ft) == (3, 1) and np.isfinite(bad.rel_delta)
    assert any(DOWN in w and "3 NaN and 1 Inf" in w for w in result.warnings)
    before = {c.tensor: c.rel_delta for c in clean.changes}
    for c in result.changes:
        if c.tensor != DOWN:
            assert c.rel_delta == before[c.tensor]


def test_json_and_hdf5_agree(tmp_path):
    base, ft = _planted_pair(tmp_path)
    result = diff_checkpoints(base, ft, out=tmp_path / "o.h5", progress=False)
    doc = result.to_json()
    assert doc["schema_version"] == 1 and set(doc) >= {"changes", "heads", "added", "removed", "reshaped", "warnings"}
    first = doc["changes"][0]
    assert set(first) >= {"tensor", "layer", "kind", "head", "score", "rel_delta", "rank", "structured_fraction",
                          "tokens_in", "tokens_out"}
    json.dumps(doc)
    with open_results(tmp_path / "o.h5") as res:
        loaded = load_weight_diff(res).to_json()
        vectors = res.weights.array("vectors/0/U")
        assert vectors.dtype == np.float16 and vectors.shape[0] == result.changes[0].shape[0]
    assert [c["tensor"] for c in loaded["changes"]] == [c["tensor"] for c in doc["changes"]]
    assert [c["rank"] for c in loaded["changes"]] == [c["rank"] for c in doc["changes"]]
    assert loaded["heads"][0]["head"] == doc["heads"][0]["head"]


def test_real_fine_tune_readouts_name_the_trigger_or_target(toy_backdoor):
    """A tiny GPT-2 trained for real, fine-tuned so a trigger is followed by a target token."""
    result = diff_checkpoints(toy_backdoor.base_dir, toy_backdoor.ft_dir, progress=False)
    planted = {toy_backdoor.trigger, toy_backdoor.target}
    top = result.changes[:3]
    named = [c for c in top if planted & set(c.tokens_in[:5] + c.tokens_out[:5])]
    assert named, [(c.tensor, c.tokens_in[:5], c.tokens_out[:5]) for c in top]
    assert planted & set(result.moved_tokens)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_diff_equals_cpu_diff(tmp_path):
    from mechdiff.diffing.weights.diff import DiffConfig

    base, ft = _planted_pair(tmp_path)
    cpu = diff_checkpoints(base, ft, config=DiffConfig(device="cpu"), progress=False)
    gpu = diff_checkpoints(base, ft, config=DiffConfig(device="cuda"), progress=False)
    assert [c.tensor for c in gpu.changes] == [c.tensor for c in cpu.changes]
    for a, b in zip(gpu.changes, cpu.changes):
        assert a.rank == b.rank and a.score == pytest.approx(b.score, rel=1e-3, abs=1e-9)


def test_pair_reader_and_delta_workspace_reuse_their_buffers(tmp_path):
    from mechdiff.checkpoint import open_source, pair_sources
    from mechdiff.diffing.weights.diff import DeltaWorkspace, PairReader

    base_dir, ft_dir = _planted_pair(tmp_path)
    base, ft = open_source(base_dir), open_source(ft_dir)
    pairs = sorted(pair_sources(base, ft).pairs, key=lambda p: -p.numel)
    reader, workspace = PairReader(base, ft), DeltaWorkspace()
    pointers = set()
    for pair in pairs:  # largest first: every later read fits the grown buffers
        b, f = reader.read(pair)
        torch.testing.assert_close(b, base.get(pair.base_name), rtol=0, atol=0)
        torch.testing.assert_close(f, ft.get(pair.ft_name), rtol=0, atol=0)
        pointers.add(b.untyped_storage().data_ptr())
        d = workspace.take(b.shape)
        assert d.shape == b.shape and d.is_contiguous() and d.dtype == torch.float32
        pointers.add(d.data_ptr())
    assert len(pointers) == 2  # one base buffer, one delta buffer


def test_head_blocks_are_views_in_head_order():
    from mechdiff.checkpoint.layout import HeadGeometry
    from mechdiff.diffing.weights.diff import _stacked_slices
    from mechdiff.diffing.weights.heads import head_slices

    # 3 query heads of size 2 over a [6, 4] matrix (rows), and the o-style column split
    matrix = torch.arange(24.0).reshape(6, 4)
    geometry = HeadGeometry(head_dim=2, n_heads=3, n_kv_heads=3)
    for spec, shape, mat in (("q", (6, 4), matrix), ("o", (4, 6), matrix.T)):
        slices = head_slices(spec, "attn_q", shape, geometry)
        blocks = _stacked_slices(slices, mat)
        assert blocks.data_ptr() == matrix.data_ptr()  # a view, no copy
        for sl, block in zip(slices, blocks, strict=True):
            torch.testing.assert_close(block, sl.take(mat), rtol=0, atol=0)
