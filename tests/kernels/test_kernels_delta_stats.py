"""Fused delta statistics: numba loop vs torch reference, and values checked by hand."""

import math

import numpy as np
import pytest
import torch

from mechdiff.errors import InputError
from mechdiff.kernels import DeltaStats, delta_stats, delta_stats_reference, hist_edges
from mechdiff.kernels.delta import HIST_TOP_EXP, delta_stats_numba

INT_FIELDS = ("n", "nan_base", "inf_base", "nan_ft", "inf_ft", "n_excluded", "n_zero")
SUM_FIELDS = ("sum_b2", "sum_f2", "sum_bf", "sum_d2")


def assert_same_stats(got: DeltaStats, want: DeltaStats) -> None:
    for name in INT_FIELDS:
        assert getattr(got, name) == getattr(want, name), name
    for name in SUM_FIELDS:  # float64 sums in different orders
        assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-10, abs=1e-300)
    assert got.max_abs_d == want.max_abs_d
    np.testing.assert_array_equal(got.hist, want.hist)


def noisy_pair(n: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=gen)
    ft = base + 1e-3 * torch.randn(n, generator=gen)
    ft[::5] = base[::5]  # some exact zeros in d
    if n >= 7:  # NaN and Inf on each side, one pair where both are bad
        base[1], base[3], ft[2], ft[3], ft[5] = math.nan, math.inf, -math.inf, math.nan, math.nan
    return base.to(dtype), ft.to(dtype)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1031, 65537, 131101])  # last: parallel path
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_numba_matches_reference_on_awkward_sizes(n, dtype):
    base, ft = noisy_pair(n, dtype, seed=n)
    assert_same_stats(delta_stats_numba(base, ft, 64), delta_stats_reference(base, ft, 64))


def delta_by_torch(base: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """float32(ft - base) formed in float64, 0 where either side is NaN/Inf."""
    b, f = base.double().reshape(-1), ft.double().reshape(-1)
    return torch.where(torch.isfinite(b) & torch.isfinite(f), f - b, 0.0).float()


@pytest.mark.parametrize("n", [0, 1, 7, 1031, 65537, 131101])  # last: parallel path
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_delta_output_matches_reference_on_awkward_sizes(n, dtype):
    base, ft = noisy_pair(n, dtype, seed=n + 1)
    got, want = torch.full((n,), math.nan), torch.full((n,), math.nan)
    stats = delta_stats_numba(base, ft, 64, out=got)
    assert_same_stats(stats, delta_stats_reference(base, ft, 64, out=want))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got, delta_by_torch(base, ft), rtol=0, atol=0)


def test_delta_output_keeps_the_shape_order_and_zeroes_non_finite_pairs():
    # d = ft - base in storage order; (nan, 1) and (inf, inf) pairs become 0
    base = torch.tensor([[1.0, math.nan, 2.0], [math.inf, 0.5, -1.0]]).bfloat16()
    ft = torch.tensor([[1.5, 1.0, 2.0], [math.inf, 0.25, 1.0]]).bfloat16()
    out = torch.empty(2, 3)
    stats = delta_stats(base, ft, out=out)
    assert out.tolist() == [[0.5, 0.0, 0.0], [0.0, -0.25, 2.0]]
    assert stats.n_excluded == 2 and stats.sum_d2 == 0.25 + 0.0625 + 4.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_non_finite_values_deep_inside_a_large_tensor(dtype):
    # blocks are first summed without NaN/Inf tests and redone when a sum is not finite:
    # bad values in late blocks (and finite float64 values whose squares overflow) must
    # come out exactly as in the reference, d included
    base, ft = noisy_pair(300_001, dtype, seed=7)
    for i, (b, f) in enumerate([(math.nan, 1.0), (2.0, math.inf), (-math.inf, math.nan)]):
        base[150_000 + 5000 * i], ft[150_000 + 5000 * i] = b, f
    if dtype == torch.float64:
        base[299_000], ft[299_000] = 1e200, -1e200
    got, want = torch.empty(base.numel()), torch.empty(base.numel())
    stats = delta_stats_numba(base, ft, 64, out=got)
    assert_same_stats(stats, delta_stats_reference(base, ft, 64, out=want))
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert stats.n_excluded == 4 + 3  # noisy_pair's four bad pairs and ours


def test_delta_output_must_fit():
    with pytest.raises(ValueError, match="contiguous float32"):
        delta_stats(torch.zeros(3), torch.zeros(3), out=torch.zeros(4))
    with pytest.raises(ValueError, match="contiguous float32"):
        delta_stats(torch.zeros(3), torch.zeros(3), out=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="contiguous float32"):
        delta_stats(torch.zeros(2, 2), torch.zeros(2, 2), out=torch.zeros(2, 2).T)


