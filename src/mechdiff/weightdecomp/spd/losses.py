"""SPD losses: faithfulness, stochastic reconstruction (all / layerwise), importance minimality."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

OutputDistance = Callable[[Tensor, Tensor], Tensor]


def mse_distance(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over every element (regression-style toy models)."""
    return (output - target).pow(2).mean()


def kl_distance(output_logits: Tensor, target_logits: Tensor) -> Tensor:
    """KL(target || output) over the last (vocabulary) axis, averaged over positions."""
    log_p_target = F.log_softmax(target_logits.float(), dim=-1)
    log_p_output = F.log_softmax(output_logits.float(), dim=-1)
    per_position = (log_p_target.exp() * (log_p_target - log_p_output)).sum(-1)
    return per_position.mean()


def output_distance(name: str) -> OutputDistance:
    """The distance function called ``name`` ('mse' or 'kl')."""
    if name == "mse":
        return mse_distance
    if name == "kl":
        return kl_distance
    from mechdiff.errors import InputError

    raise InputError(f"unknown output distance {name!r}; use 'mse' or 'kl'")


def faithfulness_loss(target_weights: list[Tensor], component_weights: list[Tensor]) -> Tensor:
    """sum_l ||W_l - sum_c u_c v_c^T||^2 divided by the number of decomposed parameters."""
    squared = sum((t - c).pow(2).sum() for t, c in zip(target_weights, component_weights, strict=True))
    n_params = sum(t.numel() for t in target_weights)
    return squared / n_params


def importance_minimality_loss(ci_upper: list[Tensor], pnorm: float, eps: float,
                               scales: list[float] | None = None) -> Tensor:
    """mean over inputs of sum_l s_l sum_c (g_c + eps)^p on the upper-leaky importances.

    Args:
        ci_upper: per layer [..., C] importances (>= 0).
        pnorm: the exponent p.
        eps: keeps the gradient finite at 0 when p < 1.
        scales: per-layer factors s_l (default: all 1).

    Returns:
        Scalar loss.
    """
    total = 0.0
    for scale, ci in zip(scales or [1.0] * len(ci_upper), ci_upper, strict=True):
        per_input = (ci + eps).pow(pnorm).sum(-1)
        total = total + scale * per_input.mean()
    return total


def sample_masks(ci_lower: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Stochastic masks m = g + (1 - g) r with r ~ U(0, 1), one per layer."""
    masks = {}
    for name, ci in ci_lower.items():
        r = torch.rand(ci.shape, generator=generator, dtype=ci.dtype, device=ci.device)
        masks[name] = ci + (1.0 - ci) * r
    return masks
