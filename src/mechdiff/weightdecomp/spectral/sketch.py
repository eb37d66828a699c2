"""Top singular triplets of a delta: block Krylov / subspace sketch, exact SVD for small ones."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from mechdiff.weightdecomp.spectral.blocked import RowBlockMatrix
from mechdiff.weightdecomp.spectral.config import (
    SKETCH_METHODS,
    SpectralConfig,
    check_matrix,
    require,
)

# Below this many entries an exact SVD is as fast as a sketch and gives every value.
_EXACT_MAX_ENTRIES = 1 << 16

ONE_THREAD_MAX_ENTRIES = 1 << 18  # head slices and small layers: threads cost more


_THIN_DT_MIN, _THIN_DT_MAX = 8, 64  # sketch widths where _times_dt transposes the product

def randomized_svd(D: torch.Tensor | RowBlockMatrix, k: int, *, oversample: int = 10, n_iter: int = 2,
                   generator: torch.Generator | None = None, method: str = "krylov"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets of D by a randomized range sketch (Halko et al. 2011).

    "subspace" is Halko's alg. 4.4: power iterations with a QR after every product with D
    or D^T, so float32 keeps the small directions. "krylov" (default) keeps every block
    of those iterations, [D W, (D D^T) D W, ...] (Musco & Musco 2015), for the same 2q+2
    passes over D: values barely above a noise bulk converge like exp(-q sqrt(gap))
    instead of gap^q, which is what puts spikes at 1.15x the bulk edge within 1%.
    Matrices too small for a sketch to pay get an exact SVD.

    Args:
        D: float32 matrix [m, n] on any device; results live on the same device. A
            RowBlockMatrix works too: each pass over D forms it one block of rows at a time.
        k: number of triplets wanted; clipped to min(m, n).
        oversample: extra sketch columns.
        n_iter: power iterations / Krylov depth (each costs two passes over D).
        generator: CPU generator for the Gaussian test matrix (seed 0 when None);
            the matrix is drawn on the CPU and moved, so CPU and CUDA agree.
        method: "krylov" or "subspace".

    Returns:
        U [m, k], S [k] (descending), V [n, k] with D ~= U diag(S) V^T.
    """
    check_matrix(D)
    require(method in SKETCH_METHODS, f"method must be one of {SKETCH_METHODS}, got {method!r}")
    D = D if D.dtype == torch.float32 else D.float()
    m, n = D.shape
    k = min(k, m, n)
    if use_exact(D.shape, k, oversample, n_iter, method):
        return _exact_svd(D.dense() if isinstance(D, RowBlockMatrix) else D, k)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    omega_t = torch.randn(k + oversample, n, generator=generator).to(D.device)  # [l, n]
    sketch = _krylov_basis if method == "krylov" else _subspace_basis
    Q_t, B = sketch(D, omega_t, n_iter)  # Q_t [w, m] orthonormal rows, B = Q_t D [w, n]
    U_b, S, V = _svd_via_gram(B, k)  # B = U_b diag(S) V^T
    return Q_t.T @ U_b, S, V

