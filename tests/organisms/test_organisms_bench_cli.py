"""`mechdiff bench --suite quick` end to end (the CI run): organisms detected, null controls pass."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mechdiff.cli import main
from mechdiff.store import open_results

pytestmark = pytest.mark.slow


def test_quick_suite_detects_every_organism_and_flags_no_null(tmp_path):
    args = ["bench", "--suite", "quick", "--cache", str(tmp_path / "cache"), "-o", str(tmp_path / "b.h5"),
            "--json", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    summary = doc["summary"]
    assert summary["organisms"] == 4 and summary["nulls"] == 3
    assert summary["false_positives"] == 0 and summary["nulls_within_half_gate"], doc["pairs"]
    assert summary["detection"] == 1.0, [(r["name"], r["top_score"], r["top_tokens"]) for r in doc["pairs"]]
    assert summary["relevance"] >= 0.5
    with open_results(tmp_path / "b.h5") as res:
        table = res.part("bench").table("pairs")
        assert len(table) == 7 and res.part("bench").attrs["calibration"]["gate"] == 1.0
        lenses = res.part("bench").table("lenses")
        stored = {(int(r["pair"]), r["lens"].decode() if isinstance(r["lens"], bytes) else str(r["lens"]))
                  for r in lenses}
    # each lens alone, read back from the file as the JSON says; the audit detects at least what its best lens does
    assert stored == {(i, lens) for i, row in enumerate(doc["pairs"]) for lens in row["lenses"]}
    by_lens = summary["by_lens"]
    assert by_lens["behaviour"]["organisms"] == 4 and by_lens["behaviour"]["nulls"] == 3
    assert summary["detection"] >= max(entry["detection"] for entry in by_lens.values())


def test_bench_rejects_bad_seeds_and_missing_manifests(tmp_path):
    assert CliRunner().invoke(main, ["bench", "--seeds", "a,b"]).exit_code == 2
    result = CliRunner().invoke(main, ["bench", "--organisms", str(tmp_path / "none.json")])
    assert result.exit_code == 3 and "not found" in result.output
