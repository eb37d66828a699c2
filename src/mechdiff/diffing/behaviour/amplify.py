"""Amplified sampling: sample from logits_ft + alpha (logits_ft - logits_base) from neutral prompts.

alpha = 0 is the fine-tune itself; a larger alpha exaggerates whatever the fine-tune changed, so
a behaviour that is rare in plain samples shows up in a few dozen. The rates of the top
findings' tokens are counted afterwards (`AmplifiedResult.with_rates`), once the audit knows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mechdiff.diffing.behaviour.neutral import decode, sample_ids, start_token


@dataclass(frozen=True)
class AmplifyConfig:
    """The alpha grid and how much to sample."""

    alphas: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    """Amplification factors (0: plain samples of the fine-tune)."""
    samples: int = 16
    """Samples per alpha."""
    length: int = 32
    """Tokens per sample."""
    seed: int = 0
    """Seed (the same for every alpha, so the grids differ only by alpha)."""
    device: str = "cpu"
    """Where the models run."""

    def __post_init__(self) -> None:
        if not self.alphas or any(a < 0 for a in self.alphas):
            raise ValueError("AmplifyConfig: alphas must be a non-empty tuple of values >= 0")
        if self.samples <= 0 or self.length <= 0:
            raise ValueError("AmplifyConfig: samples and length must be positive")


@dataclass
class AmplifiedResult:
    """Samples per alpha (token ids and text) and, per alpha, the rates of chosen tokens."""

    alphas: list[float]
    samples: list[list[str]]  # per alpha, texts
    token_ids: list[np.ndarray]  # per alpha, int64 [samples, length]
    vocab: dict[str, int] = field(default_factory=dict)  # token text -> id, for the rates
    rates: list[dict[str, float]] = field(default_factory=list)  # per alpha, token -> occurrences per sampled token

    def with_rates(self, tokens: list[str]) -> AmplifiedResult:
        """Count how often each of ``tokens`` appears, per sampled token, at every alpha."""
        ids = {t: self.vocab[t] for t in tokens if t in self.vocab}
        self.rates = [{t: float((arr == i).mean()) for t, i in ids.items()} for arr in self.token_ids]
        return self

    def rising_tokens(self, top: int = 5) -> list[str]:
        """The tokens whose frequency rose most from the first alpha to the last (when no findings name any)."""
        first, last = (np.bincount(a.ravel(), minlength=max(self.vocab.values(), default=0) + 1) / a.size
                       for a in (self.token_ids[0], self.token_ids[-1]))
        rise = last[: len(first)] - first[: len(last)]
        names = {i: t for t, i in self.vocab.items()}
        return [names[int(i)] for i in np.argsort(-rise)[:top] if rise[i] > 0 and int(i) in names]

    def to_json(self) -> list[dict[str, Any]]:
        """The audit JSON's ``amplified``: [{"alpha", "samples", "rates"}]."""
        rates = self.rates or [{} for _ in self.alphas]
        return [{"alpha": a, "samples": s, "rates": r} for a, s, r in zip(self.alphas, self.samples, rates)]

    def write(self, writer: Any) -> None:
        """Store as /amplified: one table of samples, the sampled ids per alpha, rates in the attributes."""
        writer.table("amplified/samples", {"alpha": [a for a, s in zip(self.alphas, self.samples) for _ in s],
                                           "text": [t for s in self.samples for t in s]})
        for i, arr in enumerate(self.token_ids):
            writer.array(f"amplified/ids/{i}", arr)
        writer.attrs("amplified", {"alphas": self.alphas, "rates": self.rates, "document": self.to_json()})


@torch.no_grad()
def amplified_samples(base: nn.Module, ft: nn.Module, tokenizer: Any, config: AmplifyConfig | None = None
                      ) -> AmplifiedResult:
    """Sample the amplified difference of the two models from their start token at every alpha.

    Args:
        base: base causal LM; ft: fine-tuned causal LM (same vocabulary).
        tokenizer: the shared tokenizer (BOS or EOS starts the samples).
        config: alpha grid, samples, length, seed.

    Returns:
        Texts and ids per alpha (rates are filled by ``with_rates``).
    """
    config = config or AmplifyConfig()
    start = start_token(tokenizer)
    texts, ids = [], []
    for alpha in config.alphas:
        def logits(prefix: torch.Tensor, a: float = alpha) -> torch.Tensor:
            ft_logits = ft(input_ids=prefix).logits[:, -1].float()
            if a == 0:
                return ft_logits
            return ft_logits + a * (ft_logits - base(input_ids=prefix).logits[:, -1].float())

        g = torch.Generator().manual_seed(config.seed)
        rows = sample_ids(logits, start, config.samples, config.length, g, config.device)[:, 1:]
        ids.append(rows.numpy())
        texts.append([decode(tokenizer, r) for r in rows.tolist()])
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return AmplifiedResult(list(config.alphas), texts, ids, dict(vocab))
