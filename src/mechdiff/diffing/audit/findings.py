"""Findings: one ranked list across lenses, on one calibrated score scale, linked by shared tokens.

Calibration (a score of 1.0 is "worth a look"; the default gate is 1.0):
- behaviour: mean KL(ft || base) of a repeated prediction change, in nats (1 nat ~ a
  prediction that moved from 10% to 60%);
- weights / heads: a matrix's (head's) structured-change score divided by 4x the
  median over all matrices (heads) of the model, i.e. an outlier against this fine-tune's
  own typical change, so aggressive but uniform fine-tuning is not flagged by itself;
- crosscoder: a fine-tune-only latent that survives latent scaling scores 1.0 (0.5 when
  its ft-only status may be a sparsity artifact); a latent the fine-tune rewrote (relative
  decoder norm >= 0.6 with decoder cosine < 0.5) scores 0.5;
- components: the weight change a base component explains, relative to the base weight,
  divided by the same 4x median rule.
Findings that name the same tokens from different lenses are linked: the strongest stays,
the others become its evidence, and the group's score gains 0.5 per extra lens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

LINK_BONUS = 0.5
OUTLIER_FACTOR = 4.0


@dataclass
class Finding:
    """One piece of evidence that something changed, located and explained."""

    method: str
    score: float
    summary: str
    tokens: frozenset[str] = frozenset()
    layer: int | None = None
    head: int | None = None
    tensor: str = ""
    latent: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    linked: list[dict[str, Any]] = field(default_factory=list)
    rank: int = 0
    own_tokens: frozenset[str] | None = None
    """The tokens this finding named itself, before linked findings added theirs (None: not linked)."""

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "method": self.method, "score": self.score, "summary": self.summary,
                "location": {"layer": self.layer, "head": self.head, "tensor": self.tensor or None,
                             "latent": self.latent},
                "tokens": self.ranked_tokens(), "evidence": self.evidence, "linked": self.linked}

    def ranked_tokens(self) -> list[str]:
        """Tokens by relevance: those named by the most of this finding's lenses first (the trigger and
        target a behaviour, a latent and a weight all point at), then by name."""
        own = self.tokens if self.own_tokens is None else self.own_tokens
        votes = {token: int(token in own) for token in self.tokens}
        for link in self.linked:
            for token in link.get("tokens", []):
                if token in votes:
                    votes[token] += 1
        return sorted(votes, key=lambda token: (-votes[token], token))


def link_and_rank(findings: list[Finding]) -> list[Finding]:
    """Merge findings that share tokens across lenses, then rank by score.

    Args:
        findings: raw findings from every lens.

    Returns:
        The merged findings, ranked (rank 1 = strongest).
    """
    ordered = sorted(findings, key=lambda f: -f.score)
    kept: list[Finding] = []
    for finding in ordered:
        anchor = next((k for k in kept if _shares(k, finding)), None)
        if anchor is None:
            kept.append(finding)
            continue
        anchor.linked.append({"method": finding.method, "score": finding.score, "summary": finding.summary,
                              "location": finding.to_json()["location"], "tokens": sorted(finding.tokens)})
        anchor.own_tokens = anchor.tokens if anchor.own_tokens is None else anchor.own_tokens
        anchor.tokens = anchor.tokens | finding.tokens
    for finding in kept:
        lenses = {finding.method} | {link["method"] for link in finding.linked}
        finding.score += LINK_BONUS * (len(lenses) - 1)
    kept.sort(key=lambda f: -f.score)
    for i, finding in enumerate(kept, 1):
        finding.rank = i
    return kept


def _shares(anchor: Finding, other: Finding) -> bool:
    # findings of one lens stay apart (two behaviour changes are two findings); other lenses attach
    return other.method != anchor.method and bool(anchor.tokens & other.tokens)


def findings_table(findings: list[Finding]) -> dict[str, list]:
    """Columns of /audit/findings (evidence and links as JSON strings)."""
    def num(value: int | None) -> int:
        return -1 if value is None else int(value)

    return {
        "rank": [f.rank for f in findings], "method": [f.method for f in findings],
        "layer": [num(f.layer) for f in findings], "head": [num(f.head) for f in findings],
        "tensor": [f.tensor for f in findings], "latent": [num(f.latent) for f in findings],
        "score": [f.score for f in findings], "summary": [f.summary for f in findings],
        "evidence": [json.dumps(f.evidence, default=str) for f in findings],
        "linked": [json.dumps(f.linked, default=str) for f in findings],
        "tokens": ["\x1f".join(f.ranked_tokens()) for f in findings],
    }
