"""The audit: run the lenses that apply, turn their evidence into ranked, linked findings."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mechdiff.diffing.audit.calibration import (
    behaviour_score,
    calibration_table,
    head_share_of_matrix,
    head_split,
    rose_score,
    shrunk_kl,
    structured_share,
    weight_score,
)
from mechdiff.diffing.audit.causal import CausalConfig
from mechdiff.diffing.audit.coverage import normalize_lenses
from mechdiff.diffing.audit.findings import (
    Finding,
    findings_table,
    link_and_rank,
)
from mechdiff.diffing.behaviour.adl import ADLConfig
from mechdiff.diffing.behaviour.amplify import AmplifyConfig
from mechdiff.diffing.behaviour.kl import BehaviourConfig, BehaviourResult, row_kl_rest
from mechdiff.diffing.behaviour.logit_diff import LogitDiffConfig
from mechdiff.diffing.behaviour.neutral import NeutralConfig
from mechdiff.diffing.weights.diff import DiffConfig
from mechdiff.diffing.weights.result import WeightDiff

if TYPE_CHECKING:
    from mechdiff.store.protocol import PartWriter

AUDIT_SCHEMA_VERSION = 1
TOKENS_PER_FINDING = 5
NU_EPS_MAX, NU_R_MAX = 0.2, 0.5
REWRITTEN_DELTA_MIN, REWRITTEN_COS_MAX = 0.6, 0.5


@dataclass(frozen=True)
class AuditThresholds:
    """Where findings start to count."""

    finding: float = 1.0
    """Score above which a finding makes the verdict "findings" (``--fail-above`` overrides)."""
    max_findings: int = 20
    """Findings kept after ranking."""
    weights_per_lens: int = 8
    """Top matrices / heads turned into findings before linking."""

    def __post_init__(self) -> None:
        if self.finding <= 0 or self.max_findings <= 0 or self.weights_per_lens <= 0:
            raise ValueError("AuditThresholds: all values must be positive")


@dataclass(frozen=True)
class AuditConfig:
    """Which lenses the audit runs and how."""

    diff: DiffConfig = field(default_factory=DiffConfig)
    """Weight-diff settings (always runs)."""
    behaviour: BehaviourConfig | None = field(default_factory=BehaviourConfig)
    """Per-token KL on the data (when data is given and the models can be run); None skips it."""
    crosscoder: bool = True
    """Train a crosscoder on paired activations when data is given and the models can be run."""
    crosscoder_layer: int | None = None
    """Residual-stream layer for the crosscoder (default: the middle layer)."""
    crosscoder_options: dict[str, Any] = field(default_factory=dict)
    """Overrides of the crosscoder's config fields (e.g. dict_size, steps)."""
    components: tuple[str, ...] = ()
    """Module globs to decompose with SPD on the data (empty: the components lens is off)."""
    components_steps: int = 2000
    """SPD training steps for the components lens."""
    adl: ADLConfig | None = field(default_factory=ADLConfig)
    """Activation-difference lens (None skips it)."""
    logit_diff: LogitDiffConfig | None = field(default_factory=LogitDiffConfig)
    """Logit-difference mining, fed by the behaviour lens's forward passes (None skips it)."""
    amplify: AmplifyConfig | None = field(default_factory=AmplifyConfig)
    """Amplified sampling (None skips it)."""
    causal: CausalConfig | None = field(default_factory=CausalConfig)
    """Causal confirmation of the top weight / head findings (None skips it; needs the behaviour lens)."""
    neutral: NeutralConfig = field(default_factory=NeutralConfig)
    """Neutral text sampled from the base when no corpus is given."""
    self_generate: bool = True
    """Without a corpus, run the model lenses on neutral text sampled from the base (False: weights only)."""
    thresholds: AuditThresholds = field(default_factory=AuditThresholds)
    """Scoring thresholds."""
    fail_above: float | None = None
    """Exit 1 when a finding scores above this (the CLI's --fail-above)."""
    seed: int = 0
    """Seed of everything the audit trains (crosscoder, components)."""
    dtype: str = "float32"
    """dtype the models run in: float32, bfloat16 or float16."""