def test_two_by_three_by_hand():
    base = torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 0.0]])
    ft = torch.tensor([[1.0, 2.5, 0.0], [3.0, -1.0, 0.25]])
    for stats in (delta_stats(base, ft), delta_stats_reference(base, ft, 64)):
        # d = [0, .5, 0, 0, 0, .25]
        assert (stats.sum_b2, stats.sum_f2, stats.sum_bf, stats.sum_d2) == (15, 17.3125, 16, 0.3125)
        assert stats.max_abs_d == 0.5 and stats.n_zero == 4 and stats.n == 6
        # 0.5 lies in [2**-1, 2**0), 0.25 in [2**-2, 2**-1)
        bin_half = -1 - (HIST_TOP_EXP - 64)
        assert stats.hist[bin_half] == 1 and stats.hist[bin_half - 1] == 1
        assert stats.hist.sum() == 2
        assert stats.hist_edges[bin_half] == 0.5 and stats.hist_edges[bin_half + 1] == 1.0
        assert stats.cosine == pytest.approx(16 / math.sqrt(15 * 17.3125))
        assert stats.rel_delta == pytest.approx(math.sqrt(0.3125 / 15))


def test_non_finite_pairs_are_counted_not_summed():
    base = torch.tensor([1.0, math.nan, math.inf, 2.0, -math.inf])
    ft = torch.tensor([3.0, 5.0, 1.0, -math.inf, -math.inf])
    stats = delta_stats(base, ft)
    assert (stats.nan_base, stats.inf_base, stats.nan_ft, stats.inf_ft) == (1, 2, 0, 2)
    assert stats.n_excluded == 4
    assert (stats.sum_b2, stats.sum_f2, stats.sum_bf, stats.sum_d2) == (1, 9, 3, 4)
    assert stats.max_abs_d == 2.0 and math.isfinite(stats.norm_d)


def test_bf16_extremes():
    big = torch.finfo(torch.bfloat16).max
    tiny = torch.finfo(torch.bfloat16).smallest_normal / 128  # smallest subnormal
    base = torch.tensor([big, -big, 0.0, -0.0, tiny, math.inf]).bfloat16()
    ft = torch.tensor([-big, big, -0.0, 0.0, 0.0, math.inf]).bfloat16()
    stats = delta_stats(base, ft, n_bins=8)
    assert_same_stats(stats, delta_stats_reference(base, ft, 8))
    assert stats.max_abs_d == 2 * big  # finite: d is formed in float64
    assert stats.hist[-1] == 2 and stats.hist[0] == 1  # open-ended outer bins
    assert stats.n_zero == 2 and stats.inf_base == stats.inf_ft == 1


def test_all_zero_and_one_element():
    zeros = torch.zeros(17, dtype=torch.bfloat16)
    stats = delta_stats(zeros, zeros)
    assert stats.n_zero == 17 and stats.hist.sum() == 0
    assert stats.cosine == 1.0 and stats.rel_delta == 0.0
    one = delta_stats(torch.tensor([0.0]), torch.tensor([2.0]))
    assert one.rel_delta == math.inf and one.cosine == 0.0 and one.sum_d2 == 4.0


def test_float64_sums_stay_accurate_over_many_elements():
    n = 1 << 20
    value = np.float64(np.float32(0.1))  # the float32 the kernel actually sees
    stats = delta_stats(torch.full((n,), 0.1), torch.full((n,), 0.3))
    assert stats.sum_b2 == pytest.approx(n * value * value, rel=1e-13)


def test_mixed_and_integer_dtypes_are_upcast():
    base = torch.arange(12).reshape(3, 4)
    ft = base.bfloat16() + 1
    stats = delta_stats(base, ft)
    assert stats.sum_d2 == 12 and stats.hist[-HIST_TOP_EXP] == 12  # d = 1 in [2**0, 2**1)


def test_combine_equals_whole():
    base, ft = noisy_pair(1031, torch.float32, seed=3)
    whole = delta_stats(base, ft)
    parts = delta_stats(base[:500], ft[:500]).combine(delta_stats(base[500:], ft[500:]))
    assert_same_stats(parts, whole)


def test_bad_input_is_rejected():
    with pytest.raises(InputError, match="equal shapes"):
        delta_stats(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="n_bins"):
        delta_stats(torch.zeros(3), torch.zeros(3), n_bins=0)


def test_hist_edges_are_octaves_ending_at_top():
    edges = hist_edges(4)
    np.testing.assert_array_equal(edges, [2.0**12, 2.0**13, 2.0**14, 2.0**15, 2.0**16])
