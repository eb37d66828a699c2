"""Causal-importance functions: one tiny MLP per subcomponent, hard-sigmoid outputs."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def hard_sigmoid(x: Tensor) -> Tensor:
    """clamp(x, 0, 1): the causal importance used for evaluation."""
    return x.clamp(0.0, 1.0)


def lower_leaky_hard_sigmoid(x: Tensor, slope: float) -> Tensor:
    """Hard sigmoid with a leaky slope below 0.

    Used for the masks, so that a subcomponent whose importance was pushed below
    zero still gets gradient from the reconstruction losses and can come back.
    """
    return torch.where(x < 0, slope * x, x.clamp(max=1.0))


def upper_leaky_hard_sigmoid(x: Tensor, slope: float) -> Tensor:
    """Hard sigmoid with a leaky slope above 1.

    Used for the importance-minimality penalty, so that importance above 1 is
    still pushed down instead of sitting in a flat region.
    """
    return torch.where(x > 1, 1.0 + slope * (x - 1.0), x.clamp(min=0.0))


class CIBank(nn.Module):
    """C independent scalar MLPs 1 -> hidden -> 1 evaluated together.

    Subcomponent c maps its inner activation h_c = v_c^T a to a pre-activation
    w2_c . GELU(w1_c h_c + b1_c) + b2_c; batching all C in one einsum keeps the
    per-step cost to a few tensor ops instead of C tiny modules.

    Args:
        n_components: C.
        hidden: hidden width per subcomponent.
        generator: torch generator for the initialisation; the parameters are made on its device.
    """

    def __init__(self, n_components: int, hidden: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        device = generator.device if generator is not None else None
        shape = (n_components, hidden)
        self.w_in_CH = nn.Parameter(torch.randn(shape, generator=generator, device=device))
        self.b_in_CH = nn.Parameter(torch.randn(shape, generator=generator, device=device) * 0.5)
        scale = 1.0 / math.sqrt(hidden)
        self.w_out_CH = nn.Parameter(torch.randn(shape, generator=generator, device=device) * scale)
        self.b_out_C = nn.Parameter(torch.zeros(n_components, device=device))

    def forward(self, inner: Tensor) -> Tensor:
        """Pre-sigmoid causal importance.

        Args:
            inner: [..., C] inner activations v_c^T a.

        Returns:
            [..., C] pre-activations (apply one of the hard sigmoids).
        """
        hidden = F.gelu(inner.unsqueeze(-1) * self.w_in_CH + self.b_in_CH)  # [..., C, H]
        return (hidden * self.w_out_CH).sum(-1) + self.b_out_C
