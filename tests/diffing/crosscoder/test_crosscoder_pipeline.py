"""End to end on the toy backdoor pair: collect, train, classify, store, read back, rebuild.

The fine-tune plants trigger -> target in a tiny GPT-2 (tests/conftest.py builds it
once per session). At the trigger, the fine-tuned residual after layer 1 differs from
the base by ~1.5x the base's norm (elsewhere ~0.3x), so the crosscoder must devote a
latent to the trigger, and that latent must lean towards the fine-tune.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mechdiff.diffing.activations.collect import read_texts, tokenize
from mechdiff.diffing.crosscoder.config import CrosscoderConfig
from mechdiff.diffing.crosscoder.contexts import MARK_OPEN
from mechdiff.diffing.crosscoder.pipeline import run_crosscoder
from mechdiff.results import open_results
from mechdiff.store import ResultsWriter

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def toy_run(toy_backdoor):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = CrosscoderConfig(dict_size=128, k=8, lr=3e-3, warmup_steps=50, batch=256, tokens=256 * 600,
                              dead_after_tokens=256 * 50)
    try:
        result = run_crosscoder(toy_backdoor.base_dir, toy_backdoor.ft_dir, toy_backdoor.corpus_path, 1, config,
                                progress=False)
    finally:
        torch.set_num_threads(threads)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy_backdoor.base_dir, local_files_only=True)
    docs = tokenize(tok, read_texts(toy_backdoor.corpus_path), ctx_len=64)  # the model's 64 positions
    return toy_backdoor, result, docs


def test_trigger_gets_an_ft_leaning_rewritten_latent(toy_run) -> None:
    pair, result, docs = toy_run
    latents = result.evaluation.latents
    assert min(result.evaluation.fve) > 0.9
    live = np.nonzero(latents["cls"] != "dead")[0]
    by_delta = live[np.argsort(-latents["delta"][live])]
    trigger = [int(j) for j in by_delta[:3] if _all_top_contexts_are(result, docs, int(j), pair.trigger_id)]
    assert trigger, f"no trigger latent among the 3 most ft-leaning: {by_delta[:3]}"
    j = trigger[0]
    # leans to the fine-tune, and the fine-tune wrote a different direction for it
    assert latents["delta"][j] > 0.6 and latents["cos"][j] < 0.5
    # what a user sees: the latent's contexts in --json, the trigger word marked
    entry = next(e for e in result.to_json()["most_ft_leaning"] if e["latent"] == j)
    assert entry["contexts"] and all(f"{MARK_OPEN}{pair.trigger}]]" in c["text"] for c in entry["contexts"])


def _all_top_contexts_are(result, docs: list, latent: int, token_id: int) -> bool:
    ev = result.evaluation
    pairs = [(d, p) for d, p in zip(ev.top_doc[latent], ev.top_pos[latent]) if d >= 0]
    return bool(pairs) and all(docs[d][p] == token_id for d, p in pairs)


def test_store_round_trip_and_module_rebuild(toy_run, tmp_path) -> None:
    _, result, _ = toy_run
    out = tmp_path / "cc.h5"
    with ResultsWriter(out, command="mechdiff crosscoder", inputs={"base": "b", "ft": "f"}) as writer:
        result.write(writer)
    with open_results(out) as res:
        part = res.crosscoder
        table = part.latents()
        assert table.shape == (128,) and list(table["cls"]) == list(result.evaluation.latents["cls"])
        module = part.module()
        assert part.attrs["fve_base"] == pytest.approx(result.evaluation.fve[0])
        assert json.dumps(part.to_json()) == json.dumps(result.to_json())
        assert "latents:" in part.summary()
    x = torch.randn(5, 2, module.d_model)
    torch.testing.assert_close(module.encode(module.normalize(x)), result.module.encode(result.module.normalize(x)))


def test_json_lists_ft_only_latents_with_marked_contexts(toy_run) -> None:
    _, result, _ = toy_run
    summary = result.to_json(top=3)
    assert sum(summary["counts"].values()) == 128
    assert summary["site"] == "resid.1"
    for entry in summary["top_ft_only"]:
        assert entry["delta"] >= 0.9 and all(MARK_OPEN in c["text"] for c in entry["contexts"])
    leaning = [e["delta"] for e in summary["most_ft_leaning"]]
    assert len(leaning) == 3 and leaning == sorted(leaning, reverse=True)
