"""Closed-form latent scaling against brute-force least squares on the same rows."""

from __future__ import annotations

import numpy as np
import torch

from mechdiff.diffing.crosscoder.latent_scaling import (
    LatentScalingAccumulator,
    restrict,
    scaling_ratios,
)
from mechdiff.diffing.crosscoder.module import SparseCode


def _code(dense_BF: torch.Tensor) -> SparseCode:
    rows, cols = torch.nonzero(dense_BF, as_tuple=True)
    offsets = torch.zeros(dense_BF.shape[0] + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.bincount(rows, minlength=dense_BF.shape[0]), 0)
    return SparseCode(dense_BF[rows, cols], cols, offsets)


def test_restrict_keeps_chosen_latents_renumbered() -> None:
    # rows: {0: 1.0, 2: 2.0}, {1: 3.0}, {2: 4.0}; keep latents [2, 0] -> slots 0, 1
    dense = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0], [0.0, 0.0, 4.0]])
    sub = restrict(_code(dense), torch.tensor([2, 0]), 3)
    assert sub.offsets.tolist() == [0, 2, 2, 3]
    assert sub.indices.tolist() == [1, 0, 0]
    assert sub.values.tolist() == [1.0, 2.0, 4.0]


def test_betas_match_brute_force_least_squares() -> None:
    gen = torch.Generator().manual_seed(0)
    n_rows, n_latents, d = 300, 6, 5
    acts = torch.rand(n_rows, n_latents, generator=gen) * (torch.rand(n_rows, n_latents, generator=gen) < 0.3)
    W_dec = torch.randn(n_latents, 2, d, generator=gen)
    x = torch.randn(n_rows, 2, d, generator=gen) + torch.einsum("bf,fmd->bmd", acts, W_dec)
    recon = torch.einsum("bf,fmd->bmd", acts, W_dec) + 0.1 * torch.randn(n_rows, 2, d, generator=gen)
    latents = torch.tensor([1, 4])
    own = torch.tensor([1, 0])  # latent 1 measured on its ft decoder, latent 4 on its base decoder
    acc = LatentScalingAccumulator(latents, n_latents, 2, d)
    for start in range(0, n_rows, 128):  # streamed in uneven batches
        stop = min(start + 128, n_rows)
        sub = _code(acts[start:stop])
        acc.update(sub, x[start:stop], recon[start:stop])
    beta_eps, beta_r = acc.betas(W_dec[latents], own)
    for slot, (j, m_own) in enumerate(zip(latents.tolist(), own.tolist())):
        d_vec = W_dec[j, m_own].double().numpy()
        f = acts[:, j].double().numpy()
        design = (f[:, None] * d_vec[None, :]).reshape(-1, 1)
        for m in range(2):
            own_contrib = f[:, None] * W_dec[j, m].double().numpy()[None, :]
            y_eps = (x[:, m] - recon[:, m]).double().numpy() + own_contrib
            y_r = recon[:, m].double().numpy()
            want_eps = np.linalg.lstsq(design, y_eps.reshape(-1), rcond=None)[0][0]
            want_r = np.linalg.lstsq(design, y_r.reshape(-1), rcond=None)[0][0]
            np.testing.assert_allclose(float(beta_eps[slot, m]), want_eps, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(float(beta_r[slot, m]), want_r, rtol=1e-5, atol=1e-7)


def test_ratios_separate_specific_from_shared_directions() -> None:
    # latent 0: ft-only, its direction absent from base (nu ~ 0);
    # latent 1: "ft-only" but the base carries the same direction in its error (nu ~ 1)
    gen = torch.Generator().manual_seed(1)
    n_rows, d = 400, 8
    dirs = torch.linalg.qr(torch.randn(d, d, generator=gen))[0][:2]
    f = torch.rand(n_rows, 2, generator=gen) + 0.1
    W_dec = torch.zeros(2, 2, d)
    W_dec[0, 1], W_dec[1, 1] = dirs[0], dirs[1]
    recon = torch.einsum("bf,fmd->bmd", f, W_dec)
    x = recon.clone()
    x[:, 0] += f[:, 1:2] * dirs[1]  # base has latent 1's direction, unexplained
    acc = LatentScalingAccumulator(torch.tensor([0, 1]), 2, 2, d)
    acc.update(_code(f), x, recon)
    ratios = scaling_ratios(acc, W_dec, torch.tensor([1, 1]))
    assert abs(float(ratios.nu_eps[0])) < 1e-6
    assert abs(float(ratios.nu_eps[1]) - 1.0) < 1e-6
    assert abs(float(ratios.nu_r[0])) < 1e-6  # base reconstruction never uses the direction
