"""The audit says what it looked at (issue #16 item 8): lenses that ran, those that did not and why, warnings."""

from __future__ import annotations

from types import SimpleNamespace

from mechdiff.diffing.audit.coverage import AuditInputs, audit_warnings, lens_coverage
from mechdiff.diffing.audit.verdict import AuditConfig, AuditResult
from mechdiff.report.terminal import render_audit


class _Crosscoder:
    def __init__(self, dead: float) -> None:
        self.dead = dead

    def attrs(self) -> dict:
        return {"dead_fraction": self.dead}


def _lenses(crosscoder=None, behaviour=None):
    return SimpleNamespace(behaviour=behaviour, crosscoder=crosscoder, decomposition=None)


def _by_name(coverage):
    return {entry["name"]: entry for entry in coverage}


def test_each_reason_a_lens_did_not_run_is_named():
    diff = SimpleNamespace(heads=[object()])
    config = AuditConfig()
    cases = {
        AuditInputs(None, None, True): "no --data corpus given",
        AuditInputs("c.txt", "adapter/", True): "FT is a PEFT adapter",
        AuditInputs("c.txt", None, False): "must both be Hugging Face model folders",
    }
    for inputs, why in cases.items():
        coverage = _by_name(lens_coverage(inputs, config, None, diff))
        assert coverage["weights"] == {"name": "weights", "ran": True, "why": ""}
        assert not coverage["behaviour"]["ran"] and why in coverage["behaviour"]["why"]
        assert not coverage["crosscoder"]["ran"] and why in coverage["crosscoder"]["why"]
    off = AuditConfig(crosscoder=False, behaviour=None)
    coverage = _by_name(lens_coverage(AuditInputs("c.txt", None, True, 50_000), off, _lenses(), diff))
    assert "--no-crosscoder" in coverage["crosscoder"]["why"] and "turned off" in coverage["behaviour"]["why"]
    assert "--components" in coverage["components"]["why"]
    headless = _by_name(lens_coverage(AuditInputs(None, None, True), config, None, SimpleNamespace(heads=[])))
    assert not headless["heads"]["ran"] and "no attention heads" in headless["heads"]["why"]


def test_tiny_corpus_and_dead_crosscoder_warn():
    ran = _lenses(crosscoder=_Crosscoder(dead=0.625), behaviour=object())
    warnings = audit_warnings(AuditInputs("c.txt", None, True, corpus_tokens=900), ran)
    assert len(warnings) == 2 and "tiny (~900 tokens" in warnings[0] and "62% of the crosscoder" in warnings[1]
    assert audit_warnings(AuditInputs("c.txt", None, True, corpus_tokens=50_000), _lenses(_Crosscoder(0.3))) == []
    assert audit_warnings(AuditInputs(None, None, True), None) == []


def test_the_verdict_names_what_ran_and_what_did_not():
    coverage = lens_coverage(AuditInputs(None, None, True), AuditConfig(), None, SimpleNamespace(heads=[object()]))
    result = AuditResult([], 1.0, None, coverage, warnings=["the corpus is tiny"])
    document = result.to_json()
    assert document["lenses"] == coverage and document["warnings"] == ["the corpus is tiny"]
    text = render_audit(document)
    assert "Verdict: PASS" in text and "Lenses run: weights, heads" in text
    assert "Not run: behaviour (no --data corpus given" in text and "! the corpus is tiny" in text
