"""Logit-difference mining: which tokens the fine-tune predicts more (less) over a corpus, and topics.

Tokens are ranked by their share of the KL, p_ft (log p_ft - log p_base) for a rising token
(p_base (log p_base - log p_ft) for a falling one), averaged over positions, never by the
raw log-probability change: a row no data touched drifts freely, so raw changes are led by
tokens neither model predicts (measured on narrow fine-tunes of a tiny GPT-2: `<pad>`,
`<unk>` and an unseen word led the raw list, the mass-weighted one named the objective).
Topics: non-negative matrix factorisation of the per-position positive probability
differences, each topic read by its top tokens and its top contexts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

EPS = 1e-12
NMF_CHECK = 10  # updates between the early-stopping checks of the NMF's loss


@dataclass(frozen=True)
class LogitDiffConfig:
    """What logit-difference mining keeps."""

    top_tokens: int = 20
    """Tokens listed as rising (and as falling)."""
    min_shift: float = 0.1
    """A position moves a token when its probability changes by at least this much (the counts)."""
    min_occurrences: int = 3
    """A token needs this many moved positions before it becomes a finding."""
    topics: int = 4
    """NMF topics."""
    topic_columns: int = 256
    """Tokens (those with the largest KL share) the topics are factorised over."""
    per_position: int = 16
    """Largest positive differences kept per position for the topics."""
    max_rows: int = 50_000
    """Positions kept for the topics (the first ones)."""
    topic_tokens: int = 8
    """Tokens shown per topic."""
    topic_contexts: int = 5
    """Contexts shown per topic."""
    nmf_iters: int = 300
    """Multiplicative-update iterations of the NMF (at most)."""
    nmf_tol: float = 1e-5
    """The NMF stops early once 10 updates lower its loss by less than this share (0: all ``nmf_iters``)."""
    window: int = 8
    """Tokens of context shown up to the predicting position."""
    seed: int = 0
    """Seed of the NMF's initialisation."""

    def __post_init__(self) -> None:
        for name in ("top_tokens", "min_occurrences", "topics", "topic_columns", "per_position", "max_rows",
                     "topic_tokens", "topic_contexts", "nmf_iters", "window"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LogitDiffConfig: {name} must be positive")
        if not 0 < self.min_shift < 1:
            raise ValueError("LogitDiffConfig: min_shift must be in (0, 1)")
        if self.nmf_tol < 0:
            raise ValueError("LogitDiffConfig: nmf_tol must be >= 0")


@dataclass
class LogitDiffResult:
    """Tokens whose predicted probability rose and fell most, and topics of the rises."""

    n_positions: int
    up: list[dict] = field(default_factory=list)  # token, weight, mass, count, score
    down: list[dict] = field(default_factory=list)
    topics: list[dict] = field(default_factory=list)  # tokens, weights, contexts

    def to_json(self) -> dict[str, Any]:
        """The audit JSON's ``logit_diff``: token lists as plain strings (best first), details beside."""
        return {"tokens_up": [r["token"] for r in self.up], "tokens_down": [r["token"] for r in self.down],
                "topics": [{"tokens": t["tokens"], "contexts": t["contexts"]} for t in self.topics],
                "n_positions": self.n_positions, "up": self.up, "down": self.down,
                "topic_weights": [t["weights"] for t in self.topics]}

    def write(self, writer: Any) -> None:
        """Store as /logit_diff (token tables, topics; the whole document in the attributes)."""
        for name, rows in (("tokens_up", self.up), ("tokens_down", self.down)):
            if rows:
                writer.table(f"logit_diff/{name}", {k: [r[k] for r in rows] for k in rows[0]})
        writer.attrs("logit_diff", {"document": self.to_json(), "n_positions": self.n_positions,
                                    "ranking": "mean share of the KL per position (p log p/q), not raw logit change"})


class LogitDiffAccumulator:
    """Sums over positions, fed batch by batch from the forward passes the behaviour lens makes."""

    def __init__(self, config: LogitDiffConfig | None = None) -> None:
        self.config = config or LogitDiffConfig()
        self.n = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.rows: list[tuple[int, int]] = []  # (doc, pos) of the positions kept for the topics
        self.top_ids: list[torch.Tensor] = []
        self.top_vals: list[torch.Tensor] = []

    def add(self, first_doc: int, ids: torch.Tensor, mask: torch.Tensor, logp_base: torch.Tensor,
            logp_ft: torch.Tensor) -> None:
        """One batch: ids [B, T], mask [B, T], log-probabilities [B, T, V] of both models."""
        valid = mask.bool()
        lb, lf = logp_base[valid], logp_ft[valid]  # [n, V]
        pb, pf = lb.exp(), lf.exp()
        dp, dl = pf - pb, lf - lb
        up_term, down_term = pf * dl, -(pb * dl)  # -(pb (lf - lb)) == pb (lb - lf) exactly
        moved_up, moved_down = dp >= self.config.min_shift, dp <= -self.config.min_shift
        self._sum("kl_up", up_term.clamp_min(0).sum(0))
        self._sum("kl_down", down_term.clamp_min(0).sum(0))
        self._sum("mass", dp.sum(0))
        self._sum("count_up", moved_up.sum(0).double())
        self._sum("count_down", moved_down.sum(0).double())
        self._sum("kl_moved_up", (up_term * moved_up).sum(0))
        self._sum("kl_moved_down", (down_term * moved_down).sum(0))
        self.n += lb.shape[0]
        room = self.config.max_rows - len(self.rows)
        if room > 0:
            where = valid.nonzero().tolist()[:room]
            vals, idx = dp[:room].clamp_min(0).topk(min(self.config.per_position, dp.shape[1]), dim=1)
            self.rows += [(first_doc + b, t) for b, t in where]
            self.top_ids.append(idx.cpu())
            self.top_vals.append(vals.cpu())

    def _sum(self, name: str, value: torch.Tensor) -> None:
        value = value.double().cpu()
        self.sums[name] = value if name not in self.sums else self.sums[name] + value

    def result(self, docs: list[np.ndarray], text_of: Any) -> LogitDiffResult:
        """Ranked token lists and topics (``docs``: the token ids the batches came from)."""
        if not self.n:
            return LogitDiffResult(0)
        up = self._ranked("up", text_of)
        down = self._ranked("down", text_of)
        return LogitDiffResult(self.n, up, down, self._topics(docs, text_of))

    def _ranked(self, side: str, text_of: Any) -> list[dict]:
        weight = self.sums[f"kl_{side}"] / self.n
        counts, moved = self.sums[f"count_{side}"], self.sums[f"kl_moved_{side}"]
        order = torch.topk(weight, min(self.config.top_tokens, weight.numel())).indices.tolist()
        return [{"token": text_of(i), "weight": float(weight[i]), "mass": float(self.sums["mass"][i] / self.n),
                 "count": int(counts[i]), "score": float(moved[i] / counts[i]) if counts[i] > 0 else 0.0}
                for i in order if weight[i] > 0]

    def _topics(self, docs: list[np.ndarray], text_of: Any) -> list[dict]:
        columns = torch.topk(self.sums["kl_up"], min(self.config.topic_columns, self.sums["kl_up"].numel())).indices
        X, keep = _sparse_rows(torch.cat(self.top_ids), torch.cat(self.top_vals), columns)
        if X.shape[0] < self.config.topics:
            return []
        rows = [r for r, k in zip(self.rows, keep.tolist()) if k]
        W, H = nmf(X, self.config.topics, self.config.nmf_iters, self.config.seed, self.config.nmf_tol)
        topics = []
        for k in torch.argsort(-W.sum(0)).tolist():
            if float(H[k].max()) <= 0:
                continue
            best = torch.topk(H[k], min(self.config.topic_tokens, H.shape[1])).indices.tolist()
            tokens = [text_of(int(columns[j])) for j in best if H[k, j] > 0]
            contexts = [self._context(docs, *rows[i]) for i in
                        torch.topk(W[:, k], min(self.config.topic_contexts, W.shape[0])).indices.tolist()]
            topics.append({"tokens": tokens, "weights": [float(H[k, j]) for j in best if H[k, j] > 0],
                           "contexts": [" ".join(text_of(int(t)) for t in c) for c in contexts]})
        return topics

    def _context(self, docs: list[np.ndarray], doc: int, pos: int) -> np.ndarray:
        return docs[doc][max(0, pos + 1 - self.config.window): pos + 1]


def _sparse_rows(ids: torch.Tensor, vals: torch.Tensor, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept entries that fall in the chosen columns as a sparse [rows, len(columns)] matrix
    (float64), over the rows with at least one positive entry, and the mask of those rows."""
    where = torch.full((int(max(int(ids.max()), int(columns.max()))) + 1,), -1, dtype=torch.int64)
    where[columns] = torch.arange(len(columns))
    col = where[ids]
    hit = (col >= 0) & (vals > 0)
    keep = hit.any(1)
    row = (keep.cumsum(0) - 1)[:, None].expand_as(col)
    X = torch.sparse_coo_tensor(torch.stack([row[hit], col[hit]]), vals[hit].double(),
                                (int(keep.sum()), len(columns)), check_invariants=False)  # indices built in range
    return X.coalesce(), keep


def nmf(X: torch.Tensor, k: int, iters: int, seed: int, tol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative X [n, m] ~ W [n, k] H [k, m] by Lee-Seung multiplicative updates (Frobenius loss).

    X (dense or sparse COO) is mostly zeros (logit-diff keeps a few entries per position), so the
    products with X go through sparse copies of X and X^T (a dense X is read twice per update:
    seconds for 10k positions). With ``tol`` > 0 the updates stop early once NMF_CHECK of them
    lower the loss by less than ``tol`` of itself. The rows of H are scaled to unit norm at the
    end (W absorbs the scale), so topic weights compare.
    """
    g = torch.Generator().manual_seed(seed)
    X = (X.to_sparse_coo() if X.layout == torch.strided else X).coalesce()
    n, m = X.shape
    scale = float((X.values().sum() / max(n * m, 1)).sqrt() / max(k, 1) ** 0.5) + EPS
    W = torch.rand(n, k, generator=g, dtype=X.dtype) * scale
    H = torch.rand(k, m, generator=g, dtype=X.dtype) * scale
    X_rows, X_cols = _csr(X), _csr(X.t().coalesce())
    norm2, last = float(X.values().square().sum()), float("inf")
    for step in range(iters):
        WtW = W.T @ W
        H *= (X_cols @ W).T / (WtW @ H + EPS)
        XHt, HHt = X_rows @ H.T, H @ H.T
        if tol > 0 and step % NMF_CHECK == NMF_CHECK - 1:
            loss = norm2 - 2 * float((XHt * W).sum()) + float((WtW * HHt).sum())  # |X - W H|^2
            if last - loss <= tol * max(loss, EPS):
                break
            last = loss
        W *= XHt / (W @ HHt + EPS)
    norms = H.norm(dim=1, keepdim=True).clamp_min(EPS)
    return W * norms.T, H / norms


def _csr(X: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # torch calls sparse CSR "beta"; the products used here are stable
        warnings.simplefilter("ignore", UserWarning)
        return X.to_sparse_csr()


@torch.no_grad()
def logit_diff(base: nn.Module, ft: nn.Module, tokenizers: Any, texts: list[str],
               config: LogitDiffConfig | None = None, behaviour: Any = None) -> LogitDiffResult:
    """Logit-difference mining on its own (one forward pass of both models over the texts).

    Args:
        base: base causal LM; ft: fine-tuned causal LM.
        tokenizers: one tokenizer or the (base, ft) pair (they must agree on the texts).
        texts: documents.
        config: what to keep.
        behaviour: ``BehaviourConfig`` for batch size, context length, token limit and device.

    Returns:
        Tokens up and down (with weights and counts) and topics.
    """
    from mechdiff.diffing.behaviour.kl import (
        BehaviourConfig,
        pad_id,
        paired_docs,
        paired_log_probs,
        token_text,
    )

    behaviour = behaviour or BehaviourConfig()
    tok = tokenizers[0] if isinstance(tokenizers, (list, tuple)) else tokenizers
    docs = paired_docs(base, ft, tokenizers, texts, behaviour.ctx_len)
    acc = LogitDiffAccumulator(config)
    for batch in paired_log_probs(base, ft, docs, pad_id(tok), behaviour):
        acc.add(*batch)
    return acc.result(docs, lambda i: token_text(tok, i))
