"""Large matrices in row blocks: a streamed diff equals the whole-matrix one, statistics exactly."""

from __future__ import annotations

import math

import pytest
import torch
from ckpt_builders import LLAMA_CONFIG, drift, llama_state, low_rank, save_folder

from mechdiff.api import diff_checkpoints
from mechdiff.checkpoint import open_source, pair_sources
from mechdiff.checkpoint.fingerprint import known_digests, tensor_bytes_digest
from mechdiff.diffing.weights.diff import DiffConfig
from mechdiff.diffing.weights.readout import RowTable, rows_times
from mechdiff.diffing.weights.streamed import StreamedPair, should_stream
from mechdiff.kernels import delta_stats

UP = "model.layers.1.mlp.up_proj.weight"
DOWN = "model.layers.0.mlp.down_proj.weight"
EMBED = "model.embed_tokens.weight"
WHOLE = DiffConfig(stream_above_mb=0)
# every plain matrix streams, in blocks of one sign word (64 rows)
BLOCKED = DiffConfig(stream_above_mb=1e-6, block_mb=1e-6)


def _pair(tmp_path, dtype=torch.float32, nonfinite=False):
    state = llama_state(0, d=128, ffn=320, n_heads=4, n_kv=2, head_dim=32, vocab=200)
    ft = drift(state, 0.02)
    ft[UP] = ft[UP] + low_rank(tuple(state[UP].shape), 2, 0.02 * float(state[UP].norm()))  # reads the residual
    ft[DOWN] = ft[DOWN] + low_rank(tuple(state[DOWN].shape), 1, 0.02 * float(state[DOWN].norm()))  # writes it
    ft[EMBED][17] += 0.5  # token 17 moved most
    if nonfinite:
        ft[UP][70, 3], ft[UP][130, 5], state[UP][2, 2] = math.nan, math.inf, -math.inf
    cfg = {**LLAMA_CONFIG, "hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
           "head_dim": 32, "intermediate_size": 320, "vocab_size": 200}
    cast = {k: v.to(dtype) for k, v in state.items()}
    return (save_folder(tmp_path / "base", cast, cfg),
            save_folder(tmp_path / "ft", {k: v.to(dtype) for k, v in ft.items()}, cfg))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_diff_equals_the_whole_matrix_diff(tmp_path, dtype):
    base, ft = _pair(tmp_path, dtype)
    whole = diff_checkpoints(base, ft, config=WHOLE, progress=False)
    blocked = diff_checkpoints(base, ft, config=BLOCKED, progress=False)
    assert [c.tensor for c in blocked.changes] == [c.tensor for c in whole.changes]
    assert {c.tensor: c.rank for c in blocked.changes[:3]} == {UP: 2, DOWN: 1, EMBED: 1}  # row 17: rank 1
    for w, b in zip(whole.changes, blocked.changes, strict=True):
        assert (b.rank, b.tokens_in, b.tokens_out, b.n_intruders) == (w.rank, w.tokens_in, w.tokens_out, w.n_intruders)
        assert b.score == pytest.approx(w.score, rel=1e-5)
        assert b.rel_delta == pytest.approx(w.rel_delta, rel=1e-12)
        assert b.max_abs_delta == w.max_abs_delta
    assert next(c for c in blocked.changes if c.tensor == UP).tokens_in  # the readouts ran through the streamed embedding
    assert blocked.moved_tokens == whole.moved_tokens and blocked.moved_tokens[0] == "#17"
    heads = [(h.layer, h.head, h.score) for h in whole.heads]
    assert [(h.layer, h.head, h.score) for h in blocked.heads] == heads  # heads are never streamed


