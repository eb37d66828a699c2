"""Findings: one ranked list across lenses, on one calibrated score scale, linked by shared tokens.

Calibration (a score of 1.0 is "worth a look"; the default gate is 1.0):
- behaviour: mean KL(ft || base) of a repeated prediction change, in nats (1 nat ~ a
  prediction that moved from 10% to 60%);
- weights / heads: the size of a matrix's structured change (the directions above the
  noise edge) as a share of the weight's norm, in units of calibration.WEIGHT_UNIT, and
  never a finding below the dtype's rounding or the null controls' spread (calibration.py);
  a head is folded into its matrix's finding unless it holds most of the layer's change;
- crosscoder: a fine-tune-only latent that survives latent scaling scores 1.0 (0.5 when
  its ft-only status may be a sparsity artifact); a latent the fine-tune rewrote (relative
  decoder norm >= 0.6 with decoder cosine < 0.5) scores 0.5;
- components: the weight change a base component explains, relative to the base weight,
  on the same absolute scale as weights.
Tokens of a finding are the ones carrying its evidence, the most telling first.
Findings that name the same tokens from different lenses are linked: the strongest stays
(with its own tokens), the others become its evidence, and the group's score gains 0.5 x (that lens's best linked
score, at most 1) per extra lens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

LINK_BONUS = 0.5
# Lenses that read the same measurement do not corroborate each other: the KL lens and logit-difference
# mining are both the two models' next-token distributions on one text, and the head split is the matrix's
# own change. Agreement counts once per family. (Measured: on a continued-training null pair the KL lens's
# 0.43 gained 0.15 from logit-diff naming the same token, which took it past half the gate.)
EVIDENCE_FAMILY = {"behaviour": "outputs", "logit_diff": "outputs", "amplified": "outputs",
                   "weights": "weights", "heads": "weights"}
SPECIFICITY = {"behaviour": 1}  # names the context as well as the prediction


@dataclass
class Finding:
    """One piece of evidence that something changed, located and explained."""

    method: str
    score: float
    summary: str
    tokens: tuple[str, ...] = ()
    """Tokens carrying the evidence, the most telling first (a set is accepted and sorted)."""
    layer: int | None = None
    head: int | None = None
    tensor: str = ""
    latent: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    linked: list[dict[str, Any]] = field(default_factory=list)
    rank: int = 0
    causal: dict[str, Any] | None = None
    """Causal confirmation of a weight / head finding (``audit.causal``), when it was tested."""
    own_tokens: tuple[str, ...] | frozenset[str] | None = None
    """The tokens this finding named itself, before linked findings added theirs (None: not linked)."""
    lens_score: float | None = None
    """The score its lens gave it alone, before linking (None: not yet linked)."""

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "method": self.method, "score": self.score, "summary": self.summary,
                "location": {"layer": self.layer, "head": self.head, "tensor": self.tensor or None,
                             "latent": self.latent},
                "tokens": self.evidence_tokens(), "evidence": self.evidence, "linked": self.linked,
                "lens_score": self.score if self.lens_score is None else self.lens_score,
                "lens_tokens": self.named_tokens(),
                **({} if self.causal is None else {"causal": self.causal})}

    def named_tokens(self) -> list[str]:
        """The tokens this finding's own lens named (before linked findings added theirs), in evidence order."""
        return ordered_tokens(self.tokens if self.own_tokens is None else self.own_tokens)

    def ranked_tokens(self) -> list[str]:
        """Tokens by relevance: those named by the most of this finding's lenses first (the trigger and
        target a behaviour, a latent and a weight all point at), then its own in evidence order, then by name."""
        own = self.named_tokens()
        votes = {token: int(token in own) for token in ordered_tokens(self.tokens)}
        for link in self.linked:
            for token in link.get("tokens", []):
                if token in votes:
                    votes[token] += 1
        place = {token: i for i, token in enumerate(own)}
        return sorted(votes, key=lambda token: (-votes[token], place.get(token, len(own)), token))

    def evidence_tokens(self) -> list[str]:
        """The tokens listed with the finding (JSON, results file): its own and those two or more of its
        lenses name, ranked; a token only a linked finding names stays under that link."""
        own = set(self.named_tokens())
        linked = [t for link in self.linked for t in link.get("tokens", [])]
        return [t for t in self.ranked_tokens() if t in own or linked.count(t) >= 2]


