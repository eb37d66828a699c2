"""Logit-difference mining on hand-computable distributions, and the NMF topics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mechdiff.diffing.behaviour.logit_diff import (
    LogitDiffAccumulator,
    LogitDiffConfig,
    nmf,
)


def _batch(base_logits: list[float], ft_logits: list[float], positions: int) -> tuple:
    lb = torch.log_softmax(torch.tensor([base_logits] * positions), -1)[None]
    lf = torch.log_softmax(torch.tensor([ft_logits] * positions), -1)[None]
    ids = torch.zeros(1, positions, dtype=torch.int64)
    return ids, torch.ones(1, positions, dtype=torch.int64), lb, lf


def test_known_boost_ranks_by_kl_share_not_raw_logit_change():
    # base: tokens 0-2 at logit 0, token 3 at -20 (never predicted); ft: token 0 gets +ln 4,
    # token 3 gets +10 (a huge raw change on a token neither model predicts).
    # p_base ~ (1/3, 1/3, 1/3, 0), p_ft ~ (2/3, 1/6, 1/6, 0): token 0's KL share is
    # 2/3 ln 2 = 0.4621 per position; token 1 lost 1/3 ln 2 = 0.2310 of KL(base || ft).
    acc = LogitDiffAccumulator(LogitDiffConfig(min_shift=0.1, topics=1))
    acc.add(0, *_batch([0.0, 0.0, 0.0, -20.0], [math.log(4), 0.0, 0.0, -10.0], positions=5))
    docs = [np.zeros(5, dtype=np.int64)]
    result = acc.result(docs, lambda i: f"t{i}")
    assert result.n_positions == 5
    top = result.up[0]
    assert top["token"] == "t0"
    assert top["weight"] == pytest.approx(2 / 3 * math.log(2), rel=1e-4)
    assert top["mass"] == pytest.approx(1 / 3, rel=1e-4)
    assert top["count"] == 5 and top["score"] == pytest.approx(2 / 3 * math.log(2), rel=1e-4)
    assert result.to_json()["tokens_up"][0] == "t0"
    raw = {r["token"]: r for r in result.up}["t3"]  # +10 in log-probability, but no mass moved
    assert raw["weight"] < 1e-3 * top["weight"] and raw["count"] == 0
    down = {r["token"]: r for r in result.down}
    assert down["t1"]["weight"] == pytest.approx(1 / 3 * math.log(2), rel=1e-4)
    assert down["t1"]["count"] == 5  # 1/3 - 1/6 = 1/6 >= 0.1 of mass left it at every position


def test_counts_only_positions_that_moved_enough():
    acc = LogitDiffAccumulator(LogitDiffConfig(min_shift=0.1, topics=1))
    acc.add(0, *_batch([0.0, 0.0], [math.log(4), 0.0], positions=3))  # p0: 1/2 -> 4/5, moved 0.3
    acc.add(1, *_batch([0.0, 0.0], [0.1, 0.0], positions=4))  # p0: 1/2 -> 0.525, moved 0.025
    result = acc.result([np.zeros(3, dtype=np.int64), np.zeros(4, dtype=np.int64)], str)
    top = result.up[0]
    assert top["count"] == 3
    moved_kl = 0.8 * math.log(0.8 / 0.5)
    assert top["score"] == pytest.approx(moved_kl, rel=1e-4)


def test_nmf_separates_two_disjoint_topics():
    g = np.random.default_rng(0)
    X = np.zeros((40, 6))
    X[:20, :3] = g.uniform(0.5, 1.0, (20, 3))
    X[20:, 3:] = g.uniform(0.5, 1.0, (20, 3))
    W, H = nmf(torch.from_numpy(X), 2, 500, seed=0)
    topics = sorted(set(torch.topk(H[k], 3).indices.tolist()) for k in range(2))
    assert sorted(map(sorted, topics)) == [[0, 1, 2], [3, 4, 5]]
    assert float(torch.linalg.norm(torch.from_numpy(X) - W @ H) / np.linalg.norm(X)) < 0.2


def test_nmf_sparse_input_and_early_stop_agree_with_the_full_dense_run():
    g = np.random.default_rng(1)
    X = np.zeros((60, 9))
    for i in range(60):
        block = 3 * (i % 3)
        X[i, block:block + 3] = g.uniform(0.2, 1.0, 3)
    dense = torch.from_numpy(X)
    W, H = nmf(dense, 3, 400, seed=0)
    Ws, Hs = nmf(dense.to_sparse_coo(), 3, 400, seed=0)
    assert torch.allclose(W, Ws) and torch.allclose(H, Hs)
    We, He = nmf(dense, 3, 400, seed=0, tol=1e-5)
    assert float(torch.linalg.norm(dense - We @ He)) == pytest.approx(float(torch.linalg.norm(dense - W @ H)), rel=1e-3)
    assert [set(torch.topk(h, 3).indices.tolist()) for h in He] == [set(torch.topk(h, 3).indices.tolist()) for h in H]
