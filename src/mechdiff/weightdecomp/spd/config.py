"""The validated, frozen configuration of a stochastic parameter decomposition run."""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from typing import Any

from mechdiff.errors import InputError


@dataclass(frozen=True)
class SPDConfig:
    """Hyper-parameters of SPD.

    Loss coefficients, C, the CI width and p follow the published TMS 5-2
    settings (Bushnaq et al. 2025: C=20, CI MLP width 16, importance 3e-3 at
    p=1, all other coefficients 1, one mask sample, lr 1e-3 cosine). Steps
    and batch are far smaller than the published 40k x 4096 so a CPU run
    finishes; the toys in ``toy.TOY_CONFIGS`` tune them per model.
    """

    n_components: int = 20
    """C: rank-1 subcomponents per decomposed matrix (more than the mechanisms you expect)."""

    ci_hidden: int = 16
    """Hidden width of each subcomponent's causal-importance MLP (GELU)."""

    steps: int = 4000
    """Optimizer steps."""

    batch_size: int = 256
    """Examples per step when mechdiff generates the data itself (toy models)."""

    lr: float = 1e-3
    """Peak Adam learning rate for U, V and the causal-importance MLPs."""

    lr_schedule: str = "cosine"
    """'cosine' (decay to 0 after warm-up) or 'constant'."""

    lr_warmup_frac: float = 0.0
    """Fraction of steps spent ramping the learning rate linearly from 0."""

    faithfulness_coeff: float = 1.0
    """Weight of ||W - sum_c u_c v_c^T||^2 / (number of decomposed parameters)."""

    stochastic_recon_coeff: float = 1.0
    """Weight of D(f(x | all layers masked), f(x))."""

    stochastic_recon_layerwise_coeff: float = 1.0
    """Weight of the mean over layers of D(f(x | only that layer masked), f(x))."""

    importance_minimality_coeff: float = 3e-3
    """Weight of mean_batch sum_layers sum_c (g_c + eps)^p (upper-leaky g)."""

    importance_module_scale: dict[str, float] | None = None
    """Module-name glob -> factor on ``importance_minimality_coeff`` for the layers it
    matches (first matching glob wins; unmatched layers keep factor 1). For models whose
    layers need different sparsity pressure, e.g. TMS 40-10's second matrix."""

    pnorm: float = 1.0
    """p of the importance-minimality penalty at the end of annealing (p < 1 favours sparser CI)."""

    pnorm_start: float | None = None
    """When set, p anneals linearly from this value to ``pnorm`` over ``pnorm_anneal_frac``."""

    pnorm_anneal_frac: float = 0.5
    """Fraction of training over which p anneals (ignored when ``pnorm_start`` is None)."""

    importance_eps: float = 1e-12
    """eps in (g + eps)^p, keeping the gradient finite at g = 0 for p < 1."""

    n_mask_samples: int = 1
    """Stochastic masks m = g + (1 - g) r drawn per step for each reconstruction loss."""

    leaky_slope: float = 0.01
    """Slope of the leaky part of the hard sigmoids (below 0 for masks, above 1 for the penalty)."""

    alive_threshold: float = 0.1
    """A subcomponent fires on an input when its causal importance exceeds this."""

    alive_min_frequency: float = 1e-4
    """A subcomponent is alive when it fires on at least this fraction of the evaluation inputs."""

    eval_batches: int = 8
    """Batches used after training to measure alive frequency and mean causal importance."""

    grad_clip: float | None = None
    """Clip the global gradient norm to this value (None: no clipping)."""

    seed: int = 0
    """Seed for component initialisation and the stochastic masks."""

    def __post_init__(self) -> None:
        _require(self.n_components >= 1, "n_components must be >= 1")
        _require(self.ci_hidden >= 1, "ci_hidden must be >= 1")
        _require(self.steps >= 1, "steps must be >= 1")
        _require(self.batch_size >= 1, "batch_size must be >= 1")
        _require(self.lr > 0, "lr must be > 0")
        _require(self.lr_schedule in ("cosine", "constant"), "lr_schedule must be 'cosine' or 'constant'")
        _require(0.0 <= self.lr_warmup_frac < 1.0, "lr_warmup_frac must be in [0, 1)")
        for name in ("faithfulness_coeff", "stochastic_recon_coeff", "stochastic_recon_layerwise_coeff",
                     "importance_minimality_coeff"):
            _require(getattr(self, name) >= 0, f"{name} must be >= 0")
        for glob, factor in (self.importance_module_scale or {}).items():
            _require(isinstance(glob, str) and bool(glob), "importance_module_scale keys must be module globs")
            _require(isinstance(factor, (int, float)) and factor >= 0,
                     f"importance_module_scale[{glob!r}] must be a number >= 0")
        _require(self.pnorm > 0, "pnorm must be > 0")
        _require(self.pnorm_start is None or self.pnorm_start > 0, "pnorm_start must be > 0 or None")
        _require(0.0 < self.pnorm_anneal_frac <= 1.0, "pnorm_anneal_frac must be in (0, 1]")
        _require(self.importance_eps >= 0, "importance_eps must be >= 0")
        _require(self.n_mask_samples >= 1, "n_mask_samples must be >= 1")
        _require(0.0 <= self.leaky_slope < 1.0, "leaky_slope must be in [0, 1)")
        _require(0.0 <= self.alive_threshold < 1.0, "alive_threshold must be in [0, 1)")
        _require(0.0 <= self.alive_min_frequency <= 1.0, "alive_min_frequency must be in [0, 1]")
        _require(self.eval_batches >= 1, "eval_batches must be >= 1")
        _require(self.grad_clip is None or self.grad_clip > 0, "grad_clip must be > 0 or None")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SPDConfig:
        """Build a config from a dict (e.g. JSON), rejecting unknown keys.

        Args:
            values: field name -> value.

        Returns:
            The validated config.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown SPD config keys {unknown}; valid keys are {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def importance_scale(self, module_name: str) -> float:
        """The factor on the importance-minimality coefficient for layer ``module_name``."""
        for glob, factor in (self.importance_module_scale or {}).items():
            if fnmatch.fnmatchcase(module_name, glob):
                return float(factor)
        return 1.0

    def pnorm_at(self, step: int) -> float:
        """The importance-minimality exponent p at ``step`` (annealed when configured)."""
        if self.pnorm_start is None:
            return self.pnorm
        progress = min(1.0, step / max(1.0, self.pnorm_anneal_frac * self.steps))
        return self.pnorm_start + (self.pnorm - self.pnorm_start) * progress


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(f"invalid SPD config: {message}")
