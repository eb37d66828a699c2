"""Closed-form latent scaling: is a model-specific latent really absent from the other model?

For latent j with decoder direction d (its "own" model's decoder) and a target
y_i per row, the best scale is beta = d . (sum_i f_ij y_i) / (||d||^2 sum_i f_ij^2),
the least-squares solution of min_beta sum_i ||beta f_ij d - y_i||^2.
Targets per model m: the error with the latent's own contribution added back,
eps_i^m + f_ij d_j^m, and the reconstruction x_hat_i^m. The ratios
nu^eps = beta^{other,eps} / beta^{own,eps} and nu^r = beta^{other,r} / beta^{own,r}
are small for a latent that is genuinely specific to its own model and near 1
when the other model also carries the direction (a sparsity artifact).
Only sums over rows are kept, so this streams over any number of batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechdiff.diffing.crosscoder.module import SparseCode
from mechdiff.diffing.crosscoder.ops import row_ids
from mechdiff.kernels import latent_scaling_sums as _kernel_sums


def latent_scaling_sums(code: SparseCode, y_BD: torch.Tensor, n_latents: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-latent sums over rows: sum f^2 [F] and sum f y [F, D].

    Args:
        code: sparse activations of B rows.
        y_BD: [B, D] targets.
        n_latents: F.

    Returns:
        (sum_f2 [F], sum_fy [F, D]) in float64 (the kernels' accumulators).
    """
    return _kernel_sums(code.values, code.indices, code.offsets, y_BD, n_latents=n_latents)


def restrict(code: SparseCode, latents: torch.Tensor, n_latents: int) -> SparseCode:
    """The entries of the given latents only, renumbered 0..len(latents)-1 in that order."""
    slot = torch.full((n_latents,), -1, dtype=torch.int64)
    slot[latents] = torch.arange(latents.numel())
    keep = slot[code.indices] >= 0
    rows = row_ids(code.offsets)[keep]
    offsets = torch.zeros(code.n_rows + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.bincount(rows, minlength=code.n_rows), 0)
    return SparseCode(code.values[keep], slot[code.indices[keep]], offsets)


class LatentScalingAccumulator:
    """Streams the sums latent scaling needs for a chosen set of latents.

    Args:
        latents: [L] latent ids to measure.
        n_latents: F, the crosscoder's dictionary size.
        n_models: M.
        d_model: D.
    """

    def __init__(self, latents: torch.Tensor, n_latents: int, n_models: int, d_model: int) -> None:
        self.latents, self.n_latents, self.n_models, self.d_model = latents.long(), n_latents, n_models, d_model
        n = latents.numel()
        self.sum_f2 = torch.zeros(n, dtype=torch.float64)
        # targets per model: error (own contribution not yet added) and reconstruction
        self.sum_f_err = torch.zeros(n, n_models, d_model, dtype=torch.float64)
        self.sum_f_recon = torch.zeros(n, n_models, d_model, dtype=torch.float64)

    def update(self, code: SparseCode, x_BMD: torch.Tensor, recon_BMD: torch.Tensor) -> None:
        """Add one batch: its sparse code, inputs and full reconstructions (normalized space)."""
        if self.latents.numel() == 0:
            return
        sub = restrict(code, self.latents, self.n_latents)
        n_rows = x_BMD.shape[0]
        targets = torch.cat([(x_BMD - recon_BMD).reshape(n_rows, -1), recon_BMD.reshape(n_rows, -1)], dim=1)
        sum_f2, sum_fy = latent_scaling_sums(sub, targets, self.latents.numel())
        half = self.n_models * self.d_model
        self.sum_f2 += sum_f2
        self.sum_f_err += sum_fy[:, :half].reshape(-1, self.n_models, self.d_model)
        self.sum_f_recon += sum_fy[:, half:].reshape(-1, self.n_models, self.d_model)

    def betas(self, W_dec_LMD: torch.Tensor, own_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """beta^eps and beta^r [L, M] for each latent against each model's targets.

        Args:
            W_dec_LMD: [L, M, D] decoder vectors of the measured latents.
            own_model: [L] index of the model whose decoder direction d is fitted.

        Returns:
            (beta_eps [L, M], beta_r [L, M]); NaN for latents that never fired.
        """
        dec = W_dec_LMD.double()
        d_LD = dec[torch.arange(dec.shape[0]), own_model]
        d_norm2 = d_LD.pow(2).sum(-1)
        denom_L = (d_norm2 * self.sum_f2)[:, None]
        # own contribution added back: d . sum_i f_i (f_i d^m) = (d . d^m) sum f^2
        err = torch.einsum("ld,lmd->lm", d_LD, self.sum_f_err) + torch.einsum("ld,lmd->lm", d_LD, dec) * self.sum_f2[:, None]
        recon = torch.einsum("ld,lmd->lm", d_LD, self.sum_f_recon)
        return err / denom_L, recon / denom_L


@dataclass(frozen=True)
class ScalingRatios:
    """Latent-scaling ratios of the measured latents."""

    latents: torch.Tensor
    """[L] latent ids."""
    nu_eps: torch.Tensor
    """[L] beta^{other,eps} / beta^{own,eps}."""
    nu_r: torch.Tensor
    """[L] beta^{other,r} / beta^{own,r}."""


def scaling_ratios(acc: LatentScalingAccumulator, W_dec_FMD: torch.Tensor, own_model: torch.Tensor) -> ScalingRatios:
    """nu^eps and nu^r for two models (own model index 0 or 1 per latent).

    Args:
        acc: the filled accumulator.
        W_dec_FMD: [F, 2, D] full decoder.
        own_model: [L] 1 for ft-only latents, 0 for base-only ones.

    Returns:
        The ratios, NaN where a latent never fired.
    """
    beta_eps, beta_r = acc.betas(W_dec_FMD[acc.latents], own_model)
    idx = torch.arange(own_model.numel())
    other = 1 - own_model
    return ScalingRatios(
        acc.latents,
        (beta_eps[idx, other] / beta_eps[idx, own_model]).float(),
        (beta_r[idx, other] / beta_r[idx, own_model]).float(),
    )
