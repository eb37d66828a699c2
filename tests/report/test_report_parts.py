"""The report's building blocks: escaping, highlighting, number format, tick choice, plot inputs."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from mechdiff.diffing.audit.findings import Finding, findings_table
from mechdiff.report import plots
from mechdiff.report.html_audit import audit_banner, findings_section, gate
from mechdiff.report.html_page import (
    Banner,
    Markup,
    Section,
    bar_cell,
    esc,
    fmt_num,
    highlight_context,
    table,
    token_chip,
)
from mechdiff.store.schema import columns_to_structured


def test_escape_keeps_markup_and_escapes_quotes():
    assert esc('<a href="x">&\'') == "&lt;a href=&quot;x&quot;&gt;&amp;&#x27;"
    assert esc(Markup("<b>ok</b>")) == "<b>ok</b>"
    html = table(["h<1>"], [["<td>"], [Markup("<i>x</i>")]], numeric=(0,))
    assert "<th class=\"num\">h&lt;1&gt;</th>" in html and "&lt;td&gt;" in html and "<i>x</i>" in html


@pytest.mark.parametrize("context, token, expected", [
    ("a [[<b>]] c", None, 'a <mark>&lt;b&gt;</mark> c'),  # crosscoder marker wins
    ("x zq y zq", "zq", "x zq y zq <mark>zq</mark>"),  # no markers: the token follows the context
    ("ends in space ", "&", "ends in space <mark>&amp;</mark>"),
    ("", "<s>", "<mark>&lt;s&gt;</mark>"),
    ("only [[ open", None, "only [[ open"),
])
def test_highlight_context(context, token, expected):
    assert highlight_context(context, token) == f'<span class="ctx">{expected}</span>'


def test_token_chip_shows_whitespace():
    assert token_chip(" a\n") == '<code class="tok">\u2423a\u21b5</code>'
    assert token_chip("") == '<code class="tok">\u2205</code>'


@pytest.mark.parametrize("value, text", [
    (None, "-"), (float("nan"), "-"), (0.0, "0"), (0.0123, "0.0123"), (0.5, "0.5"), (2.5, "2.5"),
    (1.23e-5, "1.23e-05"), (42, "42"), (np.int64(7), "7"), (123456.0, "1.23e+05"),
    (0.12345, "0.123"), (1234.5, "1230"), (3.14159, "3.14"), (-0.0456789, "-0.0457"),
])
def test_fmt_num(value, text):
    assert fmt_num(value) == text


def test_log_ticks():
    assert plots.log_ticks(0.018, 0.12) == pytest.approx([0.02, 0.03, 0.04, 0.05, 0.07, 0.1])
    assert plots.log_ticks(1e-5, 10) == pytest.approx([1e-5, 1e-3, 0.1, 10])  # thinned to fit 6
    assert plots.log_ticks(0.051, 0.052) == [0.051, 0.052]  # no round value inside: the limits
    assert plots.log_ticks(0.0, 1.0) == []


def test_kind_order_follows_a_block():
    assert plots.kind_order(["norm", "zzz", "mlp_out", "attn_q", "attn_q", "embed"]) == [
        "embed", "attn_q", "mlp_out", "norm", "zzz"]


def test_plots_return_png_or_none():
    assert plots.layer_kind_heatmap([-1, -1], ["embed", "norm"], [0.1, 0.2], [0, 0]) is None
    assert plots.head_bars([], [], []) is None
    assert plots.relnorm_histogram(np.array([0.5, 0.9]), ["dead", "dead"]) is None
    assert plots.spectra([plots.SpectrumPanel("t", np.zeros(0), 1.0, None, 0)]) is None
    png = plots.layer_kind_heatmap([0, 0, 1], ["attn_q", "attn_q", "mlp_out"], [1e-5, 0.02, 0.0], [0, 2, 0])
    assert base64.b64decode(png).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="rank"):
        plots.SpectrumPanel("t", np.ones(3), 1.0, None, -1)


def test_section_and_banner_validate():
    with pytest.raises(ValueError, match="tone"):
        Banner("red", "x")
    with pytest.raises(ValueError, match="title"):
        Section("", Markup(""))
    assert Section("Top changed tensors", Markup("")).ident == "top-changed-tensors"
    assert 'class="banner pass"' in Banner("pass", "ok <3").render() and "ok &lt;3" in Banner("pass", "ok <3").render()


def test_bar_cell_width_and_tone():
    assert 'class="bar neg" style="width:50.0%"' in bar_cell(-1.5, 3.0, "-1.5", negative=True)
    assert 'style="width:100.0%"' in bar_cell(9.0, 3.0, "9")  # clipped
    assert 'style="width:0.0%"' in bar_cell(1.0, 0.0, "1") and ">&lt;1<" in bar_cell(1.0, 0.0, "<1")


def test_findings_beyond_ten_are_folded_and_gate_prefers_fail_above():
    findings = [Finding("weights", 2.0 - 0.1 * i, f"finding {i}", layer=i) for i in range(12)]
    for rank, finding in enumerate(findings, 1):
        finding.rank = rank
    table_ = columns_to_structured(findings_table(findings))
    attrs = {"thresholds": {"finding": 1.0}, "fail_above": 1.5, "verdict": "findings"}
    assert gate(attrs) == 1.5 and gate({"thresholds": {"finding": 1.0}}) == 1.0 and gate({}) is None
    html = findings_section(table_, attrs).render()
    visible, folded = html.split("<details><summary>2 more findings</summary>")
    assert "finding 9<" in visible and "finding 10<" in folded and "finding 11<" in folded
    assert html.count('class="pill hi"') == 5  # 2.0, 1.9, 1.8, 1.7, 1.6 exceed 1.5; 1.5 itself does not
    assert "Findings: 5 of 12 above threshold (score above 1.5)" in audit_banner(attrs, table_).render()
