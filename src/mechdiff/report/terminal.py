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
    head = f"mechdiff: {diff.base}  ->  {diff.ft}   (layout: {diff.layout})"
    if diff.relation == "identical":
        return "\n".join([head, f"The models are identical: all {len(diff.changes)} tensors have the same values."])
    unchanged = sum(1 for c in diff.changes if c.norm_delta == 0)
    lines = [
        head,
        (f"{len(diff.changes)} tensors compared; {len(structured)} with structured (low-rank) change, "
         f"{len(diff.changes) - len(structured) - unchanged} drift only, {unchanged} unchanged"),
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
    lines += _experts(diff, top)
    lines += _lists(diff)
    return "\n".join(lines)


def _experts(diff: WeightDiff, top: int) -> list[str]:
    """The top MoE experts, and where each changed router now sends tokens."""
    lines = []
    if diff.experts:
        lines += ["", "Top experts"]
        rows = [[str(e.layer), str(e.expert), _fmt(e.score), str(e.rank),
                 ",".join(p for p, v in e.parts.items() if v.get("rank", 0) > 0) or "-"]
                for e in diff.experts[: min(top, 10)]]
        lines += _table(["layer", "expert", "score", "rank", "changed parts"], rows)
    for router in diff.routing[:5]:
        if not router["tokens_rerouted"]:
            continue
        lines += ["", (f"Router {router['tensor']}: {router['tokens_rerouted']} tokens "
                      f"({router['fraction_rerouted']:.1%} of the vocabulary) now go to other experts")]
        lines += [f"  expert {e['expert']}: +{e['gained']} tokens ({_tokens(e['tokens_gained'])}), -{e['lost']}"
                  for e in router["experts"][:4] if e["gained"] or e["lost"]]
    return lines


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
    """The verdict, the lenses that ran (and why others did not), warnings and the top findings.

    Args:
        document: an audit's ``to_json()`` document (or ``AuditPart.to_json()``).
        top: findings listed.
    """
    verdict = document["verdict"]
    threshold = document["thresholds"]["finding"]
    banner = "FINDINGS" if verdict == "findings" else "PASS"
    lines = [f"Verdict: {banner} (a finding counts above score {threshold:g})"]
    lines += lens_lines(document.get("lenses", []))
    lines += [f"  ! {w}" for w in document.get("warnings", [])] + [""]
    rows = []
    for f in document["findings"][:top]:
        linked = "+" + ",".join(sorted({link["method"] for link in f["linked"]})) if f["linked"] else ""
        rows.append([str(f["rank"]), f"{f['score']:.2f}", f["method"] + linked, f["summary"]])
    lines += _table(["#", "score", "lens", "finding"], rows) if rows else ["No findings."]
    return "\n".join(lines)


def lens_lines(lenses: list) -> list[str]:
    """"Lenses run: ..." and one "not run: NAME (why)" line per lens that did not run."""
    entries = [e if isinstance(e, dict) else {"name": str(e), "ran": True, "why": ""} for e in lenses]
    ran = [e["name"] for e in entries if e.get("ran")]
    lines = [f"Lenses run: {', '.join(ran) or 'none'}"]
    lines += [f"Not run: {e['name']} ({e.get('why') or 'no reason recorded'})" for e in entries if not e.get("ran")]
    return lines


def render_components(document: dict, top: int = 15) -> str:
    """A decomposition: the toy's ground-truth metrics (if a toy) and the components by importance.

    Args:
        document: ``ComponentsPart.to_json()``.
        top: components listed.
    """
    lines = []
    toy = document.get("toy")
    if toy:
        lines.append(f"toy {toy.get('name')}: MMCS {toy.get('mmcs', float('nan')):.4f}, "
                     f"ML2R {toy.get('ml2r', float('nan')):.4f}, alive {toy.get('n_alive')} of "
                     f"{toy.get('n_components')} (true features: {toy.get('n_features')})")
    modules = ", ".join(f"{m['module']} {m['n_alive']}/{m['n_components']} alive" for m in document["modules"])
    lines += [f"decomposed modules: {modules}", "", "Components by importance (mean causal importance)"]
    rows = [[str(i + 1), c["module"], str(c["index"]), _fmt(c["mean_ci"]), _fmt(c["alive_frequency"]),
             _fmt(c["norm"]), "yes" if c["alive"] else "no"] for i, c in enumerate(document["components"][:top])]
    lines += _table(["#", "module", "component", "mean CI", "alive freq", "norm", "alive"], rows)
    return "\n".join(lines)
