"""The GPU rows of benchmarks/bench_diff.py, run on the CPU at a tiny size: the prepared GPU script works.

No timing is asserted: the rows' numbers only have to be there and be consistent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[3] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import bench_diff
from harness import validate_row


def test_device_rows_run_on_the_cpu_at_tiny_size(tmp_path, capsys):
    assert bench_diff.main(["--device", "cpu", "--sizes", "tiny", "--root", str(tmp_path), "--json"]) == 0
    rows = [validate_row(r, "bench_diff") for r in json.loads(capsys.readouterr().out)["rows"]]
    assert [r["baseline"].split(":")[0].split(" of ")[0] for r in rows] == ["floor", "loop"]
    spec = bench_diff.DEVICE_SPECS["tiny"]
    for row in rows:
        assert row["name"] == f"diff {spec.n_params() / 1e9:.2f}B on cpu" and row["device"] == "cpu"
        assert row["baseline_s"] > 0 and row["ours_s"] > 0 and row["ratio"] == row["baseline_s"] / row["ours_s"]
        assert row["ours_peak_rss_mb"] > 0 and row["baseline_peak_rss_mb"] > 0 and row["ours_peak_gpu_mb"] == 0
        # the planted singular values against the exact SVD of those tensors
        assert 0 <= row["ours_planted_sv_max_rel_err"] < 1e-2
    assert 0 <= rows[1]["baseline_planted_sv_max_rel_err"] < 0.5
    assert (tmp_path / spec.key / "manifest.json").is_file()  # the pair is written where asked


def test_the_issue_shapes_have_the_issue_sizes():
    sizes = {name: bench_diff.DEVICE_SPECS[name].n_params() for name in ("3.2B", "8B")}
    assert round(sizes["3.2B"] / 1e9, 2) == 3.61 and round(sizes["8B"] / 1e9, 2) == 8.03
