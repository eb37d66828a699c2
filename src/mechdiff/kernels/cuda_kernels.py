"""numba.cuda kernels for every hot path, with the same signatures as the numba CPU loops.

Imported only by the resolver (never at package import), because numba.cuda reads
NUMBA_ENABLE_CUDASIM when first imported; tests set it and run these on CPU tensors.
On a real GPU, CUDA tensors are handed to numba zero-copy through
__cuda_array_interface__ (bf16/fp16 as int16 bits, decoded through a 64K-entry table).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from numba import config, cuda

from mechdiff.kernels._bits import half_table
from mechdiff.kernels.csr import transpose_torch
from mechdiff.kernels.delta import HIST_TOP_EXP, MAX_BINS, DeltaStats, check_out_buffer
from mechdiff.kernels.heap import compile_heap

# the simulator runs every thread as a Python thread: keep its blocks small
THREADS = 16 if config.ENABLE_CUDASIM else 128
MAX_BLOCKS = 4 if config.ENABLE_CUDASIM else 4096
# a shared array's shape must be a constant the compiler sees as one: a global name, not
# an expression (`MAX_BINS + 1` typed as a plain int64 and failed on a real GPU)
_HIST_SLOTS = MAX_BINS + 1
_offer = compile_heap(cuda.jit(device=True))["offer"]


def _arr(t: torch.Tensor):
    """A view numba.cuda kernels accept: device array for CUDA tensors, numpy otherwise."""
    return cuda.as_cuda_array(t.detach()) if t.is_cuda else t.detach().numpy()


def _blocks(n_items: int) -> int:
    return max(1, min(MAX_BLOCKS, -(-n_items // THREADS)))


@functools.cache
def _table(dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.from_numpy(half_table(dtype)).to(device)


def _as_bits_or_float(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Flat tensor + kind (0 float values, 1 bf16 bits, 2 fp16 bits as int16)."""
    flat = t.detach().reshape(-1).contiguous()
    if flat.dtype in (torch.bfloat16, torch.float16):
        return flat.view(torch.int16), 1 if flat.dtype == torch.bfloat16 else 2
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    return flat, 0


# ---------------------------------------------------------------- delta statistics

@cuda.jit(device=True)
def _load(src, i, kind, table):
    if kind == 0:
        return np.float64(src[i])
    return np.float64(table[int(src[i]) & 0xFFFF])


@cuda.jit(device=True)
def _block_reduce(shared, tid, value, take_max):
    """Sum (or max) of `value` over the block; every thread gets the total."""
    shared[tid] = value
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if tid < step:
            other = shared[tid + step]
            shared[tid] = max(shared[tid], other) if take_max else shared[tid] + other
        cuda.syncthreads()
        step //= 2
    total = shared[0]
    cuda.syncthreads()
    return total


@cuda.jit
def _delta_stats_kernel(b, f, kind, table, n_bins, totals, hist, out):  # pragma: no cover (cuda)
    """totals float64[10]: sum_b2, sum_f2, sum_bf, sum_d2, max|d|, nan_b, inf_b, nan_f,
    inf_f, excluded. hist int64[n_bins + 1]: slot 0 exact zeros, then octave bins.
    out float32: receives f - b (0 for an excluded pair) unless it is empty."""
    write = out.size > 0
    tid = cuda.threadIdx.x
    block_hist = cuda.shared.array(_HIST_SLOTS, dtype=np.int32)
    for k in range(tid, n_bins + 1, THREADS):
        block_hist[k] = 0
    cuda.syncthreads()
    lo = HIST_TOP_EXP - n_bins
    acc = cuda.local.array(10, dtype=np.float64)
    for k in range(10):
        acc[k] = 0.0
    start = cuda.blockIdx.x * THREADS + tid
    for i in range(start, b.size, cuda.gridDim.x * THREADS):
        x, y = _load(b, i, kind, table), _load(f, i, kind, table)
        xnan, ynan, xinf, yinf = math.isnan(x), math.isnan(y), math.isinf(x), math.isinf(y)
        acc[5] += xnan
        acc[6] += xinf
        acc[7] += ynan
        acc[8] += yinf
        if xnan or ynan or xinf or yinf:
            acc[9] += 1.0
            if write:
                out[i] = 0.0
            continue
        if write:
            out[i] = y - x
        d = abs(y - x)
        acc[0] += x * x
        acc[1] += y * y
        acc[2] += x * y
        acc[3] += d * d
        acc[4] = max(acc[4], d)
        slot = 0
        if d > 0.0:
            exponent = math.frexp(d)[1]  # d = m * 2**exponent, m in [0.5, 1)
            slot = min(max(exponent - 1 - lo, 0), n_bins - 1) + 1
        cuda.atomic.add(block_hist, slot, 1)
    # one tree reduction for all ten accumulators (max for slot 4): few block barriers
    shared = cuda.shared.array((10, THREADS), dtype=np.float64)
    for k in range(10):
        shared[k, tid] = acc[k]
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if tid < step:
            for k in range(10):
                other = shared[k, tid + step]
                shared[k, tid] = max(shared[k, tid], other) if k == 4 else shared[k, tid] + other
        cuda.syncthreads()
        step //= 2
    if tid == 0:
        for k in range(10):
            if k == 4:
                cuda.atomic.max(totals, 4, shared[4, 0])
            else:
                cuda.atomic.add(totals, k, shared[k, 0])
    cuda.syncthreads()
    for k in range(tid, n_bins + 1, THREADS):
        cuda.atomic.add(hist, k, np.int64(block_hist[k]))


