"""Spectral engine: randomized SVD accuracy, noise bulk, structured rank and score.

Planted deltas: a base W with Gaussian entries, drift N scaled to a fraction of ||W||,
and rank-r edits u v^T of a chosen fraction of ||W|| along random unit directions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mechdiff.weightdecomp.spectral import (
    SpectralConfig,
    analyze_delta,
    detection_threshold,
    frobenius2,
    intruder_dimensions,
    mp_edge,
    principal_angles,
    randomized_svd,
    score_1d,
    spike_strength,
    structured_score,
)

CONFIG = SpectralConfig()


def _planted(m: int, n: int, drift: float, edits: list[float], seed: int
             ) -> tuple[float, torch.Tensor, float]:
    """Base norm, delta [m, n] and the per-entry drift std of a planted fine-tune."""
    gen = torch.Generator().manual_seed(seed)
    base_norm = float(torch.randn(m, n, generator=gen).norm())
    noise = torch.randn(m, n, generator=gen)
    D = noise * (drift * base_norm / float(noise.norm()))
    for frac in edits:
        u = torch.randn(m, 1, generator=gen)
        v = torch.randn(n, 1, generator=gen)
        D += frac * base_norm * (u / u.norm()) @ (v / v.norm()).T
    return base_norm, D, drift * base_norm / math.sqrt(m * n)


def _analyze(D: torch.Tensor, base_norm: float, config: SpectralConfig = CONFIG):
    return analyze_delta(D, base_norm=base_norm, config=config)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="k must be"):
        SpectralConfig(k=0)
    with pytest.raises(ValueError, match="k_max"):
        SpectralConfig(k=64, k_max=32)
    with pytest.raises(ValueError, match="rel_floor"):
        SpectralConfig(rel_floor=1.0)


def test_mp_edge_and_spike_inversion_by_hand():
    # sigma=2, 4x9: edge = 2 (2 + 3) = 10.
    assert mp_edge(2.0, 4, 9) == pytest.approx(10.0)
    # sigma=1, m=4, n=9, theta^2=12: s^2 = (12+4)(12+9)/12 = 28.
    assert spike_strength(np.array([math.sqrt(28.0)]), 1.0, 4, 9)[0] == pytest.approx(
        math.sqrt(12.0))
    # At the edge the spike sits exactly at the BBP threshold theta^2 = sigma^2 sqrt(mn) = 6.
    assert spike_strength(np.array([5.0]), 1.0, 4, 9)[0] == pytest.approx(math.sqrt(6.0))
    # Without noise nothing is inflated.
    assert spike_strength(np.array([3.0]), 0.0, 4, 9)[0] == pytest.approx(3.0)


def test_detection_threshold_margin_is_tracy_widom_units():
    # 64x64, sigma=1: edge 16, TW unit 0.5 (2/8)^(1/3) = 0.31498, margin 5 units.
    cut = detection_threshold(1.0, 64, 64, SpectralConfig(tw_quantile=5.0))
    assert cut == pytest.approx(16 + 5 * 0.5 * 0.25 ** (1 / 3))


def test_frobenius2_matches_float64_sum():
    D = torch.randn(37, 29, generator=torch.Generator().manual_seed(3))
    assert frobenius2(D) == pytest.approx(float((D.double() ** 2).sum()), rel=1e-6)


@pytest.mark.parametrize("method", ["krylov", "subspace"])
def test_randomized_svd_recovers_decaying_spectrum(method):
    gen = torch.Generator().manual_seed(0)
    m, n = 400, 300
    U0 = torch.linalg.qr(torch.randn(m, n, generator=gen)).Q
    V0 = torch.linalg.qr(torch.randn(n, n, generator=gen)).Q
    s0 = 0.9 ** torch.arange(n, dtype=torch.float32)
    D = U0 @ torch.diag(s0) @ V0.T
    U, S, V = randomized_svd(D, 10, generator=torch.Generator().manual_seed(1), method=method)
    assert U.shape == (m, 10) and S.shape == (10,) and V.shape == (n, 10)
    torch.testing.assert_close(S, s0[:10], rtol=1e-4, atol=0)
    # Vectors agree up to sign: |<u_i, u0_i>| ~ 1.
    cos_u = (U * U0[:, :10]).sum(0).abs()
    cos_v = (V * V0[:, :10]).sum(0).abs()
    assert float(cos_u.min()) > 0.999 and float(cos_v.min()) > 0.999


def test_krylov_sketch_resolves_a_spike_just_above_the_bulk():
    # Observed s = 1.15x the edge of a unit-variance 512x1024 bulk: theta^2 solves
    # t^2 - (s^2 - m - n) t + mn = 0. Subspace iteration at this depth is off by ~1%.
    m, n = 512, 1024
    gen = torch.Generator().manual_seed(12)
    s2 = (1.15 * mp_edge(1.0, m, n)) ** 2
    theta = math.sqrt(((s2 - m - n) + math.sqrt((s2 - m - n) ** 2 - 4 * m * n)) / 2)
    u, v = torch.randn(m, 1, generator=gen), torch.randn(n, 1, generator=gen)
    D = torch.randn(m, n, generator=gen) + theta * (u / u.norm()) @ (v / v.norm()).T
    spec = _analyze(D, 100.0)
    assert not spec.exact and spec.rank == 1
    assert spec.singular_values[0] == pytest.approx(float(torch.linalg.svdvals(D)[0]), rel=0.01)
    assert spec.spike_strengths[0] == pytest.approx(theta, rel=0.05)


@pytest.mark.parametrize("method", ["krylov", "subspace"])
def test_randomized_svd_of_an_exactly_low_rank_matrix(method):
    # The Krylov space is exhausted after rank 3: later blocks are round-off and must
    # neither break orthonormality nor invent singular values.
    gen = torch.Generator().manual_seed(4)
    D = torch.randn(600, 3, generator=gen) @ torch.randn(3, 500, generator=gen)
    U, S, V = randomized_svd(D, 8, generator=torch.Generator().manual_seed(0), method=method)
    torch.testing.assert_close(S[:3], torch.linalg.svdvals(D)[:3], rtol=1e-5, atol=0)
    assert float(S[3:].max()) < 1e-5 * float(S[0])
    torch.testing.assert_close(U[:, :3].T @ U[:, :3], torch.eye(3), atol=1e-5, rtol=0)
    assert bool(torch.isfinite(U).all() and torch.isfinite(V).all())


def test_randomized_svd_is_seeded_and_clips_k():
    D = torch.randn(300, 260, generator=torch.Generator().manual_seed(5))
    first = randomized_svd(D, 8, generator=torch.Generator().manual_seed(9))
    again = randomized_svd(D, 8, generator=torch.Generator().manual_seed(9))
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    U, S, V = randomized_svd(D[:5], 32)  # small: exact path, k clipped to 5
    assert U.shape == (5, 5) and S.shape == (5,) and V.shape == (260, 5)
    torch.testing.assert_close(S, torch.linalg.svdvals(D[:5]), rtol=1e-5, atol=1e-6)


def test_randomized_svd_accepts_bfloat16_and_rejects_vectors():
    D = torch.randn(70, 50, generator=torch.Generator().manual_seed(2)).bfloat16()
    _, S, _ = randomized_svd(D, 4)
    assert S.dtype == torch.float32
    torch.testing.assert_close(S, torch.linalg.svdvals(D.float())[:4], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="matrix"):
        randomized_svd(torch.ones(5), 2)


@pytest.mark.parametrize("shape", [(64, 64), (64, 256), (256, 64), (384, 1536), (1536, 384)])
@pytest.mark.parametrize("drift", [0.01, 0.03])
def test_rank_one_edit_of_one_percent_is_found(shape, drift):
    m, n = shape
    base_norm, D, sigma = _planted(m, n, drift, [0.01], seed=m + n)
    spec = _analyze(D, base_norm)
    assert spec.rank == 1
    exact = torch.linalg.svdvals(D).numpy()
    assert spec.singular_values[0] == pytest.approx(exact[0], rel=0.01)
    assert spec.noise_sigma == pytest.approx(sigma, rel=0.05)
    # The debiased strength recovers the planted 1% (the observed s_1 is inflated).
    assert spec.spike_strengths[0] / base_norm == pytest.approx(0.01, rel=0.1)
    assert spec.score == pytest.approx(0.01, rel=0.1)


@pytest.mark.parametrize(("shape", "drift", "edits"), [
    ((64, 256), 0.02, [0.008, 0.007]),
    ((384, 1536), 0.02, [0.008, 0.007]),
    # One head of a 64x64 q_proj with head_dim 16: 3% drift everywhere and a rank-2 edit
    # of 1% of the whole tensor's norm, i.e. 2% of the slice's (half the whole norm).
    ((16, 64), 0.03, [0.0141, 0.0141]),
])
def test_rank_two_edit_gives_rank_two(shape, drift, edits):
    m, n = shape
    base_norm, D, sigma = _planted(m, n, drift, edits, seed=11)
    spec = _analyze(D, base_norm)
    assert spec.rank == 2
    exact = torch.linalg.svdvals(D).numpy()
    np.testing.assert_allclose(spec.singular_values[:2], exact[:2], rtol=0.01)
    assert spec.noise_sigma == pytest.approx(sigma, rel=0.05)
    assert 0 < spec.structured_fraction < 1


@pytest.mark.parametrize("shape", [(16, 64), (32, 32), (64, 64), (256, 64)])
def test_pure_drift_of_any_size_has_rank_zero(shape):
    m, n = shape
    rng = np.random.default_rng(m * n)
    ranks = []
    for seed in range(200):
        drift = float(10 ** rng.uniform(-3, math.log10(0.3)))
        base_norm, D, _ = _planted(m, n, drift, [], seed=seed)
        ranks.append(_analyze(D, base_norm).rank)
    assert sum(ranks) == 0


def test_pure_drift_on_the_sketched_path_has_rank_zero_and_unbiased_sigma():
    # A flat spectrum is where the sketch underestimates the bulk values; sigma must not.
    base_norm, D, sigma = _planted(512, 1024, 0.02, [], seed=4)
    spec = _analyze(D, base_norm)
    assert not spec.exact and spec.rank == 0
    exact = torch.linalg.svdvals(D).numpy()
    last = len(spec.singular_values) - 1
    assert last + 1 == CONFIG.screen_k  # drift only: the short screening sketch is kept
    assert spec.singular_values[last] < 0.99 * exact[last]
    assert spec.noise_sigma == pytest.approx(sigma, rel=0.01)
    assert spec.score == pytest.approx(CONFIG.drift_weight * 0.02, rel=1e-3)


def _scaled_drift(m: int, n: int, spread: float, seed: int) -> torch.Tensor:
    """Drift whose row and column scales are log-uniform over [1, spread] (not iid)."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.exp(torch.rand(m, 1, generator=gen) * math.log(spread))
    cols = torch.exp(torch.rand(1, n, generator=gen) * math.log(spread))
    return rows * torch.randn(m, n, generator=gen) * cols


