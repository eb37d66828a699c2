"""Activation-difference lens: a known vector added to one layer's residual, the alpha search."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mechdiff.diffing.behaviour.adl import (
    edited_block,
    largest_coherent_alpha,
    mean_difference,
    ranked_shift,
)
from mechdiff.diffing.behaviour.neutral import cached_logits, model_logits, sample_ids
from mechdiff.toylm.model import ToyLMSize, make_model


@pytest.fixture(scope="module")
def tiny_pair():
    size = ToyLMSize(d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_mlp=64, max_len=16)
    base = make_model("gpt2", size, vocab_size=40, special={"pad": 0, "bos": 1, "eos": 2}, seed=3).eval()
    ft = copy.deepcopy(base)
    v = torch.randn(32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ft.transformer.h[1].mlp.c_proj.bias += v  # every position of block 1's output moves by exactly v
    return base, ft, v


def test_adl_recovers_a_vector_added_to_one_layers_residual(tiny_pair):
    base, ft, v = tiny_pair
    g = np.random.default_rng(0)
    docs = [np.concatenate([[1], g.integers(3, 40, size=int(n))]) for n in g.integers(3, 12, size=30)]
    diffs, rows, resid = mean_difference(base, ft, docs, positions=5, bos_id=1, layer=1)
    cosine = float(torch.nn.functional.cosine_similarity(diffs[1], v, dim=0))
    assert cosine > 0.99
    assert float(diffs[1].norm()) == pytest.approx(float(v.norm()), rel=1e-4)
    assert float(diffs[0].norm()) == 0.0  # the layer before the edit is untouched
    assert rows.shape == (sum(min(len(d) - 1, 5) for d in docs), 32)
    assert resid.shape == (3,)


def test_alpha_search_finds_where_coherence_breaks():
    broken_at = 3.7
    calls = []

    def loss(alpha: float) -> float:
        calls.append(alpha)
        return 1.0 if alpha < broken_at else 10.0

    alpha = largest_coherent_alpha(loss, limit=2.0, high=10.0, steps=10)
    assert broken_at - 10.0 / 2**10 <= alpha < broken_at
    assert len(calls) == 11
    assert largest_coherent_alpha(lambda a: 1.0, limit=2.0, high=10.0, steps=10) == 10.0


def test_ranked_shift_weights_tokens_by_kl_share():
    p_old = torch.tensor([[0.5, 0.25, 0.25]])
    p_new = torch.tensor([[0.25, 0.5, 0.25]])
    up, down, kl = ranked_shift(p_new, p_old, top=2, text_of=str)
    assert up[0]["token"] == "1" and up[0]["weight"] == pytest.approx(0.5 * np.log(2))
    assert down[0]["token"] == "0" and down[0]["weight"] == pytest.approx(0.5 * np.log(2))
    assert kl == pytest.approx(0.5 * np.log(2) + 0.25 * np.log(0.5))


def test_kv_cached_steered_sampling_matches_full_prefix_passes(tiny_pair):
    # the steering hook edits every position; the cache keeps the edited keys and values, so
    # feeding one token at a time must give the full-prefix logits and the same samples
    base, _, v = tiny_pair
    ids = torch.randint(3, 40, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), edited_block(base, 1, lambda h: h + 3.0 * v):
        full, cached = model_logits(base), cached_logits(base)
        for t in range(1, ids.shape[1] + 1):
            assert torch.allclose(cached(ids[:, :t]), full(ids[:, :t]), atol=1e-5)
        rows = [sample_ids(fn, 1, 3, 12, torch.Generator().manual_seed(5)) for fn in (model_logits(base),
                                                                                     cached_logits(base))]
    assert torch.equal(rows[0], rows[1])
    with torch.no_grad():
        plain = sample_ids(cached_logits(base), 1, 3, 12, torch.Generator().manual_seed(5))
    assert not torch.equal(plain, rows[1])  # the hook was seen on the cached path


def test_steering_search_on_a_trained_model_stops_where_its_own_loss_breaks(toy_backdoor):
    # a trained toy LM: its own samples are coherent (low loss); pushed hard along one direction of its
    # residual stream it babbles. The chosen alpha is coherent and one bisection step above it is not.
    from mechdiff.diffing.behaviour.adl import ADLConfig, base_loss, start_token, steer
    from mechdiff.models import load_causal_lm

    base, tokenizer = load_causal_lm(toy_backdoor.base_dir, progress=False)
    d = base.config.n_embd
    delta = torch.randn(d, generator=torch.Generator().manual_seed(1))
    config = ADLConfig(steer_samples=4, steer_length=16, search_steps=6, max_scale=16.0)
    resid_norm = 10.0
    alpha, steered, losses = steer(base, tokenizer, 0, delta, resid_norm, config)
    high = config.max_scale * resid_norm / float(delta.norm())
    assert 0.0 < alpha < high  # coherence broke inside the range, not at either end
    assert losses["steered_loss"] <= losses["limit"] == pytest.approx(config.loss_factor * losses["unsteered_loss"])
    assert len(steered) == config.steer_samples and all(s["alpha"] == alpha for s in steered)

    def loss_at(a: float) -> float:  # the search's own measurement, repeated
        g = torch.Generator().manual_seed(config.seed)
        with edited_block(base, 0, lambda h: h + a * delta):
            ids = sample_ids(cached_logits(base), start_token(tokenizer), config.steer_samples, config.steer_length,
                             g, "cpu")
        return base_loss(base, ids)

    assert loss_at(alpha) == pytest.approx(losses["steered_loss"], rel=1e-5)
    assert loss_at(alpha + high / 2 ** config.search_steps) > losses["limit"]