def test_only_large_plain_matrices_stream(tmp_path):
    base, ft = _pair(tmp_path)
    b, f = open_source(base), open_source(ft)
    pairs = {p.name: p for p in pair_sources(b, f).pairs}
    above = 320 * 128 * 4 - 1  # just below the MLP matrices' float32 size
    streams = {n for n, p in pairs.items() if should_stream(b, f, p, above_bytes=above, heads=True)}
    assert streams == {n for n in pairs if "mlp" in n}
    streams = {n for n, p in pairs.items() if should_stream(b, f, p, above_bytes=1, heads=True)}
    assert "model.layers.0.self_attn.q_proj.weight" not in streams  # split into heads: analyzed whole
    assert "model.norm.weight" not in streams and EMBED in streams
    assert not any(should_stream(b, f, p, above_bytes=0, heads=True) for p in pairs.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_statistics_of_a_matrix_larger_than_a_block_are_exact(tmp_path, dtype):
    base, ft = _pair(tmp_path, dtype, nonfinite=True)
    b, f = open_source(base), open_source(ft)
    pair = next(p for p in pair_sources(b, f).pairs if p.name == UP)
    streamed = StreamedPair(b, f, pair, block_bytes=64 * 128 * 4)  # 5 blocks of 64 rows, the last one 64
    try:
        stats, norms = streamed.statistics(n_bins=64, row_norms=True)
        out = torch.empty(320, 128)
        expected = delta_stats(b.get(UP), f.get(UP), n_bins=64, out=out)
        assert streamed.block_rows == 64 < pair.base_shape[0]
        for name in ("n", "nan_base", "inf_base", "nan_ft", "inf_ft", "n_excluded", "n_zero", "max_abs_d"):
            assert getattr(stats, name) == getattr(expected, name), name
        assert (stats.nan_ft, stats.inf_ft, stats.inf_base) == (1, 1, 1)
        assert (stats.hist == expected.hist).all()
        for name in ("sum_b2", "sum_f2", "sum_bf", "sum_d2"):
            assert getattr(stats, name) == pytest.approx(getattr(expected, name), rel=1e-12), name
        torch.testing.assert_close(norms, torch.linalg.vector_norm(out, dim=1), rtol=0, atol=0)
        torch.testing.assert_close(streamed.delta(torch.device("cpu")).dense(), out, rtol=0, atol=0)
    finally:
        streamed.close()
    # the bytes' digests were taken on the way, as a whole read takes them
    assert known_digests(b, [UP]) == {UP: tensor_bytes_digest(b.get(UP))}
    assert known_digests(f, [UP]) == {UP: tensor_bytes_digest(f.get(UP))}


def test_nonfinite_streamed_matrix_matches_the_whole_diff(tmp_path):
    base, ft = _pair(tmp_path, nonfinite=True)
    whole = diff_checkpoints(base, ft, config=WHOLE, progress=False)
    blocked = diff_checkpoints(base, ft, config=BLOCKED, progress=False)
    w, b = (next(c for c in r.changes if c.tensor == UP) for r in (whole, blocked))
    assert (b.nan_ft, b.inf_ft, b.inf_base, b.rank) == (w.nan_ft, w.inf_ft, w.inf_base, w.rank) == (1, 1, 1, 2)
    assert b.score == pytest.approx(w.score, rel=1e-5)
    assert sorted(blocked.warnings) == sorted(whole.warnings)


def test_row_table_products_equal_the_loaded_table(tmp_path):
    base, _ = _pair(tmp_path, torch.bfloat16)
    source = open_source(base)
    table = RowTable(source, EMBED)
    directions = torch.randn(128, 3)
    assert table.shape == (200, 128) and table.dtype == torch.bfloat16
    torch.testing.assert_close(rows_times(table, directions), rows_times(source.get(EMBED), directions),
                               rtol=0, atol=0)
    assert torch.equal(table[150:200], source.get(EMBED)[150:200])


def test_deferred_readouts_through_a_row_table_equal_the_loaded_ones(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from mechdiff.diffing.weights import readout as readout_module
    from mechdiff.diffing.weights.readout import ReadoutMatrices, Vocabulary

    monkeypatch.setattr(readout_module, "READOUT_BLOCK_ROWS", 48)  # 200 rows: 5 blocks, the last one 8
    base, _ = _pair(tmp_path, torch.bfloat16)
    source = open_source(base)
    table = RowTable(source, EMBED)
    loaded = ReadoutMatrices(source.get(EMBED), source.get(EMBED), Vocabulary())
    streamed = ReadoutMatrices(table, table, Vocabulary())  # tied: one pass serves both sides
    g = torch.Generator().manual_seed(3)
    V = torch.randn(128, 3, generator=g).numpy()
    V[:, 1] = -source.get(EMBED)[42].float().numpy()  # a direction whose strongest token is negative
    U = torch.randn(128, 2, generator=g).numpy()
    targets = [SimpleNamespace(tokens_in=[], tokens_out=[]) for _ in range(2)]
    streamed.read_out(targets[0], "mlp_in", U, V, 3, 4)
    streamed.read_out(targets[1], "mlp_out", U, V, 2, 4)
    assert targets[0].tokens_in == []  # deferred until flush
    streamed.flush()
    expected_in, _ = loaded.tokens_for("mlp_in", U, V, 3, 4)
    _, expected_out = loaded.tokens_for("mlp_out", U, V, 2, 4)
    assert targets[0].tokens_in == expected_in and "#42" in expected_in
    assert targets[1].tokens_out == expected_out and expected_out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_pairs_gathered_on_the_device_equal_the_whole_matrix_diff(tmp_path, dtype, monkeypatch):
    # the GPU path forced onto the CPU: row blocks read on the host, D gathered whole on the
    # "device" by the torch statistics, the spectrum run on it whole
    from mechdiff.checkpoint import fingerprint
    from mechdiff.diffing.weights import diff as diff_module

    base, ft = _pair(tmp_path, dtype, nonfinite=True)
    whole = diff_checkpoints(base, ft, config=WHOLE, progress=False)
    monkeypatch.setattr(diff_module, "_fits", lambda device, shape: True)
    fingerprint._DIGESTS.clear()
    config = DiffConfig(stream_above_mb=1e-6, block_mb=1e-6, device_statistics=True, read_ahead=True)
    gathered = diff_checkpoints(base, ft, config=config, progress=False)
    assert [c.tensor for c in gathered.changes] == [c.tensor for c in whole.changes]
    for w, g in zip(whole.changes, gathered.changes, strict=True):
        assert (g.rank, g.tokens_in, g.tokens_out, g.n_intruders) == (w.rank, w.tokens_in, w.tokens_out, w.n_intruders)
        assert (g.nan_ft, g.inf_ft, g.inf_base, g.max_abs_delta) == (w.nan_ft, w.inf_ft, w.inf_base, w.max_abs_delta)
        assert g.score == pytest.approx(w.score, rel=1e-5) and g.rel_delta == pytest.approx(w.rel_delta, rel=1e-12)
    assert gathered.moved_tokens == whole.moved_tokens
    source = open_source(base)
    assert known_digests(source, [EMBED]) == {EMBED: tensor_bytes_digest(source.get(EMBED))}
