"""Terminal table of a benchmark run: per pair, then per objective type and in total."""

from __future__ import annotations

from typing import Any


def render_bench(document: dict[str, Any]) -> str:
    """The text ``mechdiff bench`` prints (``document`` = ``BenchResult.to_json()``)."""
    lines = [(f"{'pair':<34} {'seed':>4} {'top':>6} {'verdict':<8} {'detected':<8} {'rank':>4} {'relev':>5} "
             f"{'secs':>5}  top finding")]
    for row in document["pairs"]:
        kind = "null" if row["null"] else "organism"
        verdict = "flagged" if row["flagged"] else "pass"
        detected = "-" if row["null"] else ("yes" if row["detected"] else "NO")
        rank = "-" if row["first_relevant_rank"] is None else str(row["first_relevant_rank"])
        relevance = "-" if row["relevance"] is None else f"{row['relevance']:.2f}"
        flag = " FALSE POSITIVE" if row["null"] and row["flagged"] else ""
        lines.append(f"{row['arch'] + '/' + row['name'] + ' (' + kind + ')':<34} {row['seed']:>4} "
                     f"{row['top_score']:>6.2f} {verdict:<8} {detected:<8} {rank:>4} {relevance:>5} "
                     f"{row['wall_s']:>5.1f}  {row['top_summary'][:70]}{flag}")
    s = document["summary"]
    lines.append("")
    for kind, entry in s["by_type"].items():
        seeds = entry["seeds_detected"]
        lines.append(f"  {kind:<11} detected {entry['detected']}/{entry['pairs']}; seeds with every pair detected: "
                     f"{sum(seeds.values())}/{len(seeds)}")
    detection = "n/a" if s["detection"] is None else f"{100 * s['detection']:.1f}%"
    relevance = "n/a" if s["relevance"] is None else f"{s['relevance']:.2f}"
    spread = s.get("detection_spread")
    lines.append(f"detection {detection} of {s['organisms']} organism pairs"
                 + (f" (per seed {100 * spread[0]:.0f}-{100 * spread[1]:.0f}%)" if spread else "")
                 + f"; false positives {s['false_positives']} of {s['nulls']} null pairs (max null score "
                 f"{s['max_null_score']:.2f}, gate {s['gate']}); top-finding token relevance {relevance}; "
                 f"audit {s['audit_seconds_mean']:.1f} s mean, {s['audit_seconds_max']:.1f} s max")
    lines += _lens_lines(s.get("by_lens", {}), s["detection"])
    return "\n".join(lines)


def _lens_lines(by_lens: dict[str, dict[str, Any]], audit_detection: float | None) -> list[str]:
    """Each lens alone at the same gate (its strongest reading before linking), beside the audit's total."""
    if not by_lens:
        return []
    out = ["", f"  {'lens alone':<11} {'detected':>9} {'false pos.':>10} {'max null':>8}"]
    for method, entry in by_lens.items():
        rate = "n/a" if entry["detection"] is None else f"{100 * entry['detection']:.0f}%"
        out.append(f"  {method:<11} {rate:>9} {entry['false_positives']:>4} of {entry['nulls']:<3} "
                   f"{entry['max_null_score']:>8.2f}")
    if audit_detection is not None:
        out.append(f"  {'audit':<11} {100 * audit_detection:>8.0f}%")
    return out
