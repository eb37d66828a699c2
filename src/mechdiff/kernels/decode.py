"""Sparse decode for crosscoders/SAEs: out[b] = sum_{j active in row b} f_bj * W_dec[j].

Rows carry a variable number of active latents (CSR offsets, see `csr`), so BatchTopK
batches need no padding. Forward and backward only touch the decoder rows that are
active; the W_dec gradient comes back dense [F, D] with untouched rows zero.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from mechdiff.kernels.csr import FASTMATH, check_csr, row_ids, scatter_rows, transpose
from mechdiff.kernels.resolver import resolve

_REFERENCE_ENTRIES = 1 << 24  # entries x D per reference chunk, bounds its temporaries


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                  W_dec: torch.Tensor) -> torch.Tensor:
    """Decode sparse latent activations; differentiable in values and W_dec.

    Args:
        values: float[nnz] activations of the active latents, rows back to back.
        indices: int64[nnz] latent ids in [0, F).
        offsets: int64[B + 1] row boundaries (row b is offsets[b]:offsets[b+1]).
        W_dec: float[F, D] decoder rows (crosscoders pass both models' decoders
            concatenated along D).

    Returns:
        float[B, D] decoded rows, dtype of W_dec.
    """
    if W_dec.ndim != 2:
        raise ValueError(f"W_dec must be [F, D], got {tuple(W_dec.shape)}")
    check_csr(values, indices, offsets, W_dec.shape[0])
    return SparseDecode.apply(values, indices, offsets, W_dec)


class SparseDecode(torch.autograd.Function):
    """autograd wrapper choosing the kernel for W_dec's device at each call."""

    @staticmethod
    def forward(ctx, values, indices, offsets, W_dec):
        ctx.save_for_backward(values, indices, offsets, W_dec)
        return resolve("sparse_decode_forward", str(W_dec.device))(values, indices, offsets,
                                                                   W_dec)

    @staticmethod
    def backward(ctx, grad_out):
        values, indices, offsets, W_dec = ctx.saved_tensors
        backward = resolve("sparse_decode_backward", str(W_dec.device))
        grad_values, grad_W = backward(grad_out.contiguous(), values, indices, offsets, W_dec,
                                       ctx.needs_input_grad[0], ctx.needs_input_grad[3])
        return grad_values, None, None, grad_W


def decode_forward_reference(values, indices, offsets, W_dec):
    """Torch reference of the forward pass (index_add over bounded chunks)."""
    rows = row_ids(offsets)
    dtype = torch.result_type(values, W_dec)
    out = torch.zeros(offsets.numel() - 1, W_dec.shape[1], dtype=dtype, device=W_dec.device)
    step = max(1, _REFERENCE_ENTRIES // max(1, W_dec.shape[1]))
    for s in range(0, values.numel(), step):
        contrib = values[s:s + step, None].to(dtype) * W_dec[indices[s:s + step]].to(dtype)
        out.index_add_(0, rows[s:s + step], contrib)
    return out


def decode_backward_reference(grad_out, values, indices, offsets, W_dec, need_values=True,
                              need_W=True):
    """Torch reference of the backward pass: (grad_values[nnz] | None, grad_W[F, D] | None)."""
    rows = row_ids(offsets)
    grad_values = torch.empty_like(values) if need_values else None
    grad_W = torch.zeros_like(W_dec) if need_W else None
    step = max(1, _REFERENCE_ENTRIES // max(1, W_dec.shape[1]))
    for s in range(0, values.numel(), step):
        g = grad_out[rows[s:s + step]]
        if need_values:
            grad_values[s:s + step] = (g * W_dec[indices[s:s + step]]).sum(1).to(values.dtype)
        if need_W:
            grad_W.index_add_(0, indices[s:s + step], (values[s:s + step, None] * g).to(W_dec.dtype))
    return grad_values, grad_W


def _host_f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


def _host_i64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.int64).contiguous().numpy()


def decode_forward_numba(values, indices, offsets, W_dec):
    """numba CPU forward (float32 math; other devices round-trip through the host)."""
    W = _host_f32(W_dec)
    out = np.empty((offsets.numel() - 1, W.shape[1]), np.float32)
    _forward_kernel(_host_f32(values), _host_i64(indices), _host_i64(offsets), W, out)
    dtype = torch.result_type(values, W_dec)
    return torch.from_numpy(out).to(W_dec.device, dtype)


def decode_backward_numba(grad_out, values, indices, offsets, W_dec, need_values=True,
                          need_W=True):
    """numba CPU backward: (grad_values[nnz] | None, grad_W[F, D] | None)."""
    g, W = _host_f32(grad_out), _host_f32(W_dec)
    v, idx, off = _host_f32(values), _host_i64(indices), _host_i64(offsets)
    grad_values = grad_W = None
    if need_values:
        gv = np.empty(v.size, np.float32)
        _grad_values_kernel(g, idx, off, W, gv)
        grad_values = torch.from_numpy(gv).to(values.device, values.dtype)
    if need_W:
        gW = np.empty(W.shape, np.float32)
        scatter_rows(v, *transpose(idx, off, W.shape[0]), g, gW)
        grad_W = torch.from_numpy(gW).to(W_dec.device, W_dec.dtype)
    return grad_values, grad_W


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _forward_kernel(values, indices, offsets, W_FD, out_BD):  # pragma: no cover (numba)
    for b in prange(out_BD.shape[0]):
        out = out_BD[b]
        out[:] = 0
        for p in range(offsets[b], offsets[b + 1]):
            v = values[p]
            w = W_FD[indices[p]]
            for d in range(out.size):
                out[d] += v * w[d]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _grad_values_kernel(grad_BD, indices, offsets, W_FD, grad_values):  # pragma: no cover
    for b in prange(grad_BD.shape[0]):
        g = grad_BD[b]
        for p in range(offsets[b], offsets[b + 1]):
            w = W_FD[indices[p]]
            acc = np.float32(0.0)
            for d in range(g.size):
                acc += g[d] * w[d]
            grad_values[p] = acc
