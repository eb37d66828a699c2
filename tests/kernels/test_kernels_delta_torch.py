"""Delta statistics in torch ops (the weight diff's GPU path), forced onto the CPU: the numba loop's numbers."""

import math

import pytest
import torch
from test_kernels_delta_stats import assert_same_stats, delta_by_torch, noisy_pair

from mechdiff.kernels.delta import HIST_TOP_EXP, delta_stats_numba
from mechdiff.kernels.delta_torch import delta_stats_torch


@pytest.mark.parametrize("n", [0, 1, 7, 1031, 131101])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_ops_match_the_numba_loop_d_included(n, dtype):
    base, ft = noisy_pair(n, dtype, seed=n + 2)  # NaN/Inf on both sides once n >= 7
    got, want = torch.full((n,), math.nan), torch.full((n,), math.nan)
    assert_same_stats(delta_stats_torch(base, ft, 64, out=got), delta_stats_numba(base, ft, 64, out=want))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got, delta_by_torch(base, ft), rtol=0, atol=0)


def test_several_chunks_with_a_bad_value_in_a_late_one(monkeypatch):
    from mechdiff.kernels import delta_torch

    monkeypatch.setitem(delta_torch._CHUNK, "cpu", 4096)  # ~25 chunks: the per-chunk accumulation
    base, ft = noisy_pair(100_003, torch.bfloat16, seed=11)
    ft[90_001] = math.inf
    stats = delta_stats_torch(base, ft, 32)
    assert_same_stats(stats, delta_stats_numba(base, ft, 32))
    assert stats.n_excluded == 4 + 1 and stats.inf_ft == 2


def test_finite_pair_by_hand_and_other_shapes():
    base = torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 0.0]])
    ft = torch.tensor([[1.0, 2.5, 0.0], [3.0, -1.0, 0.25]])
    out = torch.empty(2, 3)
    stats = delta_stats_torch(base, ft, 64, out=out)
    # d = [0, .5, 0, 0, 0, .25]: 0.5 in [2**-1, 2**0), 0.25 in [2**-2, 2**-1)
    assert (stats.sum_b2, stats.sum_f2, stats.sum_bf, stats.sum_d2) == (15, 17.3125, 16, 0.3125)
    assert stats.max_abs_d == 0.5 and stats.n_zero == 4 and stats.n_excluded == 0
    bin_half = -1 - (HIST_TOP_EXP - 64)
    assert stats.hist[bin_half] == 1 and stats.hist[bin_half - 1] == 1 and stats.hist.sum() == 2
    assert out.tolist() == [[0.0, 0.5, 0.0], [0.0, 0.0, 0.25]]


def test_bf16_extremes_and_mixed_dtypes_as_numba():
    big = torch.finfo(torch.bfloat16).max
    tiny = torch.finfo(torch.bfloat16).smallest_normal / 128
    base = torch.tensor([big, -big, 0.0, -0.0, tiny, math.inf]).bfloat16()
    ft = torch.tensor([-big, big, -0.0, 0.0, 0.0, math.inf]).bfloat16()
    assert_same_stats(delta_stats_torch(base, ft, 8), delta_stats_numba(base, ft, 8))
    ints = torch.arange(12).reshape(3, 4)
    assert_same_stats(delta_stats_torch(ints, ints.bfloat16() + 1, 64), delta_stats_numba(ints, ints.bfloat16() + 1, 64))


def test_out_buffer_is_checked():
    with pytest.raises(ValueError, match="contiguous float32"):
        delta_stats_torch(torch.zeros(3), torch.zeros(3), 64, out=torch.zeros(4))
