"""Fused delta statistics in plain torch ops, on whatever device the tensors live.

Why beside the numba loop: on a GPU the weight diff keeps both tensors and D in device
memory; copying them back for the host loop costs more than the statistics themselves.
Everything accumulates in device tensors and the host reads them once at the end (no
sync per chunk). Same contract and the same numbers as `delta_stats_numba`: values are
widened to float64 before the subtraction (so d, max |d| and every histogram count are
bit-identical), sums are float64 (equal up to summation order).

Like the numba loop, a first pass assumes every value is finite; only if a sum comes out
non-finite is the tensor redone with NaN/Inf pairs counted and excluded.
"""

from __future__ import annotations

import torch

from mechdiff.kernels.delta import HIST_TOP_EXP, DeltaStats, check_out_buffer

# float64 elements per chunk: three chunk-sized temporaries (b, f, d) stay small beside
# the tensors (128 MiB each on a GPU), and a 3.6B-parameter model is a few hundred chunks
_CHUNK = {"cuda": 1 << 24, "cpu": 1 << 20}
_EXPONENT_BIAS = 1023


def delta_stats_torch(base: torch.Tensor, ft: torch.Tensor, n_bins: int,
                      out: torch.Tensor | None = None) -> DeltaStats:
    """Torch ops on the tensors' device. Same contract as `mechdiff.kernels.delta_stats`.

    Args:
        base: tensor of any shape and float dtype (a dtype pair that differs is upcast to float32).
        ft: tensor of base's shape, on base's device.
        n_bins: octave bins of |d| (1..256).
        out: optional contiguous float32 tensor of base's size (any device): receives d.

    Returns:
        DeltaStats (NaN/Inf pairs counted and excluded, as in the numba loop).
    """
    b_all, f_all = base.detach().reshape(-1), ft.detach().reshape(-1)
    if b_all.dtype != f_all.dtype or not b_all.is_floating_point():  # as the numba loop decodes them
        b_all, f_all = b_all.float(), f_all.float()
    if out is not None:
        check_out_buffer(out, b_all.numel())
    flat_out = None if out is None else out.detach().view(-1)
    totals = _passes(b_all, f_all, n_bins, flat_out, careful=False)
    if not bool(torch.isfinite(totals[0]).all()):  # the one sync of a finite pair
        totals = _passes(b_all, f_all, n_bins, flat_out, careful=True)
    return _as_stats(b_all.numel(), *totals, n_bins)


def _passes(b_all: torch.Tensor, f_all: torch.Tensor, n_bins: int, flat_out: torch.Tensor | None,
            careful: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    device = b_all.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # b^2, f^2, bf, d^2
    max_abs = torch.zeros((), dtype=torch.float64, device=device)
    counts = torch.zeros(5, dtype=torch.int64, device=device)  # nan_b, inf_b, nan_f, inf_f, excluded
    slots = torch.zeros(n_bins + 2, dtype=torch.int64, device=device)  # zero, octaves..., excluded
    chunk = _CHUNK["cuda" if device.type == "cuda" else "cpu"]
    for start in range(0, b_all.numel(), chunk):
        b = b_all[start:start + chunk].double()
        f = f_all[start:start + chunk].double()
        ok = None
        if careful:
            ok = torch.isfinite(b) & torch.isfinite(f)
            counts += torch.stack([b.isnan().sum(), b.isinf().sum(), f.isnan().sum(), f.isinf().sum(), (~ok).sum()])
            b, f = b.where(ok, 0.0), f.where(ok, 0.0)
        d = f - b
        if flat_out is not None:
            flat_out[start:start + chunk].copy_(d)
        sums += torch.stack([b.dot(b), f.dot(f), b.dot(f), d.dot(d)])
        abs_d = d.abs_()
        max_abs = torch.maximum(max_abs, abs_d.max())
        slots += torch.bincount(_slots(abs_d, n_bins, ok), minlength=n_bins + 2)
    return sums, max_abs, counts, slots


def _slots(abs_d: torch.Tensor, n_bins: int, ok: torch.Tensor | None) -> torch.Tensor:
    """Each element's histogram slot, from the float64 exponent bits as the numba loop reads them:
    0 = exact zero, 1..n_bins = octave (outer ones open-ended), n_bins + 1 = excluded pair."""
    bits = abs_d.view(torch.int64)
    octave = ((bits >> 52) - _EXPONENT_BIAS - (HIST_TOP_EXP - n_bins)).clamp_(0, n_bins - 1) + 1
    slot = octave.masked_fill_(bits == 0, 0)
    return slot if ok is None else slot.masked_fill_(~ok, n_bins + 1)


def _as_stats(n: int, sums: torch.Tensor, max_abs: torch.Tensor, counts: torch.Tensor, slots: torch.Tensor,
              n_bins: int) -> DeltaStats:
    sums_h, max_h = sums.cpu().tolist(), float(max_abs)
    counts_h, slots_h = counts.cpu().tolist(), slots.cpu().numpy()
    return DeltaStats(n, *sums_h, max_h, *counts_h[:4], n_excluded=counts_h[4], n_zero=int(slots_h[0]),
                      hist=slots_h[1:n_bins + 1].copy())
