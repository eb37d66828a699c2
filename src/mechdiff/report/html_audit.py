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
    token_chips,
)

TOP_FINDINGS = 10  # the rest are folded away
TOP_CONTEXTS = 12
TOP_TOKENS = 10


def gate(attrs: dict[str, Any]) -> float | None:
    """The score a finding must exceed to count: ``fail_above`` when set, else the finding threshold."""
    fail_above = attrs.get("fail_above")
    if fail_above is not None:
        return float(fail_above)
    threshold = (attrs.get("thresholds") or {}).get("finding")
    return None if threshold is None else float(threshold)


def audit_banner(attrs: dict[str, Any], findings: np.ndarray | None) -> Banner:
    """The verdict of an audit as the coloured line at the top of the page.

    Args:
        attrs: ``/audit`` attributes (verdict, thresholds, fail_above).
        findings: the findings table (ranked), if any.

    Returns:
        A red banner for "findings", green for "pass".
    """
    verdict = str(attrs.get("verdict", "")).lower()
    cut = gate(attrs)
    n = 0 if findings is None else len(findings)
    above = n if cut is None or findings is None else int(np.sum(findings["score"] > cut))
    top = str(findings[0]["summary"]) if n else ""
    cut_text = f" (score above {fmt_num(cut)})" if cut is not None else ""
    if verdict == "findings":
        return Banner("findings", f"Findings: {above} of {n} above threshold{cut_text}",
                      f"Top finding: {top}" if top else "")
    if verdict == "pass":
        detail = f"{n} weaker signals listed below for reference." if n else "No finding was raised."
        return Banner("pass", f"Pass: nothing above threshold{cut_text}", detail)
    return Banner("info", f"Audit verdict: {verdict or 'unknown'}", top)


def findings_section(findings: np.ndarray, attrs: dict[str, Any]) -> Section:
    """The ranked findings with their summaries, location, linked evidence and numbers.

    Args:
        findings: ``/audit/findings`` (rank, method, layer, head, tensor, latent, score,
            summary, evidence JSON, linked JSON; optional tokens joined with "\\x1f").
        attrs: ``/audit`` attributes (calibration, thresholds, fail_above).

    Returns:
        The section.
    """
    cut = gate(attrs)
    rows = [[int(f["rank"]), _lenses(f), _location(f), _score(float(f["score"]), cut), _finding(f)]
            for f in findings]
    headers = ["#", "lens", "where", "score", "finding"]
    body = table(headers, rows[:TOP_FINDINGS], numeric=(0, 3))
    if len(rows) > TOP_FINDINGS:
        body = Markup(body + f"<details><summary>{len(rows) - TOP_FINDINGS} more findings</summary>"
                      + table(headers, rows[TOP_FINDINGS:], numeric=(0, 3)) + "</details>")
    calibration = str(attrs.get("calibration") or "").strip()
    if calibration:
        body = Markup(body + "<details><summary>how scores are calibrated</summary>"
                      f'<pre class="doc">{esc(calibration)}</pre></details>')
    gate_text = f"; threshold {fmt_num(cut)}" if cut is not None else ""
    return Section("Findings", body, f"Evidence from every lens, ranked on one score scale{gate_text}. "
                   "Findings that name the same tokens from different lenses are merged into one row.")


def _score(score: float, cut: float | None) -> Markup:
    hot = cut is not None and score > cut
    return Markup(f'<span class="pill{" hi" if hot else ""}">{esc(fmt_num(score))}</span>')


def _lenses(row: np.void) -> Markup:
    methods = [str(row["method"])] + [str(link.get("method", "")) for link in _links(row) if isinstance(link, dict)]
    return Markup(" ".join(f'<span class="pill">{esc(m)}</span>' for m in dict.fromkeys(methods) if m))


def _links(row: np.void) -> list[Any]:
    raw = str(row["linked"])
    try:
        links = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        return [raw]
    return links if isinstance(links, list) else [links]


def _finding(row: np.void) -> Markup:
    parts = [esc(row["summary"])]
    names = row.dtype.names
    tokens = [t for t in str(row["tokens"]).split("\x1f") if t] if "tokens" in names else []
    tokens = by_relevance(tokens, [str(row["summary"])] + [str(link.get("summary", "")) for link in _links(row)
                                                          if isinstance(link, dict)])
    if tokens:
        parts.append(f'<div class="muted">tokens: {token_chips(tokens, 8)}</div>')
    for link in _links(row):
        parts.append(_linked_line(link))
    parts.append(_evidence(str(row["evidence"])))
    return Markup("".join(parts))


def by_relevance(tokens: list[str], summaries: list[str]) -> list[str]:
    """Tokens quoted by the most of a finding's summaries (its own and its linked ones) first.

    Files written before findings stored their tokens by relevance hold them sorted by
    name, which hid the trigger and its target behind "+10"; the summaries quote them.
    """
    mentions = {t: sum(f"'{t}'" in text for text in summaries) for t in tokens}
    return sorted(tokens, key=lambda t: -mentions[t])  # stable: the stored order breaks ties


