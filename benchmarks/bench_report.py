"""The HTML report's cost next to the work that produced its input.

Rows (same process, same results file): rendering the report vs the weight diff that
wrote the file (ratio > 1: the report is cheaper than the diff), and vs the plain-text
summary that `mechdiff show` prints (ratio < 1: what the pictures cost over text).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from harness import make_row, time_call
from synthetic import PairSpec, build_pair

from mechdiff.api import diff_checkpoints
from mechdiff.report.html import render_report
from mechdiff.report.summary import summarize


def run(quick: bool) -> list[dict]:
    spec = (PairSpec(d=128, n_layers=4, n_heads=4, n_kv=2, ffn=352, vocab=1000, shards=1) if quick
            else PairSpec(d=512, n_layers=16, n_heads=8, n_kv=4, ffn=1408, vocab=8000, shards=2))
    pair = build_pair(spec)
    repeat = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        results, page = Path(tmp) / "diff.h5", Path(tmp) / "report.html"
        # warm-up run first so the diff's one-time JIT compilation is not charged to it
        diff_s = time_call(lambda: diff_checkpoints(pair / "base", pair / "ft", out=results, progress=False,
                                                    command="bench"), repeat=repeat)
        report_s = time_call(lambda: render_report(results, page), repeat=repeat)
        text_s = time_call(lambda: summarize(results), repeat=repeat)
        html = page.read_text()
    extra = {"params_m": round(spec.n_params() / 1e6, 1), "layers": spec.n_layers,
             "html_kb": round(len(html.encode()) / 1024), "images": len(re.findall(r"data:image/png", html))}
    return [
        make_row("report vs diff", "weight diff that wrote the file", diff_s, report_s, **extra),
        make_row("report vs text summary", "`mechdiff show` text summary", text_s, report_s, **extra),
    ]
