"""Findings of the activation-difference lens and logit-difference mining, causal marks on weight
findings, and the audit JSON's ``adl`` / ``logit_diff`` / ``amplified`` / ``causal`` entries.

Scores are on the behaviour lens's scale, KL in nats per position of a token type:
- logit-diff: a token's share of KL(ft || base), p_ft log(p_ft / p_base), averaged over the
  positions where the fine-tune moved at least ``min_shift`` of probability onto it, shrunk
  toward the corpus mean KL as the KL lens's token types are;
- ADL: KL(p(h + delta) || p(h)) of the logit-lens readout, averaged over the positions read.
"""

from __future__ import annotations

from typing import Any

from mechdiff.diffing.audit.calibration import BEHAVIOUR_UNIT, shrunk_kl
from mechdiff.diffing.audit.findings import Finding

LOGIT_DIFF_FINDINGS = 3


def _meaningful(tokens: list[str]) -> list[str]:
    from mechdiff.diffing.audit.verdict import _meaningful as meaningful

    return meaningful(tokens)


def logit_diff_findings(result: Any, min_occurrences: int, corpus_mean_kl: float = 0.0,
                        limit: int = LOGIT_DIFF_FINDINGS) -> list[Finding]:
    """Tokens the fine-tune puts probability on, repeatedly (at least ``min_occurrences`` positions).

    A token's KL per moved position is shrunk toward the corpus mean KL by the behaviour lens's
    pseudo-occurrences (calibration.shrunk_kl), as the KL lens's token types are: a mean over a
    handful of positions is where two models trained on the same data disagree most (a reseeded
    retrain of a null pair reached 0.56 unshrunk on a few positions), and one threshold must mean
    one false-positive rate for both readings of the next-token distributions.
    """
    rows = [r for r in result.up if r["count"] >= min_occurrences and _meaningful([r["token"]])]

    def score(row: dict) -> float:
        return shrunk_kl(row["score"], row["count"], corpus_mean_kl) / BEHAVIOUR_UNIT

    out = []
    for row in sorted(rows, key=lambda r: -score(r))[:limit]:
        summary = (f"the fine-tune puts probability on '{row['token']}' at {row['count']} positions "
                   f"({row['score']:.2f} nats of KL each; {100 * row['mass']:.2f}% of all mass moved to it)")
        out.append(Finding("logit_diff", score(row), summary, frozenset(_meaningful([row["token"]])),
                           evidence={**row, "n_positions": result.n_positions, "corpus_mean_kl": corpus_mean_kl}))
    return out


def adl_findings(result: Any) -> list[Finding]:
    """The mean activation difference on unrelated text, read out (one finding)."""
    tokens = _meaningful([r["token"] for r in result.up]) + _meaningful([r["token"] for r in result.patchscope])
    if not tokens:
        return []
    shown = ", ".join(f"'{t}'" for t in tokens[:3])
    summary = (f"on unrelated text the fine-tune's residual at layer {result.layer} shifts towards {shown} "
               f"(logit lens KL {result.readout_kl:.3f} nats; steering the base with it, alpha {result.alpha:.2f})")
    return [Finding("adl", result.readout_kl, summary, frozenset(tokens[:5]), result.layer,
                    evidence={"tokens_up": [r["token"] for r in result.up[:10]],
                              "patchscope": [r["token"] for r in result.patchscope[:10]],
                              "steered": result.steered[:2]})]


def mark_causal(findings: list[Finding], causal: Any) -> None:
    """Attach each tested weight / head finding's causal numbers (and say so in its summary)."""
    for finding in findings:
        numbers = causal.for_finding(finding)
        if numbers is None:
            continue
        finding.causal = numbers
        verdict = "causal" if numbers["causal"] else "not shown causal"
        removed = round(100 * numbers["ablate_kl_fraction"]) + 0  # + 0: no "-0%"
        finding.summary += f"; {verdict}: removing its structured part removes {removed}% of the KL where it is largest"


def causal_summary(ranked: list[Finding], causal: Any) -> dict[str, Any]:
    """The audit JSON's top-level ``causal``: the joint ablation and the ranks of the findings it covers."""
    keys = set(causal.joint.get("keys", []))
    ranks = [f.rank for f in ranked if _key(f) in keys or any(_link_key(link) in keys for link in f.linked)]
    numbers = {k: v for k, v in causal.joint.items() if k != "keys"}
    return {"findings": ranks, **numbers, "reference": causal.reference}


def _key(finding: Finding) -> tuple:
    return (finding.method, finding.tensor, finding.layer, finding.head)


def _link_key(link: dict) -> tuple:
    location = link["location"]
    return (link["method"], location.get("tensor") or "", location.get("layer"), location.get("head"))


def amplified_tokens(ranked: list[Finding], top: int = 5) -> list[str]:
    """The tokens whose rates amplified sampling reports: those of the top findings."""
    tokens: list[str] = []
    for finding in ranked[:top]:
        tokens += [t for t in sorted(finding.tokens) if t not in tokens]
    return tokens
