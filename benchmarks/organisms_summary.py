"""Combine `mechdiff bench -o FILE.h5` runs (or their `--json` outputs), e.g. one per seed, into one
summary and markdown tables (per objective type, per null control, per lens alone).

    python benchmarks/organisms_summary.py bench_s0.h5 bench_s1.h5 bench_s2.h5

Not a ratio benchmark (no bench_ prefix, so benchmarks/run.py does not collect it): it prints the
organism benchmark's figures (detection, false positives, relevance, times) from stored rows.
"""

from __future__ import annotations

import json
import sys

from mechdiff.organisms.scoring import summarize
from mechdiff.store import open_results


def rows_of(path: str) -> tuple[list[dict], float]:
    """The per-pair rows of one bench results file (or its `--json` output), in scoring's shape."""
    if path.endswith(".json"):
        with open(path) as f:
            doc = json.load(f)
        return doc["pairs"], doc["config"]["gate"]
    with open_results(path) as res:
        table = res.part("bench").table("pairs")
        gate = res.part("bench").attrs["config"]["gate"]
        rows = []
        for r in table:
            row = {name: (r[name].item() if hasattr(r[name], "item") else r[name]) for name in table.dtype.names}
            row = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in row.items()}
            row["null"] = bool(row["null"])
            row["type"] = "mixed" if str(row["name"]).endswith("_mixed") else row["type"]
            row["first_relevant_rank"] = None if row["first_relevant_rank"] < 0 or row["null"] else row["first_relevant_rank"]
            row["relevance"] = None if row["null"] else row["relevance"]
            rows.append(row)
        if "lenses" in res.part("bench").group:
            for r in res.part("bench").table("lenses"):
                lens = r["lens"].decode() if isinstance(r["lens"], bytes) else str(r["lens"])
                rows[int(r["pair"])].setdefault("lenses", {})[lens] = {
                    "score": float(r["score"]), "flagged": bool(r["flagged"]), "detected": bool(r["detected"])}
    return rows, gate


def main(paths: list[str]) -> None:
    rows, gate = [], 1.0
    for path in paths:
        mine, gate = rows_of(path)
        rows += mine
    summary = summarize(rows, gate)
    print(json.dumps(summary, indent=1))
    print("\n| objective type | pairs | detected | seeds where every pair was detected |\n|---|---|---|---|")
    for kind, entry in summary["by_type"].items():
        seeds = entry["seeds_detected"]
        print(f"| {kind} | {entry['pairs']} | {entry['detected']} | {sum(seeds.values())}/{len(seeds)} |")
    nulls = [r for r in rows if r["null"]]
    print("\n| null control | pairs | flagged | max score |\n|---|---|---|---|")
    for name in sorted({r["name"] for r in nulls}):
        mine = [r for r in nulls if r["name"] == name]
        print(f"| {name} | {len(mine)} | {sum(r['flagged'] for r in mine)} | {max(r['top_score'] for r in mine):.2f} |")
    print("\n| lens alone (its best reading before linking) | organisms detected | false positives | max null score |"
          "\n|---|---|---|---|")
    for method, entry in summary["by_lens"].items():
        print(f"| {method} | {entry['detected']} of {summary['organisms']} ({100 * entry['detection']:.0f}%) | "
              f"{entry['false_positives']} of {summary['nulls']} | {entry['max_null_score']:.2f} |")
    print(f"| the audit (every lens, linked) | {sum(r['detected'] for r in rows if not r['null'])} of "
          f"{summary['organisms']} | {summary['false_positives']} of {summary['nulls']} | {summary['max_null_score']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
