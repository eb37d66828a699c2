"""The HTML report reads cleanly (issue #16 item 11): labelled axes, whole-number count ticks,
one row per distinct context, evidence as words and numbers, tokens by relevance."""

from __future__ import annotations

import numpy as np
import pytest

from mechdiff.report import html_audit, plots
from mechdiff.report.html_page import fmt_num

pytest.importorskip("matplotlib")


@pytest.fixture
def captured(monkeypatch):
    """The matplotlib figures the plot functions build, kept open for inspection."""
    figures = []
    monkeypatch.setattr(plots, "to_png_base64", lambda fig: figures.append(fig) or "png")
    yield figures
    import matplotlib.pyplot as plt

    for fig in figures:
        plt.close(fig)


def _visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def test_every_plot_labels_both_axes(captured):
    rng = np.random.default_rng(0)
    plots.layer_kind_heatmap([0, 0, 1], ["attn_q", "mlp_out", "mlp_out"], [0.1, 0.02, 0.3], [1, 0, 2])
    plots.head_bars(["L0 H1 attn", "L1 H0 attn"], [0.3, 0.1], [2, 0])
    plots.spectra([plots.SpectrumPanel("down_proj", np.array([5.0, 2.0, 1.1, 1.0]), 1.5, None, 2)])
    delta, cls = rng.uniform(0, 1, 300), ["shared"] * 300
    plots.relnorm_histogram(delta, cls)
    plots.delta_cos_scatter(delta, rng.uniform(-1, 1, 300), cls)
    assert len(captured) == 5
    for fig in captured:
        for ax in _visible_axes(fig)[:1]:
            assert ax.get_xlabel() and ax.get_ylabel(), (ax.get_xlabel(), ax.get_ylabel())


def test_counts_and_indices_get_whole_number_ticks(captured):
    rng = np.random.default_rng(1)
    delta = np.concatenate([rng.normal(0.5, 0.04, 2000), [0.95, 0.97, 0.05]])
    plots.relnorm_histogram(delta, ["shared"] * len(delta))
    plots.spectra([plots.SpectrumPanel("o_proj", np.array([9.0, 4.0, 1.2]), 1.5, None, 2)])
    hist, spectrum = (_visible_axes(fig)[0] for fig in captured)
    counts = hist.get_yticks()
    low, high = hist.get_ylim()
    shown = [t for t in counts if low <= t <= high]
    assert shown and all(float(t).is_integer() and t >= 1 for t in shown)
    labels = [hist.yaxis.get_major_formatter()(t, i) for i, t in enumerate(shown)]
    assert labels == [str(int(t)) for t in shown]  # "1", "10", "100": not 10^0 in math text
    indices = [t for t in spectrum.get_xticks() if spectrum.get_xlim()[0] <= t <= spectrum.get_xlim()[1]]
    assert indices and all(float(t).is_integer() for t in indices)


def test_repeated_contexts_are_shown_once():
    rows = np.array([("<bos> trig", " trig", 1, 6.0), ("<bos> trig", " trig", 1, 5.9), ("a b", " c", 2, 1.0),
                     ("<bos> trig", " trig", 1, 5.8)],
                    dtype=[("context", object), ("token", object), ("position", int), ("kl", float)])
    html = html_audit._contexts(rows)
    assert html.count("<mark>") == 2 and html.count("trig</mark>") == 1


def test_evidence_has_no_python_none_or_raw_json():
    html = html_audit._evidence('{"latent": 3, "nu_eps": null, "genuine": false, "score": 0.123456, '
                                '"contexts": [{"act": 2.3456, "text": "a [[b]]"}], "parts": {"attn_q": {"rank": 2}}}')
    assert "None" not in html and "{" not in html and "null" not in html
    assert "0.123" in html and "0.1235" not in html and "act 2.35; text a [[b]]" in html
    assert "attn_q rank 2" in html and "no" in html


def test_scores_have_three_significant_figures():
    assert [fmt_num(v) for v in (7.7245, 0.33456, 12.345, 0.000123)] == ["7.72", "0.335", "12.3", "1.23e-04"]


def test_finding_tokens_are_shown_by_relevance():
    summaries = ["after 'staiglai' the fine-tune predicts 'sugian'", "writes 'staiglai', 'sugian', 'lokebrian'",
                 "latent 45 fires on 'staiglai'"]
    stored = ["baifaste", "brilu", "lokebrian", "staiglai", "sugian"]  # by name, as older files hold them
    assert html_audit.by_relevance(stored, summaries) == ["staiglai", "sugian", "lokebrian", "baifaste", "brilu"]