def _times_dt(X_t: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    # X_t @ D.T for thin X_t [l, n]. For l of about 8-64, (D @ X_t.T).T runs a different
    # BLAS kernel that is ~2x faster on CPU (l = 13, D [5632, 2048]: 1.9 vs 4.2 ms; the
    # screening sketch's width); at l = 4 or 138 the plain product is ~10% faster.
    return (D @ X_t.T).T if _THIN_DT_MIN <= X_t.shape[0] <= _THIN_DT_MAX else X_t @ D.T

def _subspace_basis(D: torch.Tensor, omega_t: torch.Tensor, n_iter: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    Q_t = _orthonormal_rows(_times_dt(omega_t, D))  # [l, m]
    for _ in range(n_iter):
        Q_t = _orthonormal_rows(_times_dt(_orthonormal_rows(Q_t @ D), D))
    return Q_t, Q_t @ D

def _krylov_basis(D: torch.Tensor, omega_t: torch.Tensor, n_iter: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    # Each new block is orthogonalized against all earlier ones, so Q^T D of the whole
    # basis is the stack of the Q_i^T D computed on the way: no extra wide pass.
    (m, n), width = D.shape, omega_t.shape[0]
    Q_t = D.new_empty(width * (n_iter + 1), m)  # blocks Q_i^T [l, m]
    B = D.new_empty(width * (n_iter + 1), n)  # blocks Q_i^T D [l, n]
    Q_t[:width] = _orthonormal_rows(_times_dt(omega_t, D))
    for start in range(0, width * (n_iter + 1), width):
        stop = start + width
        B[start:stop] = Q_t[start:stop] @ D
        if stop < len(Q_t):
            Y_t = _times_dt(_orthonormal_rows(B[start:stop]), D)  # [l, m], in span (D D^T) Q_i
            Q_t[stop:stop + width] = _orthonormal_rows_against(Y_t, Q_t[:stop])
    return Q_t, B

def _orthonormal_rows_against(Y_t: torch.Tensor, Q_t: torch.Tensor) -> torch.Tensor:
    # Block classical Gram-Schmidt with the projection applied twice (CGS2): once is not
    # enough in float32 when the Krylov space is nearly exhausted and Y is mostly
    # round-off. Projection is linear, so one orthonormalization after both suffices.
    for _ in range(2):
        Y_t = Y_t - (Y_t @ Q_t.T) @ Q_t
    return _orthonormal_rows(Y_t)

def _orthonormal_rows(Y_t: torch.Tensor) -> torch.Tensor:
    # CholeskyQR2: two small BLAS-3 products per pass instead of a Householder QR, which
    # is 10-100x slower on a [l, m] block with MKL threads. The first pass forms the Gram
    # matrix in float64 (it squares Y's condition number); the second starts from nearly
    # orthonormal rows, so float32 suffices. Each pass applies L^-1 as a product with the
    # small explicit inverse in Y's dtype: a float64 triangular solve over the long side
    # cost 2-3x as much, for orthogonality 3e-9 instead of 3e-7 (float32 round-off).
    # A rank-deficient block (exhausted Krylov space) falls back to Householder.
    Q_t = Y_t
    for first in (True, False):
        if first:
            Y64 = Q_t.double()
            gram = Y64 @ Y64.T
        else:
            gram = (Q_t @ Q_t.T).double()
        with one_thread():
            L, info = torch.linalg.cholesky_ex(gram)
            if int(info) != 0:
                return torch.linalg.qr(Y_t.T).Q.T.contiguous()
            eye = torch.eye(L.shape[0], dtype=L.dtype, device=L.device)
            L_inv = torch.linalg.solve_triangular(L, eye, upper=False)
        Q_t = L_inv.to(Y_t.dtype) @ Q_t
    return Q_t

@contextmanager
def one_thread() -> Iterator[None]:
    # OpenMP/MKL spin a thread team even for tiny operations; on a loaded 2-core machine
    # a 128x128 eigh took 230 ms with 2 threads and 4 ms with 1. Used for small LAPACK
    # calls and for whole small matrices; big products with D keep every thread.
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)

def _svd_via_gram(A: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Top-k SVD of A [p, q] from the eigendecomposition of its smaller Gram matrix in
    # float64: values are exact to ~1e-8 s_1, far below float32 input error, and eigh of
    # a w x w matrix is much cheaper than a LAPACK SVD of the tall A.
    if A.shape[0] < A.shape[1]:
        V, S, U = _svd_via_gram(A.T, k)
        return U, S, V
    A64 = A.double()
    gram = A64.T @ A64
    with one_thread():
        eigvals, W = torch.linalg.eigh(gram)  # ascending
    order = torch.argsort(eigvals, descending=True)[:k]
    S = eigvals[order].clamp_min(0).sqrt()
    V = W[:, order]  # [q, k]
    U = (A64 @ V) / torch.where(S > 0, S, 1.0)  # zero columns where S = 0
    return U.to(A.dtype), S.to(A.dtype), V.to(A.dtype)

def top_triplets(D: torch.Tensor, k: int, config: SpectralConfig
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(config.seed)
    return randomized_svd(D, k, oversample=config.oversample, n_iter=config.n_iter,
                          generator=generator, method=config.method)

def use_exact(shape: tuple[int, int], k: int, oversample: int, n_iter: int,
               method: str) -> bool:
    width = (k + oversample) * (n_iter + 1 if method == "krylov" else 1)
    return width >= min(shape) or shape[0] * shape[1] <= _EXACT_MAX_ENTRIES

def _exact_svd(D: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _svd_via_gram(D, k)

def singular_vectors(W: torch.Tensor, k: int, side: str, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    U, _, V = randomized_svd(W.float(), k, generator=generator)
    return U if side == "left" else V