def test_row_and_column_scaled_drift_is_not_structure():
    ranks, iid_ranks = [], []
    for seed in range(4):
        D = _scaled_drift(256, 384, 3.0, seed)
        ranks.append(_analyze(D, 100.0).rank)
        iid_ranks.append(_analyze(D, 100.0, SpectralConfig(signflip=False)).rank)
    assert max(ranks) <= 1 and sum(ranks) <= 1
    assert min(iid_ranks) >= 5  # what an iid edge alone makes of it


def test_edit_in_row_and_column_scaled_drift_is_found():
    D = _scaled_drift(256, 384, 3.0, seed=7)
    gen = torch.Generator().manual_seed(7)
    u, v = torch.randn(256, 1, generator=gen), torch.randn(384, 1, generator=gen)
    D += 1.5 * float(torch.linalg.matrix_norm(D, ord=2)) * (u / u.norm()) @ (v / v.norm()).T
    assert _analyze(D, 100.0).rank == 1


def test_small_edit_outranks_larger_drift_of_other_shapes():
    norm_edit, D_edit, _ = _planted(64, 256, 0.01, [0.01], seed=1)
    edit = _analyze(D_edit, norm_edit)
    drifts = []
    for shape, size in [((384, 1536), 0.03), ((64, 64), 0.3), ((256, 64), 0.1)]:
        base_norm, D, _ = _planted(*shape, size, [], seed=2)
        drifts.append(_analyze(D, base_norm))
    assert all(edit.score > d.score for d in drifts)
    # Drift-only tensors still sort by size among themselves.
    assert drifts[1].score > drifts[2].score > drifts[0].score


