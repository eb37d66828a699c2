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


def test_a_target_row_has_no_ratio_and_prints_dashes():
    row = harness.validate_row(harness.target_row("toy", 90.0, 120.0, "budget of issue 6"), "bench_x")
    assert row["ratio"] is None and row["within_target"] is True and row["target_s"] == 120.0
    line = harness.format_table([row]).splitlines()[1]
    assert "toy" in line and " - " in line and "x " not in line


def test_make_row_and_validation():
    row = harness.make_row("x", "y", 2.0, 0.5, elements=3)
    assert row["ratio"] == 4.0 and row["elements"] == 3
    with pytest.raises(ValueError, match="lacks"):
        harness.validate_row({"name": "x", "ours_s": 1.0}, "bench_x")


class FakeClock:
    """perf_counter for the harness: each call of a timed function takes the next planned duration."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def taking(self, durations: list[float], calls: list, label: str):
        planned = iter(durations)

        def fn() -> None:
            calls.append(label)
            self.now += next(planned)
        return fn


def test_time_call_returns_median_and_runs_warmup(monkeypatch):
    clock, calls = FakeClock(), []
    monkeypatch.setattr(harness, "time", clock)
    # two warm-up calls of 100 s are not timed; of 10, 1 and 2 s the median is 2 (mean 4.3, min 1)
    seconds = harness.time_call(clock.taking([100.0, 100.0, 10.0, 1.0, 2.0], calls, "f"), repeat=3, warmup=2)
    assert len(calls) == 5 and seconds == 2.0


def test_time_alternating_takes_turns_and_returns_a_median_each(monkeypatch):
    clock, calls = FakeClock(), []
    monkeypatch.setattr(harness, "time", clock)
    fast = clock.taking([50.0, 3.0, 1.0, 2.0, 9.0, 1.5], calls, "a")  # median of the timed five: 2
    slow = clock.taking([50.0, 7.0, 8.0, 30.0, 6.0, 7.5], calls, "b")  # median: 7.5
    times = harness.time_alternating([fast, slow], repeat=5)
    assert calls == ["a", "b"] + ["a", "b"] * 5  # one warm-up each, then in turns
    assert times == [2.0, 7.5]


GPU_ROWS_UNDER_SIMULATOR = '''
import bench_gpu as g
g.REPEAT = 1
s = g.GpuSizes(delta_elements=3000, n_latents=37, dim=9, active=3, batch=11, topn_chunks=2,
               topn_n=4)
rows = [*g.bench_delta_stats(s, "cpu"), g.bench_sparse_decode(s, "cpu"),
        g.bench_topn(s, "cpu"), g.bench_latent_scaling(s, "cpu")]
print(json.dumps([[r["name"], r.get("agrees")] for r in rows]))
'''


def test_gpu_rows_check_each_kernel_against_its_reference_under_the_simulator():
    # bench_gpu.py runs only on a lent GPU; here its code runs the CUDA kernels in the
    # simulator on tiny sizes, so it cannot rot between GPU sessions
    import os
    import subprocess

    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "MECHDIFF_KERNELS": "cuda"}
    done = subprocess.run([sys.executable, "-W", "ignore", "-c",
                           "import json\n" + GPU_ROWS_UNDER_SIMULATOR], cwd=BENCH_DIR, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    rows = dict(json.loads(done.stdout.splitlines()[-1]))
    assert len(rows) == 6
    assert all(agrees is not False for agrees in rows.values())
    assert sum(agrees is True for agrees in rows.values()) == 5  # the bandwidth row has none
