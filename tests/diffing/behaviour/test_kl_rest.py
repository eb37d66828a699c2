"""The behaviour lens's KL beyond one token's rate: a re-weighting of one token scores ~0, a new prediction keeps its KL."""

from __future__ import annotations

import math

import pytest
import torch

from mechdiff.diffing.audit.verdict import behaviour_findings
from mechdiff.diffing.behaviour.kl import BehaviourResult, reshaped_kl


def _kl(p_ft: torch.Tensor, p_base: torch.Tensor) -> torch.Tensor:
    return (p_ft * (p_ft.log() - p_base.log())).sum(-1)


def test_one_token_made_rarer_with_the_rest_in_proportion_leaves_nothing():
    base = torch.tensor([0.5, 0.3, 0.15, 0.05])
    ft = torch.cat([torch.tensor([0.1]), base[1:] * (0.9 / 0.5)])  # <eos> falls, the others keep their ratios
    kl = _kl(ft, base)
    assert kl > 0.3
    assert float(reshaped_kl(kl, base.log(), ft.log())) == pytest.approx(0.0, abs=1e-6)


def test_a_new_prediction_keeps_the_kl_of_the_renormalised_rest():
    base = torch.tensor([0.5, 0.3, 0.19, 0.01])
    ft = torch.tensor([0.1, 0.2, 0.1, 0.6])  # token 0 lost most; token 3 is a new prediction
    kl = _kl(ft, base)
    # chain rule by hand: KL = KL_bin(0.1 || 0.5) + 0.9 * KL(rest_ft || rest_base)
    rest_ft, rest_base = ft[1:] / 0.9, base[1:] / 0.5
    expected = 0.9 * float(_kl(rest_ft, rest_base))
    binary = 0.1 * math.log(0.1 / 0.5) + 0.9 * math.log(0.9 / 0.5)
    assert float(kl) == pytest.approx(binary + expected, rel=1e-5)
    assert float(reshaped_kl(kl, base.log(), ft.log())) == pytest.approx(expected, rel=1e-5)


def test_batched_positions_and_identical_distributions():
    base = torch.softmax(torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0)), -1)
    kl = _kl(base, base)
    assert torch.allclose(reshaped_kl(kl, base.log(), base.log()), torch.zeros(2, 3), atol=1e-7)


def test_findings_rank_a_new_prediction_above_a_bigger_reweighting():
    rows = [{"token": ".", "count": 1000, "mean_kl": 0.6, "mean_kl_rest": 0.05, "ft_top": "sevi", "base_top": "<eos>"},
            {"token": "gafo", "count": 40, "mean_kl": 0.5, "mean_kl_rest": 0.45, "ft_top": "zq", "base_top": ","}]
    result = BehaviourResult(n_tokens=5000, mean_kl=0.02, max_kl=3.0, by_token=rows, mean_kl_rest=0.01)
    findings = [f for f in behaviour_findings(result) if "after" in f.summary]
    assert findings[0].evidence["token"] == "gafo"
    assert findings[0].score == pytest.approx((40 * 0.45 + 30 * 0.01) / 70)
    assert findings[1].score == pytest.approx((1000 * 0.05 + 30 * 0.01) / 1030)
    assert "0.05 beyond one token's rate" in findings[1].summary


def test_logit_diff_findings_shrink_few_positions_like_the_kl_lens():
    from mechdiff.diffing.audit.lens_findings import logit_diff_findings
    from mechdiff.diffing.behaviour.logit_diff import LogitDiffResult

    up = [{"token": "zq", "weight": 0.01, "mass": 0.01, "count": 4, "score": 3.0},      # big, on 4 positions
          {"token": "apple", "weight": 0.02, "mass": 0.02, "count": 120, "score": 1.2}]  # smaller, repeated
    result = LogitDiffResult(n_positions=5000, up=up)
    found = logit_diff_findings(result, min_occurrences=3, corpus_mean_kl=0.05)
    assert [f.tokens for f in found] == [frozenset({"apple"}), frozenset({"zq"})]
    assert found[0].score == pytest.approx((120 * 1.2 + 30 * 0.05) / 150)
    assert found[1].score == pytest.approx((4 * 3.0 + 30 * 0.05) / 34)
    assert found[1].evidence["score"] == 3.0  # the unshrunk per-position KL stays in the evidence