def delta_stats_cuda(base: torch.Tensor, ft: torch.Tensor, n_bins: int,
                     out: torch.Tensor | None = None) -> DeltaStats:
    """numba.cuda kernel: grid-stride pass, block reductions, shared-memory histogram."""
    if base.dtype != ft.dtype:
        base, ft = base.float(), ft.float()
    b, kind = _as_bits_or_float(base)
    f, _ = _as_bits_or_float(ft)
    device = str(b.device)
    table = _table(torch.float16 if kind == 2 else torch.bfloat16, device)
    totals = torch.zeros(10, dtype=torch.float64, device=device)
    hist = torch.zeros(n_bins + 1, dtype=torch.int64, device=device)
    dest = _delta_destination(out, b.numel(), device)
    if b.numel():
        _delta_stats_kernel[_blocks(b.numel()), THREADS](
            _arr(b), _arr(f), kind, _arr(table), n_bins, _arr(totals), _arr(hist), _arr(dest))
    if out is not None and dest.data_ptr() != out.data_ptr():
        out.view(-1).copy_(dest)
    t, h = totals.cpu().numpy(), hist.cpu().numpy()
    counts = [round(float(c)) for c in t[5:]]
    return DeltaStats(b.numel(), *(float(s) for s in t[:5]), *counts[:4],
                      n_excluded=counts[4], n_zero=int(h[0]), hist=h[1:].copy())


def _delta_destination(out: torch.Tensor | None, n: int, device: str) -> torch.Tensor:
    """Flat float32 buffer on the kernel's device for d: out itself when it lives there,
    a temporary copied to out afterwards otherwise, empty when d is not wanted."""
    if out is None:
        return torch.empty(0, dtype=torch.float32, device=device)
    check_out_buffer(out, n)
    if str(out.device) == str(torch.device(device)):
        return out.detach().view(-1)
    return torch.empty(n, dtype=torch.float32, device=device)


# ---------------------------------------------------------------- sparse decode

@cuda.jit
def _forward_kernel(values, indices, offsets, W, out):  # pragma: no cover (cuda)
    b = cuda.blockIdx.x
    for d in range(cuda.threadIdx.x, out.shape[1], THREADS):
        acc = np.float32(0.0)
        for p in range(offsets[b], offsets[b + 1]):
            acc += values[p] * W[indices[p], d]
        out[b, d] = acc


@cuda.jit
def _grad_values_kernel(grad, indices, offsets, W, grad_values):  # pragma: no cover (cuda)
    b, tid = cuda.blockIdx.x, cuda.threadIdx.x
    shared = cuda.shared.array(THREADS, dtype=np.float64)
    for p in range(offsets[b], offsets[b + 1]):
        partial = np.float64(0.0)
        for d in range(tid, grad.shape[1], THREADS):
            partial += grad[b, d] * W[indices[p], d]
        total = _block_reduce(shared, tid, partial, False)
        if tid == 0:
            grad_values[p] = total


