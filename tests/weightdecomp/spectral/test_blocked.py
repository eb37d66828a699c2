"""A matrix given by row blocks: every product and the whole spectral analysis equal the dense ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechdiff.kernels.signs import flip_signs
from mechdiff.weightdecomp.spectral import (
    SpectralConfig,
    analyze_delta,
    intruder_dimensions,
    randomized_svd,
)
from mechdiff.weightdecomp.spectral.blocked import RowBlockMatrix


def _blocked(D: torch.Tensor, block_rows: int = 64) -> RowBlockMatrix:
    # the producer hands out a reused buffer, as the diff's does: nothing may keep a block
    op = RowBlockMatrix(tuple(D.shape), lambda start, stop: produce(start, stop), block_rows)
    buffer = torch.empty(op.block_rows, D.shape[1])

    def produce(start: int, stop: int) -> torch.Tensor:
        out = buffer[: stop - start]
        out.copy_(D[start:stop])
        return out

    return op


def _planted(m: int, n: int, seed: int = 0) -> torch.Tensor:
    # 2% drift plus a rank-2 edit well above the bulk edge
    g = torch.Generator().manual_seed(seed)
    D = 0.02 * torch.randn(m, n, generator=g)
    u, _ = torch.linalg.qr(torch.randn(m, 2, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, 2, generator=g))
    return D + (u * torch.tensor([3.0, 2.0])) @ v.T


def test_products_equal_the_dense_ones_with_ragged_blocks():
    D = torch.randn(300, 70, generator=torch.Generator().manual_seed(1))  # blocks of 64, last one 44
    op = _blocked(D, block_rows=5)  # rounded up to one sign word of rows
    assert op.block_rows == 64
    X = torch.randn(70, 9)
    Y_t = torch.randn(9, 300)
    torch.testing.assert_close(op @ X, D @ X, rtol=1e-5, atol=1e-4)  # float32 sums of 300 terms of size ~1
    torch.testing.assert_close(Y_t @ op, Y_t @ D, rtol=1e-5, atol=1e-4)  # float32 sums of 300 terms of size ~1
    torch.testing.assert_close(Y_t.T.T @ op.T.T, Y_t @ D, rtol=1e-5, atol=1e-4)  # float32 sums of 300 terms of size ~1
    torch.testing.assert_close(X.T @ op.T, X.T @ D.T, rtol=1e-5, atol=1e-4)  # float32 sums of 300 terms of size ~1
    assert torch.equal(op.dense(), D)


def test_sign_flipped_blocks_are_the_whole_matrix_flipped():
    D = torch.randn(200, 33)  # 33 columns: block starts are whole sign words only by the row rounding
    with _blocked(D).signs_flipped(7) as flipped:
        assert torch.equal(flipped.dense(), flip_signs(D, 7))
    assert torch.equal(_blocked(D).dense(), D)  # the source is left alone


def test_randomized_svd_equals_the_unblocked_one():
    D = _planted(700, 300)
    U, S, V = randomized_svd(D, 8, generator=torch.Generator().manual_seed(0))
    Ub, Sb, Vb = randomized_svd(_blocked(D), 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(Sb, S, rtol=1e-5, atol=0)
    torch.testing.assert_close((Ub * U).sum(0).abs(), torch.ones(8), rtol=0, atol=1e-3)  # same vectors up to sign
    torch.testing.assert_close((Vb * V).sum(0).abs(), torch.ones(8), rtol=0, atol=1e-3)


@pytest.mark.parametrize("config", [SpectralConfig(), SpectralConfig(screen_k=0, k=4, k_max=8)])
def test_analyze_delta_equals_the_unblocked_one(config):
    D = _planted(700, 300, seed=3)
    whole = analyze_delta(D.clone(), base_norm=10.0, config=config)
    blocked = analyze_delta(_blocked(D), base_norm=10.0, config=config)
    assert blocked.rank == whole.rank == 2
    assert blocked.exact == whole.exact is False
    np.testing.assert_allclose(blocked.singular_values, whole.singular_values, rtol=1e-5)
    assert blocked.score == pytest.approx(whole.score, rel=1e-5)
    assert blocked.threshold == pytest.approx(whole.threshold, rel=1e-5)  # the sign-flip cut too
    assert blocked.noise_sigma == pytest.approx(whole.noise_sigma, rel=1e-6)


def test_small_blocked_matrix_takes_the_exact_path():
    D = _planted(100, 40)
    whole = analyze_delta(D.clone(), base_norm=1.0, config=SpectralConfig())
    blocked = analyze_delta(_blocked(D), base_norm=1.0, config=SpectralConfig())
    assert blocked.exact and whole.exact
    np.testing.assert_allclose(blocked.singular_values, whole.singular_values, rtol=1e-6)


def test_intruder_count_of_blocked_weights_equals_the_dense_one():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(600, 200, generator=g) / 20
    u, v = torch.randn(600, 1, generator=g), torch.randn(1, 200, generator=g)
    W_ft = W + 0.5 * (u / u.norm()) @ (v / v.norm()) * float(W.norm())
    whole = intruder_dimensions(W, W_ft, k=4)
    blocked = intruder_dimensions(_blocked(W), _blocked(W_ft), k=4)
    assert list(blocked["index"]) == list(whole["index"]) == [0]
    np.testing.assert_allclose(blocked["max_cos"], whole["max_cos"], atol=1e-4)
