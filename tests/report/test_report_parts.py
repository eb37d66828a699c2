"""The report's building blocks: escaping, highlighting, number format, tick choice, plot inputs."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from mechdiff.report import plots
from mechdiff.report.html_page import (
    Banner,
    Markup,
    Section,
    esc,
    fmt_num,
    highlight_context,
    table,
    token_chip,
)


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