@cuda.jit
def _scatter_rows_kernel(values, t_offsets, t_entry, t_row, rows, out):  # pragma: no cover
    j = cuda.blockIdx.x
    for d in range(cuda.threadIdx.x, out.shape[1], THREADS):
        acc = np.float64(0.0)
        for q in range(t_offsets[j], t_offsets[j + 1]):
            acc += np.float64(values[t_entry[q]]) * np.float64(rows[t_row[q], d])
        out[j, d] = acc


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().contiguous()


def decode_forward_cuda(values, indices, offsets, W_dec):
    """numba.cuda forward: one block per batch row, threads across D."""
    W = _f32(W_dec)
    out = torch.empty(offsets.numel() - 1, W.shape[1], device=W.device)
    if out.numel():
        _forward_kernel[out.shape[0], THREADS](_arr(_f32(values)), _arr(indices.contiguous()),
                                               _arr(offsets.contiguous()), _arr(W), _arr(out))
    return out.to(torch.result_type(values, W_dec))


def _scatter_rows(values, indices, offsets, rows, n_latents, dtype):
    out = torch.empty(n_latents, rows.shape[1], dtype=dtype, device=rows.device)
    if out.numel():
        t_offsets, t_entry, t_row = transpose_torch(indices, offsets, n_latents)
        _scatter_rows_kernel[n_latents, THREADS](_arr(values), _arr(t_offsets), _arr(t_entry),
                                                 _arr(t_row), _arr(rows), _arr(out))
    return out


def decode_backward_cuda(grad_out, values, indices, offsets, W_dec, need_values=True,
                         need_W=True):
    """numba.cuda backward: (grad_values[nnz] | None, grad_W[F, D] | None)."""
    g, W, v = _f32(grad_out), _f32(W_dec), _f32(values)
    grad_values = grad_W = None
    if need_values:
        gv = torch.zeros_like(v)
        if g.shape[0] and v.numel():
            _grad_values_kernel[g.shape[0], THREADS](_arr(g), _arr(indices.contiguous()),
                                                     _arr(offsets.contiguous()), _arr(W),
                                                     _arr(gv))
        grad_values = gv.to(values.dtype)
    if need_W:
        grad_W = _scatter_rows(v, indices, offsets, g, W.shape[0], torch.float32)
        grad_W = grad_W.to(W_dec.dtype)
    return grad_values, grad_W


# ---------------------------------------------------------------- latent scaling

@cuda.jit
def _sum_squares_kernel(values, indices, out):  # pragma: no cover (cuda)
    for p in range(cuda.grid(1), values.size, cuda.gridsize(1)):
        v = np.float64(values[p])
        cuda.atomic.add(out, indices[p], v * v)


def latent_scaling_cuda(values, indices, offsets, Y, n_latents):
    """numba.cuda kernels: (sum_f2 float64[F], sum_fy float64[F, D])."""
    v = _f32(values)
    sum_f2 = torch.zeros(n_latents, dtype=torch.float64, device=Y.device)
    if v.numel():
        _sum_squares_kernel[_blocks(v.numel()), THREADS](_arr(v), _arr(indices.contiguous()),
                                                         _arr(sum_f2))
    sum_fy = _scatter_rows(v, indices, offsets, _f32(Y), n_latents, torch.float64)
    return sum_f2, sum_fy


# ---------------------------------------------------------------- top-n tracking

@cuda.jit
def _topn_kernel(s_act, s_doc, s_pos, s_count, offsets, order, act, doc,
                 pos):  # pragma: no cover (cuda)
    j = cuda.grid(1)
    if j < s_act.shape[0]:
        for q in range(offsets[j], offsets[j + 1]):
            i = order[q]
            if act[i] > -math.inf:  # False for NaN too
                _offer(s_act, s_doc, s_pos, s_count, j, act[i], doc[i], pos[i])


def topn_update_cuda(state_act, state_doc, state_pos, state_count, latent, act, doc,
                     pos) -> None:
    """numba.cuda kernel: entries grouped by latent with torch, one thread per heap."""
    n_latents = state_act.shape[0]
    order = torch.sort(latent, stable=True).indices
    offsets = torch.zeros(n_latents + 1, dtype=torch.int64, device=latent.device)
    offsets[1:] = torch.cumsum(torch.bincount(latent, minlength=n_latents), 0)
    _topn_kernel[_blocks(n_latents), THREADS](
        *(_arr(t) for t in (state_act, state_doc, state_pos, state_count, offsets, order,
                            act, doc, pos)))
