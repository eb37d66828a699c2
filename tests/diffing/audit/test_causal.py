"""Causal confirmation on a linear model with an exactly low-rank planted edit."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from mechdiff.diffing.audit.causal import (
    CausalConfig,
    TopPositions,
    causal_confirmation,
    structured_part,
)
from mechdiff.diffing.audit.findings import Finding


class LinearLM(nn.Module):
    """logits = U (W E[token]): linear in W, so an edit's effect on the logits is exactly W's change."""

    def __init__(self, vocab: int = 12, d: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Parameter(torch.randn(vocab, d, generator=g))
        self.proj = nn.Linear(d, d, bias=False)
        self.unembed = nn.Parameter(torch.randn(vocab, d, generator=g) / d**0.5)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(d, d, generator=g) / d**0.5)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(logits=self.proj(self.embed[input_ids]) @ self.unembed.T)


def _planted(drift: float) -> tuple[LinearLM, LinearLM]:
    base = LinearLM()
    ft = copy.deepcopy(base)
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(16, 1, generator=g), torch.randn(16, 1, generator=g)
    with torch.no_grad():
        ft.proj.weight += 0.6 * u @ v.T + drift * torch.randn(16, 16, generator=g)
    return base, ft


def _docs() -> list[np.ndarray]:
    g = np.random.default_rng(0)
    return [g.integers(0, 12, size=8) for _ in range(10)]


def _top_positions(base: nn.Module, ft: nn.Module, docs: list[np.ndarray], n: int = 8) -> list[tuple[int, int]]:
    top = TopPositions(n)
    for i, doc in enumerate(docs):
        ids = torch.as_tensor(doc)[None]
        with torch.no_grad():
            top.add(i, ids, torch.ones_like(ids), torch.log_softmax(base(ids).logits, -1),
                    torch.log_softmax(ft(ids).logits, -1))
    return top.positions()


def test_ablating_an_exactly_low_rank_edit_removes_exactly_its_effect():
    base, ft = _planted(drift=0.0)
    before = ft.proj.weight.detach().clone()
    docs = _docs()
    finding = Finding("weights", 2.0, "planted", tensor="proj.weight")
    result = causal_confirmation(base, ft, [finding], docs, _top_positions(base, ft, docs),
                                 config=CausalConfig(top_positions=8, corpus_docs=10))
    numbers = result.for_finding(finding)
    assert numbers["ablate_kl_fraction"] == pytest.approx(1.0, abs=1e-5)
    assert numbers["corpus_ablate_kl_fraction"] == pytest.approx(1.0, abs=1e-5)
    assert numbers["amplify_kl_ratio"] > 1.5  # logits move twice as far from the base's
    assert numbers["drift_ablate_kl_fraction"] == pytest.approx(0.0, abs=1e-6)  # no drift: an empty control
    assert torch.equal(ft.proj.weight, before)  # every edit is undone
    assert result.joint["ablate_kl_fraction"] == pytest.approx(1.0, abs=1e-5)
    assert result.joint["keys"] == [("weights", "proj.weight", None, None)]


def test_drift_control_has_the_structured_parts_norm_and_lies_in_the_bulk():
    g = torch.Generator().manual_seed(2)
    u, v = torch.randn(64, 1, generator=g), torch.randn(48, 1, generator=g)
    D = 3.0 * u @ v.T / (u.norm() * v.norm()) * 8 + 0.05 * torch.randn(64, 48, generator=g)
    S, control = structured_part(D, CausalConfig().spectral)
    assert torch.linalg.matrix_rank(S).item() == 1
    assert float(control.norm()) == pytest.approx(float(S.norm()), rel=1e-5)
    u_hat = u[:, 0] / u.norm()
    assert abs(float(u_hat @ S @ (v[:, 0] / v.norm()))) == pytest.approx(24.0, rel=0.02)
    assert float((u_hat @ control).norm()) < 0.1 * float(control.norm())  # nothing along the edit


def test_drifted_edit_is_causal_and_its_control_is_not():
    base, ft = _planted(drift=0.01)
    docs = _docs()
    finding = Finding("weights", 2.0, "planted", tensor="proj.weight")
    numbers = causal_confirmation(base, ft, [finding], docs, _top_positions(base, ft, docs),
                                  config=CausalConfig(top_positions=8, corpus_docs=10)).for_finding(finding)
    assert numbers["ablate_kl_fraction"] > 0.9
    assert numbers["drift_ablate_kl_fraction"] < 0.2
    assert numbers["causal"] is True
