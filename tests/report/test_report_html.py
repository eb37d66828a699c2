"""The HTML report: renders any results file, self-contained, escaped, with the pictures people look at."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from ckpt_builders import LLAMA_CONFIG, drift, llama_state, low_rank, save_folder

from mechdiff.api import diff_checkpoints
from mechdiff.errors import InputError
from mechdiff.report.html import render_report
from mechdiff.report.html_weights import detection_cut
from mechdiff.store import ResultsWriter, open_results

DOWN = "model.layers.1.mlp.down_proj.weight"
Q0 = "model.layers.0.self_attn.q_proj.weight"
HOSTILE = '<script>alert("x")</script> & \'q\''
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if shutil.os.path.exists("/usr/bin/chromium") else None)


def _planted_pair(tmp_path):
    """Tiny Llama pair: a rank-1 edit of down_proj and a rank-2 edit in head 2 of q_proj over 1-3% drift."""
    state = llama_state(0)
    rng = np.random.default_rng(5)
    ft = drift(state, {name: float(rng.uniform(0.01, 0.03)) for name in state})
    ft[DOWN] = ft[DOWN] + low_rank(tuple(state[DOWN].shape), 1, 0.01 * float(state[DOWN].norm()))
    head_edit = torch.zeros_like(state[Q0])
    head_edit[32:48] = low_rank((16, 64), 2, 0.02 * float(state[Q0].norm()), seed=9)
    ft[Q0] = ft[Q0] + head_edit
    return save_folder(tmp_path / "base", state, LLAMA_CONFIG), save_folder(tmp_path / "ft", ft, LLAMA_CONFIG)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(weights-only results file written by a real diff, the WeightDiff)."""
    tmp = tmp_path_factory.mktemp("planted")
    base, ft = _planted_pair(tmp)
    out = tmp / "diff.h5"
    diff = diff_checkpoints(base, ft, out=out, progress=False, command="mechdiff diff base ft")
    return out, diff


def _findings(n_above: int) -> dict:
    return {
        "rank": [1, 2, 3], "method": ["heads", "crosscoder", "behaviour"], "layer": [0, 1, -1],
        "head": [2, -1, -1], "tensor": [Q0, "", ""], "latent": [-1, 17, -1],
        "score": [0.9, 0.5, 0.01][:n_above] + [0.001] * (3 - n_above),
        "summary": ["rank-2 change confined to head 2 of layer 0; its input directions read 'zq'",
                    f"ft-only latent 17 fires on {HOSTILE}", "KL rises on 'zq' contexts"],
        "evidence": [json.dumps({"rank": 2, "tokens_in": ["zq", "<b>"]}), json.dumps({"delta": 0.97}), "{}"],
        "linked": ["[2]", "[1]", "[]"],
    }


