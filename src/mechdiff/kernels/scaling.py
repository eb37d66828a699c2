"""Latent-scaling accumulators: per latent j, sum f_j**2 and sum f_j * y over tokens.

These are the sufficient statistics of the closed-form latent scaling of DESIGN.md,
beta_j = d_j . (sum f_j y) / (|d_j|**2 sum f_j**2); callers add them up over batches.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from mechdiff.kernels.csr import check_csr, row_ids, scatter_rows, transpose
from mechdiff.kernels.resolver import resolve


def latent_scaling_sums(values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                        Y: torch.Tensor, *, n_latents: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-latent sums of f**2 and f*y over a CSR batch of sparse activations.

    Args:
        values: float[nnz] activations f of the active latents.
        indices: int64[nnz] latent ids in [0, n_latents).
        offsets: int64[B + 1] row boundaries.
        Y: float[B, D] the per-token target y (reconstruction or error).
        n_latents: number of latents F.

    Returns:
        (sum_f2 float64[F], sum_fy float64[F, D]) on Y's device.
    """
    if Y.ndim != 2 or Y.shape[0] != offsets.numel() - 1:
        raise ValueError(f"Y must be [B, D] with B = len(offsets) - 1, got {tuple(Y.shape)}")
    check_csr(values, indices, offsets, n_latents)
    return resolve("latent_scaling_sums", str(Y.device))(values, indices, offsets, Y, n_latents)


def latent_scaling_reference(values, indices, offsets, Y, n_latents):
    """Torch reference in float64."""
    v = values.detach().double()
    sum_f2 = torch.zeros(n_latents, dtype=torch.float64, device=Y.device)
    sum_f2.index_add_(0, indices, v * v)
    sum_fy = torch.zeros(n_latents, Y.shape[1], dtype=torch.float64, device=Y.device)
    sum_fy.index_add_(0, indices, v[:, None] * Y.detach().double()[row_ids(offsets)])
    return sum_f2, sum_fy


def latent_scaling_numba(values, indices, offsets, Y, n_latents):
    """numba CPU loop: float32 products, float64 accumulation."""
    v = values.detach().to("cpu", torch.float32).contiguous().numpy()
    idx = indices.detach().cpu().contiguous().numpy()
    y = Y.detach().to("cpu", torch.float32).contiguous().numpy()
    t_offsets, t_entry, t_row = transpose(idx, offsets.detach().cpu().contiguous().numpy(),
                                          n_latents)
    sum_fy = np.empty((n_latents, y.shape[1]), np.float64)
    scatter_rows(v, t_offsets, t_entry, t_row, y, sum_fy)
    sum_f2 = _sum_squares(v, t_offsets, t_entry)
    return torch.from_numpy(sum_f2).to(Y.device), torch.from_numpy(sum_fy).to(Y.device)


@njit(parallel=True, cache=True)
def _sum_squares(values, t_offsets, t_entry):  # pragma: no cover (numba)
    out = np.zeros(t_offsets.size - 1)
    for j in prange(out.size):
        acc = 0.0
        for q in range(t_offsets[j], t_offsets[j + 1]):
            acc += np.float64(values[t_entry[q]]) ** 2
        out[j] = acc
    return out
