"""Plain-text tables for people: the ranked summary `mechdiff diff` and `mechdiff show` print."""

from __future__ import annotations

from mechdiff.diffing.weights.result import WeightDiff


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4f}"


def _tokens(tokens: list[str], limit: int = 4) -> str:
    shown = ", ".join(repr(t) for t in tokens[:limit])
    return shown + (", ..." if len(tokens) > limit else "")


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return out


def render_weight_diff(diff: WeightDiff, top: int = 15) -> str:
    """A ranked summary a person can read in ten seconds."""
    structured = [c for c in diff.changes if c.rank > 0]
    lines = [
        f"mechdiff: {diff.base}  ->  {diff.ft}   (layout: {diff.layout})",
        (f"{len(diff.changes)} tensors compared; {len(structured)} with structured (low-rank) change, "
        f"{len(diff.changes) - len(structured)} drift only"),
        "",
        "Top changes (score = structured change relative to the base tensor's norm)",
    ]
    rows = [[str(i + 1), c.tensor, c.kind, "-" if c.layer is None else str(c.layer), _fmt(c.score), str(c.rank),
             _fmt(c.rel_delta), f"{c.structured_fraction:.2f}", _tokens(c.tokens_in), _tokens(c.tokens_out)]
            for i, c in enumerate(diff.changes[:top])]
    lines += _table(["#", "tensor", "kind", "layer", "score", "rank", "rel_delta", "struct", "reads", "writes"], rows)
    if diff.heads:
        lines += ["", "Top attention heads"]
        rows = [[str(h.layer), str(h.head), h.kind, _fmt(h.score), str(h.rank),
                 ",".join(p for p, v in h.parts.items() if v.get("rank", 0) > 0) or "-"]
                for h in diff.heads[: min(top, 10)]]
        lines += _table(["layer", "head", "kind", "score", "rank", "changed parts"], rows)
    lines += _lists(diff)
    return "\n".join(lines)


def _lists(diff: WeightDiff) -> list[str]:
    lines = []
    if diff.moved_tokens:
        lines += ["", f"Embedding rows that moved most: {_tokens(diff.moved_tokens, 10)}"]
    for title, items in (("Added", diff.added), ("Removed", diff.removed)):
        if items:
            lines += ["", f"{title} ({len(items)}): {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"]
    for r in diff.reshaped:
        lines += [f"Reshaped: {r['tensor']} {r['base_shape']} -> {r['ft_shape']}"]
    if diff.warnings:
        lines += ["", "Warnings:"] + [f"  ! {w}" for w in diff.warnings[:20]]
        if len(diff.warnings) > 20:
            lines.append(f"  ... and {len(diff.warnings) - 20} more")
    return lines


def render_audit(document: dict, top: int = 10) -> str:
    """The verdict and the top findings of an audit (its ``to_json()`` document)."""
    verdict = document["verdict"]
    threshold = document["thresholds"]["finding"]
    banner = "FINDINGS" if verdict == "findings" else "PASS"
    from mechdiff.diffing.audit.lens_findings import lens_names

    lenses = ", ".join(lens_names(document["lenses"]))
    lines = [f"Verdict: {banner} (a finding counts above score {threshold:g}; lenses: {lenses})", ""]
    rows = []
    for f in document["findings"][:top]:
        linked = "+" + ",".join(sorted({link["method"] for link in f["linked"]})) if f["linked"] else ""
        rows.append([str(f["rank"]), f"{f['score']:.2f}", f["method"] + linked, f["summary"]])
    lines += _table(["#", "score", "lens", "finding"], rows) if rows else ["No findings."]
    lines += _lens_lines(document)
    return "\n".join(lines)


def _lens_lines(document: dict) -> list[str]:
    """Where the text came from, and the causal check of the weight findings (when they ran)."""
    from mechdiff.report.lenses_summary import causal_text

    lines = []
    if document.get("text"):
        lines += ["", f"Text the models were run on: {document['text']}"]
    if document.get("causal"):
        lines += [causal_text(document["causal"])]
    return lines