def _audit_file(path, diff, verdict="findings", n_above=3, crosscoder=False):
    """A results file with /weights from a real diff plus an /audit group in the lead's schema."""
    with ResultsWriter(path, command="mechdiff audit base ft", inputs={"base": "b", "ft": "f"}) as w:
        diff.write(w)
        w.table("audit/findings", _findings(n_above))
        w.table("audit/behaviour_contexts", {"context": ["I like to eat zq", "a < b && c zq", "plain"],
                                             "token": [" zq", " zq", "banana"], "position": [5, 7, 2],
                                             "kl": [2.5, 1.25, 0.1]})
        w.table("audit/behaviour_tokens", {"token": ["banana", "<eos>", "apple", "\"quoted\""],
                                           "delta_logprob": [3.0, -1.5, 0.5, -0.25]})
        w.attrs("audit", {"verdict": verdict, "thresholds": {"weights": 0.005}, "fail_above": 0.1,
                          "calibration": "score = evidence above each lens's noise level", "mean_kl": 0.031,
                          "max_kl": 2.5})
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
                                   "freq": freq, "cls": list(cls), "nu_eps": rng.uniform(0, 1, n),
                                   "nu_r": rng.uniform(0, 1, n)})
    w.table("crosscoder/contexts", {"latent": [17, 17, 3], "act": [1.0, 3.0, 2.0],
                                    "context": ["weak one [[zq]] here", "strong <i> [[zq]] there", "x [[y]]"]})
    w.attrs("crosscoder", {"fve_base": 0.91, "fve_ft": 0.89, "l0": 32.0, "dead_fraction": 0.02})


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
    results = _audit_file(tmp_path / "audit.h5", diff, n_above=2)
    html = render_report(results, tmp_path / "a.html").read_text()
    assert 'class="banner findings"' in html and "Findings: 2 of 3 above threshold" in html
    assert "rank-2 change confined to head 2 of layer 0" in html
    assert "layer 0 \u00b7 head 2" in html and "latent 17" in html
    assert "<script>" not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27;" in html
    assert "&#x27;&lt;b&gt;&#x27;" in html  # evidence token list, escaped
    assert "#2" in html and "#1" in html  # linked findings
    # the changed token is highlighted in the KL contexts, escaped text around it
    assert "I like to eat<mark> zq</mark>" in html
    assert "a &lt; b &amp;&amp; c<mark> zq</mark>" in html
    assert "plain<mark>banana</mark>" in html
    rose, fell = html.split("Tokens whose probability rose")[1].split("Tokens whose probability fell")
    assert rose.index("banana") < rose.index("apple") and "&lt;eos&gt;" in fell and "&quot;quoted&quot;" in fell
    assert "&lt;eos&gt;" not in rose


def test_pass_verdict_is_green(planted, tmp_path):
    _, diff = planted
    results = _audit_file(tmp_path / "pass.h5", diff, verdict="pass", n_above=0)
    html = render_report(results, tmp_path / "p.html").read_text()
    assert 'class="banner pass"' in html and "Pass: nothing above threshold" in html
    assert 'class="banner findings"' not in html


def test_crosscoder_sections(planted, tmp_path):
    _, diff = planted
    results = _audit_file(tmp_path / "cc.h5", diff, crosscoder=True)
    html = render_report(results, tmp_path / "cc.html").read_text()
    assert len(_images(html)) == 5  # + relative-norm histogram and delta-vs-cosine scatter
    section = html.split("<h2>Fine-tune-only latents</h2>")[1].split("</section>")[0]
    rows = re.findall(r"<tr><td class=\"num\">(\d+)</td>", section)
    assert rows == ["17", "3"]  # ft-only only, most frequent first
    assert section.index("strong &lt;i&gt; <mark>zq</mark> there") < section.index("weak one <mark>zq</mark> here")
    assert "ft-only 2, base-only 1" in html and "FVE base 0.91" in html


def test_unknown_parts_are_listed(tmp_path):
    path = tmp_path / "comp.h5"
    with ResultsWriter(path, command="mechdiff decompose") as w:
        w.table("components/components", {"module": ["mlp<1>"], "alive_frequency": [0.25]})
        w.attrs("components", {"steps": 100, "note": "a<b"})
    html = render_report(path, tmp_path / "c.html").read_text()
    assert "/components" in html and "mlp&lt;1&gt;" in html and "a&lt;b" in html and "0.25" in html


def test_missing_matplotlib_and_bad_output_are_input_errors(planted, tmp_path, monkeypatch):
    results, _ = planted
    with pytest.raises(InputError, match="does not exist"):
        render_report(results, tmp_path / "nowhere" / "r.html")
    with pytest.raises(InputError, match="no such|does not exist"):
        render_report(tmp_path / "missing.h5", tmp_path / "r.html")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(InputError, match=r"pip install 'mechdiff\[report\]'"):
        render_report(results, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_open_results_still_reads_every_group(planted, tmp_path):
    _, diff = planted
    path = _audit_file(tmp_path / "all.h5", diff, crosscoder=True)
    with open_results(path) as res:
        assert set(res.parts) == {"weights", "heads", "audit", "crosscoder"}
        assert list(res.audit.table("findings")["rank"]) == [1, 2, 3]


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
