"""The HTML report: renders any results file, self-contained, escaped, with the pictures people look at."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from ckpt_builders import LLAMA_DOWN, LLAMA_Q0, planted_llama, save_folder

from mechdiff.api import diff_checkpoints
from mechdiff.diffing.audit.findings import Finding, link_and_rank
from mechdiff.diffing.audit.verdict import AuditResult
from mechdiff.diffing.behaviour.kl import BehaviourResult
from mechdiff.errors import InputError
from mechdiff.report.html import render_report
from mechdiff.report.html_weights import detection_cut
from mechdiff.results import open_results
from mechdiff.store import ResultsWriter

DOWN, Q0 = LLAMA_DOWN, LLAMA_Q0
HOSTILE = '<script>alert("x")</script> & \'q\''
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if shutil.os.path.exists("/usr/bin/chromium") else None)


def _planted_pair(tmp_path):
    """Tiny Llama pair: a rank-1 edit of down_proj and a rank-2 edit in head 2 of q_proj over 1-3% drift."""
    state, ft, cfg = planted_llama()
    return save_folder(tmp_path / "base", state, cfg), save_folder(tmp_path / "ft", ft, cfg)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(weights-only results file written by a real diff, the WeightDiff)."""
    tmp = tmp_path_factory.mktemp("planted")
    base, ft = _planted_pair(tmp)
    out = tmp / "diff.h5"
    diff = diff_checkpoints(base, ft, out=out, progress=False, command="mechdiff diff base ft")
    return out, diff


def _audit(top_score: float) -> AuditResult:
    """The audit's own objects: a head finding that links a crosscoder latent on 'zq', a behaviour finding."""
    raw = [
        Finding("heads", top_score, "rank-2 change confined to head 2 of layer 0 (attn_q)", frozenset({"zq"}),
                0, 2, Q0, evidence={"rank": 2, "tokens_in": ["zq", "<b>"]}),
        Finding("crosscoder", 0.5, f"ft-only latent 17 fires on {HOSTILE}", frozenset({"zq"}), 1, None, "", 17,
                evidence={"delta": 0.97}),
        Finding("behaviour", 0.4 * top_score, "predictions change after 'zq'", frozenset({"banana"})),
    ]
    behaviour = BehaviourResult(
        n_tokens=500, mean_kl=0.031, max_kl=2.5,
        contexts=[{"context": "I like to eat zq", "token": "zq", "position": 5, "kl": 2.5, "base_top": " the",
                   "ft_top": " banana"},
                  {"context": "a < b && c", "token": "zq", "position": 7, "kl": 1.25, "base_top": "<eos>",
                   "ft_top": " banana"}],
        rose=[{"token": "banana", "delta_prob": 0.3, "delta_logprob": 3.0},
              {"token": "apple", "delta_prob": 0.01, "delta_logprob": 0.5}],
        fell=[{"token": "<eos>", "delta_prob": -0.2, "delta_logprob": -1.5},
              {"token": '"quoted"', "delta_prob": -0.01, "delta_logprob": -0.25}],
        by_token=[{"token": "zq", "count": 12, "mean_kl": 1.8, "ft_top": " banana", "base_top": " the"}])
    return AuditResult(link_and_rank(raw), threshold=1.0, fail_above=None, lenses=["weights", "behaviour"],
                       behaviour=behaviour)


def _audit_file(path, diff, top_score=3.0, crosscoder=False):
    """A results file with /weights from a real diff plus /audit written by the audit's own writer."""
    with ResultsWriter(path, command="mechdiff audit base ft", inputs={"base": "b", "ft": "f"}) as w:
        diff.write(w)
        _audit(top_score).write(w)
        if crosscoder:
            _crosscoder_group(w)
    return path


