"""Comparing subspaces: principal angles and intruder dimensions (Shuttleworth et al. 2024)."""

from __future__ import annotations

import numpy as np
import torch

from mechdiff.weightdecomp.spectral.config import require
from mechdiff.weightdecomp.spectral.sketch import singular_vectors

INTRUDER_DTYPE = np.dtype([("index", np.int64), ("max_cos", np.float32)])

def principal_angles(A: torch.Tensor, B: torch.Tensor) -> np.ndarray:
    """Principal angles between the column spans of A [d, p] and B [d, q].

    Args:
        A: spanning vectors as columns (need not be orthonormal).
        B: spanning vectors as columns, same number of rows.

    Returns:
        float64[min(p, q)] angles in radians, ascending (0 = shared direction).
    """
    require(A.ndim == 2 and B.ndim == 2 and A.shape[0] == B.shape[0],
             f"need [d, p] and [d, q] matrices, got {tuple(A.shape)} and {tuple(B.shape)}")
    Qa = torch.linalg.qr(A.double()).Q
    Qb = torch.linalg.qr(B.double()).Q
    cosines = torch.linalg.svdvals(Qa.T @ Qb).clamp(0.0, 1.0)
    return np.sort(np.arccos(cosines.cpu().numpy()))

def intruder_dimensions(W_base: torch.Tensor, W_ft: torch.Tensor, k: int,
                        threshold: float = 0.5, *, base_k: int | None = None,
                        side: str = "left", seed: int = 0) -> np.ndarray:
    """Top singular vectors of W_ft unlike every top singular vector of W_base.

    An intruder dimension (Shuttleworth et al. 2024) is a direction a fine-tune made
    dominant that the base did not have: max_j |cos(u_i^ft, u_j^base)| < threshold. Base
    vectors are taken from a larger set (all when the matrix is small) so a direction
    that merely moved up the base's spectrum is not flagged; beyond that set a match is
    missed, which makes a flag an upper bound for very large matrices.

    Args:
        W_base: base weight [m, n].
        W_ft: fine-tuned weight, same shape.
        k: number of top W_ft singular vectors to test.
        threshold: cosine below which a vector is an intruder.
        base_k: number of base singular vectors to compare against
            (default: all when min(m, n) <= 512, else max(4k, 128)).
        side: "left" (output space, columns of U) or "right" (input space).
        seed: sketch seed.

    Returns:
        Structured array (index, max_cos) of the intruders, index into W_ft's top-k.
    """
    require(W_base.shape == W_ft.shape and W_base.ndim == 2,
             f"need two matrices of one shape, got {tuple(W_base.shape)} and {tuple(W_ft.shape)}")
    require(side in ("left", "right"), f"side must be 'left' or 'right', got {side!r}")
    require(0 < threshold <= 1, f"threshold must be in (0, 1], got {threshold}")
    small = min(W_base.shape)
    base_k = base_k if base_k is not None else (small if small <= 512 else max(4 * k, 128))
    ft_vecs = singular_vectors(W_ft, k, side, seed)
    base_vecs = singular_vectors(W_base, base_k, side, seed)
    max_cos = (ft_vecs.T @ base_vecs).abs().amax(dim=1).cpu().numpy()
    found = np.flatnonzero(max_cos < threshold)
    out = np.empty(len(found), dtype=INTRUDER_DTYPE)
    out["index"], out["max_cos"] = found, max_cos[found]
    return out
