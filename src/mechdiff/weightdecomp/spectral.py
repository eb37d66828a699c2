"""Spectral analysis of weight deltas: randomized SVD, noise bulk, structured rank, score.

Model (DESIGN.md, "Data-free weight diff"): a delta D = W_ft - W_base of shape [m, n] is
a few structured directions plus a diffuse bulk, D = sum_i theta_i u_i v_i^T + N, where N
has entries of variance sigma^2. The bulk's singular values fill [0, sigma(sqrt m + sqrt n)]
(Marchenko-Pastur); a direction is only visible when theta_i^2 > sigma^2 sqrt(mn) (the BBP
threshold), and then its observed singular value is pushed up by the noise to

    s_i^2 = (theta_i^2 + sigma^2 m)(theta_i^2 + sigma^2 n) / theta_i^2.

We estimate sigma from the exact Frobenius energy (never from the sketched bulk singular
values, which randomized SVD underestimates on a flat spectrum), count the s_i above the
edge plus a Tracy-Widom margin, and undo the inflation above to get each theta_i. Real
drift is not iid (rows and columns have their own scales), so a value must also clear
the top singular value of D with random entry signs, which keeps the variance profile
but no low-rank structure. The top triplets come from a block Krylov sketch (8 passes
over D by default); memory beyond D is [m + n, ~150] float32 bases (the sign flip works
on D in place and restores it; a non-contiguous D is copied first).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from mechdiff.kernels.signs import signs_flipped

# Below this many entries an exact SVD is as fast as a sketch and gives every value.
_EXACT_MAX_ENTRIES = 1 << 16
_SIGMA_STEPS = 6
_ONE_THREAD_MAX_ENTRIES = 1 << 18  # head slices and small layers: threads cost more
_METHODS = ("krylov", "subspace")
_FROB_BLOCK = 1 << 20  # elements per block when streaming over D
_THIN_DT_MIN, _THIN_DT_MAX = 8, 64  # sketch widths where _times_dt transposes the product

INTRUDER_DTYPE = np.dtype([("index", np.int64), ("max_cos", np.float32)])


@dataclass(frozen=True)
class SpectralConfig:
    """How `analyze_delta` sketches a delta and decides which directions are structured."""

    k: int = 32
    """Number of top singular triplets to compute (clipped to min(m, n))."""
    oversample: int = 5
    """Extra sketch columns beyond k; with a Krylov basis (q+1 blocks of k+oversample
    columns) 5 suffices, and each column costs 2q+2 multiply-adds per entry of D."""
    n_iter: int = 3
    """Power iterations / Krylov depth. Block Krylov at depth 3 (8 passes over D) puts
    every value above the detection cut, down to 1.15x the bulk edge, within 0.5% of the
    exact SVD; depth 2 leaves 1.5-2.7% there (benchmarks/bench_spectral.py)."""
    method: str = "krylov"
    """Sketch: "krylov" (block Krylov, default) or "subspace" (Halko power iterations)."""
    k_max: int = 256
    """When all k values stand above the cut, k doubles up to this bound (0 disables)."""
    screen_k: int = 8
    """Large matrices are first sketched with this many triplets; when none stands above the
    cut (drift only, most matrices of most fine-tunes) that short sketch is the answer and
    only its values are kept; otherwise the full k-triplet sketch runs. 0 disables."""
    tw_quantile: float = 5.0
    """Margin above the bulk edge in Tracy-Widom units sigma/2 (1/sqrt m + 1/sqrt n)^(1/3).
    With sigma estimated leaving out the tested value, the 99.99% point of pure Gaussian
    noise measured 4.2-4.8 for shapes from 16x64 to 64x256 (5.6 at 16x16, 7.3 at 8x8), so
    5.0 calls pure drift structured in about 1e-4 of draws there."""
    signflip: bool = True
    """Also require a value to clear the top singular value of D with random entry signs
    (Hong, Sheng & Dobriban 2020). Flipping signs destroys low-rank structure but keeps
    any variance profile, so this cut follows row/column-scaled drift, which an iid edge
    mistakes for structure (pure drift with row and column scales spread 2x came out as
    rank 3-22 on average from 64x256 to 512x1024 without it, 0-0.25 with it; spread 4x:
    16-97 without, 0.1-0.45 with). Costs a thin deep sketch of D with its signs
    flipped in place (benchmarks/bench_spectral.py, signflip-cost row)."""
    signflip_quantile: float = 3.0
    """Margin above the sign-flipped top value, in Tracy-Widom units; it compares two
    draws of the same law, so 3 units leave some heteroscedastic tensors at rank 1."""
    signflip_sketch_margin: float = 0.01
    """Relative margin on the sketched sign-flipped value, which a thin Krylov sketch
    underestimates by up to ~0.5% on a flat spectrum (exact path: no margin)."""
    rel_floor: float = 1e-4
    """Values below rel_floor * s_1 are float32 round-off, never structure; this also
    floors the noise level of an exactly low-rank delta (a merged LoRA)."""
    drift_weight: float = 1e-3
    """Weight of rel_delta in the score: orders drift-only tensors by size, below edits."""
    seed: int = 0
    """Seed of the Gaussian test matrix, drawn on the CPU so every device sketches alike."""

    def __post_init__(self) -> None:
        _require(self.k >= 1, f"k must be >= 1, got {self.k}")
        _require(self.oversample >= 0, f"oversample must be >= 0, got {self.oversample}")
        _require(self.n_iter >= 0, f"n_iter must be >= 0, got {self.n_iter}")
        _require(self.screen_k >= 0, f"screen_k must be >= 0, got {self.screen_k}")
        _require(self.method in _METHODS, f"method must be one of {_METHODS}, got "
                 f"{self.method!r}")
        _require(self.k_max == 0 or self.k_max >= self.k,
                 f"k_max must be 0 or >= k ({self.k}), got {self.k_max}")
        _require(self.tw_quantile >= 0, f"tw_quantile must be >= 0, got {self.tw_quantile}")
        _require(self.signflip_quantile >= 0,
                 f"signflip_quantile must be >= 0, got {self.signflip_quantile}")
        _require(0 <= self.signflip_sketch_margin < 1,
                 f"signflip_sketch_margin must be in [0, 1), got {self.signflip_sketch_margin}")
        _require(0 <= self.rel_floor < 1, f"rel_floor must be in [0, 1), got {self.rel_floor}")
        _require(0 <= self.drift_weight < 1,
                 f"drift_weight must be in [0, 1), got {self.drift_weight}")


@dataclass(frozen=True)
class Spectrum:
    """What `analyze_delta` found in one delta matrix (or head slice) of shape [m, n]."""

    singular_values: np.ndarray
    """Top singular values of D, descending, float32[k]."""
    U: np.ndarray
    """Left singular vectors (output side), float32[m, k]."""
    V: np.ndarray
    """Right singular vectors (input side), float32[n, k]."""
    spike_strengths: np.ndarray
    """theta_i of the structured directions with the noise inflation undone, float32[rank]."""
    noise_sigma: float
    """Per-entry standard deviation of the bulk."""
    bulk_edge: float
    """Largest singular value the bulk reaches, sigma (sqrt m + sqrt n)."""
    threshold: float
    """Cut a singular value must exceed to count as structured: the larger of the bulk
    edge plus its Tracy-Widom margin and the sign-flipped top value plus its margin (the
    flip is skipped, and this is the iid cut, when no value clears the iid cut)."""
    rank: int
    """Number of singular values above `threshold` (0 = diffuse drift only)."""
    structured_fraction: float
    """sum_{i<=rank} s_i^2 / ||D||_F^2."""
    stable_rank: float
    """||D||_F^2 / s_1^2 (0 for an all-zero delta)."""
    frob2: float
    """||D||_F^2."""
    base_norm: float
    """||W_base||_F of the same tensor or slice, the score's unit."""
    score: float
    """Ranking key, see `structured_score`."""
    exact: bool
    """True when an exact SVD was used instead of the randomized sketch."""

    @property
    def rel_delta(self) -> float:
        """||D||_F / ||W_base||_F (inf when the base is all zero and D is not)."""
        return _safe_ratio(math.sqrt(self.frob2), self.base_norm)


