"""End-to-end audit on generated models: the planted backdoor is the top finding; drift passes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from mechdiff.cli import main
from mechdiff.diffing.audit.findings import Finding, link_and_rank
from mechdiff.diffing.audit.verdict import AuditConfig, AuditThresholds
from mechdiff.results import open_results


def test_linking_merges_lenses_that_name_the_same_tokens():
    found = [
        Finding("behaviour", 3.0, "after 'zq' -> 'banana'", frozenset({"zq", "banana"})),
        Finding("weights", 0.4, "writes 'banana'", frozenset({"banana", "x"})),
        Finding("weights", 0.3, "writes 'y'", frozenset({"y"})),
        Finding("heads", 0.2, "head 5", frozenset()),
    ]
    ranked = link_and_rank(found)
    assert [f.method for f in ranked] == ["behaviour", "weights", "heads"]
    top = ranked[0]
    assert top.score == pytest.approx(3.5) and [link["method"] for link in top.linked] == ["weights"]
    assert [f.rank for f in ranked] == [1, 2, 3]


def _drift_pair(toy, root):
    """The toy base and a copy with 1% Gaussian drift on every matrix: no mechanism, no behaviour."""
    base, ft = root / "base", root / "ft"
    shutil.copytree(toy.base_dir, base)
    shutil.copytree(toy.base_dir, ft)
    state = load_file(str(ft / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for name, t in state.items():
        if t.ndim == 2:
            noise = torch.randn(t.shape, generator=g)
            state[name] = t + noise * (0.01 * t.norm() / noise.norm())
    save_file(state, str(ft / "model.safetensors"), metadata={"format": "pt"})
    return base, ft


@pytest.fixture(scope="module")
def audited(toy_backdoor, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    args = [str(toy_backdoor.base_dir), str(toy_backdoor.ft_dir), "--data", str(toy_backdoor.corpus_path),
            "-o", str(out / "a.h5"), "--report", str(out / "a.html"), "--json", "--no-progress", "--fail-above", "1"]
    return CliRunner().invoke(main, ["audit", *args]), out


def test_backdoor_is_the_top_finding_and_fails_the_gate(audited, toy_backdoor):
    result, out = audited
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "findings" and doc["schema_version"] == 1
    top = doc["findings"][0]
    assert toy_backdoor.trigger in top["summary"] and toy_backdoor.target in top["summary"]
    assert top["score"] > 1.0 and top["rank"] == 1
    assert {"behaviour", "weights", "heads"} <= {lens["name"] for lens in doc["lenses"] if lens["ran"]}
    with open_results(out / "a.h5") as res:
        assert {"weights", "heads", "audit", "crosscoder"} <= set(res.parts)
        assert res.crosscoder.module().dict_size == len(res.crosscoder.table("latents"))
        findings = res.audit.table("findings")
        assert findings["summary"][0] == top["summary"]
        assert res.audit.attrs["verdict"] == "findings"
        assert len(res.audit.table("behaviour_by_token")) > 0
    html = (out / "a.html").read_text()
    assert toy_backdoor.trigger in html and "data:image/png;base64," in html


def test_diffuse_drift_passes(toy_backdoor, tmp_path):
    base, ft = _drift_pair(toy_backdoor, tmp_path)
    result = CliRunner().invoke(main, ["audit", str(base), str(ft), "--data", str(toy_backdoor.corpus_path),
                                       "--json", "--no-progress", "--fail-above", "1", "--no-crosscoder"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "pass"
    assert all(f["score"] <= 1.0 for f in doc["findings"])


def test_audit_without_data_runs_the_weight_lens_only(toy_backdoor):
    result = CliRunner().invoke(main, ["audit", str(toy_backdoor.base_dir), str(toy_backdoor.ft_dir), "--json",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    lenses = {lens["name"]: lens for lens in json.loads(result.stdout)["lenses"]}
    assert [name for name, lens in lenses.items() if lens["ran"]] == ["weights", "heads"]
    for name in ("behaviour", "crosscoder"):
        assert not lenses[name]["ran"] and "no --data" in lenses[name]["why"]
    assert "--components" in lenses["components"]["why"]
    text = CliRunner().invoke(main, ["audit", str(toy_backdoor.base_dir), str(toy_backdoor.ft_dir), "--no-progress"])
    assert "Lenses run: weights, heads" in text.stdout and "Not run: behaviour (no --data" in text.stdout


def test_audit_config_validates():
    with pytest.raises(ValueError):
        AuditThresholds(finding=0)
    assert AuditConfig().thresholds.finding == 1.0


def test_components_lens_decomposes_base_and_reads_ft_in_its_components(toy_backdoor, tmp_path):
    from mechdiff.diffing.components.match import delta_in_components
    from mechdiff.models import load_causal_lm
    from mechdiff.weightdecomp.spd.components import find_targets, weight_out_in

    name, out = "transformer.h.1.mlp.c_fc", tmp_path / "c.h5"
    result = CliRunner().invoke(main, ["audit", str(toy_backdoor.base_dir), str(toy_backdoor.ft_dir), "--data",
                                       str(toy_backdoor.corpus_path), "--no-crosscoder", "--components",
                                       name, "--components-steps", "30", "-o", str(out),
                                       "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"name": "components", "ran": True, "why": ""} in doc["lenses"]
    with open_results(out) as res:
        assert res.components.attrs["modules"] == [name]
        module = res.components.module_components(name)  # BASE's decomposition, as stored
        table = res.audit.table("findings")
    evidence = [json.loads(e) for m, e in zip(table["method"], table["evidence"]) if m == "components"]
    assert evidence

    def in_components(folder):
        model, _ = load_causal_lm(folder)
        target = find_targets(model, [name])[name]
        return delta_in_components(module, weight_out_in(target, module.kind).detach().float().numpy())

    # the reported numbers are FT's weight fitted by BASE's stored components, recomputed here
    ft, base = in_components(toy_backdoor.ft_dir), in_components(toy_backdoor.base_dir)
    changes = dict(zip(ft.indices.tolist(), ft.coef_change_K.tolist()))
    rescaled = [e for e in evidence if "coef_change" in e]
    assert rescaled, evidence
    for e in rescaled:
        assert e["coef_change"] == pytest.approx(changes[e["component"]], rel=1e-4, abs=1e-6), e
    # reading BASE in its own components would report other numbers (the fine-tune changed this module)
    base_changes = dict(zip(base.indices.tolist(), base.coef_change_K.tolist()))
    assert max(abs(base_changes[e["component"]] - e["coef_change"]) for e in rescaled) > 1e-3