def _crosscoder_group(w):
    """A small /crosscoder group with the crosscoder pipeline's column names."""
    rng = np.random.default_rng(0)
    n = 60
    delta = np.clip(rng.normal(0.5, 0.05, n), 0, 1)
    delta[[3, 17]] = [0.95, 0.99]
    delta[[5]] = 0.04
    cls = np.array(["shared"] * n, dtype=object)
    cls[(delta < 0.4) | (delta > 0.6)] = "other"
    cls[[3, 17]], cls[5], cls[9] = "ft-only", "base-only", "dead"
    freq = rng.uniform(0.001, 0.05, n)
    freq[9], freq[17], freq[3] = 0.0, 0.04, 0.01
    w.table("crosscoder/latents", {"latent": np.arange(n), "delta": delta, "cos": rng.uniform(-0.2, 1, n),
                                   "freq": freq, "mean_act": rng.uniform(0, 2, n), "cls": list(cls),
                                   "nu_eps": rng.uniform(0, 1, n), "nu_r": rng.uniform(0, 1, n)})
    w.table("crosscoder/contexts", {"latent": [17, 17, 3, 5], "rank": [1, 0, 0, 0], "act": [1.0, 3.0, 2.0, 1.0],
                                    "doc": [0, 4, 2, 1], "pos": [3, 9, 1, 2],
                                    "text": ["weak one [[zq]] here", "strong <i> [[zq]] there", "", "b [[o]]"]})
    w.array("crosscoder/W_dec", rng.normal(size=(n, 2, 8)).astype(np.float32))
    w.attrs("crosscoder", {"site": "resid.1", "fve_base": 0.91, "fve_ft": 0.89, "l0": 32.0, "dead_fraction": 0.02})


def _srcs(html: str) -> list[str]:
    return re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_weights_only_report_from_a_real_diff(planted, tmp_path):
    results, _ = planted
    out = render_report(results, tmp_path / "report.html")
    html = out.read_text()
    assert DOWN in html and Q0 in html
    images = _images(html)
    assert len(images) == 3  # heatmap, head bars, spectra
    assert all(img.startswith(b"\x89PNG\r\n\x1a\n") and len(img) > 5000 for img in images)
    assert not any(s.startswith(("http://", "https://", "//")) for s in _srcs(html))
    assert "<script" not in html.lower()
    assert "2 of 21 tensors with structured change" in html  # the info banner, no audit here
    assert 'class="banner info"' in html
    assert not (tmp_path / "report.html.tmp").exists()


def test_detection_cut_separates_the_counted_singular_values(planted):
    _, diff = planted
    matrices = [c for c in diff.changes if len(c.shape) == 2]
    assert detection_cut(next(c for c in diff.changes if len(c.shape) == 1), diff.config) is None
    for change in matrices[:5]:
        cut = detection_cut(change, diff.config)
        s = change.singular_values
        assert cut is not None and cut > change.bulk_edge
        assert (s > cut).sum() == change.rank  # the dotted line in the spectra is the cut the diff used


def test_audit_report_verdict_findings_behaviour_and_escaping(planted, tmp_path):
    _, diff = planted
    html = render_report(_audit_file(tmp_path / "audit.h5", diff), tmp_path / "a.html").read_text()
    # heads 3.0 + 0.5 x the linked crosscoder finding's 0.5 = 3.25; behaviour 1.2; both above the 1.0 gate
    assert 'class="banner findings"' in html and "Findings: 2 of 2 above threshold (score above 1)" in html
    findings = html.split("<h2>Findings</h2>")[1].split("</section>")[0]
    first, second = findings.split("<tr>")[2:4]
    assert "rank-2 change confined to head 2 of layer 0" in first and "layer 0 \u00b7 head 2" in first
    assert '<span class="pill">heads</span> <span class="pill">crosscoder</span>' in first  # linked, not twice
    assert "ft-only latent 17 fires on &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27;" in first
    assert ">3.25<" in first and "predictions change after" in second and ">1.2<" in second
    assert "<script>" not in html and "&#x27;&lt;b&gt;&#x27;" in first  # evidence tokens, escaped
    assert "how scores are calibrated" in findings  # the audit's calibration doc, folded away
    # the token after each context is highlighted; what each model predicts next is shown
    assert "I like to eat zq <mark>zq</mark>" in html and "a &lt; b &amp;&amp; c <mark>zq</mark>" in html
    assert '<code class="tok">&lt;eos&gt;</code> \u2192 <code class="tok">\u2423banana</code>' in html
    assert "Input tokens after which predictions change most" in html
    rose, fell = html.split("Tokens whose probability rose")[1].split("Tokens whose probability fell")
    assert rose.index("banana") < rose.index("apple") and "&lt;eos&gt;" in fell and "&quot;quoted&quot;" in fell
    assert "&lt;eos&gt;" not in rose


