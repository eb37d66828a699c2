"""Diff of the synthetic pair with 2 CPU ranks (torchrun, gloo) against 1 process, wall time.

Both runs are whole `mechdiff diff` commands (start-up, reading, spectra, gather, write).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthetic import PairSpec, build_pair


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run(quick: bool) -> list[dict]:
    spec = PairSpec(d=512, n_layers=4, n_heads=8, n_kv=4, ffn=1408, vocab=8000, shards=2) if quick else PairSpec()
    pair = build_pair(spec)
    with tempfile.TemporaryDirectory() as tmp:
        args = ["-m", "mechdiff", "diff", str(pair / "base"), str(pair / "ft"), "--no-progress", "--json"]
        one = _timed([sys.executable, *args, "-o", str(Path(tmp) / "one.h5")])
        two = _timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                      *args, "-o", str(Path(tmp) / "two.h5")])
    return [{"name": f"diff {spec.n_params() / 1e9:.2f}B params, 2 ranks", "baseline": "1 process",
             "baseline_s": one, "ours_s": two, "ratio": one / two}]
