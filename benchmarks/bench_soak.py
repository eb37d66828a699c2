"""Soak: the 1B diff five times in a row, and four diffs of a smaller pair at once.

Reports peak RSS of every run and whether all outputs are identical (ranks, scores and
singular values compared exactly). Each diff is `diff_worker.py ours` in its own process.

The parallel rows compare wall times measured the same way on both sides (from starting the
processes to the last one's exit, interpreter start-ups included): four diffs one after
another vs four at once, once with the default threads and once with one thread each
(``ONE_THREAD``, set here in the workers' environment), which is what the README advises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthetic import PairSpec, build_pair

HERE = Path(__file__).resolve().parent
ONE_THREAD = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _start(pair: Path, out: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "diff_worker.py"), "ours", str(pair / "base"),
                             str(pair / "ft"), str(out)], env={**os.environ, **(env or {})})


def _finish(proc: subprocess.Popen, out: Path) -> dict:
    if proc.wait() != 0:
        raise RuntimeError(f"diff worker failed with exit code {proc.returncode}")
    return json.loads(out.read_text())


def _identical(runs: list[dict]) -> bool:
    return all(run["detail"] == runs[0]["detail"] for run in runs[1:])


def _four(pair: Path, tmp: Path, tag: str, *, parallel: bool, env: dict[str, str] | None) -> tuple[float, list[dict]]:
    """Wall seconds of four diffs of ``pair`` (at once or one after another) and their results."""
    outs = [tmp / f"{tag}{i}.json" for i in range(4)]
    start = time.perf_counter()
    if parallel:
        procs = [_start(pair, out, env) for out in outs]
        results = [_finish(p, out) for p, out in zip(procs, outs, strict=True)]
    else:
        results = [_finish(_start(pair, out, env), out) for out in outs]
    return time.perf_counter() - start, results


def parallel_rows(pair: Path, spec: PairSpec, tmp: Path) -> list[dict]:
    """Four diffs of ``pair`` at once vs one after another, with default threads and with one each."""
    rows = []
    for label, env in (("default threads", None), ("one thread each (OMP/NUMBA/MKL_NUM_THREADS=1)", ONE_THREAD)):
        tag = "one" if env else "default"
        load = round(os.getloadavg()[0], 1)
        one_by_one_s, one_by_one = _four(pair, tmp, f"seq-{tag}", parallel=False, env=env)
        at_once_s, at_once = _four(pair, tmp, f"par-{tag}", parallel=True, env=env)
        rows.append({
            "name": f"soak: 4 diffs of {spec.n_params() / 1e9:.2f}B at once, {label}",
            "baseline": "the same 4 one after another (wall time, start-ups included, both sides)",
            "baseline_s": one_by_one_s, "ours_s": at_once_s, "ratio": one_by_one_s / at_once_s,
            "in_process_s_at_once": [round(r["seconds"], 2) for r in at_once],
            "peak_rss_mb": [round(r["peak_rss_mb"]) for r in at_once],
            "identical": _identical([*one_by_one, *at_once]), "cpus": os.cpu_count(), "load_avg_before": load})
    return rows


def run(quick: bool) -> list[dict]:
    big = PairSpec(d=512, n_layers=4, n_heads=8, n_kv=4, ffn=1408, vocab=8000, shards=2) if quick else PairSpec()
    small = PairSpec(**{**big.__dict__, "n_layers": max(1, big.n_layers // 4)})
    big_pair, small_pair = build_pair(big), build_pair(small)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sequential = []
        for i in range(5):
            out = tmp / f"seq{i}.json"
            sequential.append(_finish(_start(big_pair, out), out))
        seconds = [r["seconds"] for r in sequential]
        rows.append({"name": f"soak: {big.n_params() / 1e9:.2f}B diff x5 in a row", "baseline": "first run",
                     "baseline_s": seconds[0], "ours_s": sum(seconds[1:]) / 4,
                     "ratio": seconds[0] / (sum(seconds[1:]) / 4),
                     "peak_rss_mb": [round(r["peak_rss_mb"]) for r in sequential],
                     "identical": _identical(sequential)})
        rows += parallel_rows(small_pair, small, tmp)
    return rows
