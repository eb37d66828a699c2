"""End-to-end audit on generated models: the planted backdoor is the top finding; drift passes."""

from __future__ import annotations

import json
import shutil

import numpy as np
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
    # 3.0 + 0.5 x the linked weights finding's score (0.4): a weak corroboration adds little
    assert top.score == pytest.approx(3.2) and [link["method"] for link in top.linked] == ["weights"]
    # banana is named by both lenses, so it leads; then the anchor's own, then the linked finding's
    assert top.own_tokens == frozenset({"zq", "banana"}) and top.ranked_tokens() == ["banana", "zq", "x"]
    assert [f.rank for f in ranked] == [1, 2, 3]


def test_lenses_that_read_one_measurement_do_not_corroborate_each_other():
    # the KL lens and logit-diff mining both read the next-token distributions of one text: their
    # agreement is one piece of evidence, so it adds nothing; a weight finding naming the token does
    found = [
        Finding("behaviour", 0.43, "after 'zq' -> 'banana'", ("banana", "zq")),
        Finding("logit_diff", 0.29, "'banana' rose", ("banana",)),
    ]
    assert link_and_rank(found)[0].score == pytest.approx(0.43)
    found = [
        Finding("behaviour", 0.43, "after 'zq' -> 'banana'", ("banana", "zq")),
        Finding("logit_diff", 0.29, "'banana' rose", ("banana",)),
        Finding("weights", 0.4, "writes 'banana'", ("banana",)),
        Finding("heads", 0.3, "head 1 writes 'banana'", ("banana",)),
    ]
    top = link_and_rank(found)[0]
    assert top.score == pytest.approx(0.43 + 0.5 * 0.4)
    assert {link["method"] for link in top.linked} == {"logit_diff", "weights", "heads"}


def test_within_one_measurement_the_reading_that_names_the_context_leads():
    # logit-diff's "'banana' rose" scored higher than the KL lens's "after 'zq' -> 'banana'"; the latter
    # says more (the trigger), so it leads the merged finding at the stronger score
    found = [
        Finding("logit_diff", 5.9, "'banana' rose", ("banana",)),
        Finding("weights", 1.2, "writes 'banana'", ("banana", "x")),
        Finding("behaviour", 4.9, "after 'zq' -> 'banana'", ("banana", "zq")),
    ]
    (top,) = link_and_rank(found)
    assert top.method == "behaviour" and "zq" in top.summary
    assert top.score == pytest.approx(5.9 + 0.5 * 1.0)
    assert [link["method"] for link in top.linked] == ["logit_diff", "weights"]
    assert top.ranked_tokens()[0] == "banana" and {"zq", "x"} <= set(top.ranked_tokens())


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


def test_difference_lenses_name_the_backdoor_and_its_weights_cause_it(audited, toy_backdoor):
    result, out = audited
    doc = json.loads(result.stdout)
    assert {"adl", "logit_diff", "amplified", "causal"} <= {e["name"] for e in doc["lenses"] if e["ran"]}
    assert set(doc["adl"]) >= {"layer", "positions", "tokens_up", "tokens_down", "steered"}
    assert all(isinstance(t, str) for t in doc["adl"]["tokens_up"] + doc["logit_diff"]["tokens_up"])
    named = set(doc["adl"]["tokens_up"][:10]) | set(doc["logit_diff"]["tokens_up"][:10])
    assert {toy_backdoor.trigger, toy_backdoor.target} <= named
    assert doc["logit_diff"]["topics"] and set(doc["logit_diff"]["topics"][0]) == {"tokens", "contexts"}
    assert doc["adl"]["steered"][0]["alpha"] > 0 and doc["adl"]["steered"][0]["text"]
    by_alpha = {row["alpha"]: row["rates"] for row in doc["amplified"]}
    assert by_alpha[max(by_alpha)][toy_backdoor.target] > by_alpha[0.0][toy_backdoor.target]
    joint = doc["causal"]
    assert joint["ablate_kl_fraction"] >= 0.8 and joint["amplify_kl_ratio"] > 1.0
    assert joint["drift_ablate_kl_fraction"] < 0.2 and joint["findings"]
    tested = [f for f in doc["findings"] if f["method"] in ("weights", "heads")]
    tested += [link for f in doc["findings"] for link in f["linked"] if link["method"] in ("weights", "heads")]
    assert tested and all(set(t["causal"]) >= {"ablate_kl_fraction", "amplify_kl_ratio", "drift_ablate_kl_fraction"}
                          for t in tested)
    with open_results(out / "a.h5") as res:
        assert {"adl", "logit_diff", "amplified"} <= set(res.parts)
        assert res.audit.attrs["causal"]["ablate_kl_fraction"] == pytest.approx(joint["ablate_kl_fraction"])
        norms, layer = np.asarray(res.adl.array("layer_norms")), res.adl.attrs["layer"]
        assert np.linalg.norm(np.asarray(res.adl.array("delta"))) == pytest.approx(norms[layer], rel=1e-5)


def test_diffuse_drift_passes(toy_backdoor, tmp_path):
    base, ft = _drift_pair(toy_backdoor, tmp_path)
    result = CliRunner().invoke(main, ["audit", str(base), str(ft), "--data", str(toy_backdoor.corpus_path),
                                       "--json", "--no-progress", "--fail-above", "1", "--no-crosscoder"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "pass"
    assert all(f["score"] <= 1.0 for f in doc["findings"])


def test_audit_without_data_runs_the_model_lenses_on_text_sampled_from_the_base(toy_backdoor):
    result = CliRunner().invoke(main, ["audit", str(toy_backdoor.base_dir), str(toy_backdoor.ft_dir), "--json",
                                       "--no-progress", "--neutral-tokens", "1000"])
    assert result.exit_code in (0, 1), result.output
    doc = json.loads(result.stdout)
    assert {"behaviour", "adl", "logit_diff", "heads", "weights"} <= {e["name"] for e in doc["lenses"] if e["ran"]}
    crosscoder = next(e for e in doc["lenses"] if e["name"] == "crosscoder")
    assert not crosscoder["ran"] and "no --data" in crosscoder["why"]
    assert doc["text"].startswith("self-generated: ") and "tokens sampled from the base" in doc["text"]
    tokens = int(doc["text"].split(" tokens")[0].split()[-1])
    assert 1000 <= tokens < 1000 + 63  # the last document may run past the target
    assert doc["behaviour"]["n_tokens"] >= tokens  # every sampled token is read (BOS adds one per document)
    assert "--components" in next(e for e in doc["lenses"] if e["name"] == "components")["why"]
    text = CliRunner().invoke(main, ["audit", str(toy_backdoor.base_dir), str(toy_backdoor.ft_dir), "--no-progress",
                                     "--neutral-tokens", "200"])
    assert "Not run: crosscoder (no --data" in text.stdout and "Text the models were run on: self-generated" in text.stdout


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