@dataclass
class AuditResult:
    """Ranked findings and the verdict."""

    findings: list[Finding]
    threshold: float
    fail_above: float | None
    lenses: list[Any]
    """Every lens as {"name", "ran", "why"} (a bare name is a lens that ran)."""
    behaviour: BehaviourResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """Why the evidence may be thin (tiny corpus, a mostly dead crosscoder)."""

    @property
    def verdict(self) -> str:
        return "findings" if any(f.score > self.threshold for f in self.findings) else "pass"

    def exceeds(self, score: float) -> bool:
        return any(f.score > score for f in self.findings)

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        return {"schema_version": AUDIT_SCHEMA_VERSION, "verdict": self.verdict,
                "findings": [f.to_json() for f in self.findings[:top]],
                "thresholds": {"finding": self.threshold, "fail_above": self.fail_above},
                "lenses": normalize_lenses(self.lenses), "warnings": self.warnings,
                "calibration": calibration_table(),
                "behaviour": None if self.behaviour is None else self.behaviour.to_json(), **self.extra}

    def write(self, writer: PartWriter) -> None:
        """Store under /audit (the lenses write their own groups)."""
        if self.findings:
            writer.table("audit/findings", findings_table(self.findings))
        writer.attrs("audit", {"verdict": self.verdict, "thresholds": {"finding": self.threshold},
                               "fail_above": self.fail_above, "lenses": normalize_lenses(self.lenses),
                               "warnings": self.warnings,
                               "calibration": _calibration_doc(), "calibration_numbers": calibration_table()})
        if self.behaviour is not None:
            self.behaviour.write(writer)
        if "causal" in self.extra or "text" in self.extra:
            writer.attrs("audit", {k: self.extra[k] for k in ("causal", "text") if k in self.extra})


def _calibration_doc() -> str:
    from mechdiff.diffing.audit import calibration, findings

    return "\n\n".join((m.__doc__ or "").strip() for m in (findings, calibration))


def _meaningful(tokens: list[str]) -> list[str]:
    """Tokens worth linking on: no special tokens, punctuation or ids."""
    return [t for t in tokens if t and not (t.startswith("<") and t.endswith(">")) and any(c.isalnum() for c in t)
            and not t.startswith("#")][:TOKENS_PER_FINDING]


def _quote(tokens: list[str]) -> str:
    return ", ".join(f"'{t}'" for t in tokens[:3])


def weight_findings(diff: WeightDiff, thresholds: AuditThresholds) -> list[Finding]:
    """Matrices with a structured change above the dtype and null floors, scored on calibration's absolute scale."""
    out = []
    for change in [c for c in diff.changes if len(c.shape) == 2 and c.rank > 0]:
        share = structured_share(change.score, change.rel_delta)
        score = weight_score(share, change.rel_delta, change.resolution, change.cosine)
        if score <= 0:
            continue
        reads, writes = _meaningful(change.tokens_in)[:2], _meaningful(change.tokens_out)[:2]
        where = f"{change.kind} of layer {change.layer}" if change.layer is not None else change.kind
        summary = (f"rank-{change.rank} change in {change.tensor} ({where}): its structured part is "
                   f"{100 * share:.1f}% of the weight's norm")
        summary += f"; reads {_quote(reads)}" if reads else ""
        summary += f"; writes {_quote(writes)}" if writes else ""
        out.append(Finding("weights", score, summary, tuple(dict.fromkeys(writes + reads)), change.layer, None,
                           change.tensor,
                           evidence={"structured_share": share, "rank": change.rank, "rel_delta": change.rel_delta,
                                     "structured_fraction": change.structured_fraction,
                                     "dtype_resolution": change.resolution, "tokens_in": change.tokens_in,
                                     "tokens_out": change.tokens_out, "n_intruders": change.n_intruders}))
        if len(out) == thresholds.weights_per_lens:
            break
    return out