def link_and_rank(findings: list[Finding]) -> list[Finding]:
    """Merge findings that share tokens across lenses, then rank by score.

    Args:
        findings: raw findings from every lens.

    Returns:
        The merged findings, ranked (rank 1 = strongest).
    """
    ordered = sorted(findings, key=lambda f: -f.score)
    for finding in ordered:
        finding.lens_score = finding.score
    kept: list[Finding] = []
    for finding in ordered:
        anchor = next((k for k in kept if _shares(k, finding)), None)
        if anchor is None:
            kept.append(finding)
            continue
        if _more_specific(finding, anchor):
            kept[kept.index(anchor)] = finding
            finding, anchor = _take_over(finding, anchor)
        anchor.linked.append({"method": finding.method, "score": finding.score, "summary": finding.summary,
                              "location": finding.to_json()["location"], "tokens": ordered_tokens(finding.tokens),
                              **({} if finding.causal is None else {"causal": finding.causal})})
        anchor.own_tokens = anchor.tokens if anchor.own_tokens is None else anchor.own_tokens
        anchor.tokens = tuple(dict.fromkeys([*ordered_tokens(anchor.tokens), *ordered_tokens(finding.tokens)]))
    for finding in kept:
        finding.score += link_bonus(finding)
    kept.sort(key=lambda f: -f.score)
    for i, finding in enumerate(kept, 1):
        finding.rank = i
    return kept


def _more_specific(finding: Finding, anchor: Finding) -> bool:
    # one measurement, two readings: "after 'x' the fine-tune predicts 'y'" says more than "'y' rose",
    # so within a family the more specific reading leads, at the stronger score of the two
    return (evidence_family(finding.method) == evidence_family(anchor.method)
            and SPECIFICITY.get(finding.method, 0) > SPECIFICITY.get(anchor.method, 0))


def _take_over(finding: Finding, anchor: Finding) -> tuple[Finding, Finding]:
    """``finding`` becomes the anchor in ``anchor``'s place; returns (the finding to link, the new anchor)."""
    finding.linked, anchor.linked = anchor.linked, []
    if anchor.own_tokens is not None:  # the old anchor had absorbed other lenses' tokens: they come along
        finding.own_tokens = finding.tokens
        finding.tokens = tuple(dict.fromkeys([*ordered_tokens(finding.tokens), *ordered_tokens(anchor.tokens)]))
        anchor.tokens, anchor.own_tokens = anchor.own_tokens, None
    finding.score = max(finding.score, anchor.score)
    return anchor, finding


def link_bonus(finding: Finding) -> float:
    """LINK_BONUS per other evidence family that names the same tokens, times its best score (at most 1):
    two weak null findings that share a common token corroborate little; a finding at the gate, fully."""
    own = evidence_family(finding.method)
    best: dict[str, float] = {}
    for link in finding.linked:
        family = evidence_family(link["method"])
        if family != own:
            best[family] = max(best.get(family, 0.0), float(link["score"]))
    return LINK_BONUS * sum(min(1.0, score) for score in best.values())


def evidence_family(method: str) -> str:
    """The measurement a lens reads (lenses of one family never corroborate each other)."""
    return EVIDENCE_FAMILY.get(method, method)


def _shares(anchor: Finding, other: Finding) -> bool:
    # findings of one lens stay apart (two behaviour changes are two findings); other lenses attach
    return other.method != anchor.method and bool(set(anchor.tokens) & set(other.tokens))


def ordered_tokens(tokens: tuple[str, ...] | frozenset[str] | set[str]) -> list[str]:
    """A finding's tokens in evidence order (unordered sets, from older callers, alphabetically)."""
    return sorted(tokens) if isinstance(tokens, (set, frozenset)) else list(tokens)


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
        "tokens": ["\x1f".join(f.evidence_tokens()) for f in findings],
        "causal": [json.dumps(f.causal) if f.causal is not None else "" for f in findings],
    }