def _linked_line(link: Any) -> str:
    if isinstance(link, dict):
        score = link.get("score")
        score_text = f" (score {fmt_num(float(score))})" if isinstance(score, (int, float)) else ""
        return (f'<div class="linked">\u21b3 <span class="pill">{esc(link.get("method", "?"))}</span> '
                f'{esc(link.get("summary", ""))}{esc(score_text)}</div>')
    label = f"#{link}" if isinstance(link, int) else str(link)
    return f'<div class="linked">\u21b3 linked to finding {esc(label)}</div>'


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
    """Evidence values as words and numbers (3 significant figures), never Python's None or raw JSON."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return fmt_num(value)
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "; ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(repr(v) if isinstance(v, str) else _plain(v) for v in value) if all(
            not isinstance(v, (dict, list)) for v in value) else " | ".join(_plain(v) for v in value)
    return str(value)


def coverage_section(attrs: dict[str, Any]) -> Section | None:
    """Which lenses ran, which did not and why, and the audit's warnings.

    Args:
        attrs: ``/audit`` attributes (``lenses``: names, or {"name", "ran", "why"}; ``warnings``).

    Returns:
        The section, or None for a file that records no lenses.
    """
    from mechdiff.diffing.audit.coverage import normalize_lenses

    lenses = normalize_lenses(attrs.get("lenses", []))
    if not lenses:
        return None
    rows = [[Markup(f'<span class="pill{"" if e.get("ran") else " off"}">{esc(e["name"])}</span>'),
             "ran" if e.get("ran") else "did not run", e.get("why") or ""] for e in lenses]
    body = table(["lens", "status", "why"], rows)
    warnings = [str(w) for w in attrs.get("warnings", [])]
    if warnings:
        body = Markup(body + "".join(f'<p class="warn">\u26a0 {esc(w)}</p>' for w in warnings))
    skipped = [e["name"] for e in lenses if not e.get("ran")]
    note = ("The verdict covers only the lenses that ran" + (f"; {', '.join(skipped)} did not." if skipped else "."))
    return Section("What the audit looked at", body, note)


def behaviour_section(part: Any) -> Section | None:
    """Where the two models' next-token distributions differ most, and which tokens moved.

    Args:
        part: the ``/audit`` part (tables behaviour_contexts, behaviour_by_token,
            behaviour_tokens; attrs mean_kl, max_kl).

    Returns:
        The section, or None when the audit ran without data.
    """
    keys = set(part.keys())
    if not keys & {"behaviour_contexts", "behaviour_tokens", "behaviour_by_token"}:
        return None
    attrs = part.attrs
    blocks = []
    if "behaviour_contexts" in keys:
        blocks.append(_contexts(part.table("behaviour_contexts")))
    if "behaviour_by_token" in keys:
        blocks.append(_by_token(part.table("behaviour_by_token")))
    if "behaviour_tokens" in keys:
        blocks.append(_tokens(part.table("behaviour_tokens")))
    kl = [f"{label} {fmt_num(attrs[name])} nats" for name, label in (("mean_kl", "mean"), ("max_kl", "max"))
          if name in attrs]
    note = ("Per-token KL(ft || base) of the next-token distributions on the audit corpus"
            + (f" ({', '.join(kl)})" if kl else "") + "; the highlighted token is where the predictions differ.")
    return Section("Behaviour change", Markup("".join(blocks)), note)


def _contexts(contexts: np.ndarray) -> Markup:
    top = _distinct(contexts, ("context", "token"))[:TOP_CONTEXTS]
    scale = float(np.max(top["kl"])) if len(top) else 0.0
    has_tops = {"base_top", "ft_top"} <= set(contexts.dtype.names)
    rows = []
    for c in top:
        row = [bar_cell(float(c["kl"]), scale, fmt_num(float(c["kl"]))), int(c["position"]),
               highlight_context(str(c["context"]), str(c["token"]))]
        if has_tops:
            row.append(_prediction(str(c["base_top"]), str(c["ft_top"])))
        rows.append(row)
    headers = ["KL", "pos", "context"] + (["next token: base \u2192 fine-tune"] if has_tops else [])
    return Markup("<h3>Positions with the highest KL</h3>" + table(headers, rows, numeric=(0, 1)))


def _distinct(rows: np.ndarray, columns: tuple[str, ...]) -> np.ndarray:
    """Rows whose ``columns`` differ, first (strongest) of each kept: a trigger repeated in many
    documents gives one row, not ten identical ones."""
    seen, keep = set(), []
    for i, row in enumerate(rows):
        key = tuple(str(row[c]) for c in columns if c in rows.dtype.names)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return rows[np.asarray(keep, dtype=int)]


def _prediction(base_top: str, ft_top: str) -> Markup:
    if not base_top and not ft_top:
        return Markup("-")
    return Markup(f"{token_chip(base_top)} \u2192 {token_chip(ft_top)}")


def _by_token(rows_in: np.ndarray) -> Markup:
    top = rows_in[:TOP_TOKENS]
    scale = float(np.max(top["mean_kl"])) if len(top) else 0.0
    names = set(rows_in.dtype.names)
    rows = [[token_chip(str(r["token"])), int(r["count"]) if "count" in names else "-",
             bar_cell(float(r["mean_kl"]), scale, fmt_num(float(r["mean_kl"]))),
             _prediction(str(r["base_top"]), str(r["ft_top"])) if {"base_top", "ft_top"} <= names else "-"]
            for r in top]
    return Markup("<h3>Input tokens after which predictions change most</h3>"
                  + table(["token", "count", "mean KL", "usual next token: base \u2192 fine-tune"], rows,
                          numeric=(1, 2)))


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
    return bar_cell(value, scale, format(value, "+.3g"), negative)
