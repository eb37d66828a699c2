"""Nightly-style fuzzing: 2,000 hostile safetensors files (200 in --quick), each counted by outcome.

Every case is written and opened with mechdiff's reader; its outcome is counted: ``read``
(opened and every tensor read), ``refused`` (one-line InputError) or ``crashed`` (anything
else: a traceback a user would see; the first message is kept). The baseline draws the same
number of cases through hypothesis too, each a valid small file, so hypothesis's own
overhead sits on both sides and the ratio says how much slower a hostile file is to handle
than a good one is to read.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "reliability"))

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors_fuzz import check_file, safetensors_files

GOOD = (b'{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}', bytes(16), None)


def _fuzz(strategy: st.SearchStrategy, n: int, path: Path) -> tuple[float, dict[str, int], list[str]]:
    """Seconds to draw and check n cases, outcome counts, first crash messages."""
    outcomes, crashes = {"read": 0, "refused": 0, "crashed": 0}, []

    def check(case: tuple) -> None:
        try:
            outcomes["read" if check_file(path, *case) == "ok" else "refused"] += 1
        except Exception as exc:  # noqa: BLE001 (a crash is what this counts)
            outcomes["crashed"] += 1
            crashes.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    run: Callable[[], None] = settings(max_examples=n, deadline=None, database=None, derandomize=True,
                                       suppress_health_check=list(HealthCheck))(given(strategy)(check))
    start = time.perf_counter()
    run()
    return time.perf_counter() - start, outcomes, crashes[:3]


def run(quick: bool) -> list[dict]:
    n = 200 if quick else 2000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.safetensors"
        fuzz_s, outcomes, crashes = _fuzz(safetensors_files(), n, path)
        # distinct draws (hypothesis stops early on a strategy with one value), each the valid file
        valid_s, valid, _ = _fuzz(st.integers(0, 2**30).map(lambda _: GOOD), n, path)
    total = sum(outcomes.values())
    return [{"name": f"safetensors fuzz ({total} cases)", "baseline": f"{sum(valid.values())} valid files "
             "drawn through hypothesis", "baseline_s": valid_s, "ours_s": fuzz_s, "ratio": valid_s / fuzz_s,
             **outcomes, "first_crashes": crashes}]
