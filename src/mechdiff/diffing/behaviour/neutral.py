"""Neutral text without a corpus: seeded samples of the base model from its BOS token, and the
sampling loop the other lenses share (steered and amplified samples).

A sampler is a function ``ids [B, T] -> next-token logits [B, V]`` over the whole prefix;
`model_logits` makes one from a causal LM (a forward pass over the prefix per step), `cached_logits`
one that feeds only the new token and keeps the model's KV cache. The cache holds the keys and
values computed under the hooks active when each token went in, so a steering hook that edits
every position gives the same logits as a full pass (to float rounding), at a fraction of the cost.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mechdiff.diffing.activations.collect import max_positions
from mechdiff.errors import InputError

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
MAX_SAMPLED_FACTOR = 20  # sample at most this many times the tokens asked for


@dataclass(frozen=True)
class NeutralConfig:
    """How much neutral text to sample from the base when no corpus is given."""

    tokens: int = 10_000
    """Sampled tokens in all (BOS not counted)."""
    doc_len: int = 64
    """Tokens per document (capped by the model's context)."""
    batch_docs: int = 32
    """Documents sampled at once."""
    seed: int = 0
    """Seed of the sampler (the same seed gives the same text)."""
    temperature: float = 1.0
    """Sampling temperature (1: the base's own distribution)."""

    def __post_init__(self) -> None:
        for name in ("tokens", "doc_len", "batch_docs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"NeutralConfig: {name} must be positive")
        if self.temperature <= 0:
            raise ValueError("NeutralConfig: temperature must be positive")


@dataclass
class NeutralText:
    """Documents sampled from the base, and how they were made (the report states it)."""

    texts: list[str]
    tokens: int
    seed: int

    def describe(self) -> str:
        return (f"self-generated: {len(self.texts)} documents, {self.tokens} tokens sampled from the base model "
                f"from its BOS token (seed {self.seed})")


def model_logits(model: nn.Module) -> LogitsFn:
    """Next-token logits of a causal LM at the last position of each row (float32)."""

    def logits(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids).logits[:, -1].float()

    return logits


def cached_logits(model: nn.Module) -> LogitsFn:
    """Like `model_logits`, but a call whose ids extend the previous call's by one token feeds only
    that token, with the model's KV cache (any other call runs the whole prefix and starts a new cache).

    A model that returns no cache is run on the whole prefix every time.
    """
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    state: dict[str, Any] = {"ids": None, "cache": None}

    def logits(ids: torch.Tensor) -> torch.Tensor:
        prev, cache = state["ids"], state["cache"]
        extends = (cache is not None and prev is not None and ids.shape[0] == prev.shape[0]
                   and ids.shape[1] == prev.shape[1] + 1 and torch.equal(ids[:, :-1], prev))
        if extends:
            out = model(input_ids=ids[:, -1:], use_cache=True, **{name: cache})
        else:
            out = model(input_ids=ids, use_cache=True)
        state["ids"], state["cache"] = ids, _returned_cache(out)
        return out.logits[:, -1].float()

    return logits


def _returned_cache(output: Any) -> Any:
    for key in ("cache", "past_key_values"):
        value = output.get(key) if hasattr(output, "get") else getattr(output, key, None)
        if value is not None:
            return value
    return None


@torch.no_grad()
def sample_ids(logits_fn: LogitsFn, start_id: int, n_docs: int, length: int, generator: torch.Generator,
               device: str = "cpu", temperature: float = 1.0, batch_docs: int = 32) -> torch.Tensor:
    """Sample ``n_docs`` continuations of ``length`` tokens after the start token.

    Args:
        logits_fn: prefix [B, T] -> next-token logits [B, V].
        start_id: the first token of every row (BOS).
        n_docs: rows to sample.
        length: new tokens per row.
        generator: the torch RNG (CPU) that draws every token, so a seed fixes the text.
        device: where the prefixes live.
        temperature: softmax temperature.
        batch_docs: rows per forward pass.

    Returns:
        int64 [n_docs, length + 1], the start token first.
    """
    rows = []
    for first in range(0, n_docs, batch_docs):
        ids = torch.full((min(batch_docs, n_docs - first), 1), start_id, dtype=torch.int64, device=device)
        for _ in range(length):
            probs = torch.softmax(logits_fn(ids) / temperature, dim=-1).cpu()
            nxt = torch.multinomial(probs, 1, generator=generator).to(device)
            ids = torch.cat([ids, nxt], dim=1)
        rows.append(ids.cpu())
    return torch.cat(rows)


def start_token(tokenizer: Any) -> int:
    """The id every sample starts from: BOS, else EOS (GPT-2 style models start documents with it)."""
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    raise InputError("the tokenizer has no BOS or EOS token to start neutral samples from; pass --data")


def decode(tokenizer: Any, ids: list[int]) -> str:
    """Text of token ids with special tokens dropped (tokenizing it again restores them)."""
    if hasattr(tokenizer, "decode"):
        return str(tokenizer.decode(ids, skip_special_tokens=True))
    return " ".join(str(tokenizer.id_to_token(i)) for i in ids)


def neutral_texts(base: nn.Module, tokenizer: Any, config: NeutralConfig | None = None,
                  device: str = "cpu") -> NeutralText:
    """Documents sampled from the base model (seeded), to stand in for unrelated text.

    Batches of documents are sampled until the kept tokens (a document ends at its first EOS)
    reach ``config.tokens``.

    Args:
        base: the base causal LM.
        tokenizer: its tokenizer (BOS or EOS starts every document; EOS ends one early).
        config: how many tokens, document length, seed.
        device: where the model runs.

    Returns:
        The documents, the number of tokens kept, and a description for the report.
    """
    config = config or NeutralConfig()
    length = max(1, min(config.doc_len, max_positions(base) - 1))
    generator = torch.Generator().manual_seed(config.seed)
    eos = getattr(tokenizer, "eos_token_id", None)
    texts, kept, rounds = [], 0, 0
    while kept < config.tokens:
        if rounds * config.batch_docs * length >= MAX_SAMPLED_FACTOR * config.tokens:
            break  # a base that ends nearly every document at once: keep what there is
        ids = sample_ids(model_logits(base), start_token(tokenizer), config.batch_docs, length, generator, device,
                         config.temperature, config.batch_docs)
        rounds += 1
        for row in ids[:, 1:].tolist():
            row = row[: row.index(eos)] if eos in row else row
            text = decode(tokenizer, row).strip()
            if text and kept < config.tokens:
                texts.append(text)
                kept += len(row)
    if not texts:
        raise InputError("the base model sampled only special tokens; pass --data with a corpus")
    return NeutralText(texts, kept, config.seed)
