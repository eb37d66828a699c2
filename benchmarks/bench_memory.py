"""Peak host memory of the weight diff on an 8B-shaped pair with a 128k vocabulary.

The pair has Llama-3-8B shapes (d 4096, 32 heads / 8 kv heads, ffn 14336, vocab 128256)
but 1 layer instead of 32: the diff streams one tensor pair at a time, so its peak is set
by the largest tensors (the 128256 x 4096 embedding and lm_head), not by the layer count,
and 32 layers would need 32 GB of disk and an hour of this 2-core machine. Those two are
larger than DiffConfig.stream_above_mb, so they are diffed in row blocks and never held
whole (nor are they loaded for the token readouts); the peak is then the interpreter and
its libraries, the largest matrix analyzed whole (an MLP matrix) and one row block. The
row reports peak RSS (VmHWM of the worker: anonymous and file-backed pages, everything)
as a ratio to the largest tensor's float32 size, against the 2 GB budget.
Each variant runs in its own process so its peak RSS is its own.
"""

from __future__ import annotations

import math

from bench_diff import _measure
from synthetic import PairSpec, build_pair

BUDGET_MB = 2048


def run(quick: bool) -> list[dict]:
    if quick:
        spec = PairSpec(d=1024, n_layers=1, n_heads=8, n_kv=2, ffn=3584, vocab=32064, shards=1)
    else:
        spec = PairSpec(d=4096, n_layers=1, n_heads=32, n_kv=8, ffn=14336, vocab=128256, shards=2)
    pair = build_pair(spec)
    stream = _measure("stream_norms", pair)
    ours = _measure("ours", pair)
    largest_fp32_mb = max(math.prod(s) for s in spec.shapes().values()) * 4 / 2**20
    return [{
        "name": f"diff peak RSS, d{spec.d} ffn{spec.ffn} vocab{spec.vocab} x{spec.n_layers} layer",
        "baseline": "stream both checkpoints, per-tensor norms in plain torch",
        "baseline_s": stream["seconds"], "ours_s": ours["seconds"], "ratio": stream["seconds"] / ours["seconds"],
        "largest_tensor_fp32_mb": round(largest_fp32_mb),
        "baseline_peak_rss_mb": round(stream["peak_rss_mb"]), "ours_peak_rss_mb": round(ours["peak_rss_mb"]),
        "ours_peak_over_largest_fp32": round(ours["peak_rss_mb"] / largest_fp32_mb, 2),
        "budget_mb": BUDGET_MB, "within_budget": ours["peak_rss_mb"] <= BUDGET_MB,
    }]
