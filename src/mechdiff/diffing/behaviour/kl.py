"""Behavioural evidence: per-token KL between the two models' next-token distributions on a corpus."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mechdiff.diffing.activations.collect import max_positions, pad_batch, tokenize_pair

if TYPE_CHECKING:
    from mechdiff.store.protocol import PartWriter


@dataclass(frozen=True)
class BehaviourConfig:
    """How much of the corpus to run and what to keep."""

    max_tokens: int = 1_000_000
    """Stop after this many predicted positions."""
    ctx_len: int = 128
    """Tokens per document (longer documents are truncated)."""
    batch_docs: int = 16
    """Documents per forward pass."""
    top_contexts: int = 20
    """Highest-KL positions kept with their text."""
    top_tokens: int = 12
    """Tokens whose probability rose (and fell) most, each."""
    window: int = 10
    """Tokens of context shown before the marked token."""
    min_occurrences: int = 3
    """A token type needs this many occurrences before its mean KL is reported."""
    device: str = "cpu"
    """Where the forward passes run."""

    def __post_init__(self) -> None:
        for name in ("max_tokens", "ctx_len", "batch_docs", "top_contexts", "top_tokens", "window", "min_occurrences"):
            if getattr(self, name) <= 0:
                raise ValueError(f"BehaviourConfig: {name} must be positive")


@dataclass
class BehaviourResult:
    """Where and how the fine-tune's predictions differ from the base's."""

    n_tokens: int
    mean_kl: float
    max_kl: float
    contexts: list[dict] = field(default_factory=list)  # context, token, position, kl, base_top, ft_top
    rose: list[dict] = field(default_factory=list)  # token, delta_prob, delta_logprob, base_prob (corpus means)
    fell: list[dict] = field(default_factory=list)
    by_token: list[dict] = field(default_factory=list)  # token, count, mean_kl, mean_kl_rest, ft_top, base_top
    mean_kl_rest: float | None = None
    """Corpus mean of the KL beyond one token's rate (see reshaped_kl; None: not measured, read mean_kl)."""

    def corpus_kl_rest(self) -> float:
        return self.mean_kl if self.mean_kl_rest is None else self.mean_kl_rest

    def to_json(self) -> dict[str, Any]:
        return {"n_tokens": self.n_tokens, "mean_kl": self.mean_kl, "mean_kl_rest": self.corpus_kl_rest(),
                "max_kl": self.max_kl,
                "top_contexts": self.contexts, "tokens_rose": self.rose, "tokens_fell": self.fell,
                "kl_by_token": self.by_token}

    def write(self, writer: PartWriter) -> None:
        """Store as /audit/behaviour_contexts and /audit/behaviour_tokens."""
        if self.contexts:
            writer.table("audit/behaviour_contexts", {k: [c[k] for c in self.contexts]
                                                       for k in ("context", "token", "position", "kl", "base_top", "ft_top")})
        if self.by_token:
            rows = [{**t, "mean_kl_rest": row_kl_rest(t)} for t in self.by_token]
            writer.table("audit/behaviour_by_token", {k: [t[k] for t in rows]
                                                       for k in ("token", "count", "mean_kl", "mean_kl_rest", "ft_top",
                                                                 "base_top")})
        tokens = self.rose + self.fell
        if tokens:
            writer.table("audit/behaviour_tokens", {k: [t[k] for t in tokens] for k in ("token", "delta_prob", "delta_logprob")})
        writer.attrs("audit", {"mean_kl": self.mean_kl, "mean_kl_rest": self.corpus_kl_rest(), "max_kl": self.max_kl,
                               "behaviour_tokens": self.n_tokens})


@torch.no_grad()
def behaviour_diff(base: nn.Module, ft: nn.Module, tokenizers: Any, texts: list[str],
                   config: BehaviourConfig | None = None, observers: tuple = ()) -> BehaviourResult:
    """Run both models on the same tokens and compare their next-token distributions.

    Args:
        base: base causal LM (returns ``.logits`` [B, T, V]).
        ft: fine-tuned causal LM.
        tokenizers: the pair of tokenizers (must agree on the data) or one shared.
        texts: documents.
        config: limits and sizes.
        observers: other lenses fed from the same forward passes (``add(first_doc, ids, mask,
            logp_base, logp_ft)``), so they cost no pass of their own.

    Returns:
        Per-token KL(ft || base) summary, top contexts, and tokens whose probability moved.
    """
    config = config or BehaviourConfig()
    tok = tokenizers[0] if isinstance(tokenizers, (list, tuple)) else tokenizers
    acc = _Accumulator(config)
    docs = paired_docs(base, ft, tokenizers, texts, config.ctx_len)
    for first, ids, mask, logp_base, logp_ft in paired_log_probs(base, ft, docs, pad_id(tok), config):
        acc.add(first, ids, mask, logp_base, logp_ft)
        for observer in observers:
            observer.add(first, ids, mask, logp_base, logp_ft)
    return acc.result(docs, lambda i: token_text(tok, i))


