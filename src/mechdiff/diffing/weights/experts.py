"""Mixture-of-experts units: per-(layer, expert) change, and where a changed router sends tokens.

Experts are ranked like heads: every expert tensor (stored per expert, or one slice of a
fused [experts, out, in] tensor) is scored on its own, and an expert's parts combine by
root-sum-square. A router's change is read out data-free through the embedding: each
token's router logits before and after, and the experts that enter or leave its top-k.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mechdiff.diffing.weights.heads import PartsAggregate
from mechdiff.diffing.weights.readout import Vocabulary

ROUTE_BLOCK_ROWS = 16384  # embedding rows per block: a [block, experts] logit table stays small


@dataclass
class ExpertChange(PartsAggregate):
    """Aggregated change of one expert across its tensors (gate, up, down), like a head's."""

    layer: int
    expert: int
    score: float = 0.0
    rank: int = 0
    parts: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"layer": self.layer, "expert": self.expert, "score": self.score, "rank": self.rank,
                "parts": self.parts}


def expert_changes(changes: list) -> list[ExpertChange]:
    """One ExpertChange per (layer, expert) among tensor changes that carry an expert."""
    experts: dict[tuple[int, int], ExpertChange] = {}
    for change in changes:
        if change.expert is None or change.layer is None:
            continue
        unit = experts.setdefault((change.layer, change.expert), ExpertChange(change.layer, change.expert))
        unit.add(_part_name(change), change.score, change.rank, change.rel_delta)
    return sorted(experts.values(), key=lambda e: (-e.score, e.layer, e.expert))


def _part_name(change: Any) -> str:
    """The tensor's role inside its expert: its last name component without `.weight` / `[e]`."""
    stem = change.tensor.split("[")[0].removesuffix(".weight")
    return stem.rsplit(".", 1)[-1]


def routing_change(embed: torch.Tensor, base: torch.Tensor, delta: torch.Tensor, top_k: int,
                   vocab: Vocabulary, n_tokens: int) -> dict[str, Any] | None:
    """Which experts each token is now sent to, read through the embedding (no data).

    Args:
        embed: the base embedding [vocab, d] (any float dtype: upcast a block of rows at a time).
        base: the base router [experts, d]; delta: its change, same shape.
        top_k: experts per token.
        vocab: token strings.
        n_tokens: tokens listed per expert.

    Returns:
        {"tokens_rerouted", "fraction_rerouted", "experts": [per expert: gained, lost,
        tokens_gained, tokens_lost]} ranked by tokens gained; None when shapes do not fit.
    """
    n_experts = base.shape[0]
    if base.ndim != 2 or embed.shape[1] != base.shape[1] or not 0 < top_k < n_experts:
        return None
    gained = torch.zeros(embed.shape[0], n_experts, dtype=torch.bool)
    lost = torch.zeros_like(gained)
    shift = torch.empty(embed.shape[0], n_experts)
    base, delta = base.float(), delta.float()
    for start in range(0, embed.shape[0], ROUTE_BLOCK_ROWS):
        rows = embed[start:start + ROUTE_BLOCK_ROWS].float()
        before, change = rows @ base.T, rows @ delta.T
        was, now = _top_mask(before, top_k), _top_mask(before + change, top_k)
        gained[start:start + len(rows)], lost[start:start + len(rows)] = now & ~was, was & ~now
        shift[start:start + len(rows)] = change
    experts = [_expert_routing(e, gained[:, e], lost[:, e], shift[:, e], vocab, n_tokens) for e in range(n_experts)]
    rerouted = int(gained.any(dim=1).sum())
    return {"tokens_rerouted": rerouted, "fraction_rerouted": rerouted / max(embed.shape[0], 1),
            "experts": sorted(experts, key=lambda x: (-x["gained"], -x["lost"], x["expert"]))}


def _top_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros_like(logits, dtype=torch.bool)
    return mask.scatter_(1, logits.topk(k, dim=1).indices, True)


def _expert_routing(expert: int, gained: torch.Tensor, lost: torch.Tensor, shift: torch.Tensor,
                    vocab: Vocabulary, n_tokens: int) -> dict[str, Any]:
    def listed(mask: torch.Tensor, sign: float) -> list[str]:
        ids = mask.nonzero().flatten()
        order = (sign * shift[ids]).argsort(descending=True)[:n_tokens]
        return [vocab.token(int(i)) for i in ids[order]]

    return {"expert": expert, "gained": int(gained.sum()), "lost": int(lost.sum()),
            "tokens_gained": listed(gained, 1.0), "tokens_lost": listed(lost, -1.0)}
