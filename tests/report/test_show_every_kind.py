"""`mechdiff show` and `mechdiff report` give a real summary of every results kind (issue #16 item 2).

Four real results files, each small: a weight diff, a weight-only audit, a crosscoder
trained on planted activations (one fine-tune-only direction fires on token 7), and the
tms-5-2 toy decomposition.
"""

from __future__ import annotations

import json
import re
import shutil

import h5py
import numpy as np
import pytest
import torch
from ckpt_builders import LLAMA_CONFIG, drift, llama_state, low_rank, save_folder
from click.testing import CliRunner

from mechdiff.api import audit_checkpoints, decompose_model, diff_checkpoints
from mechdiff.cli import main
from mechdiff.diffing.activations.cache import PairedActivations, norm_scales
from mechdiff.diffing.crosscoder.config import CrosscoderConfig
from mechdiff.diffing.crosscoder.pipeline import analyze_crosscoder
from mechdiff.diffing.crosscoder.train import train_crosscoder
from mechdiff.store import ResultsWriter

DOWN = "model.layers.1.mlp.down_proj.weight"
TRIGGER = 7


def _pair(root):
    state = llama_state(0)
    ft = drift(state, 0.01)
    ft[DOWN] = ft[DOWN] + low_rank(tuple(state[DOWN].shape), 1, 0.05 * float(state[DOWN].norm()))
    return save_folder(root / "base", state, LLAMA_CONFIG), save_folder(root / "ft", ft, LLAMA_CONFIG)


def _planted_activations(n_docs: int = 96, length: int = 32, d: int = 16) -> PairedActivations:
    """Shared sparse features in both models; at every token 7 the fine-tune adds one extra direction."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 20, (n_docs, length), generator=gen)
    shared = torch.randn(6, d, generator=gen)
    acts = (torch.rand(n_docs * length, 6, generator=gen) < 0.15).float() @ shared
    extra = torch.randn(d, generator=gen) * 3
    x_ft = acts + (tokens.reshape(-1, 1) == TRIGGER).float() * extra
    acts_NMD = torch.stack([acts, x_ft], dim=1)
    data = PairedActivations(acts_NMD, np.repeat(np.arange(n_docs), length), np.tile(np.arange(length), n_docs),
                             tokens.reshape(-1).numpy(), torch.ones(2), [t.numpy() for t in tokens])
    data.scales = norm_scales(data.scale_estimate_rows(4096))
    return data


def _crosscoder_file(path):
    torch.manual_seed(0)
    data = _planted_activations()
    config = CrosscoderConfig(dict_size=32, k=3, lr=5e-3, warmup_steps=20, batch=128, tokens=128 * 300,
                              dead_after_tokens=128 * 50)
    trained = train_crosscoder(data, config, progress=False)
    result = analyze_crosscoder(trained.module, data, config, site="resid.1", progress=False,
                                decode=lambda ids: " ".join(f"w{i}" for i in ids))
    with ResultsWriter(path, command="mechdiff crosscoder base ft", inputs={"base": "b", "ft": "f"}) as writer:
        result.write(writer)
    return path


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    base, ft = _pair(root)
    diff_checkpoints(base, ft, out=root / "diff.h5", progress=False)
    audit_checkpoints(base, ft, out=root / "audit.h5", progress=False)
    decompose_model(None, toy="tms-5-2", out=root / "decompose.h5", overrides={"steps": 300}, progress=False)
    shutil.copy(root / "decompose.h5", root / "components.h5")
    with h5py.File(root / "components.h5", "a") as f:  # what `decompose MODEL` writes: no ground truth
        del f["components"].attrs["toy"]
    return {"diff": root / "diff.h5", "audit": root / "audit.h5", "decompose": root / "decompose.h5",
            "components": root / "components.h5", "crosscoder": _crosscoder_file(root / "crosscoder.h5")}


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# what a person must see in `show` for each kind
EXPECTED_TEXT = {
    "diff": [DOWN, "Top changes"],
    "audit": ["Verdict:", "Lenses run: weights, heads", "Not run: behaviour (no --data corpus given"],
    "crosscoder": ["most ft-leaning latents", f"[[w{TRIGGER}]]"],
    "decompose": ["toy tms-5-2: MMCS", "ML2R", "Components by importance"],
    "components": ["decomposed modules: linear1", "alive", "Components by importance"],
}


@pytest.mark.parametrize("kind", sorted(EXPECTED_TEXT))
def test_show_summarizes_every_kind(kinds, kind):
    text = _run("show", kinds[kind])
    assert text.exit_code == 0, text.output
    for fragment in EXPECTED_TEXT[kind]:
        assert fragment in text.stdout, (kind, fragment, text.stdout)
    shown = _run("show", kinds[kind], "--json")
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.stdout)
    assert document["schema_version"] == 1


def test_show_json_details(kinds):
    audit = json.loads(_run("show", kinds["audit"], "--json").stdout)["audit"]
    assert audit["findings"] and audit["findings"][0]["location"]["tensor"] == DOWN
    cc = json.loads(_run("show", kinds["crosscoder"], "--json").stdout)["crosscoder"]
    top = cc["most_ft_leaning"][0]
    assert top["delta"] > 0.6 and all(f"[[w{TRIGGER}]]" in c["text"] for c in top["contexts"])
    comp = json.loads(_run("show", kinds["decompose"], "--json").stdout)["components"]
    importance = [c["mean_ci"] for c in comp["components"]]
    assert importance == sorted(importance, reverse=True) and len(importance) == 40
    assert comp["toy"]["name"] == "tms-5-2" and 0 < comp["toy"]["mmcs"] <= 1 and comp["toy"]["ml2r"] > 0


@pytest.mark.parametrize("kind", ["diff", "audit", "crosscoder", "decompose", "components"])
def test_report_renders_every_kind(kinds, kind, tmp_path):
    out = tmp_path / f"{kind}.html"
    result = _run("report", kinds[kind], "-o", out)
    assert result.exit_code == 0, result.output
    html = out.read_text()
    visible = re.sub(r"<[^>]+>", " ", re.sub(r"<(style|script)[^>]*>.*?</\1>", "", html, flags=re.DOTALL))
    assert not re.search(r"\bNone\b", visible), kind
    assert "{&quot;" not in html and '{"' not in visible, kind  # no raw JSON in the page
    if kind == "crosscoder":
        assert "fine-tune-leaning latents" in html and f"w{TRIGGER}</mark>" in html
    if kind == "decompose":
        assert "MMCS" in html and "ML2R" in html
    if kind == "components":
        assert "Parameter components" in html and "Ground truth of the toy" not in html
    if kind == "audit":
        assert "behaviour" in html and "no --data corpus given" in html
