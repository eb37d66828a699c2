"""Nightly-style fuzzing: 2,000 hostile safetensors files (200 in --quick), every one read or refused.

The row's baseline is reading the same number of valid small files, so the ratio says how
much slower a hostile file is to refuse than a good one is to read (it should not be).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "reliability"))

from hypothesis import HealthCheck, given, settings
from safetensors_fuzz import check_file, safetensors_files


def run(quick: bool) -> list[dict]:
    n = 200 if quick else 2000
    outcomes = {"ok": 0, "refused": 0}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.safetensors"

        @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(safetensors_files())
        def fuzz(case):
            outcomes[check_file(path, *case)] += 1

        start = time.perf_counter()
        fuzz()
        fuzz_s = time.perf_counter() - start
        good = b'{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}'
        start = time.perf_counter()
        for _ in range(n):
            check_file(path, good, bytes(16), None)
        valid_s = time.perf_counter() - start
    total = outcomes["ok"] + outcomes["refused"]
    return [{"name": f"safetensors fuzz ({total} examples)", "baseline": "reading valid files",
             "baseline_s": valid_s, "ours_s": fuzz_s, "ratio": valid_s / fuzz_s,
             "read_ok": outcomes["ok"], "refused_cleanly": outcomes["refused"], "crashes": 0}]