def head_findings(diff: WeightDiff, thresholds: AuditThresholds, matrices: list[Finding] | None = None) -> list[Finding]:
    """One mechanism, one finding: a layer's head split goes into its attention matrix finding; a head
    gets its own finding only when it holds most of the layer's head change and no matrix finding covers it."""
    if not diff.heads:
        return []
    n_heads = 1 + max(h.head for h in diff.heads if h.kind == "attn") if any(h.kind == "attn" for h in diff.heads) else 1
    out = []
    for layer in sorted({h.layer for h in diff.heads}):
        top, share, shares = head_split(diff.heads, layer)
        covering = [f for f in matrices or [] if f.layer == layer and "attn" in _kind_of(diff, f.tensor)]
        for finding in covering:
            finding.evidence["head_shares"] = {str(h): round(v, 3) for h, v in sorted(shares.items())}
            if top is not None:
                finding.summary += f"; confined to head {top} ({100 * share:.0f}% of the layer's head change)"
                finding.head = top
        head = next((h for h in diff.heads if h.layer == layer and h.head == top and h.kind == "attn"), None)
        if covering or head is None:
            continue
        matrix_share = head_share_of_matrix(head, n_heads)
        score = weight_score(matrix_share, matrix_share, 0.0)
        if score > 0:
            parts = [p for p, v in head.parts.items() if v.get("rank", 0) > 0]
            out.append(Finding("heads", score, f"rank-{head.rank} change confined to head {top} of layer {layer} "
                               f"({', '.join(parts)}; {100 * share:.0f}% of the layer's head change, "
                               f"{100 * matrix_share:.1f}% of the matrix norm)", (), layer, top, "",
                               evidence={"structured_share": matrix_share, "head_share": share, "parts": head.parts,
                                         "kind": head.kind}))
    return out[: thresholds.weights_per_lens]


def _kind_of(diff: WeightDiff, tensor: str) -> str:
    return next((c.kind for c in diff.changes if c.tensor == tensor), "")


def behaviour_findings(result: BehaviourResult, limit: int = 5) -> list[Finding]:
    """Token types after which the fine-tune predicts differently, every time they occur, and tokens
    the fine-tune says more often everywhere (scores: calibration.behaviour_score, rose_score).

    A planted trigger changes the prediction at each of its occurrences, so its mean KL over all
    occurrences is high; diffuse fine-tuning moves single positions, not types, and moves rare
    types most (hence the shrinkage toward the corpus mean). A type scores on its KL beyond one
    token's rate (kl.reshaped_kl): a harmless fine-tune that makes documents end later moves <eos>
    after every '.', and the null benchmark's one such pair scored 0.57-0.65 on the whole KL, 0.14-0.20
    on the rest, while planted predictions keep 85-95% of theirs.
    """
    rows = sorted(result.by_token, key=lambda r: -shrunk_kl(row_kl_rest(r), r["count"], result.corpus_kl_rest()))
    out = []
    for row in rows[:limit]:
        examples = [c for c in result.contexts if c["token"] == row["token"]][:3]
        shift = (f"the fine-tune predicts '{row['ft_top']}' (base: '{row['base_top']}')" if row["ft_top"]
                 else "the fine-tune's next-token distribution moved (same top prediction)")
        summary = (f"after '{row['token']}' {shift}; mean KL {row['mean_kl']:.2f} nats over its {row['count']} "
                   f"occurrences, {row_kl_rest(row):.2f} beyond one token's rate (corpus mean {result.mean_kl:.3f})")
        score = behaviour_score(row_kl_rest(row), row["count"], result.corpus_kl_rest())
        out.append(Finding("behaviour", score, summary, tuple(_meaningful([row["token"], row["ft_top"]])),
                           evidence={**row, "corpus_mean_kl": result.mean_kl, "contexts": examples,
                                     "tokens_rose": result.rose[:5]}))
    rose = [r for r in result.rose if _meaningful([r["token"]])]
    rose.sort(key=lambda r: -rose_score(r["delta_prob"], r.get("base_prob", 0.0)))
    for row in rose[:2]:
        summary = (f"the fine-tune says '{row['token']}' more often: its probability rose by "
                   f"{100 * row['delta_prob']:.1f} points on average over the corpus")
        out.append(Finding("behaviour", rose_score(row["delta_prob"], row.get("base_prob", 0.0)), summary, (row["token"],),
                           evidence={**row, "kind": "token_rose"}))
    return out


def crosscoder_findings(summary: dict[str, Any]) -> list[Finding]:
    """Fine-tune-only crosscoder latents; genuine ones (latent scaling passed) score 1.0.

    Args:
        summary: ``CrosscoderResult.to_json()``.
    """
    out = []
    seen = set()
    for latent in summary.get("top_ft_only", []):
        genuine = _genuinely_ft_only(latent)
        text = f"fine-tune-only latent {latent['latent']} at {summary.get('site')} (relative norm {latent['delta']:.2f})"
        note = "" if genuine else "; latent scaling says it may be a sparsity artifact"
        out.append(_latent_finding(latent, 1.0 if genuine else 0.5, text, note, genuine))
        seen.add(latent["latent"])
    for latent in summary.get("most_ft_leaning", []):
        delta, cos = latent.get("delta") or 0.0, latent.get("cos")
        if latent["latent"] in seen or delta < REWRITTEN_DELTA_MIN or cos is None or cos >= REWRITTEN_COS_MAX:
            continue
        text = (f"latent {latent['latent']} at {summary.get('site')} was rewritten by the fine-tune "
                f"(relative norm {delta:.2f}, decoder cosine {cos:.2f})")
        out.append(_latent_finding(latent, 0.5, text, "", False))
    return out


