"""The benchmark harness: discovery, --only, --json, row contract, failing modules."""

import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import harness
import run as bench_run

FAKE = '''
def run(quick):
    return [{"name": "fake/a", "baseline": "slow way", "baseline_s": 3.0, "ours_s": 0.5,
             "ratio": 6.0, "size": 7 if quick else 70}]
'''
NO_RATIO = '''
def run(quick):
    return [{"name": "fill/b", "baseline": "x", "baseline_s": 1.0, "ours_s": 4.0}]
'''
BROKEN = '''
def run(quick):
    raise RuntimeError("boom")
'''


@pytest.fixture
def bench_dir(tmp_path):
    (tmp_path / "bench_fake.py").write_text(FAKE)
    (tmp_path / "bench_fill.py").write_text(NO_RATIO)
    (tmp_path / "not_a_bench.py").write_text(BROKEN)
    return tmp_path


def test_json_lists_rows_of_selected_modules(bench_dir, capsys):
    assert bench_run.main(["--quick", "--json", "--only", "fake"], bench_dir) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["quick"] is True and doc["failed"] == []
    assert [row["name"] for row in doc["rows"]] == ["fake/a"]
    assert doc["rows"][0]["size"] == 7


def test_missing_ratio_is_filled_and_table_printed(bench_dir, capsys):
    assert bench_run.main(["--only", "fill"], bench_dir) == 0
    out = capsys.readouterr().out
    assert "fill/b" in out and "0.25x" in out  # 1.0 s / 4.0 s


def test_a_broken_module_fails_the_run_but_not_the_others(bench_dir, capsys):
    (bench_dir / "bench_broken.py").write_text(BROKEN)
    assert bench_run.main(["--json"], bench_dir) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["failed"] == ["bench_broken"]
    assert {row["name"] for row in doc["rows"]} == {"fake/a", "fill/b"}


def test_unknown_only_is_a_usage_error(bench_dir):
    assert bench_run.main(["--only", "nothing"], bench_dir) == 2


def test_make_row_and_validation():
    row = harness.make_row("x", "y", 2.0, 0.5, elements=3)
    assert row["ratio"] == 4.0 and row["elements"] == 3
    with pytest.raises(ValueError, match="lacks"):
        harness.validate_row({"name": "x", "ours_s": 1.0}, "bench_x")


def test_time_call_returns_median_and_runs_warmup():
    calls = []
    seconds = harness.time_call(lambda: calls.append(1), repeat=3, warmup=2)
    assert len(calls) == 5 and seconds >= 0.0


def test_time_alternating_takes_turns_and_returns_a_median_each():
    calls = []
    fast, slow = (lambda: calls.append("a")), (lambda: (calls.append("b"), sum(range(20000))))
    times = harness.time_alternating([fast, slow], repeat=5)
    assert calls == ["a", "b"] + ["a", "b"] * 5  # one warm-up each, then in turns
    assert len(times) == 2 and 0 <= times[0] < times[1]
