"""Fused delta statistics of a base and a fine-tuned tensor, in one pass.

The weight diff calls this for every tensor of a checkpoint, so the numba loop reads
each input once, decodes bf16/fp16 bits block by block into small buffers that stay in
L1, and never allocates anything the size of the tensor. Pairs where either side is
NaN or +-Inf are counted and excluded from sums, max and histogram.

Histogram: one bin per octave of |ft - base| (computed in float64). Bin i holds
|d| in [2**(lo+i), 2**(lo+i+1)) with lo = HIST_TOP_EXP - n_bins; the first bin also
takes smaller non-zero values and the last bin larger ones. Exact zeros are counted
separately in `n_zero`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import numba
import numpy as np
import torch
from numba import njit, prange

from mechdiff.kernels._bits import as_bits_or_float, as_f64, f64_as_i64, half_table
from mechdiff.kernels.resolver import resolve

HIST_TOP_EXP = 16
MAX_BINS = 256
BLOCK = 1024
SERIAL_BELOW = 1 << 17
# reassoc lets LLVM vectorize the float reductions; no nnan/ninf, so x != x and the
# infinity tests keep their IEEE meaning (tests check the NaN/Inf counts).
FASTMATH = {"reassoc", "contract"}
_REFERENCE_CHUNK = 1 << 22
_FLUSH_EVERY = 1 << 30  # elements between flushes of the int32 sub-histograms


@dataclass(frozen=True, eq=False)
class DeltaStats:
    """Statistics of d = ft - base over one tensor pair (sums in float64)."""

    n: int
    """Number of elements in each tensor."""
    sum_b2: float
    """Sum of base**2 over pairs where both sides are finite."""
    sum_f2: float
    """Sum of ft**2 over finite pairs."""
    sum_bf: float
    """Sum of base*ft over finite pairs."""
    sum_d2: float
    """Sum of (ft - base)**2 over finite pairs."""
    max_abs_d: float
    """Largest |ft - base| over finite pairs (0.0 when there are none)."""
    nan_base: int
    """NaN elements in base."""
    inf_base: int
    """+-Inf elements in base."""
    nan_ft: int
    """NaN elements in ft."""
    inf_ft: int
    """+-Inf elements in ft."""
    n_excluded: int
    """Pairs left out of sums, max and histogram because either side is not finite."""
    n_zero: int
    """Finite pairs with ft == base exactly."""
    hist: np.ndarray
    """int64[n_bins]: counts of non-zero |d| per octave, see `hist_edges`."""

    def __post_init__(self) -> None:
        if self.hist.ndim != 1 or not 1 <= self.hist.size <= MAX_BINS:
            raise ValueError(f"hist must be 1-D with 1..{MAX_BINS} bins, got {self.hist.shape}")
        if self.n_zero + int(self.hist.sum()) + self.n_excluded != self.n:
            raise ValueError("n_zero + hist.sum() + n_excluded must equal n")

    @property
    def hist_edges(self) -> np.ndarray:
        """float64[n_bins + 1]: bin edges 2**lo ... 2**HIST_TOP_EXP (outer bins open-ended)."""
        return hist_edges(self.hist.size)

    @property
    def norm_base(self) -> float:
        """Frobenius norm of base over finite pairs."""
        return math.sqrt(self.sum_b2)

    @property
    def norm_ft(self) -> float:
        """Frobenius norm of ft over finite pairs."""
        return math.sqrt(self.sum_f2)

    @property
    def norm_d(self) -> float:
        """Frobenius norm of ft - base over finite pairs."""
        return math.sqrt(self.sum_d2)

    @property
    def rel_delta(self) -> float:
        """norm_d / norm_base; 0 when nothing changed, inf when base is zero but ft is not."""
        if self.sum_d2 == 0.0:
            return 0.0
        return self.norm_d / self.norm_base if self.sum_b2 > 0.0 else math.inf

    @property
    def cosine(self) -> float:
        """cos(base, ft); 1 when both are zero, 0 when exactly one is."""
        denom = self.norm_base * self.norm_ft
        if denom == 0.0:
            return 1.0 if self.sum_b2 == self.sum_f2 == 0.0 else 0.0
        return max(-1.0, min(1.0, self.sum_bf / denom))

    def combine(self, other: DeltaStats) -> DeltaStats:
        """Statistics of the concatenation of two tensor pairs (e.g. shards on two ranks).

        Args:
            other: statistics computed with the same n_bins.

        Returns:
            New DeltaStats over both pairs.
        """
        if other.hist.size != self.hist.size:
            raise ValueError("cannot combine DeltaStats with different n_bins")
        merged = {}
        for field in fields(self):
            a, b = getattr(self, field.name), getattr(other, field.name)
            merged[field.name] = max(a, b) if field.name == "max_abs_d" else a + b
        return DeltaStats(**merged)


def hist_edges(n_bins: int) -> np.ndarray:
    """float64[n_bins + 1]: the octave edges used by a histogram of `n_bins` bins."""
    lo = HIST_TOP_EXP - n_bins
    return np.ldexp(1.0, np.arange(lo, HIST_TOP_EXP + 1))


def delta_stats_reference(base: torch.Tensor, ft: torch.Tensor, n_bins: int,
                          out: torch.Tensor | None = None) -> DeltaStats:
    """Torch reference: float64 chunks, exact bins via frexp. Same contract as `delta_stats`."""
    b_all, f_all = base.detach().reshape(-1), ft.detach().reshape(-1)
    if out is not None:
        check_out_buffer(out, b_all.numel())
        flat_out = out.view(-1)
    lo = HIST_TOP_EXP - n_bins
    sums = torch.zeros(4, dtype=torch.float64)
    counts = [0, 0, 0, 0, 0, 0]  # nan_b, inf_b, nan_f, inf_f, excluded, zero
    max_abs = 0.0
    hist = torch.zeros(n_bins, dtype=torch.int64)
    for start in range(0, b_all.numel(), _REFERENCE_CHUNK):
        b = b_all[start:start + _REFERENCE_CHUNK].double()
        f = f_all[start:start + _REFERENCE_CHUNK].double()
        for k, t in enumerate((torch.isnan(b), torch.isinf(b), torch.isnan(f), torch.isinf(f))):
            counts[k] += int(t.sum())
        ok = torch.isfinite(b) & torch.isfinite(f)
        counts[4] += int((~ok).sum())
        if out is not None:
            flat_out[start:start + _REFERENCE_CHUNK] = torch.where(ok, f - b, 0.0).to(out.device)
        b, f = b[ok], f[ok]
        d = (f - b).abs()
        sums += torch.stack([(b * b).sum(), (f * f).sum(), (b * f).sum(), (d * d).sum()]).cpu()
        if d.numel():
            max_abs = max(max_abs, float(d.max()))
        counts[5] += int((d == 0).sum())
        _, exponent = torch.frexp(d[d > 0])  # d = m * 2**e with m in [0.5, 1)
        bins = (exponent.long() - 1 - lo).clamp(0, n_bins - 1)
        hist += torch.bincount(bins, minlength=n_bins).cpu()
    return DeltaStats(b_all.numel(), *(float(s) for s in sums), max_abs, *counts[:4],
                      n_excluded=counts[4], n_zero=counts[5], hist=hist.numpy())


@functools.cache
def _fp16_table() -> np.ndarray:
    return half_table(torch.float16)


def delta_stats_numba(base: torch.Tensor, ft: torch.Tensor, n_bins: int,
                      out: torch.Tensor | None = None) -> DeltaStats:
    """numba CPU loop (tensors on another device are copied to the host first)."""
    base, ft = base.detach().cpu(), ft.detach().cpu()
    if base.dtype != ft.dtype:
        base, ft = base.float(), ft.float()
    b, kind = as_bits_or_float(base)
    f, _ = as_bits_or_float(ft)
    table = _fp16_table() if kind == 2 else np.zeros(1, np.float32)
    host_out = _host_buffer(out, b.size)
    d = np.zeros(0, np.float32) if host_out is None else host_out.numpy()
    if b.size < SERIAL_BELOW:  # waking threads costs more than these tensors' work
        sums, maxbits, counts, hist = _delta_stats_serial(b, f, kind, table, n_bins, d)
    else:
        n_chunks = max(1, min(b.size // (16 * BLOCK), 4 * numba.get_num_threads()))
        sums, maxbits, counts, hist = _delta_stats_kernel(b, f, kind, table, n_bins, n_chunks, d)
    if out is not None and out.device.type != "cpu":
        out.view(-1).copy_(host_out)
    max_abs = float(np.int64(maxbits.max()).view(np.float64))
    tot = counts.sum(axis=0)
    return DeltaStats(b.size, *(float(s) for s in sums.sum(axis=0)), max_abs,
                      *(int(c) for c in tot[:4]), n_excluded=int(tot[4]),
                      n_zero=int(hist[:, 0].sum()), hist=hist[:, 1:-1].sum(axis=0))


def _host_buffer(out: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """Flat view the CPU loop writes d into: out itself on the CPU, else a host buffer
    that is copied to out after the pass."""
    if out is None:
        return None
    check_out_buffer(out, n)
    return out.detach().view(-1) if out.device.type == "cpu" else torch.empty(n, dtype=torch.float32)


@njit(parallel=True, cache=True)
def _delta_stats_kernel(b, f, kind, table, n_bins, n_chunks, d):  # pragma: no cover (numba)
    n = b.size
    chunk = (n + n_chunks - 1) // n_chunks
    sums = np.zeros((n_chunks, 4))
    maxbits = np.zeros(n_chunks, np.int64)
    counts = np.zeros((n_chunks, 5), np.int64)
    hist = np.zeros((n_chunks, n_bins + 2), np.int64)  # slot 0: zeros, last: excluded
    for c in prange(n_chunks):
        stop = min(n, (c + 1) * chunk)
        maxbits[c] = _chunk_stats(b[c * chunk:stop], f[c * chunk:stop], kind, table,
                                  n_bins, sums[c], counts[c], hist[c],
                                  d[c * chunk:stop] if d.size else d)
    return sums, maxbits, counts, hist


@njit(cache=True)
def _delta_stats_serial(b, f, kind, table, n_bins, d):  # pragma: no cover (numba)
    sums = np.zeros((1, 4))
    counts = np.zeros((1, 5), np.int64)
    hist = np.zeros((1, n_bins + 2), np.int64)
    maxbits = _chunk_stats(b, f, kind, table, n_bins, sums[0], counts[0], hist[0], d)
    return sums, np.full(1, maxbits, np.int64), counts, hist


@njit(cache=True)
def _chunk_stats(b, f, kind, table, n_bins, sums, counts, hist, d):  # pragma: no cover (numba)
    # the hot loops live outside the prange body, where numba compiles them as plain
    # functions that LLVM vectorizes. bf16 bits go to the block loop as they are (it
    # decodes them in registers); fp16 and float inputs are decoded into small float64
    # buffers that stay in L1. d is the float32 delta output, or empty when the caller
    # wants statistics only: the block loop then writes into a scratch block.
    buf_b = np.empty(BLOCK)
    buf_f = np.empty(BLOCK)
    scratch = np.empty(BLOCK, np.float32)
    slots = np.empty(BLOCK, np.uint32)
    # eight interleaved int32 histograms in one flat array, indexed with unsigned ints (no
    # wraparound check): deltas crowd into a few bins, and a single counter would
    # serialize on store-to-load forwarding
    stride = np.uint32(n_bins + 2)
    sub_hist = np.zeros(8 * (n_bins + 2), np.int32)
    maxbits = 0
    for start in range(0, b.size, BLOCK):
        m = min(BLOCK, b.size - start)
        dst = d[start:start + m] if d.size else scratch[:m]
        if kind == 1:
            block_max = _block_stats(b[start:start + m], f[start:start + m], n_bins, sums,
                                     counts, slots, dst)
        else:
            _decode_block(b[start:start + m], kind, table, buf_b)
            _decode_block(f[start:start + m], kind, table, buf_f)
            block_max = _block_stats(buf_b[:m], buf_f[:m], n_bins, sums, counts, slots, dst)
        maxbits = max(maxbits, block_max)
        for i in range(m):
            sub_hist[np.uint32(i & 7) * stride + slots[i]] += 1
        if (start + m) % _FLUSH_EVERY == 0 or start + m == b.size:  # int32 stays far from overflow
            for k in range(8):
                hist += sub_hist[k * (n_bins + 2):(k + 1) * (n_bins + 2)]
            sub_hist[:] = 0
    return maxbits


# The per-block helpers allocate nothing, so they are compiled without numba's runtime
# (_nrt=False): a call then skips the atomic reference counting of its array arguments
# (~65 ns a call here; several calls per block of 1024 elements).
@njit(cache=True, _nrt=False)
def _decode_block(src, kind, table, out):  # pragma: no cover (numba)
    # loops over whole slices: indexing src[start + i] would keep numba's negative-index
    # wraparound check in the loop and stop LLVM from vectorizing it
    if kind == 2:  # fp16 bits (bf16 bits are decoded in the block loop itself)
        for i in range(src.size):
            out[i] = table[np.intp(src[i])]
    else:
        for i in range(src.size):
            out[i] = src[i]


@njit(cache=True, _nrt=False)
def _block_stats(x, y, n_bins, sums, counts, slots, dst):  # pragma: no cover (numba)
    """Accumulate one block into sums/counts; write each element's histogram slot and d.

    x, y: the block's values (float arrays, or uint16 arrays of bf16 bits).
    Slot 0 = exact zero, 1..n_bins = octave bins, n_bins + 1 = excluded pair (dropped).
    dst[i] = float32(y - x), 0 for an excluded pair.
    Returns the max of |d| as int64 bits (non-negative floats order like their bits).
    """
    # a pass without per-element NaN/Inf tests first: any NaN or Inf on either side
    # makes sum_b2 or sum_f2 non-finite, and only then is the block redone with them
    sb2, sf2, sbf, sd2, maxbits, excluded = _block_pass(x, y, n_bins, slots, dst, False)
    if not (sb2 + sf2 + sd2 < np.inf):  # also True for NaN
        sb2, sf2, sbf, sd2, maxbits, excluded = _block_pass(x, y, n_bins, slots, dst, True)
        if excluded:
            _count_non_finite(x, y, counts)
        counts[4] += excluded
    sums[0] += sb2
    sums[1] += sf2
    sums[2] += sbf
    sums[3] += sd2
    return maxbits


@njit(cache=True, fastmath=FASTMATH, _nrt=False)
def _block_pass(x, y, n_bins, slots, dst, careful):  # pragma: no cover (numba)
    """One loop over a block: (sums of b^2, f^2, bf, d^2, max |d| bits, excluded pairs).

    careful=False assumes every value is finite (LLVM unswitches the flag out of the loop).
    """
    lo = HIST_TOP_EXP - n_bins
    sb2 = sf2 = sbf = sd2 = 0.0
    excluded = 0
    maxbits = 0
    for i in range(x.size):
        xv, yv = as_f64(x, i), as_f64(y, i)
        bad = False
        if careful:  # one comparison per side finds NaN and +-Inf (NaN compares false)
            bad = not (abs(xv) < np.inf and abs(yv) < np.inf)
            excluded += bad
            xv = 0.0 if bad else xv
            yv = 0.0 if bad else yv
        d = yv - xv
        dst[i] = d
        sb2 += xv * xv
        sf2 += yv * yv
        sbf += xv * yv
        sd2 += d * d
        bits = f64_as_i64(abs(d))
        maxbits = max(maxbits, bits)
        octave = min(max((bits >> 52) - 1023 - lo, 0), n_bins - 1) + 1
        slot = 0 if bits == 0 else octave
        slots[i] = n_bins + 1 if bad else slot
    return sb2, sf2, sbf, sd2, maxbits, excluded


@njit(cache=True, _nrt=False)
def _count_non_finite(x, y, counts):  # pragma: no cover (numba)
    for i in range(x.size):
        xv, yv = as_f64(x, i), as_f64(y, i)
        counts[0] += np.isnan(xv)
        counts[1] += np.isinf(xv)
        counts[2] += np.isnan(yv)
        counts[3] += np.isinf(yv)


def delta_stats(base: torch.Tensor, ft: torch.Tensor, *, n_bins: int = 64,
                device: str | None = None, out: torch.Tensor | None = None) -> DeltaStats:
    """One-pass statistics of d = ft - base (norms, dot, max, NaN/Inf counts, histogram).

    With `out`, the same pass also writes d itself: the weight diff needs D in float32
    for its spectra, and forming it here saves a second read of both inputs and a write.

    Args:
        base: tensor of any shape; float32, float16 or bfloat16 read natively, other
            dtypes upcast to float32.
        ft: tensor of the same shape as base.
        n_bins: octave bins of |d| (1..256), ending at 2**HIST_TOP_EXP.
        device: device whose kernel to use; default: base's device.
        out: optional contiguous float32 tensor with base's number of elements; receives
            float32(ft - base) in base's element order, 0.0 where either side is NaN/Inf.

    Returns:
        DeltaStats; pairs with a NaN or Inf on either side are only counted.
    """
    if base.shape != ft.shape:
        from mechdiff.errors import InputError

        raise InputError(f"delta_stats needs equal shapes, got {tuple(base.shape)} and "
                         f"{tuple(ft.shape)}; align the tensors first")
    if not 1 <= n_bins <= MAX_BINS:
        raise ValueError(f"n_bins must be in 1..{MAX_BINS}, got {n_bins}")
    return resolve("delta_stats", device or str(base.device))(base, ft, n_bins, out)


def check_out_buffer(out: torch.Tensor, n: int) -> None:
    """Raise ValueError unless `out` can take the n float32 deltas (shared by all backends)."""
    if out.dtype != torch.float32 or out.numel() != n or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of {n} elements, got "
                         f"{out.dtype} {tuple(out.shape)} (contiguous: {out.is_contiguous()})")
