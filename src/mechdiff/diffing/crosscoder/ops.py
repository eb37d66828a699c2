"""The sparse encoder gradient: only the active (row, latent) entries reach W_enc.

A batch of latent activations is CSR: ``values[nnz]``, ``indices[nnz]`` (latent
ids, int64) and ``offsets[B+1]``. The decoder side is ``mechdiff.kernels.sparse_decode``.
The encoder's weight gradient, grad W_enc[j] = sum over entries p of latent j of
g_p x[row(p)], is the same scatter as the decoder-weight gradient of sparse decode
(grad W_dec[j] = sum_p f_p grad_out[row(p)]), so it reuses that kernel with
(values, grad_out) = (g, x). A step then costs one dense matmul (the encoder
forward) plus O(nnz * D) work.
"""

from __future__ import annotations

from typing import Any

import torch

from mechdiff.kernels import resolve


def row_ids(offsets: torch.Tensor) -> torch.Tensor:
    """Row id of every stored entry: offsets [B+1] -> rows [nnz]."""
    counts = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel(), device=offsets.device), counts)


def scatter_to_latents(values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                       rows_BD: torch.Tensor, n_latents: int) -> torch.Tensor:
    """out[j] = sum over entries p of latent j of values[p] * rows_BD[row(p)]  -> [F, D]."""
    backward = resolve("sparse_decode_backward", str(rows_BD.device))
    proxy = torch.empty(n_latents, rows_BD.shape[1], dtype=rows_BD.dtype, device=rows_BD.device)
    _, out = backward(rows_BD.contiguous(), values, indices, offsets, proxy, False, True)
    return out


class _SparseEncode(torch.autograd.Function):
    """values_p = pre[row(p), indices_p] where pre = x @ W_enc^T + b_enc was computed densely.

    Forward passes the gathered pre-activations through; backward sends the
    gradient to W_enc [F, D_in] and b_enc [F] touching only the active entries
    (the input x needs no gradient).
    """

    @staticmethod
    def forward(ctx: Any, pre_values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(indices, offsets, x)
        ctx.n_latents = w_enc.shape[0]
        return pre_values.clone()

    @staticmethod
    def backward(ctx: Any, grad_values: torch.Tensor) -> tuple[Any, ...]:
        indices, offsets, x = ctx.saved_tensors
        grad_values = grad_values.contiguous()
        grad_w = scatter_to_latents(grad_values, indices, offsets, x, ctx.n_latents)
        grad_b = torch.zeros(ctx.n_latents, dtype=grad_values.dtype, device=grad_values.device)
        grad_b.index_add_(0, indices, grad_values)
        return None, None, None, None, grad_w, grad_b


def sparse_encode_values(pre_values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                         x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor) -> torch.Tensor:
    """Attach the sparse encoder gradient to already computed pre-activation values.

    Args:
        pre_values: [nnz] pre-activations at the kept entries (no grad).
        indices: [nnz] latent ids; offsets: [B+1] row starts.
        x: [B, D_in] encoder input; w_enc: [F, D_in]; b_enc: [F] (parameters).

    Returns:
        [nnz] the same values in the parameters' dtype, differentiable w.r.t. w_enc and b_enc.
        Under bf16 autocast the pre-activations arrive in bf16: they are cast up here, so the
        gradient that reaches the float32 encoder is computed in float32, not rounded to bf16.
    """
    dtype = w_enc.dtype
    return _SparseEncode.apply(pre_values.to(dtype), indices, offsets, x.to(dtype), w_enc, b_enc)
