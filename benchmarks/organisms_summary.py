"""Combine `mechdiff bench -o FILE.h5` runs (e.g. one per seed) into one summary and a markdown table.

    python benchmarks/organisms_summary.py bench_s0.h5 bench_s1.h5 bench_s2.h5

Not a ratio benchmark (no bench_ prefix, so benchmarks/run.py does not collect it): it prints the
organism benchmark's figures (detection, false positives, relevance, times) from stored rows.
"""

from __future__ import annotations

import json
import sys

from mechdiff.organisms.scoring import summarize
from mechdiff.store import open_results


def rows_of(path: str) -> list[dict]:
    """The per-pair rows of one bench results file, in scoring's shape."""
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


if __name__ == "__main__":
    main(sys.argv[1:])
