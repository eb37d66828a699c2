"""The crosscoder's configuration: architecture, sparsity and training schedule in one frozen record."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

SPARSITIES = ("batchtopk", "l1")
PRECISIONS = ("auto", "fp32", "tf32", "bf16")  # see mechdiff.diffing.crosscoder.precision


@dataclass(frozen=True)
class CrosscoderConfig:
    """Everything that decides what a crosscoder run computes (stored with the results)."""

    dict_size: int = 16384
    """Number of latents F shared by both models."""
    k: int = 64
    """BatchTopK: mean active latents per row (the batch keeps k * batch scores); unused by L1."""
    sparsity: str = "batchtopk"
    """'batchtopk' (default; robust to L1 artifacts) or 'l1' (penalty weighted by summed decoder norms)."""
    l1_coeff: float = 2.0
    """L1 only: weight lambda of sum_j f_j * sum_m ||d_j^m|| (on inputs normalized to norm sqrt(d))."""
    lr: float = 1e-4
    """Peak Adam learning rate."""
    warmup_steps: int = 1000
    """Linear learning-rate warm-up from 0 (also ramps lambda for L1)."""
    decay_frac: float = 0.2
    """Fraction of the run at the end over which the learning rate decays linearly to 0."""
    tokens: int = 4_000_000
    """Training rows (token positions) seen; steps = tokens // batch. Rows are reused when data is short."""
    batch: int = 4096
    """Rows per optimizer step."""
    aux_alpha: float = 1 / 32
    """BatchTopK: weight of the auxiliary loss that makes dead latents predict the residual."""
    aux_k: int = 512
    """BatchTopK: dead latents used per row by the auxiliary loss (at most the number dead)."""
    dead_after_tokens: int = 1_000_000
    """A latent that has not fired for this many training rows counts as dead."""
    threshold_momentum: float = 0.99
    """BatchTopK: momentum of the running inference threshold (EMA of the smallest kept score)."""
    dec_init_norm: float = 0.1
    """Initial norm of every latent's decoder vector in each model; encoder starts as its transpose."""
    seed: int = 0
    """Seed for initialization and data order (same seed and data give the same run)."""
    precision: str = "auto"
    """Training arithmetic: 'fp32', 'tf32' (CUDA), 'bf16' (autocast forward, float32 weights and
    Adam state) or 'auto' (tf32 on a GPU that has it, else fp32). A trained run records the one it used."""

    def __post_init__(self) -> None:
        _require(self.dict_size > 0, "dict_size must be positive")
        _require(self.k >= 1, "k must be >= 1")
        _require(self.sparsity != "batchtopk" or self.k <= self.dict_size, "k must be <= dict_size")
        _require(self.sparsity in SPARSITIES, f"sparsity must be one of {SPARSITIES}, got {self.sparsity!r}")
        _require(self.l1_coeff >= 0 and math.isfinite(self.l1_coeff), "l1_coeff must be finite and >= 0")
        _require(self.lr > 0 and math.isfinite(self.lr), "lr must be finite and > 0")
        _require(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        _require(0 <= self.decay_frac <= 1, "decay_frac must be in [0, 1]")
        _require(self.batch > 0, "batch must be positive")
        _require(self.tokens >= self.batch, "tokens must be at least one batch")
        _require(self.aux_alpha >= 0, "aux_alpha must be >= 0")
        _require(self.aux_k >= 1, "aux_k must be >= 1")
        _require(self.dead_after_tokens > 0, "dead_after_tokens must be positive")
        _require(0 <= self.threshold_momentum < 1, "threshold_momentum must be in [0, 1)")
        _require(self.dec_init_norm > 0, "dec_init_norm must be > 0")
        _require(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def steps(self) -> int:
        """Optimizer steps of the run."""
        return self.tokens // self.batch

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CrosscoderConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown crosscoder config keys: {', '.join(unknown)}")
        return cls(**data)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"CrosscoderConfig: {message}")
