"""`mechdiff bench`: audit every pair of a suite (or of local manifests) and score the audit on it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechdiff.organisms.scoring import score_pair, summarize


@dataclass(frozen=True)
class BenchConfig:
    """What the benchmark runs."""

    suite: str = "quick"
    """"quick" (CI-sized) or "full"."""
    seeds: tuple[int, ...] = (0,)
    """Seeds the suite is built for (the full suite's spread needs several)."""
    cache: Path = Path(".mechdiff-organisms")
    """Folder the organisms are built into and reused from."""
    gate: float = 1.0
    """Score above which the audit flags a pair (the audit's default gate)."""
    crosscoder: bool = False
    """Also run the crosscoder lens (minutes per pair on a CPU)."""
    threads: int = 1
    """torch threads while auditing (one suits tiny models on a shared CPU)."""


@dataclass
class BenchResult:
    """Per-pair rows and the totals."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": 1, "summary": self.summary, "pairs": self.rows, "config": self.config}

    def write(self, writer: Any) -> None:
        """Store under /bench: the per-pair table and the summary as attributes."""
        columns = ("name", "seed", "arch", "type", "method", "null", "flagged", "detected", "top_score",
                   "top_method", "top_summary", "wall_s")
        table: dict[str, list] = {c: [r[c] for r in self.rows] for c in columns}
        table["first_relevant_rank"] = [r["first_relevant_rank"] or -1 for r in self.rows]
        table["relevance"] = [-1.0 if r["relevance"] is None else r["relevance"] for r in self.rows]
        table["top_tokens"] = ["\x1f".join(r["top_tokens"]) for r in self.rows]
        writer.table("bench/pairs", table)
        lens_rows = [(i, method, reading) for i, r in enumerate(self.rows) for method, reading in r.get("lenses", {}).items()]
        if lens_rows:
            writer.table("bench/lenses", {
                "pair": [i for i, _, _ in lens_rows], "name": [self.rows[i]["name"] for i, _, _ in lens_rows],
                "seed": [self.rows[i]["seed"] for i, _, _ in lens_rows], "lens": [m for _, m, _ in lens_rows],
                "score": [x["score"] for _, _, x in lens_rows], "flagged": [x["flagged"] for _, _, x in lens_rows],
                "detected": [x["detected"] for _, _, x in lens_rows]})
        from mechdiff.diffing.audit.calibration import calibration_table

        writer.attrs("bench", {"summary": self.summary, "config": self.config, "calibration": calibration_table(),
                               "rows": "first_relevant_rank -1 / relevance -1: none (or a null control); lenses: per "
                                         "pair (row of pairs) and lens, its best reading alone"})


def run_bench(config: BenchConfig, audit: Callable[..., Any], manifests: list[dict[str, Any]] | None = None,
              progress: bool = False) -> BenchResult:
    """Build (or reuse) the suite, audit each pair with its corpus, score every audit.

    Args:
        config: suite, seeds, cache folder, gate.
        audit: the path-in audit (``api.audit_checkpoints``), passed in so the suite never imports api.
        manifests: local organisms to audit instead of the built suite (``manifest.load_manifests``).
        progress: one line per pair on stderr.

    Returns:
        Rows and totals (see ``scoring.summarize``).
    """
    from mechdiff.organisms.suite import build_suite

    source = "manifests" if manifests is not None else config.suite
    if manifests is None:
        manifests = build_suite(config.suite, config.cache, list(config.seeds), progress=progress)
    rows = []
    for manifest in manifests:
        result, wall = _audit(audit, manifest, config)
        rows.append(score_pair(manifest, result, config.gate, wall))
        if progress:
            import sys

            row = rows[-1]
            print(f"{row['arch']}/{row['name']} seed {row['seed']}: top {row['top_score']:.2f} "
                  f"({row['top_method']}) {'flagged' if row['flagged'] else 'pass'}", file=sys.stderr)
    doc = {"suite": source, "seeds": list(config.seeds),
           "gate": config.gate, "crosscoder": config.crosscoder}
    return BenchResult(rows, summarize(rows, config.gate), doc)


def _audit(audit_checkpoints: Callable[..., Any], manifest: dict[str, Any], config: BenchConfig
           ) -> tuple[dict[str, Any], float]:
    from mechdiff.diffing.audit.verdict import AuditConfig
    from mechdiff.toylm.train import deterministic

    audit_config = AuditConfig(crosscoder=config.crosscoder)
    ft = manifest.get("finetuned_model")
    adapter = None if ft else manifest.get("adapter")
    with deterministic(threads=config.threads):
        start = time.perf_counter()
        result = audit_checkpoints(manifest["base_model"], ft, adapter=adapter, data=manifest.get("corpus"),
                                   config=audit_config, progress=False)
        wall = time.perf_counter() - start
    return result.to_json(), wall
