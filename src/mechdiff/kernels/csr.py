"""Sparse rows in CSR form (values, indices, offsets) and the kernels they share.

Row b of a batch holds latents indices[offsets[b]:offsets[b+1]] with activations
values[offsets[b]:offsets[b+1]]; rows may hold different counts (BatchTopK) or none.
Sparse decode's W_dec gradient and the latent-scaling sums are the same operation,
out[j] = sum over entries p of latent j of values[p] * G[row(p)], so both use
`scatter_rows`, which walks the transposed (per-latent) lists so every output row is
written by exactly one thread and untouched rows cost only their zeroing.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

FASTMATH = {"reassoc", "contract"}


def check_csr(values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
              n_latents: int) -> None:
    """Raise ValueError unless (values, indices, offsets) is a valid CSR batch.

    Args:
        values: float[nnz] activations.
        indices: int64[nnz] latent ids in [0, n_latents).
        offsets: int64[B + 1], non-decreasing, offsets[0] == 0, offsets[-1] == nnz.
        n_latents: number of latents F.
    """
    if values.ndim != 1 or indices.shape != values.shape:
        raise ValueError(f"values and indices must be 1-D of equal length, got "
                         f"{tuple(values.shape)} and {tuple(indices.shape)}")
    if indices.dtype != torch.int64 or offsets.dtype != torch.int64 or offsets.ndim != 1:
        raise ValueError("indices and offsets must be 1-D int64 tensors")
    if offsets.numel() == 0 or int(offsets[0]) != 0 or int(offsets[-1]) != values.numel():
        raise ValueError(f"offsets must start at 0 and end at nnz={values.numel()}")
    if offsets.numel() > 1 and bool((offsets.diff() < 0).any()):
        raise ValueError("offsets must be non-decreasing")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_latents):
        raise ValueError(f"indices must lie in [0, {n_latents})")


def row_ids(offsets: torch.Tensor) -> torch.Tensor:
    """int64[nnz]: the batch row of every entry."""
    n_rows = offsets.numel() - 1
    return torch.repeat_interleave(torch.arange(n_rows, device=offsets.device), offsets.diff())


def transpose_torch(indices: torch.Tensor, offsets: torch.Tensor, n_latents: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-latent lists with torch ops (any device): (t_offsets[F+1], t_entry, t_row).

    Entries of one latent keep their batch order (stable sort), like `transpose`.
    """
    t_entry = torch.sort(indices, stable=True).indices
    counts = torch.bincount(indices, minlength=n_latents)
    t_offsets = torch.zeros(n_latents + 1, dtype=torch.int64, device=indices.device)
    t_offsets[1:] = torch.cumsum(counts, 0)
    return t_offsets, t_entry, row_ids(offsets)[t_entry]


@njit(cache=True)
def transpose(indices, offsets, n_latents):  # pragma: no cover (numba)
    """Counting sort of entries by latent: (t_offsets[F+1], t_entry[nnz], t_row[nnz])."""
    t_offsets = np.zeros(n_latents + 1, np.int64)
    for p in range(indices.size):
        t_offsets[indices[p] + 1] += 1
    for j in range(n_latents):
        t_offsets[j + 1] += t_offsets[j]
    fill = t_offsets[:-1].copy()
    t_entry = np.empty(indices.size, np.int64)
    t_row = np.empty(indices.size, np.int64)
    for b in range(offsets.size - 1):
        for p in range(offsets[b], offsets[b + 1]):
            q = fill[indices[p]]
            fill[indices[p]] += 1
            t_entry[q] = p
            t_row[q] = b
    return t_offsets, t_entry, t_row


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def scatter_rows(values, t_offsets, t_entry, t_row, rows_BD, out_FD):  # pragma: no cover
    """out_FD[j] = sum over entries q of latent j of values[t_entry[q]] * rows_BD[t_row[q]].

    out_FD may be float32 or float64 (accumulation happens in its dtype).
    """
    for j in prange(out_FD.shape[0]):
        out = out_FD[j]
        out[:] = 0
        for q in range(t_offsets[j], t_offsets[j + 1]):
            v = values[t_entry[q]]
            src = rows_BD[t_row[q]]
            for d in range(out.size):
                out[d] += v * src[d]
