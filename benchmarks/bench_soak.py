"""Soak: the 1B diff five times in a row, and four diffs of a smaller pair at once.

Reports peak RSS of every run and whether all outputs are identical (ranks, scores and
singular values compared exactly). Each diff is `diff_worker.py ours` in its own process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthetic import PairSpec, build_pair

HERE = Path(__file__).resolve().parent


def _start(pair: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "diff_worker.py"), "ours", str(pair / "base"),
                             str(pair / "ft"), str(out)])


def _finish(proc: subprocess.Popen, out: Path) -> dict:
    if proc.wait() != 0:
        raise RuntimeError(f"diff worker failed with exit code {proc.returncode}")
    return json.loads(out.read_text())


def _identical(runs: list[dict]) -> bool:
    return all(run["detail"] == runs[0]["detail"] for run in runs[1:])


def run(quick: bool) -> list[dict]:
    big = PairSpec(d=512, n_layers=4, n_heads=8, n_kv=4, ffn=1408, vocab=8000, shards=2) if quick else PairSpec()
    small = PairSpec(**{**big.__dict__, "n_layers": max(1, big.n_layers // 4)})
    big_pair, small_pair = build_pair(big), build_pair(small)
    with tempfile.TemporaryDirectory() as tmp:
        sequential = []
        for i in range(5):
            out = Path(tmp) / f"seq{i}.json"
            sequential.append(_finish(_start(big_pair, out), out))
        alone = _finish(_start(small_pair, Path(tmp) / "alone.json"), Path(tmp) / "alone.json")
        start = time.perf_counter()
        outs = [Path(tmp) / f"par{i}.json" for i in range(4)]
        procs = [_start(small_pair, out) for out in outs]
        parallel = [_finish(p, out) for p, out in zip(procs, outs)]
        parallel_s = time.perf_counter() - start
    seconds = [r["seconds"] for r in sequential]
    return [
        {"name": f"soak: {big.n_params() / 1e9:.2f}B diff x5 in a row", "baseline": "first run",
         "baseline_s": seconds[0], "ours_s": sum(seconds[1:]) / 4, "ratio": seconds[0] / (sum(seconds[1:]) / 4),
         "peak_rss_mb": [round(r["peak_rss_mb"]) for r in sequential], "identical": _identical(sequential)},
        {"name": f"soak: 4 parallel diffs of {small.n_params() / 1e9:.2f}B", "baseline": "4 x one run alone",
         "baseline_s": 4 * alone["seconds"], "ours_s": parallel_s, "ratio": 4 * alone["seconds"] / parallel_s,
         "peak_rss_mb": [round(r["peak_rss_mb"]) for r in parallel],
         "identical": _identical([alone, *parallel])},
    ]
