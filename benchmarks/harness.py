"""Shared helpers for benchmarks: timing, row construction, discovery and printing.

Every performance claim of mechdiff is a ratio `baseline_s / ours_s` measured in the
same process, so machine speed and load cancel out as far as possible.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

REQUIRED_KEYS = ("name", "baseline", "baseline_s", "ours_s", "ratio")


def time_call(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn()` in seconds.

    Args:
        fn: zero-argument callable to time; its result is discarded.
        repeat: number of timed calls (the median resists a noisy neighbour).
        warmup: untimed calls first (JIT compilation, caches, allocator).

    Returns:
        Median seconds per call.
    """
    return time_alternating([fn], repeat=repeat, warmup=warmup)[0]


def time_alternating(fns: list[Callable[[], object]], *, repeat: int = 9, warmup: int = 1) -> list[float]:
    """Median wall time of each of `fns`, timed in turns (a, b, a, b, ...).

    For short calls compared with each other: taking turns gives each the same cache
    and load conditions (a copy that evicts the other's inputs from the shared L3 cache,
    a noisy neighbour), where timing one after the other would favour whichever ran
    while the machine was quiet.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(max(1, repeat)):
        for fn, record in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def make_row(name: str, baseline: str, baseline_s: float, ours_s: float, **extra: object) -> dict:
    """One benchmark result in the harness contract.

    Args:
        name: what is measured, e.g. "delta_stats/bf16/16M".
        baseline: what it is compared against, in words.
        baseline_s: seconds per call of the baseline.
        ours_s: seconds per call of our implementation.
        **extra: optional fields (sizes, bandwidths, targets) printed after the ratio.

    Returns:
        Dict with name, baseline, baseline_s, ours_s, ratio (= baseline_s / ours_s) and extras.
    """
    ratio = baseline_s / ours_s if ours_s > 0 else float("inf")
    return {"name": name, "baseline": baseline, "baseline_s": baseline_s,
            "ours_s": ours_s, "ratio": ratio, **extra}


def target_row(name: str, ours_s: float, target_s: float, target: str, **extra: object) -> dict:
    """A row timed against a fixed budget: a target, not a measured baseline, so no ratio.

    Args:
        name: what is measured.
        ours_s: seconds we took.
        target_s: the budget in seconds.
        target: where the budget comes from, in words.
        **extra: optional fields printed after the (empty) ratio.
    """
    return {"name": name, "baseline": f"none; target: {target} ({target_s:.0f} s)", "baseline_s": None,
            "ours_s": ours_s, "ratio": None, "target_s": target_s, "within_target": ours_s <= target_s, **extra}


def validate_row(row: dict, module: str) -> dict:
    """Check that a row carries the contract keys; fill `ratio` when it is missing.

    A row without a measured baseline (``baseline_s`` None, see :func:`target_row`) has no ratio.
    """
    missing = [k for k in REQUIRED_KEYS if k not in row and k != "ratio"]
    if missing:
        raise ValueError(f"{module}: benchmark row {row!r} lacks {missing}")
    if row["baseline_s"] is None:
        return {**row, "ratio": None}
    if "ratio" not in row:
        row = {**row, "ratio": row["baseline_s"] / row["ours_s"]}
    return row


def discover(bench_dir: Path, only: list[str] | None = None) -> list[Path]:
    """Benchmark modules `bench_*.py` in `bench_dir`, sorted, filtered by topic.

    Args:
        bench_dir: folder to search.
        only: topics to keep; "kernels" matches bench_kernels.py. None keeps all.

    Returns:
        Paths of the modules to run.
    """
    paths = sorted(bench_dir.glob("bench_*.py"))
    if only:
        wanted = {name.removeprefix("bench_").removesuffix(".py") for name in only}
        paths = [p for p in paths if p.stem.removeprefix("bench_") in wanted]
    return paths


def load_module(path: Path) -> ModuleType:
    """Import a benchmark file by path (benchmarks/ is not a package users install)."""
    spec = importlib.util.spec_from_file_location(f"mechdiff_bench_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import benchmark {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def format_table(rows: list[dict]) -> str:
    """Fixed-width table: name, baseline, baseline_s, ours_s, ratio, then extra fields."""
    header = ("name", "baseline", "baseline_s", "ours_s", "ratio")
    lines = [[*header, "extra"]]
    for row in rows:
        extra = ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in header)
        measured = row["baseline_s"] is not None and row["ratio"] is not None
        lines.append([str(row["name"]), str(row["baseline"]), f"{row['baseline_s']:.4g}" if measured else "-",
                      f"{row['ours_s']:.4g}", f"{row['ratio']:.2f}x" if measured else "-", extra])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        cells = [line[i].ljust(widths[i]) for i in range(len(header))]
        out.append("  ".join([*cells, line[-1]]).rstrip())
    return "\n".join(out)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
