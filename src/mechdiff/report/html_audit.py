"""Report sections of the audit (/audit): verdict banner, ranked findings, behavioural evidence."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mechdiff.report.html_page import (
    Banner,
    Markup,
    Section,
    bar_cell,
    esc,
    fmt_num,
    highlight_context,
    table,
    token_chip,
)

TOP_CONTEXTS = 12
TOP_TOKENS = 10


def audit_banner(attrs: dict[str, Any], findings: np.ndarray | None) -> Banner:
    """The verdict of an audit as the coloured line at the top of the page.

    Args:
        attrs: ``/audit`` attributes (verdict, fail_above).
        findings: the findings table (ranked), if any.

    Returns:
        A red banner for "findings", green for "pass".
    """
    verdict = str(attrs.get("verdict", "")).lower()
    fail_above = attrs.get("fail_above")
    n = 0 if findings is None else len(findings)
    above = n if fail_above is None or findings is None else int(np.sum(findings["score"] > float(fail_above)))
    top = str(findings[0]["summary"]) if n else ""
    cut = f" (score above {fmt_num(fail_above)})" if fail_above is not None else ""
    if verdict == "findings":
        return Banner("findings", f"Findings: {above} of {n} above threshold{cut}",
                      f"Top finding: {top}" if top else "")
    if verdict == "pass":
        detail = f"{n} weaker signals listed below for reference." if n else "No finding was raised."
        return Banner("pass", f"Pass: nothing above threshold{cut}", detail)
    return Banner("info", f"Audit verdict: {verdict or 'unknown'}", top)


def findings_section(findings: np.ndarray, attrs: dict[str, Any]) -> Section:
    """The ranked findings with their summaries, location, linked findings and evidence.

    Args:
        findings: ``/audit/findings`` (rank, method, layer, head, tensor, latent, score,
            summary, evidence JSON, linked JSON).
        attrs: ``/audit`` attributes (calibration, thresholds).

    Returns:
        The section.
    """
    rows = [[int(f["rank"]), Markup(f'<span class="pill">{esc(f["method"])}</span>'), _location(f),
             fmt_num(float(f["score"])), Markup(f"{esc(f['summary'])}{_evidence(str(f['evidence']))}"),
             _linked(str(f["linked"]))] for f in findings]
    body = table(["#", "method", "where", "score", "finding", "linked"], rows, numeric=(0, 3))
    thresholds = attrs.get("thresholds") or {}
    if thresholds:
        body = Markup(body + '<p class="muted">thresholds: '
                      + esc(", ".join(f"{k} {_plain(v)}" for k, v in thresholds.items())) + "</p>")
    note = str(attrs.get("calibration") or "Findings from every lens, ranked on one score scale.")
    return Section("Findings", body, note)


def _location(row: np.void) -> Markup:
    bits = []
    if int(row["layer"]) >= 0:
        bits.append(f"layer {int(row['layer'])}")
    if int(row["head"]) >= 0:
        bits.append(f"head {int(row['head'])}")
    if int(row["latent"]) >= 0:
        bits.append(f"latent {int(row['latent'])}")
    text = esc(" \u00b7 ".join(bits))
    tensor = str(row["tensor"])
    if tensor:
        text = Markup(f'{text}<br><span class="mono muted">{esc(tensor)}</span>' if bits
                      else f'<span class="mono">{esc(tensor)}</span>')
    return Markup(text or "-")


def _evidence(raw: str) -> Markup:
    try:
        evidence = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        evidence = {"evidence": raw}
    if not evidence:
        return Markup("")
    if not isinstance(evidence, dict):
        evidence = {"evidence": evidence}
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(_plain(v))}</dd>" for k, v in evidence.items())
    return Markup(f'<details><summary>evidence</summary><dl class="ev">{items}</dl></details>')


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return fmt_num(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return ", ".join(_plain(v) if isinstance(v, float) else repr(v) if isinstance(v, str) else str(v)
                         for v in value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _linked(raw: str) -> str:
    try:
        ranks = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        return raw
    return ", ".join(f"#{r}" for r in ranks) if isinstance(ranks, list) and ranks else "-"


def behaviour_section(part: Any) -> Section | None:
    """Where the two models' next-token distributions differ most, and which tokens moved.

    Args:
        part: the ``/audit`` part (tables behaviour_contexts, behaviour_tokens; attrs mean_kl, max_kl).

    Returns:
        The section, or None when the audit ran without data.
    """
    keys = set(part.keys())
    if not keys & {"behaviour_contexts", "behaviour_tokens"}:
        return None
    attrs = part.attrs
    blocks = []
    if "behaviour_contexts" in keys:
        blocks.append(_contexts(part.table("behaviour_contexts")))
    if "behaviour_tokens" in keys:
        blocks.append(_tokens(part.table("behaviour_tokens")))
    kl = [f"{label} {fmt_num(attrs[name])} nats" for name, label in (("mean_kl", "mean"), ("max_kl", "max"))
          if name in attrs]
    note = ("Per-token KL(ft || base) of the next-token distributions on the audit corpus"
            + (f" ({', '.join(kl)})" if kl else "") + "; the highlighted token is the one whose prediction changed.")
    return Section("Behaviour change", Markup("".join(blocks)), note)


def _contexts(contexts: np.ndarray) -> Markup:
    top = contexts[:TOP_CONTEXTS]
    scale = float(np.max(top["kl"])) if len(top) else 0.0
    rows = [[Markup(f'{bar_cell(float(c["kl"]), scale)} {esc(fmt_num(float(c["kl"])))}'), int(c["position"]),
             highlight_context(str(c["context"]), str(c["token"]))] for c in top]
    return Markup("<h3>Contexts with the highest KL</h3>" + table(["KL", "pos", "context"], rows, numeric=(0, 1)))


def _tokens(tokens: np.ndarray) -> Markup:
    order = np.argsort(tokens["delta_logprob"])
    rose = [tokens[i] for i in order[::-1][:TOP_TOKENS] if tokens[i]["delta_logprob"] > 0]
    fell = [tokens[i] for i in order[:TOP_TOKENS] if tokens[i]["delta_logprob"] < 0]
    scale = float(np.max(np.abs(tokens["delta_logprob"]))) if len(tokens) else 0.0

    def side(title: str, rows: list, negative: bool) -> str:
        cells = [[token_chip(str(t["token"])), _signed_bar(float(t["delta_logprob"]), scale, negative)]
                 for t in rows]
        return f"<div><h3>{title}</h3>{table(['token', 'Δ log p'], cells, numeric=(1,))}</div>"

    return Markup('<div class="two">' + side("Tokens whose probability rose", rose, False)
                  + side("Tokens whose probability fell", fell, True) + "</div>")


def _signed_bar(value: float, scale: float, negative: bool) -> Markup:
    return Markup(f"{bar_cell(value, scale, negative)} {esc(format(value, '+.3g'))}")
