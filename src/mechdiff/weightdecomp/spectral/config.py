"""Settings of the spectral analysis and the checks shared by its modules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SKETCH_METHODS = ("krylov", "subspace")


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
        require(self.k >= 1, f"k must be >= 1, got {self.k}")
        require(self.oversample >= 0, f"oversample must be >= 0, got {self.oversample}")
        require(self.n_iter >= 0, f"n_iter must be >= 0, got {self.n_iter}")
        require(self.screen_k >= 0, f"screen_k must be >= 0, got {self.screen_k}")
        require(self.method in SKETCH_METHODS, f"method must be one of {SKETCH_METHODS}, got "
                 f"{self.method!r}")
        require(self.k_max == 0 or self.k_max >= self.k,
                 f"k_max must be 0 or >= k ({self.k}), got {self.k_max}")
        require(self.tw_quantile >= 0, f"tw_quantile must be >= 0, got {self.tw_quantile}")
        require(self.signflip_quantile >= 0,
                 f"signflip_quantile must be >= 0, got {self.signflip_quantile}")
        require(0 <= self.signflip_sketch_margin < 1,
                 f"signflip_sketch_margin must be in [0, 1), got {self.signflip_sketch_margin}")
        require(0 <= self.rel_floor < 1, f"rel_floor must be in [0, 1), got {self.rel_floor}")
        require(0 <= self.drift_weight < 1,
                 f"drift_weight must be in [0, 1), got {self.drift_weight}")

def check_matrix(D: torch.Tensor) -> None:
    require(D.ndim == 2 and D.shape[0] > 0 and D.shape[1] > 0,
             f"need a non-empty matrix [m, n], got shape {tuple(D.shape)}")
    require(D.is_floating_point(), f"need a floating-point matrix, got {D.dtype}")

def safe_ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf

def require(condition: bool, message: str) -> None:
    # Programming errors of callers (wrong shapes, bad config) are ValueErrors; the CLI
    # turns bad user input into InputError before it reaches this module.
    if not condition:
        raise ValueError(message)
