"""Toy models with known mechanisms (TMS, residual MLP) and their sparse-feature data."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mechdiff.errors import InputError


def sparse_features(
    batch: int, n_features: int, probability: float, generator: torch.Generator, low: float = 0.0,
    at_least_one: bool = False,
) -> Tensor:
    """[batch, n_features]: each feature is on with ``probability``, value ~ U(low, 1).

    With ``at_least_one`` the rows are drawn from the same distribution
    conditioned on at least one feature being on (rejection sampling).
    """
    if not at_least_one:
        on = torch.rand(batch, n_features, generator=generator) < probability
        values = low + (1.0 - low) * torch.rand(batch, n_features, generator=generator)
        return values * on
    rows: list[Tensor] = []
    have = 0
    while have < batch:
        x = sparse_features(2 * batch, n_features, probability, generator, low)
        x = x[(x != 0).any(dim=1)]
        rows.append(x)
        have += len(x)
    return torch.cat(rows)[:batch]


def feature_batches(batch: int, n_features: int, probability: float, seed: int, low: float = 0.0,
                    at_least_one: bool = False) -> Iterator[Tensor]:
    """An endless stream of :func:`sparse_features` batches."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield sparse_features(batch, n_features, probability, generator, low, at_least_one)


class TMSModel(nn.Module):
    """Toy model of superposition: ReLU(W^T [I] W x + b), tied weights W [n_hidden, n_features].

    ``linear2.weight`` holds W^T as its own copy so that both matrices are plain
    ``nn.Linear`` weights a decomposition can target.

    Args:
        n_features: input/output features.
        n_hidden: bottleneck width.
        identity_hidden: insert a fixed identity ``hidden`` layer between the two.
    """

    def __init__(self, n_features: int, n_hidden: int, identity_hidden: bool = False) -> None:
        super().__init__()
        self.linear1 = nn.Linear(n_features, n_hidden, bias=False)
        self.hidden = nn.Linear(n_hidden, n_hidden, bias=False) if identity_hidden else None
        self.linear2 = nn.Linear(n_hidden, n_features, bias=True)
        if self.hidden is not None:
            with torch.no_grad():
                self.hidden.weight.copy_(torch.eye(n_hidden))

    def forward(self, x_BF: Tensor) -> Tensor:
        h_BH = self.linear1(x_BF)
        if self.hidden is not None:
            h_BH = self.hidden(h_BH)
        return F.relu(self.linear2(h_BH))

    @property
    def feature_weights(self) -> Tensor:
        """W [n_hidden, n_features]: column j is how feature j is embedded."""
        return self.linear1.weight


def train_tms(
    n_features: int, n_hidden: int, *, identity_hidden: bool = False, probability: float = 0.05,
    steps: int = 3000, batch: int = 1024, lr: float = 1e-2, seed: int = 0,
) -> TMSModel:
    """Train a TMS model (tied weights, MSE on x) from scratch.

    Args:
        n_features: input/output features.
        n_hidden: bottleneck width.
        identity_hidden: add the fixed identity hidden layer.
        probability: feature firing probability.
        steps: Adam steps.
        batch: examples per step.
        lr: Adam learning rate (cosine decay).
        seed: seed for the init and the data.

    Returns:
        The trained model (frozen).
    """
    generator = torch.Generator().manual_seed(seed)
    W_HF = nn.Parameter(torch.randn(n_hidden, n_features, generator=generator) * (2.0 / n_features) ** 0.5)
    b_F = nn.Parameter(torch.zeros(n_features))
    optimizer = torch.optim.Adam([W_HF, b_F], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        x = sparse_features(batch, n_features, probability, generator)
        loss = (F.relu(x @ W_HF.T @ W_HF + b_F) - x).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model = TMSModel(n_features, n_hidden, identity_hidden)
    with torch.no_grad():
        model.linear1.weight.copy_(W_HF)
        model.linear2.weight.copy_(W_HF.T)
        model.linear2.bias.copy_(b_F)
    return model.requires_grad_(False)


@dataclass(frozen=True)
class ResidMLPTask:
    """The compressed-computation task: y = x + ReLU(a * x) per feature, through a 1-layer residual MLP."""

    n_features: int = 100
    """Input features."""

    d_embed: int = 200
    """Residual stream width (fixed random unit-norm embedding; the paper uses 1000, 200 keeps
    the 100 embeddings nearly orthogonal at a fifth of the CPU cost)."""

    d_mlp: int = 50
    """MLP neurons (fewer than features: computation in superposition)."""

    probability: float = 0.01
    """Feature firing probability; values ~ U(-1, 1)."""

    def __post_init__(self) -> None:
        if min(self.n_features, self.d_embed, self.d_mlp) < 1 or not 0 < self.probability <= 1:
            raise InputError("ResidMLPTask needs positive sizes and a probability in (0, 1]")


class ResidMLP(nn.Module):
    """x -> W_E^T x = r; r + mlp_out(ReLU(mlp_in(r))); read out with W_E (fixed)."""

    def __init__(self, task: ResidMLPTask, generator: torch.Generator) -> None:
        super().__init__()
        W_E = torch.randn(task.n_features, task.d_embed, generator=generator)
        self.register_buffer("W_E_FD", W_E / W_E.norm(dim=1, keepdim=True))
        self.mlp_in = nn.Linear(task.d_embed, task.d_mlp)
        self.mlp_out = nn.Linear(task.d_mlp, task.d_embed)

    def forward(self, x_BF: Tensor) -> Tensor:
        resid_BD = x_BF @ self.W_E_FD
        resid_BD = resid_BD + self.mlp_out(F.relu(self.mlp_in(resid_BD)))
        return resid_BD @ self.W_E_FD.T


def train_resid_mlp(task: ResidMLPTask, *, steps: int = 3000, batch: int = 256, lr: float = 3e-3,
                    seed: int = 0) -> tuple[ResidMLP, Tensor]:
    """Train the residual MLP on the compressed-computation task.

    Args:
        task: sizes and sparsity.
        steps: Adam steps.
        batch: examples per step.
        lr: Adam learning rate (cosine decay).
        seed: seed for the embedding, init, label coefficients and data.

    Returns:
        (frozen model, [n_features] label coefficients a in [1, 2]).
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ResidMLP(task, generator)
    coeff_F = 1.0 + torch.rand(task.n_features, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        x = sparse_features(batch, task.n_features, task.probability, generator, low=-1.0)
        labels = x + F.relu(coeff_F * x)
        loss = (model(x) - labels).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.requires_grad_(False), coeff_F