def test_merged_lora_comes_out_as_its_rank():
    gen = torch.Generator().manual_seed(8)
    W = torch.randn(300, 200, generator=gen)
    B, A = torch.randn(300, 4, generator=gen), torch.randn(4, 200, generator=gen)
    D = (W + 0.01 * B @ A) - W  # fp32 round-off is the only bulk
    spec = _analyze(D, float(W.norm()))
    assert spec.rank == 4
    assert spec.structured_fraction == pytest.approx(1.0, abs=1e-5)
    assert spec.rel_delta == pytest.approx(float(D.norm() / W.norm()), rel=1e-6)


def test_k_grows_when_every_value_is_structured():
    gen = torch.Generator().manual_seed(8)
    B, A = torch.randn(400, 40, generator=gen), torch.randn(40, 300, generator=gen)
    spec = _analyze(B @ A, 100.0, SpectralConfig(k=16))
    assert spec.rank == 40
    assert len(spec.singular_values) >= 40
    no_growth = _analyze(B @ A, 100.0, SpectralConfig(k=16, k_max=0))
    assert no_growth.rank == 16


def test_non_finite_delta_is_refused():
    D = torch.zeros(40, 30)
    D[3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        _analyze(D, 1.0)


def test_zero_delta_is_all_zero():
    spec = _analyze(torch.zeros(40, 30), 5.0)
    assert spec.rank == 0 and spec.score == 0 and spec.stable_rank == 0
    assert spec.noise_sigma == 0 and spec.rel_delta == 0


def test_structured_and_1d_scores_share_one_scale():
    # sqrt(3^2 + 4^2) / 100 + 1e-3 * 0.2 = 0.0502
    assert structured_score(np.array([3.0, 4.0]), 100.0, 0.2) == pytest.approx(0.0502)
    assert score_1d(0.2) == pytest.approx(structured_score(np.zeros(0), 100.0, 0.2))


def test_principal_angles_by_hand():
    e = torch.eye(3, dtype=torch.float64)
    diagonal = (e[:, :1] + e[:, 1:2]) / math.sqrt(2)
    np.testing.assert_allclose(principal_angles(e[:, :1], diagonal), [math.pi / 4])
    # Same span, different basis: all angles 0.
    np.testing.assert_allclose(principal_angles(e[:, :2], e[:, :2] @ torch.tensor(
        [[1.0, 1.0], [0.0, 2.0]], dtype=torch.float64)), [0, 0], atol=1e-7)


def test_intruder_dimension_is_flagged_only_for_a_new_direction():
    gen = torch.Generator().manual_seed(6)
    W = torch.randn(120, 80, generator=gen)
    assert len(intruder_dimensions(W, 1.1 * W, k=4)) == 0
    u = torch.randn(120, 1, generator=gen)
    v = torch.randn(80, 1, generator=gen)
    W_ft = W + 3 * float(torch.linalg.matrix_norm(W, ord=2)) * (u / u.norm()) @ (v / v.norm()).T
    found = intruder_dimensions(W, W_ft, k=4)
    assert list(found["index"]) == [0]
    assert found["max_cos"][0] < 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_matches_cpu():
    base_norm, D, _ = _planted(384, 1536, 0.02, [0.01, 0.008], seed=3)
    cpu = _analyze(D, base_norm)
    gpu = _analyze(D.cuda(), base_norm)
    assert gpu.rank == cpu.rank == 2
    assert gpu.threshold == pytest.approx(cpu.threshold, rel=1e-4)
    np.testing.assert_allclose(gpu.singular_values, cpu.singular_values, rtol=1e-4)
    assert gpu.noise_sigma == pytest.approx(cpu.noise_sigma, rel=1e-5)
    assert gpu.score == pytest.approx(cpu.score, rel=1e-4)