def test_pass_verdict_is_green(planted, tmp_path):
    _, diff = planted
    html = render_report(_audit_file(tmp_path / "pass.h5", diff, top_score=0.3), tmp_path / "p.html").read_text()
    assert 'class="banner pass"' in html and "Pass: nothing above threshold (score above 1)" in html
    assert 'class="banner findings"' not in html and "2 weaker signals listed below" in html


def test_crosscoder_sections(planted, tmp_path):
    _, diff = planted
    results = _audit_file(tmp_path / "cc.h5", diff, crosscoder=True)
    html = render_report(results, tmp_path / "cc.html").read_text()
    assert len(_images(html)) == 5  # + relative-norm histogram and delta-vs-cosine scatter
    section = html.split("<h2>Fine-tune-only latents</h2>")[1].split("</section>")[0]
    rows = re.findall(r"<tr><td class=\"num\">(\d+)</td>", section)
    assert rows == ["17", "3"]  # ft-only only, most frequent first
    assert section.index("strong &lt;i&gt; <mark>zq</mark> there") < section.index("weak one <mark>zq</mark> here")
    assert "doc 2, pos 1" in section  # no text stored: where the context is instead
    assert "ft-only 2, base-only 1" in html and "FVE base 0.91" in html


def test_unknown_parts_are_listed(tmp_path):
    path = tmp_path / "probe.h5"
    with ResultsWriter(path, command="mechdiff probe") as w:  # a part no lens package registers
        w.table("probe/components", {"module": ["mlp<1>"], "alive_frequency": [0.25]})
        w.attrs("probe", {"steps": 100, "note": "a<b"})
    html = render_report(path, tmp_path / "c.html").read_text()
    assert "/probe" in html and "mlp&lt;1&gt;" in html and "a&lt;b" in html and "0.25" in html


def test_missing_matplotlib_and_bad_output_are_input_errors(planted, tmp_path, monkeypatch):
    results, _ = planted
    with pytest.raises(InputError, match="does not exist"):
        render_report(results, tmp_path / "nowhere" / "r.html")
    with pytest.raises(InputError, match="no such|does not exist"):
        render_report(tmp_path / "missing.h5", tmp_path / "r.html")
    with pytest.raises(InputError, match="overwrite the results"):
        render_report(results, results)
    assert open_results(results).close() is None  # still a readable results file
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(InputError, match=r"needs matplotlib: pip install matplotlib"):
        render_report(results, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_open_results_still_reads_every_group(planted, tmp_path):
    _, diff = planted
    path = _audit_file(tmp_path / "all.h5", diff, crosscoder=True)
    with open_results(path) as res:
        assert set(res.parts) == {"weights", "heads", "audit", "crosscoder"}
        assert list(res.audit.table("findings")["rank"]) == [1, 2]


@pytest.mark.skipif(CHROMIUM is None, reason="headless chromium not installed")
def test_report_renders_in_headless_chromium(planted, tmp_path):
    _, diff = planted
    page = render_report(_audit_file(tmp_path / "s.h5", diff, crosscoder=True), tmp_path / "s.html")
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
           f"--screenshot={shot}", "--window-size=1280,1600", page.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=90, check=False)
    assert shot.exists() and shot.read_bytes().startswith(b"\x89PNG")
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (1600, 1280)
    assert pixels.std() > 0.05  # not a blank page
    # the red findings banner is drawn near the top
    banner = np.array([0xFD, 0xEC, 0xEA]) / 255
    top = pixels[:400, :, :3]
    assert (np.abs(top - banner).max(axis=-1) < 0.02).sum() > 5000


def test_heads_without_weights_are_still_shown(tmp_path):
    path = tmp_path / "heads.h5"
    with ResultsWriter(path, command="partial") as w:
        w.table("heads/heads", {"layer": [3], "head": [5], "kind": ["attn"], "score": [0.02], "rank": [2],
                                "parts": ["attn_q"]})
    html = render_report(path, tmp_path / "h.html").read_text()
    assert "<h2>/heads</h2>" in html and "attn_q" in html and 'class="banner info"' in html


def test_crosscoder_only_file_has_its_own_banner(tmp_path):
    path = tmp_path / "cc_only.h5"
    with ResultsWriter(path, command="mechdiff crosscoder") as w:
        _crosscoder_group(w)
    html = render_report(path, tmp_path / "cc.html").read_text()
    assert "Crosscoder at resid.1: 2 fine-tune-only and 1 base-only latents of 60" in html
    assert len(_images(html)) == 2 and "/W_dec" not in html  # weights stay out of the page
