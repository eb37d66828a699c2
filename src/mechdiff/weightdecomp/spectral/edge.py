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
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from mechdiff.kernels.signs import signs_flipped
from mechdiff.weightdecomp.spectral.blocked import RowBlockMatrix
from mechdiff.weightdecomp.spectral.config import (
    SpectralConfig,
    check_matrix,
    require,
    safe_ratio,
)
from mechdiff.weightdecomp.spectral.sketch import (
    ONE_THREAD_MAX_ENTRIES,
    one_thread,
    randomized_svd,
    top_triplets,
    use_exact,
)

_SIGMA_STEPS = 6

_FROB_BLOCK = 1 << 20  # elements per block when streaming over D

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
        return safe_ratio(math.sqrt(self.frob2), self.base_norm)

def analyze_delta(D: torch.Tensor | RowBlockMatrix, *, base_norm: float, config: SpectralConfig,
                  frob2: float | None = None) -> Spectrum:
    """Spectrum, noise bulk, structured rank and score of one delta matrix.

    Args:
        D: W_ft - W_base as [out, in] (or one head slice of it), float32, any device,
            all finite (NaN/Inf raise ValueError: the caller reports them instead); or a
            RowBlockMatrix that forms it one block of rows at a time (a large matrix).
        base_norm: ||W_base||_F of the same tensor or slice (the score's unit).
        config: sketch and detection settings.
        frob2: ||D||_F^2 when the caller already has it (fused statistics); computed
            otherwise. It must be exact: the noise level is derived from it.

    Returns:
        The Spectrum; vectors and values are moved to the CPU as numpy float32.
    """
    check_matrix(D)
    require(base_norm >= 0 and math.isfinite(base_norm), f"base_norm must be finite >= 0, "
             f"got {base_norm}")
    D = D if D.dtype == torch.float32 else D.float()
    if frob2 is None:
        frob2 = frobenius2(D)
    require(math.isfinite(frob2), "delta has NaN/Inf entries (report them; no spectrum)")
    screening = 0 < config.screen_k < config.k and not use_exact(
        D.shape, min(config.k, *D.shape), config.oversample, config.n_iter, config.method)
    k = config.screen_k if screening else config.k
    with one_thread() if D.numel() <= ONE_THREAD_MAX_ENTRIES else nullcontext():
        while True:
            U, S, V = top_triplets(D, k, config)
            fit = _detect(D, S, frob2, config)
            if screening:
                if fit.rank == 0:
                    break
                screening, k = False, config.k
                continue
            if not _should_grow(fit.rank, k, D.shape, config):
                break
            k = min(2 * k, config.k_max, *D.shape)
    exact = use_exact(D.shape, min(k, *D.shape), config.oversample, config.n_iter,
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
    return safe_ratio(structured, base_norm) + drift_weight * rel_delta

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

@dataclass(frozen=True)
class _NoiseFit:
    sigma: float
    edge: float
    threshold: float
    rank: int
    thetas: np.ndarray  # float64[rank]

def frobenius2(D: torch.Tensor | RowBlockMatrix) -> float:
    """||D||_F^2 summed in float64 over blocks of rows (no float64 copy of D).

    Args:
        D: matrix [m, n], any float dtype and device (or a RowBlockMatrix).

    Returns:
        The squared Frobenius norm.
    """
    if isinstance(D, RowBlockMatrix):
        return sum(frobenius2(block) for _, _, block in D.blocks())
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

def _detect(D: torch.Tensor | RowBlockMatrix, S: torch.Tensor, frob2: float, config: SpectralConfig
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

def _signflip_top(D: torch.Tensor | RowBlockMatrix, config: SpectralConfig) -> float:
    # Top singular value of D * R, R_ij = +-1 at random (a counter-based hash, so every
    # device flips the same entries; D is flipped in place and restored), raised by the
    # sketch margin when sketched (a thin deep Krylov basis: depth matters more than
    # width here).
    width, depth = 4, 8
    seed = config.seed + 1
    with D.signs_flipped(seed) if isinstance(D, RowBlockMatrix) else signs_flipped(D, seed) as flipped:
        _, S, _ = randomized_svd(flipped, 1, oversample=width - 1, n_iter=depth,
                                 generator=torch.Generator().manual_seed(config.seed + 1))
    exact = use_exact(D.shape, 1, width - 1, depth, "krylov")
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
    rel_delta = safe_ratio(math.sqrt(frob2), base_norm)
    return Spectrum(
        singular_values=s, U=U.float().cpu().numpy(), V=V.float().cpu().numpy(),
        spike_strengths=fit.thetas.astype(np.float32), noise_sigma=fit.sigma,
        bulk_edge=fit.edge, threshold=fit.threshold, rank=fit.rank,
        structured_fraction=min(safe_ratio(structured, frob2), 1.0),
        stable_rank=frob2 / s1_sq if s1_sq > 0 else 0.0, frob2=frob2, base_norm=base_norm,
        score=structured_score(fit.thetas, base_norm, rel_delta, drift_weight), exact=exact)

def _should_grow(rank: int, k: int, shape: tuple[int, int], config: SpectralConfig) -> bool:
    return config.k_max > 0 and rank >= k and k < min(config.k_max, *shape)