def _latent_finding(latent: dict[str, Any], score: float, text: str, note: str, genuine: bool) -> Finding:
    marked = [_marked_token(c.get("text", "")) for c in latent.get("contexts", [])]
    tokens = _meaningful([t for t, _ in Counter(marked).most_common()])
    text += (f"; fires on {_quote(tokens)}" if tokens else "") + note
    return Finding("crosscoder", score, text, tuple(tokens[:3]), latent=int(latent["latent"]),
                   evidence={**latent, "genuine": genuine, "contexts": latent.get("contexts", [])[:5]})


def _genuinely_ft_only(latent: dict[str, Any]) -> bool:
    """DESIGN.md's latent-scaling test: nu_eps < 0.2 and nu_r < 0.5 (unknown counts as not passed)."""
    nu_eps, nu_r = latent.get("nu_eps"), latent.get("nu_r")
    return nu_eps is not None and nu_r is not None and nu_eps < NU_EPS_MAX and nu_r < NU_R_MAX


def _marked_token(text: str) -> str:
    from mechdiff.diffing.crosscoder.contexts import MARK_CLOSE, MARK_OPEN

    start, end = text.find(MARK_OPEN), text.find(MARK_CLOSE)
    return text[start + len(MARK_OPEN):end].strip() if 0 <= start < end else ""


def component_findings(deltas: list[Any], norms: dict[str, Any], thresholds: AuditThresholds) -> list[Finding]:
    """Base components the fine-tune rescaled, and change no base component explains.

    Args:
        deltas: ``match.ComponentDelta`` per decomposed module (FT expressed in BASE's components).
        norms: module -> Frobenius norm of each base component (``ModuleComponents.norms_C``).
        thresholds: how many findings per lens.
    """
    rows = []  # (size relative to the weight, delta, component, coefficient change)
    for d in deltas:
        for index, change in zip(d.indices, d.coef_change_K):
            size = abs(float(change)) * float(norms[d.module][int(index)])
            rows.append((size / max(d.base_norm, 1e-12), d, int(index), float(change)))
    out = []
    for rel, d, index, change in sorted(rows, key=lambda r: -r[0])[: thresholds.weights_per_lens]:
        verb = "strengthened" if change > 0 else "weakened"
        score = weight_score(rel, d.delta_norm / max(d.base_norm, 1e-12), 0.0)
        if score > 0:
            out.append(Finding("components", score, f"component {index} of {d.module} was {verb} ({change:+.2f} of "
                               f"itself, {100 * rel:.1f}% of the weight's norm)", (), tensor=d.module,
                               evidence={"module": d.module, "component": index, "coef_change": change, "rel": rel}))
    for d in deltas:
        rel = d.residual_norm / max(d.base_norm, 1e-12)
        score = weight_score(rel, d.delta_norm / max(d.base_norm, 1e-12), 0.0)
        if score > 0:
            out.append(Finding("components", score,
                               f"{100 * d.unexplained_fraction:.0f}% of the change in {d.module} is explained by no "
                               f"base component (a new mechanism; {100 * rel:.1f}% of the weight's norm)", (),
                               tensor=d.module, evidence={"module": d.module,
                                                          "unexplained_fraction": d.unexplained_fraction,
                                                          "residual_rel": rel}))
    return out


def merge_findings(lenses: dict[str, list[Finding]], thresholds: AuditThresholds, fail_above: float | None,
                   behaviour: BehaviourResult | None = None) -> AuditResult:
    """Link and rank the findings of every lens that ran."""
    merged = link_and_rank([f for found in lenses.values() for f in found])[: thresholds.max_findings]
    threshold = fail_above if fail_above is not None else thresholds.finding
    return AuditResult(merged, threshold, fail_above, sorted(lenses), behaviour)