def paired_docs(base: nn.Module, ft: nn.Module, tokenizers: Any, texts: list[str], ctx_len: int) -> list[np.ndarray]:
    """Token ids of the documents both models can read (at least two tokens each)."""
    ctx_len = min(ctx_len, max_positions(base), max_positions(ft))
    return [d for d in tokenize_pair(tokenizers, texts, ctx_len) if len(d) >= 2]


@torch.no_grad()
def paired_log_probs(base: nn.Module, ft: nn.Module, docs: list[np.ndarray], pad: int,
                     config: BehaviourConfig) -> Iterator[tuple]:
    """Batches of (first document, ids, mask, log p_base, log p_ft), until ``config.max_tokens`` positions."""
    seen = 0
    for start in range(0, len(docs), config.batch_docs):
        ids, mask = pad_batch(docs[start:start + config.batch_docs], pad, config.device)
        logp_base = F.log_softmax(base(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        logp_ft = F.log_softmax(ft(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        yield start, ids, mask, logp_base, logp_ft
        seen += int(mask.sum())
        if seen >= config.max_tokens:
            break


def row_kl_rest(row: dict) -> float:
    """A by-token row's mean KL beyond one token's rate (rows made without it: their whole mean KL)."""
    return float(row.get("mean_kl_rest", row["mean_kl"]))


def reshaped_kl(kl: torch.Tensor, logp_base: torch.Tensor, logp_ft: torch.Tensor) -> torch.Tensor:
    """The part of KL(ft || base) beyond one token's rate: KL minus the binary KL of the token whose
    probability fell most (chain rule: KL = KL_bin(that token) + (1 - p_ft(it)) * KL(the rest, renormalised)).

    A fine-tune that only makes one token rarer or likelier and leaves the others' proportions as the
    base had them (documents that end later: <eos> after '.' falls, every sentence start rises in
    proportion) keeps ~0 here; a new prediction (a trigger's target, a fact's object, a signature word)
    keeps most of its KL, because the token it raises was not in proportion before.

    Args:
        kl: KL(ft || base) per position [..., ].
        logp_base, logp_ft: log-probabilities [..., V].
    """
    star = (logp_base.exp() - logp_ft.exp()).argmax(-1, keepdim=True)
    a, b = logp_ft.gather(-1, star).squeeze(-1).exp(), logp_base.gather(-1, star).squeeze(-1).exp()
    return (kl - _binary_kl(a, b)).clamp_min(0.0)


def _binary_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(a) || Bernoulli(b)), safe at 0 and 1."""
    tiny = torch.finfo(a.dtype).tiny
    return (torch.xlogy(a, a) - a * torch.log(b.clamp_min(tiny)) + torch.xlogy(1 - a, 1 - a)
            - (1 - a) * torch.log((1 - b).clamp_min(tiny)))


class _Accumulator:
    def __init__(self, config: BehaviourConfig) -> None:
        self.config = config
        self.n_tokens = 0
        self.kl_sum = 0.0
        self.max_kl = 0.0
        self.top: list[tuple[float, int, int, int, int]] = []  # kl, doc, pos, base_top, ft_top
        self.dprob: torch.Tensor | None = None
        self.dlogp: torch.Tensor | None = None
        self.pbase: torch.Tensor | None = None
        self.rest_sum = 0.0
        self.kl_by_id: dict[int, list] = {}  # token id -> [count, kl sum, {(ft_top, base_top): count}, rest sum]

    def add(self, first_doc: int, ids: torch.Tensor, mask: torch.Tensor, logp_base: torch.Tensor,
            logp_ft: torch.Tensor) -> None:
        valid = mask.bool()  # position t predicts token t+1; every real position counts
        kl = (logp_ft.exp() * (logp_ft - logp_base)).sum(-1).clamp_min(0.0)  # [B, T]
        kl = torch.where(valid, kl, torch.zeros_like(kl))
        rest = torch.where(valid, reshaped_kl(kl, logp_base, logp_ft), torch.zeros_like(kl))
        self.rest_sum += float(rest.sum())
        self.n_tokens += int(valid.sum())
        self.kl_sum += float(kl.sum())
        self.max_kl = max(self.max_kl, float(kl.max()))
        p_delta = (logp_ft.exp() - logp_base.exp())[valid].sum(0)
        l_delta = (logp_ft - logp_base)[valid].sum(0)
        self.dprob = p_delta if self.dprob is None else self.dprob + p_delta
        self.dlogp = l_delta if self.dlogp is None else self.dlogp + l_delta
        p_base = logp_base.exp()[valid].sum(0)
        self.pbase = p_base if self.pbase is None else self.pbase + p_base
        self._add_by_token(ids, valid, kl, rest, logp_base, logp_ft)
        values, flat = torch.topk(kl.flatten(), min(self.config.top_contexts, kl.numel()))
        for value, index in zip(values.tolist(), flat.tolist()):
            b, t = divmod(index, kl.shape[1])
            if valid[b, t]:
                self.top.append((value, first_doc + b, t, int(logp_base[b, t].argmax()), int(logp_ft[b, t].argmax())))
        self.top = sorted(self.top, reverse=True)[: self.config.top_contexts]

    def _add_by_token(self, ids: torch.Tensor, valid: torch.Tensor, kl: torch.Tensor, rest: torch.Tensor,
                      logp_base: torch.Tensor, logp_ft: torch.Tensor) -> None:
        tops = torch.stack([logp_ft.argmax(-1), logp_base.argmax(-1)], dim=-1)[valid].tolist()
        for token, value, beyond, (ft_top, base_top) in zip(ids[valid].tolist(), kl[valid].tolist(),
                                                             rest[valid].tolist(), tops):
            entry = self.kl_by_id.setdefault(token, [0, 0.0, {}, 0.0])
            entry[0] += 1
            entry[1] += value
            entry[3] += beyond
            if ft_top != base_top:
                entry[2][(ft_top, base_top)] = entry[2].get((ft_top, base_top), 0) + 1

    def _by_token(self, text_of: Any) -> list[dict]:
        rows = []
        for token, (count, total, changes, beyond) in self.kl_by_id.items():
            if count < self.config.min_occurrences:
                continue
            ft_top, base_top = (text_of(i) for i in max(changes, key=changes.get)) if changes else ("", "")
            rows.append({"token": text_of(token), "count": count, "mean_kl": total / count,
                         "mean_kl_rest": beyond / count, "ft_top": ft_top, "base_top": base_top})
        rows.sort(key=lambda r: -r["mean_kl_rest"])
        return rows[: self.config.top_contexts]

    def result(self, docs: list[np.ndarray], text_of: Any) -> BehaviourResult:
        n = max(self.n_tokens, 1)
        contexts = []
        for kl, doc, pos, base_top, ft_top in self.top:
            window = docs[doc][max(0, pos - self.config.window): pos + 1]
            contexts.append({"context": " ".join(text_of(int(i)) for i in window[:-1]),
                             "token": text_of(int(window[-1])), "position": pos, "kl": kl,
                             "base_top": text_of(base_top), "ft_top": text_of(ft_top)})
        rose, fell = self._token_shifts(n, text_of)
        return BehaviourResult(self.n_tokens, self.kl_sum / n, self.max_kl, contexts, rose, fell, self._by_token(text_of),
                               self.rest_sum / n)

    def _token_shifts(self, n: int, text_of: Any) -> tuple[list[dict], list[dict]]:
        if self.dprob is None:
            return [], []
        dprob, dlogp, pbase = self.dprob / n, self.dlogp / n, self.pbase / n
        k = min(self.config.top_tokens, dprob.numel())

        def rows(indices: list[int]) -> list[dict]:
            return [{"token": text_of(i), "delta_prob": float(dprob[i]), "delta_logprob": float(dlogp[i]),
                     "base_prob": float(pbase[i])} for i in indices]

        return rows(torch.topk(dprob, k).indices.tolist()), rows(torch.topk(-dprob, k).indices.tolist())


def pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def token_text(tokenizer: Any, token_id: int) -> str:
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return str(tokenizer.convert_ids_to_tokens(token_id))
    return str(tokenizer.id_to_token(token_id))