def randomized_svd(D: torch.Tensor, k: int, *, oversample: int = 10, n_iter: int = 2,
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
        D: float32 matrix [m, n] on any device; results live on the same device.
        k: number of triplets wanted; clipped to min(m, n).
        oversample: extra sketch columns.
        n_iter: power iterations / Krylov depth (each costs two passes over D).
        generator: CPU generator for the Gaussian test matrix (seed 0 when None);
            the matrix is drawn on the CPU and moved, so CPU and CUDA agree.
        method: "krylov" or "subspace".

    Returns:
        U [m, k], S [k] (descending), V [n, k] with D ~= U diag(S) V^T.
    """
    _check_matrix(D)
    _require(method in _METHODS, f"method must be one of {_METHODS}, got {method!r}")
    D = D if D.dtype == torch.float32 else D.float()
    m, n = D.shape
    k = min(k, m, n)
    if _use_exact(D.shape, k, oversample, n_iter, method):
        return _exact_svd(D, k)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    omega_t = torch.randn(k + oversample, n, generator=generator).to(D.device)  # [l, n]
    sketch = _krylov_basis if method == "krylov" else _subspace_basis
    Q_t, B = sketch(D, omega_t, n_iter)  # Q_t [w, m] orthonormal rows, B = Q_t D [w, n]
    U_b, S, V = _svd_via_gram(B, k)  # B = U_b diag(S) V^T
    return Q_t.T @ U_b, S, V


# The sketches keep bases as rows ([l, m] rather than [m, l]) so that every block and
# every prefix of blocks is a contiguous slice, and D or D^T enters BLAS as a view.


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
        with _one_thread():
            L, info = torch.linalg.cholesky_ex(gram)
            if int(info) != 0:
                return torch.linalg.qr(Y_t.T).Q.T.contiguous()
            eye = torch.eye(L.shape[0], dtype=L.dtype, device=L.device)
            L_inv = torch.linalg.solve_triangular(L, eye, upper=False)
        Q_t = L_inv.to(Y_t.dtype) @ Q_t
    return Q_t


@contextmanager
def _one_thread() -> Iterator[None]:
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
    with _one_thread():
        eigvals, W = torch.linalg.eigh(gram)  # ascending
    order = torch.argsort(eigvals, descending=True)[:k]
    S = eigvals[order].clamp_min(0).sqrt()
    V = W[:, order]  # [q, k]
    U = (A64 @ V) / torch.where(S > 0, S, 1.0)  # zero columns where S = 0
    return U.to(A.dtype), S.to(A.dtype), V.to(A.dtype)


def analyze_delta(D: torch.Tensor, *, base_norm: float, config: SpectralConfig,
                  frob2: float | None = None) -> Spectrum:
    """Spectrum, noise bulk, structured rank and score of one delta matrix.

    Args:
        D: W_ft - W_base as [out, in] (or one head slice of it), float32, any device,
            all finite (NaN/Inf raise ValueError: the caller reports them instead).
        base_norm: ||W_base||_F of the same tensor or slice (the score's unit).
        config: sketch and detection settings.
        frob2: ||D||_F^2 when the caller already has it (fused statistics); computed
            otherwise. It must be exact: the noise level is derived from it.

    Returns:
        The Spectrum; vectors and values are moved to the CPU as numpy float32.
    """
    _check_matrix(D)
    _require(base_norm >= 0 and math.isfinite(base_norm), f"base_norm must be finite >= 0, "
             f"got {base_norm}")
    D = D if D.dtype == torch.float32 else D.float()
    if frob2 is None:
        frob2 = frobenius2(D)
    _require(math.isfinite(frob2), "delta has NaN/Inf entries (report them; no spectrum)")
    screening = 0 < config.screen_k < config.k and not _use_exact(
        D.shape, min(config.k, *D.shape), config.oversample, config.n_iter, config.method)
    k = config.screen_k if screening else config.k
    with _one_thread() if D.numel() <= _ONE_THREAD_MAX_ENTRIES else nullcontext():
        while True:
            U, S, V = _top_triplets(D, k, config)
            fit = _detect(D, S, frob2, config)
            if screening:
                if fit.rank == 0:
                    break
                screening, k = False, config.k
                continue
            if not _should_grow(fit.rank, k, D.shape, config):
                break
            k = min(2 * k, config.k_max, *D.shape)
    exact = _use_exact(D.shape, min(k, *D.shape), config.oversample, config.n_iter,
                       config.method)
    return _spectrum(U, S, V, fit, frob2, base_norm, exact=exact,
                     drift_weight=config.drift_weight)


def clears_first_cut(singular_values: torch.Tensor, shape: tuple[int, int], frob2: float,
                     config: SpectralConfig) -> bool:
    """Whether any of the top singular values stands above the iid detection cut.

    The sign-flip test of `analyze_delta` can only raise the cut, so False means
    `analyze_delta` would report rank 0: callers holding exact values (e.g. a batch of
    head slices) can skip the sketch for those matrices.

    Args:
        singular_values: the matrix's top singular values, descending (at least config.k of
            them when it has that many).
        shape: the matrix's [m, n].
        frob2: its exact squared Frobenius norm.
        config: detection settings.

    Returns:
        True when a value clears the cut.
    """
    return _fit_noise(singular_values[: config.k], shape, frob2, config).rank > 0


def structured_score(spike_strengths: np.ndarray, base_norm: float, rel_delta: float,
                     drift_weight: float = 1e-3) -> float:
    """Ranking key of a matrix (or head slice): the size of its structured change.

    score = sqrt(sum_i theta_i^2) / ||W_base|| + drift_weight * rel_delta.

    theta_i are the strengths of the directions above the bulk with the noise inflation
    removed, so the first term estimates ||low-rank part of D|| / ||W_base||: a rank-1 edit
    of 1% of the norm scores about 0.01 whatever the shape or the drift around it. Drift
    alone adds nothing to it (rank 0), so a 1% edit outranks 30% diffuse drift; the small
    second term still orders drift-only tensors by size and breaks ties. Being a ratio of
    norms it is comparable across shapes and between whole tensors and head slices.

    Args:
        spike_strengths: theta_i of the structured directions (may be empty).
        base_norm: ||W_base||_F of the tensor or slice.
        rel_delta: ||D||_F / ||W_base||_F.
        drift_weight: weight of the drift term.

    Returns:
        The score (0 for no change).
    """
    structured = math.sqrt(float(np.sum(np.square(spike_strengths, dtype=np.float64))))
    return _safe_ratio(structured, base_norm) + drift_weight * rel_delta


def score_1d(rel_delta: float, drift_weight: float = 1e-3) -> float:
    """Ranking key of a 1-D tensor (bias, norm scale) on the scale of `structured_score`.

    A vector has no spectrum to separate structure from drift, so its change counts as
    drift: drift_weight * rel_delta. Norm gains and biases, which every fine-tune moves,
    then sort among drift-only matrices instead of above planted edits; a vector change
    1000x larger than a matrix's structured change still surfaces above it.

    Args:
        rel_delta: ||b_ft - b_base|| / ||b_base||.
        drift_weight: same weight as SpectralConfig.drift_weight.

    Returns:
        The score.
    """
    return drift_weight * rel_delta


def principal_angles(A: torch.Tensor, B: torch.Tensor) -> np.ndarray:
    """Principal angles between the column spans of A [d, p] and B [d, q].

    Args:
        A: spanning vectors as columns (need not be orthonormal).
        B: spanning vectors as columns, same number of rows.

    Returns:
        float64[min(p, q)] angles in radians, ascending (0 = shared direction).
    """
    _require(A.ndim == 2 and B.ndim == 2 and A.shape[0] == B.shape[0],
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
    _require(W_base.shape == W_ft.shape and W_base.ndim == 2,
             f"need two matrices of one shape, got {tuple(W_base.shape)} and {tuple(W_ft.shape)}")
    _require(side in ("left", "right"), f"side must be 'left' or 'right', got {side!r}")
    _require(0 < threshold <= 1, f"threshold must be in (0, 1], got {threshold}")
    small = min(W_base.shape)
    base_k = base_k if base_k is not None else (small if small <= 512 else max(4 * k, 128))
    ft_vecs = _singular_vectors(W_ft, k, side, seed)
    base_vecs = _singular_vectors(W_base, base_k, side, seed)
    max_cos = (ft_vecs.T @ base_vecs).abs().amax(dim=1).cpu().numpy()
    found = np.flatnonzero(max_cos < threshold)
    out = np.empty(len(found), dtype=INTRUDER_DTYPE)
    out["index"], out["max_cos"] = found, max_cos[found]
    return out


@dataclass(frozen=True)
class _NoiseFit:
    sigma: float
    edge: float
    threshold: float
    rank: int
    thetas: np.ndarray  # float64[rank]


def frobenius2(D: torch.Tensor) -> float:
    """||D||_F^2 summed in float64 over blocks of rows (no float64 copy of D).

    Args:
        D: matrix [m, n], any float dtype and device.

    Returns:
        The squared Frobenius norm.
    """
    rows = max(1, _FROB_BLOCK // max(1, D.shape[1]))
    return sum(float(torch.linalg.vector_norm(D[i:i + rows])) ** 2
               for i in range(0, D.shape[0], rows))


def mp_edge(sigma: float, m: int, n: int) -> float:
    """Largest singular value of an [m, n] noise matrix with entry std sigma (MP edge)."""
    return sigma * (math.sqrt(m) + math.sqrt(n))


def detection_threshold(sigma: float, m: int, n: int, config: SpectralConfig) -> float:
    """Edge plus the finite-size margin that the largest noise singular value may reach.

    It fluctuates around the edge on the Tracy-Widom scale (Johnstone 2001, in
    singular-value units) sigma/2 (1/sqrt m + 1/sqrt n)^(1/3); the margin is
    config.tw_quantile of those units, calibrated with sigma's own estimation error in.

    Args:
        sigma: per-entry noise std.
        m: rows.
        n: columns.
        config: the margin (tw_quantile).

    Returns:
        The cut.
    """
    tw_scale = 0.5 * (1 / math.sqrt(m) + 1 / math.sqrt(n)) ** (1 / 3)
    return sigma * (math.sqrt(m) + math.sqrt(n) + config.tw_quantile * tw_scale)


def spike_strength(s: np.ndarray, sigma: float, m: int, n: int) -> np.ndarray:
    """Invert the noise inflation s^2 = (t + sigma^2 m)(t + sigma^2 n)/t for t = theta^2.

    Args:
        s: observed singular values at or above the bulk edge.
        sigma: per-entry noise std.
        m: rows.
        n: columns.

    Returns:
        theta (float64, same length); s itself when sigma is 0.
    """
    s2 = np.square(np.asarray(s, dtype=np.float64))
    var = sigma * sigma
    b = s2 - var * (m + n)
    disc = np.maximum(b * b - 4 * var * var * m * n, 0.0)
    return np.sqrt(np.maximum((b + np.sqrt(disc)) / 2, 0.0))


def _detect(D: torch.Tensor, S: torch.Tensor, frob2: float, config: SpectralConfig
            ) -> _NoiseFit:
    iid_fit = _fit_noise(S, D.shape, frob2, config)
    if not config.signflip or iid_fit.rank == 0:  # the flip can only raise the cut
        return iid_fit
    # In units of the overall entry std, so _cut can rescale it to the sigma that leaves
    # the tested spikes out: a strong spike left in D * R is extra noise energy that
    # would otherwise raise the cut and hide weaker spikes (a rank-2 head edit came out
    # rank 1). The flip is never redone on a residual: subtracting values below the cut
    # would flatten a real variance profile and bring the spurious ranks back.
    sigma_all = math.sqrt(frob2 / D.numel())
    flip_ratio = _signflip_top(D, config) / sigma_all if sigma_all > 0 else 0.0
    return _fit_noise(S, D.shape, frob2, config, flip_ratio)


def _signflip_top(D: torch.Tensor, config: SpectralConfig) -> float:
    # Top singular value of D * R, R_ij = +-1 at random (a counter-based hash, so every
    # device flips the same entries; D is flipped in place and restored), raised by the
    # sketch margin when sketched (a thin deep Krylov basis: depth matters more than
    # width here).
    width, depth = 4, 8
    with signs_flipped(D, config.seed + 1) as flipped:
        _, S, _ = randomized_svd(flipped, 1, oversample=width - 1, n_iter=depth,
                                 generator=torch.Generator().manual_seed(config.seed + 1))
    exact = _use_exact(D.shape, 1, width - 1, depth, "krylov")
    return float(S[0]) * (1 + (0 if exact else config.signflip_sketch_margin))


def _cut(sigma: float, m: int, n: int, config: SpectralConfig, flip_ratio: float) -> float:
    # The iid cut keeps its Gaussian guarantee; the sign-flip cut adds the variance profile.
    tw_scale = 0.5 * (1 / math.sqrt(m) + 1 / math.sqrt(n)) ** (1 / 3)
    flip_cut = sigma * (flip_ratio + config.signflip_quantile * tw_scale) if flip_ratio else 0.0
    return max(detection_threshold(sigma, m, n, config), flip_cut)


def _fit_noise(S: torch.Tensor, shape: tuple[int, int], frob2: float,
               config: SpectralConfig, flip_ratio: float = 0.0) -> _NoiseFit:
    # Sequential test: s_j is structured if it clears the cut computed with sigma from the
    # energy outside s_1..s_j. Leaving the tested value out keeps a spike's own energy
    # from raising the cut that should detect it (6% of sigma at 32x32 for a 1% edit in
    # 3% drift); the null calibration of tw_quantile includes this choice.
    m, n = shape
    s = S.double().cpu().numpy()
    floor = config.rel_floor * float(s[0]) / (math.sqrt(m) + math.sqrt(n)) if len(s) else 0.0
    rank = 0
    for j in range(1, len(s) + 1):
        sigma = _sigma_outside(s[:j], m, n, frob2, floor)
        if s[j - 1] <= _cut(sigma, m, n, config, flip_ratio):
            break
        rank = j
    sigma = _sigma_outside(s[:rank], m, n, frob2, floor)
    thetas = spike_strength(s[:rank], sigma, m, n)
    return _NoiseFit(sigma, mp_edge(sigma, m, n), _cut(sigma, m, n, config, flip_ratio),
                     rank, thetas)


def _sigma_outside(spikes: np.ndarray, m: int, n: int, frob2: float, floor: float) -> float:
    # E||D||^2 = sum theta_i^2 + sigma^2 mn exactly, so the bulk energy is what the debiased
    # spikes leave; sigma enters theta, hence a few fixed-point steps (contraction (m+n)/mn).
    sigma = max(math.sqrt(frob2 / (m * n)), floor)
    for _ in range(_SIGMA_STEPS if len(spikes) else 0):
        thetas = spike_strength(spikes, sigma, m, n)
        sigma = max(math.sqrt(max(frob2 - float(np.sum(thetas**2)), 0.0) / (m * n)), floor)
    return sigma


def _spectrum(U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, fit: _NoiseFit, frob2: float,
              base_norm: float, *, exact: bool, drift_weight: float) -> Spectrum:
    s = S.float().cpu().numpy()
    s1_sq = float(s[0]) ** 2 if len(s) else 0.0
    structured = float(np.sum(np.square(s[: fit.rank], dtype=np.float64)))
    rel_delta = _safe_ratio(math.sqrt(frob2), base_norm)
    return Spectrum(
        singular_values=s, U=U.float().cpu().numpy(), V=V.float().cpu().numpy(),
        spike_strengths=fit.thetas.astype(np.float32), noise_sigma=fit.sigma,
        bulk_edge=fit.edge, threshold=fit.threshold, rank=fit.rank,
        structured_fraction=min(_safe_ratio(structured, frob2), 1.0),
        stable_rank=frob2 / s1_sq if s1_sq > 0 else 0.0, frob2=frob2, base_norm=base_norm,
        score=structured_score(fit.thetas, base_norm, rel_delta, drift_weight), exact=exact)


def _top_triplets(D: torch.Tensor, k: int, config: SpectralConfig
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(config.seed)
    return randomized_svd(D, k, oversample=config.oversample, n_iter=config.n_iter,
                          generator=generator, method=config.method)


def _should_grow(rank: int, k: int, shape: tuple[int, int], config: SpectralConfig) -> bool:
    return config.k_max > 0 and rank >= k and k < min(config.k_max, *shape)


def _use_exact(shape: tuple[int, int], k: int, oversample: int, n_iter: int,
               method: str) -> bool:
    width = (k + oversample) * (n_iter + 1 if method == "krylov" else 1)
    return width >= min(shape) or shape[0] * shape[1] <= _EXACT_MAX_ENTRIES


def _exact_svd(D: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _svd_via_gram(D, k)


def _singular_vectors(W: torch.Tensor, k: int, side: str, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    U, _, V = randomized_svd(W.float(), k, generator=generator)
    return U if side == "left" else V


def _check_matrix(D: torch.Tensor) -> None:
    _require(D.ndim == 2 and D.shape[0] > 0 and D.shape[1] > 0,
             f"need a non-empty matrix [m, n], got shape {tuple(D.shape)}")
    _require(D.is_floating_point(), f"need a floating-point matrix, got {D.dtype}")


def _safe_ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf


def _require(condition: bool, message: str) -> None:
    # Programming errors of callers (wrong shapes, bad config) are ValueErrors; the CLI
    # turns bad user input into InputError before it reaches this module.
    if not condition:
        raise ValueError(message)
