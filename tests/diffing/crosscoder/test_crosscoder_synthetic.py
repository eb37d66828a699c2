"""Ground truth: paired activations built from known dictionaries; the crosscoder must recover them.

Planted features (random unit directions in D=24): 8 shared (same direction in
both models), 4 ft-only, 3 base-only and 1 rotated (different direction per
model). Each fires independently with probability 0.08 and magnitude U(0.5, 1.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from mechdiff.diffing.activations.cache import PairedActivations, from_tensor
from mechdiff.diffing.crosscoder.config import CrosscoderConfig
from mechdiff.diffing.crosscoder.eval import evaluate_crosscoder
from mechdiff.diffing.crosscoder.train import train_crosscoder

D, N_SHARED, N_FT, N_BASE = 24, 8, 4, 3


@pytest.fixture(autouse=True)
def _small_and_quiet(monkeypatch: pytest.MonkeyPatch):
    # tiny matrices: one thread and the torch kernels avoid thread hand-off costs on a shared CPU
    monkeypatch.setenv("MECHDIFF_KERNELS", "reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Planted:
    shared: torch.Tensor  # [8, D]
    ft_only: torch.Tensor  # [4, D]
    base_only: torch.Tensor  # [3, D]
    rotated_base: torch.Tensor  # [D]
    rotated_ft: torch.Tensor  # [D]


def make_planted(n_rows: int = 8192, seed: int = 0) -> tuple[PairedActivations, Planted]:
    gen = torch.Generator().manual_seed(seed)

    def unit(n: int) -> torch.Tensor:
        v = torch.randn(n, D, generator=gen)
        return v / v.norm(dim=1, keepdim=True)

    truth = Planted(unit(N_SHARED), unit(N_FT), unit(N_BASE), unit(1)[0], unit(1)[0])
    n_feat = N_SHARED + N_FT + N_BASE + 1
    on = torch.rand(n_rows, n_feat, generator=gen) < 0.08
    acts = on.float() * (0.5 + torch.rand(n_rows, n_feat, generator=gen))
    a_sh, a_ft, a_base, a_rot = torch.split(acts, [N_SHARED, N_FT, N_BASE, 1], dim=1)
    x_base = a_sh @ truth.shared + a_base @ truth.base_only + a_rot * truth.rotated_base
    x_ft = a_sh @ truth.shared + a_ft @ truth.ft_only + a_rot * truth.rotated_ft
    return from_tensor(torch.stack([x_base, x_ft], dim=1)), truth


def _cos(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (a @ b.T).numpy()


def _recovery(config: CrosscoderConfig) -> dict[str, float]:
    data, truth = make_planted()
    module = train_crosscoder(data, config, progress=False).module
    table = evaluate_crosscoder(module, data, batch=2048, progress=False).latents
    dec = module.W_dec_FMD.detach()
    delta, cls = table["delta"], table["cls"]
    cos_ft = _cos(dec[:, 1], truth.ft_only)  # [F, 4]
    found_ft = [(cos_ft[:, i] >= 0.9) & (delta >= 0.9) for i in range(N_FT)]
    ft_latents = np.nonzero(cls == "ft-only")[0]
    cos_base = _cos(dec[:, 0], truth.base_only)
    found_base = [(cos_base[:, i] >= 0.9) & (delta <= 0.1) for i in range(N_BASE)]
    # a shared feature is matched by the latent closest to (s, s) in the concatenated space
    both = torch.cat([truth.shared, truth.shared], dim=1)
    best_shared = _cos(dec.reshape(dec.shape[0], -1), both).argmax(axis=0)
    rotated = torch.cat([truth.rotated_base, truth.rotated_ft])[None]
    best_rot = int(_cos(dec.reshape(dec.shape[0], -1), rotated).argmax())
    return {
        "ft_recall": float(np.mean([f.any() for f in found_ft])),
        "ft_precision": float(np.mean(cos_ft[ft_latents].max(axis=1) >= 0.9)) if ft_latents.size else 0.0,
        "base_recall": float(np.mean([f.any() for f in found_base])),
        "shared_in_range": float(np.mean((delta[best_shared] >= 0.4) & (delta[best_shared] <= 0.6))),
        "shared_min_cos": float(table["cos"][best_shared].min()),
        "rotated_base_cos": float(_cos(dec[best_rot, 0][None], truth.rotated_base[None])[0, 0]),
        "rotated_ft_cos": float(_cos(dec[best_rot, 1][None], truth.rotated_ft[None])[0, 0]),
        "rotated_dec_cos": float(table["cos"][best_rot]),
        "true_rotation_cos": float(truth.rotated_base @ truth.rotated_ft),
    }


def test_batchtopk_recovers_planted_features() -> None:
    config = CrosscoderConfig(dict_size=64, k=2, lr=5e-3, warmup_steps=20, tokens=128 * 600, batch=128,
                              dead_after_tokens=128 * 30)
    got = _recovery(config)
    assert got["ft_recall"] >= 0.9 and got["ft_precision"] >= 0.9, got
    assert got["base_recall"] >= 0.9, got
    assert got["shared_in_range"] == 1.0 and got["shared_min_cos"] >= 0.9, got
    # the rotated feature: one latent, each model's decoder on its own direction,
    # decoder cosine equal to the planted directions' cosine (not ~1 like shared ones)
    assert got["rotated_base_cos"] >= 0.9 and got["rotated_ft_cos"] >= 0.9, got
    assert abs(got["rotated_dec_cos"] - got["true_rotation_cos"]) < 0.1, got


def test_l1_recovers_planted_features() -> None:
    config = CrosscoderConfig(dict_size=24, sparsity="l1", l1_coeff=2.0, lr=5e-3, warmup_steps=20,
                              tokens=128 * 1200, batch=128, dead_after_tokens=128 * 30)
    got = _recovery(config)
    assert got["ft_recall"] >= 0.9 and got["ft_precision"] >= 0.9, got
    assert got["base_recall"] >= 0.9, got
    # L1 on summed decoder norms prices one shared latent (2 * lambda * f) exactly like a
    # base-only + ft-only pair firing together, so a shared feature can end up split;
    # a tight dictionary (24 latents for 16 features) and lambda=2 keep all 8 whole here,
    # while lambda=1 or 32+ latents leave 1-3 of 8 split (BatchTopK has no such tie)
    assert got["shared_in_range"] == 1.0, got
