"""Speed choices of the toy language-model factory (mechdiff.toylm), each against its alternative.

Rows:
- document sampling: bisect on cached CDFs (ours) vs ``rng.choice(p=...)`` per word;
- training steps: length-sorted ("sortish") batches trimmed to their longest document
  (ours) vs uniformly random batches trimmed the same way;
- training steps: one torch thread (ours, set only inside build_pair) vs torch's default
  thread count. On a busy shared CPU the default spin-waits; on an idle many-core
  machine it may win: the ratio says which held where this ran.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from mechdiff.toylm.language import (
    DocumentSampler,
    LanguageConfig,
    make_language,
    sample_documents,
)
from mechdiff.toylm.model import ToyLMSize, make_model
from mechdiff.toylm.tokenizer import build_tokenizer, special_ids
from mechdiff.toylm.train import _batches, _trim, encode_documents, next_token_loss


class _ChoiceSampler(DocumentSampler):
    """The baseline: numpy's weighted choice for every word."""

    def _pick(self, c, topic):
        w = np.asarray(c.weights) * np.where(np.asarray(c.topics) == topic, self.lang.config.topic_boost, 1.0)
        return c.words[int(self.rng.choice(len(c.words), p=w / w.sum()))]


def _sampling_row(n_docs: int) -> dict:
    lang = make_language(LanguageConfig(), seed=0)
    start = time.perf_counter()
    rng = np.random.default_rng(1)
    rng.random(n_docs)  # sample_documents draws its trigger mask first; keep the streams aligned
    sampler = _ChoiceSampler(lang, rng)
    baseline = [" ".join(sampler.document()) for _ in range(n_docs)]
    baseline_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = sample_documents(lang, n_docs, np.random.default_rng(1))
    ours_s = time.perf_counter() - start
    return {"name": f"toylm sample {n_docs} documents", "baseline": "rng.choice(p=...) per word",
            "baseline_s": baseline_s, "ours_s": ours_s, "ratio": baseline_s / ours_s,
            "identical_docs_fraction": float(np.mean([a == b for a, b in zip(baseline, ours)]))}


def _setup(n_docs: int):
    lang = make_language(LanguageConfig(), seed=0)
    tok = build_tokenizer(lang.words)
    ids = special_ids(tok)
    docs = sample_documents(lang, n_docs, np.random.default_rng(2))
    return encode_documents(tok, docs, 64, ids["eos"], ids["pad"]), ids, tok.get_vocab_size()


def _time_steps(batches, ids: dict[str, int], vocab: int) -> tuple[float, int]:
    model = make_model("gpt2", ToyLMSize(), vocab, ids, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = 0
    start = time.perf_counter()
    for batch in batches:
        batch = _trim(batch, ids["pad"])
        tokens += batch.numel()
        loss = next_token_loss(model, batch, ids["pad"], (ids["pad"], ids["bos"], ids["unk"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start, tokens


def _random_batches(ids_ND: torch.Tensor, steps: int, batch_size: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield ids_ND[torch.from_numpy(rng.choice(len(ids_ND), batch_size, replace=False))]


def _batching_row(steps: int) -> dict:
    ids_ND, ids, vocab = _setup(steps * 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        baseline_s, baseline_tok = _time_steps(_random_batches(ids_ND, steps, 16, 0), ids, vocab)
        ours_s, ours_tok = _time_steps(_batches(ids_ND, steps, 16, ids["pad"], 0), ids, vocab)
    finally:
        torch.set_num_threads(threads)
    return {"name": f"toylm {steps} tiny training steps", "baseline": "random batches",
            "baseline_s": baseline_s, "ours_s": ours_s, "ratio": baseline_s / ours_s,
            "padded_tokens_ratio": baseline_tok / ours_tok}


def _threads_row(steps: int) -> dict:
    ids_ND, ids, vocab = _setup(steps * 16)
    default = torch.get_num_threads()
    baseline_s, _ = _time_steps(_batches(ids_ND, steps, 16, ids["pad"], 0), ids, vocab)
    torch.set_num_threads(1)
    try:
        ours_s, _ = _time_steps(_batches(ids_ND, steps, 16, ids["pad"], 0), ids, vocab)
    finally:
        torch.set_num_threads(default)
    return {"name": f"toylm {steps} tiny training steps", "baseline": f"{default} torch threads",
            "baseline_s": baseline_s, "ours_s": ours_s, "ratio": baseline_s / ours_s}


def run(quick: bool) -> list[dict]:
    """Benchmark rows (see the module docstring)."""
    steps = 10 if quick else 60
    # The default-thread baseline can be very slow on a loaded machine: keep quick runs short.
    return [_sampling_row(200 if quick else 2000), _batching_row(steps), _threads_row(3 if quick else steps)]
