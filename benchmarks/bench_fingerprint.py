"""Cost of fingerprinting inputs by their tensor bytes: the diff with and without hashing, same process.

The fingerprint hashes each tensor in the diff's reading threads (checkpoint/fingerprint.py);
the baseline is the same diff with the hashing switched off. ratio = baseline_s / ours_s,
so 0.95 means the fingerprints cost 5% of the diff's time.
"""

from __future__ import annotations

import time

from synthetic import PairSpec, build_pair

import mechdiff.diffing.weights.diff as diff_module
from mechdiff.checkpoint import fingerprint as fp
from mechdiff.checkpoint import open_source
from mechdiff.diffing.weights.diff import DiffConfig, diff_sources


def _no_hashing(source, name, tensor) -> None:
    """note_read switched off: the baseline diff."""


def _diff_seconds(pair, hashing: bool) -> float:
    fp._DIGESTS.clear()  # every timed run hashes from scratch
    if not hashing:
        diff_module.note_read = _no_hashing
    try:
        start = time.perf_counter()
        base, ft = open_source(pair / "base"), open_source(pair / "ft")
        diff_sources(base, ft, DiffConfig(device="cpu"))
        if hashing:
            base.fingerprint(), ft.fingerprint()
        return time.perf_counter() - start
    finally:
        diff_module.note_read = fp.note_read


def run(quick: bool) -> list[dict]:
    spec = PairSpec(d=512, n_layers=4, n_heads=8, n_kv=4, ffn=1408, vocab=8000, shards=2) if quick else PairSpec(
        d=1024, n_layers=8, n_heads=16, n_kv=4, ffn=2816, vocab=16000, shards=2)
    pair = build_pair(spec)
    _diff_seconds(pair, True)  # compile the kernels and warm the page cache
    plain, hashed = [], []
    for _ in range(3):  # alternate, so a load change on the machine hits both alike
        plain.append(_diff_seconds(pair, False))
        hashed.append(_diff_seconds(pair, True))
    return [{"name": f"diff {spec.n_params() / 1e6:.0f}M params + fingerprints", "baseline": "same diff, no hashing",
             "baseline_s": min(plain), "ours_s": min(hashed), "ratio": min(plain) / min(hashed)}]
