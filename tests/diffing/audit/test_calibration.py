"""The audit's calibrated scale on hand-made diffs: dtype floor, absolute size, one finding per mechanism."""

from __future__ import annotations

import pytest

from mechdiff.diffing.audit.calibration import (
    NULL_FLOOR,
    WEIGHT_UNIT,
    behaviour_score,
    rose_score,
)
from mechdiff.diffing.audit.verdict import (
    AuditThresholds,
    head_findings,
    weight_findings,
)
from mechdiff.diffing.weights.heads import HeadChange
from mechdiff.diffing.weights.result import TensorChange, WeightDiff


def _change(name, share, rank=2, resolution=2.0**-23, layer=0, kind="attn_o", cosine=0.99, rel=None):
    rel = share if rel is None else rel
    return TensorChange(tensor=name, layer=layer, kind=kind, score=share + 1e-3 * rel, rel_delta=rel, rank=rank,
                        structured_fraction=0.9, cosine=cosine, max_abs_delta=0.1, norm_base=1.0, norm_delta=rel,
                        shape=(64, 64), resolution=resolution, tokens_out=["zq", "x1", "x2", "x3", "x4"],
                        tokens_in=["<bos>", "banana", "y1"])


def _diff(changes, heads=()):
    return WeightDiff("b", "f", "gpt2", list(changes), list(heads))


def test_score_is_the_structured_share_in_weight_units():
    found = weight_findings(_diff([_change("a", 0.3), _change("b", 0.1, rank=0)]), AuditThresholds())
    assert len(found) == 1  # rank 0 (drift only) is never a finding
    assert found[0].score == pytest.approx(0.3 / WEIGHT_UNIT, rel=1e-6)
    assert "30.0% of the weight's norm" in found[0].summary
    # tokens: the evidence's, writes first, no special tokens, at most two per side
    assert list(found[0].tokens) == ["zq", "x1", "banana", "y1"]


def test_no_finding_below_the_dtype_or_the_null_floor():
    # 5% structured change: a finding in float32, none when the stored dtype rounds at 12.5% (float8 e4m3)
    assert weight_findings(_diff([_change("a", 0.05)]), AuditThresholds())
    assert not weight_findings(_diff([_change("a", 0.05, resolution=2.0**-3)]), AuditThresholds())
    # whole delta within a bfloat16 rounding (eps 2^-7): nothing, however structured
    assert not weight_findings(_diff([_change("a", 0.004, resolution=2.0**-7)]), AuditThresholds())
    # scale-free scores are gone: a tiny change among tinier ones is no finding
    tiny = [_change("a", 1e-4)] + [_change(f"m{i}", 1e-6) for i in range(20)]
    assert 1e-4 < NULL_FLOOR and not weight_findings(_diff(tiny), AuditThresholds())


def test_a_rewritten_matrix_is_no_finding():
    assert not weight_findings(_diff([_change("a", 0.9, cosine=0.1, rel=1.4)]), AuditThresholds())


def _heads(layer, energies):
    out = []
    for h, score in enumerate(energies):
        head = HeadChange(layer, h, "attn")
        head.add("attn_o", score, 4 if score > 0 else 0, score)
        out.append(head)
    return out


def test_one_edit_spread_over_every_head_is_one_finding():
    matrix = _change("h.0.attn.o_proj.weight", 0.4)
    diff = _diff([matrix], _heads(0, [0.3] * 12))
    matrices = weight_findings(diff, AuditThresholds())
    assert head_findings(diff, AuditThresholds(), matrices) == []
    assert "confined" not in matrices[0].summary and len(matrices[0].evidence["head_shares"]) == 12


def test_a_head_that_holds_most_of_the_change_is_named_in_its_matrix_finding():
    diff = _diff([_change("h.0.attn.o_proj.weight", 0.4)], _heads(0, [0.9, 0.1, 0.1, 0.1]))
    matrices = weight_findings(diff, AuditThresholds())
    assert head_findings(diff, AuditThresholds(), matrices) == []
    assert "confined to head 0" in matrices[0].summary and matrices[0].head == 0
    # no matrix finding covers the layer (e.g. a head edit too small for the whole matrix): the head's own
    alone = head_findings(_diff([], _heads(0, [2.0, 0.1, 0.1, 0.1])), AuditThresholds(), [])
    assert len(alone) == 1 and alone[0].head == 0 and "confined to head 0" in alone[0].summary


def test_behaviour_scores_shrink_rare_tokens_toward_the_corpus():
    # a rare word two null models disagree on (12 occurrences, 1.4 nats) stays under half the gate
    assert behaviour_score(1.4, 12, 0.07) < 0.5
    # the same KL at every one of 300 occurrences is a finding; a planted trigger at 12 still is
    assert behaviour_score(1.4, 300, 0.07) > 1.0 and behaviour_score(6.0, 12, 0.1) > 1.0


def test_token_rise_scores_rare_tokens_not_frequent_ones():
    assert rose_score(0.04, 0.001) > 1.0  # a rare substitute word now said 4% of the time
    assert rose_score(0.02, 0.10) < 0.1  # a frequent word moved by 2 points
    assert rose_score(-0.05, 0.1) == 0.0


def test_the_report_shows_the_calibration_numbers():
    from mechdiff.diffing.audit.calibration import calibration_table
    from mechdiff.report.html_calibration import calibration_section

    section = calibration_section({"calibration_numbers": calibration_table()})
    body = section.render()
    assert "Score calibration" in body and f">{WEIGHT_UNIT}<" in body
    assert "null control &#x27;reseeded&#x27;: highest top score measured" in body
    assert calibration_section({}) is None  # files written before the calibration numbers existed
