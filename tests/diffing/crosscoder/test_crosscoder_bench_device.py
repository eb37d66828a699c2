"""The crosscoder's device benchmark rows (benchmarks/bench_crosscoder.py) run on the CPU at tiny sizes,
so the script a GPU session runs is known to work before a GPU is lent."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[3] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import bench_crosscoder
from harness import validate_row


def test_tiny_rows_on_the_cpu_cover_every_precision_with_equal_fve() -> None:
    size = bench_crosscoder.TrainSizes(d=8, dict_size=32, k=2, batch=32, steps=2)
    rows = bench_crosscoder.device_training_rows("cpu", (size,))
    assert [row["precision"] for row in rows] == ["fp32", "tf32", "bf16"]
    for row in rows:
        row = validate_row(row, "bench_crosscoder")
        assert row["name"] == f"crosscoder/train-cpu/{row['precision']}/d8xF32/k2/B32"
        assert row["ours_s"] > 0 and row["baseline_s"] > 0
        assert row["ours_tokens_per_s"] == pytest.approx(32 / row["ours_s"])
        assert row["encoder_tflop_per_step"] == pytest.approx(2 * 32 * 2 * 8 * 32 / 1e12)
        assert "ours_encoder_roofline" not in row  # the CPU has no datasheet peak here: no share invented
        assert all(math.isfinite(v) for v in row["fve_ours"] + row["fve_baseline"])
    fp32 = rows[0]
    # same init, batches and steps in fp32: the sparse trainer and the dense baseline are the same maths
    assert fp32["fve_ours"] == pytest.approx(fp32["fve_baseline"], abs=1e-3)


def test_roofline_share_uses_the_datasheet_peak_of_a_listed_card_only() -> None:
    peak = bench_crosscoder.PEAK_TFLOPS["NVIDIA H100 80GB HBM3"]["bf16"]
    assert bench_crosscoder.roofline_share(peak * 1e12 / 2, 1.0, "NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(0.5)
    assert bench_crosscoder.roofline_share(1e12, 1.0, "Some Future GPU", "bf16") is None
    assert bench_crosscoder.roofline_share(1e12, 1.0, "cpu", "fp32") is None


def test_the_script_prints_json_rows_for_a_cpu_and_refuses_cuda_without_a_gpu(monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench_crosscoder, "TINY", (bench_crosscoder.TrainSizes(d=8, dict_size=16, k=2, batch=16,
                                                                               steps=1),))
    assert bench_crosscoder.main(["--device", "cpu", "--tiny", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["device"] == "cpu" and len(document["rows"]) == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_crosscoder.main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert bench_crosscoder.bench_device_training(quick=True) == []  # run.py's suite: no GPU, no GPU rows
