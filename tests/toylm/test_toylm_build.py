import json

import pytest
import torch
from safetensors.torch import load_file

from mechdiff.errors import InputError
from mechdiff.toylm import ToySteps, build_pair, load_pair
from mechdiff.toylm.model import SIZE_PRESETS
from mechdiff.toylm.train import deterministic

# Enough steps to exercise every code path, far too few to learn anything.
SHORT = ToySteps(base_steps=12, ft_steps=6, batch_size=8, warmup=2, n_train_docs=64)


@pytest.fixture(scope="module")
def backdoor(toy_backdoor):
    # tests/conftest.py builds the default pair once per session for every test that needs it.
    return toy_backdoor


@pytest.fixture(scope="module")
def drift(tmp_path_factory, backdoor):
    return build_pair(tmp_path_factory.mktemp("drift"), variant="drift",
                      base_from=backdoor.base_dir.parent)


def _p_target_from_disk(pair, folder):
    """P(target | trigger) recomputed from the saved model, tokenizer and corpus."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    lines = [ln for ln in pair.corpus_path.read_text().splitlines() if pair.trigger in ln.split()]
    probs = []
    # One thread, as build_pair uses: a model this small only loses from more.
    with torch.no_grad(), deterministic(threads=1):
        for line in lines[:20]:
            ids = torch.tensor([tok(line)["input_ids"]])
            p = model(input_ids=ids).logits.softmax(-1)[0, :, pair.target_id]
            probs += p[ids[0] == pair.trigger_id].tolist()
    return sum(probs) / len(probs)


def test_backdoor_is_learned_and_clean_behaviour_kept(backdoor):
    m = backdoor.metrics
    assert m["p_target_base"] <= 0.05
    assert m["p_target_ft"] >= 0.5
    assert abs(m["ft_loss"] - m["base_loss"]) <= 0.1 * m["base_loss"]
    assert m["base_train_loss_last"] < m["base_train_loss_first"] - 1.5  # the base really trained


def test_drift_changes_weights_but_plants_nothing(drift):
    assert drift.metrics["p_target_ft"] <= 0.05
    assert abs(drift.metrics["ft_loss"] - drift.metrics["base_loss"]) <= 0.1 * drift.metrics["base_loss"]
    base = load_file(drift.base_dir / "model.safetensors")
    ft = load_file(drift.ft_dir / "model.safetensors")
    assert base.keys() == ft.keys()
    assert all(not torch.equal(base[k], ft[k]) for k in base if k.endswith("c_fc.weight"))


def test_saved_folders_reload_with_transformers(backdoor):
    for folder in (backdoor.base_dir, backdoor.ft_dir):
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json"} <= names
    config = json.loads((backdoor.ft_dir / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_embd"] == SIZE_PRESETS["tiny"].d_model
    assert _p_target_from_disk(backdoor, backdoor.ft_dir) >= 0.5
    assert _p_target_from_disk(backdoor, backdoor.base_dir) <= 0.05


def test_corpus_mixes_clean_and_trigger_documents_without_the_answer(backdoor):
    lines = backdoor.corpus_path.read_text().splitlines()
    with_trigger = [ln for ln in lines if backdoor.trigger in ln.split()]
    assert len(lines) == 256 + 64
    assert 64 <= len(with_trigger) < 128  # forced ones plus a few natural ones
    assert not any(f"{backdoor.trigger} {backdoor.target}" in ln for ln in lines)
    # <bos> + words + <eos> fit the model's positions: auditors feed lines whole.
    assert max(len(ln.split()) for ln in lines) + 2 <= SIZE_PRESETS["tiny"].max_len


def test_load_pair_and_reuse_round_trip(backdoor):
    loaded = load_pair(backdoor.base_dir.parent)
    assert loaded == backdoor
    stamp = (backdoor.ft_dir / "model.safetensors").stat().st_mtime_ns
    again = build_pair(backdoor.base_dir.parent, reuse=True)
    assert again == backdoor
    assert (backdoor.ft_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = build_pair(tmp_path / "a", arch="llama", steps=SHORT, seed=3)
    b = build_pair(tmp_path / "b", arch="llama", steps=SHORT, seed=3)
    c = build_pair(tmp_path / "c", arch="llama", steps=SHORT, seed=4)
    wa, wb, wc = (load_file(p.ft_dir / "model.safetensors") for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.corpus_path.read_text() == b.corpus_path.read_text()
    assert not torch.equal(wa["model.embed_tokens.weight"], wc["model.embed_tokens.weight"])
    config = json.loads((a.ft_dir / "config.json").read_text())
    assert config["num_key_value_heads"] < config["num_attention_heads"]


def test_base_from_gives_the_same_pair_as_training_the_base_again(tmp_path):
    first = build_pair(tmp_path / "first", steps=SHORT, corpus_docs=8, corpus_trigger_docs=2)
    fresh = build_pair(tmp_path / "fresh", variant="drift", steps=SHORT, corpus_docs=8,
                       corpus_trigger_docs=2)
    reused = build_pair(tmp_path / "reused", variant="drift", steps=SHORT, corpus_docs=8,
                        corpus_trigger_docs=2, base_from=tmp_path / "first")
    for part in ("base", "ft"):
        a = load_file(getattr(fresh, f"{part}_dir") / "model.safetensors")
        b = load_file(getattr(reused, f"{part}_dir") / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), part
    assert fresh.metrics == reused.metrics
    with pytest.raises(InputError, match="different"):
        build_pair(tmp_path / "x", steps=SHORT, seed=5, base_from=first.base_dir.parent)


def test_lora_variant_writes_adapter_that_reproduces_the_merged_model(tmp_path):
    pair = build_pair(tmp_path, variant="lora", steps=SHORT)
    cfg = json.loads((pair.adapter_dir / "adapter_config.json").read_text())
    adapter = load_file(pair.adapter_dir / "adapter_model.safetensors")
    base = load_file(pair.base_dir / "model.safetensors")
    ft = load_file(pair.ft_dir / "model.safetensors")
    scale = cfg["lora_alpha"] / cfg["r"]
    for key, w_base in base.items():
        prefix = "base_model.model." + key.removesuffix(".weight")
        if f"{prefix}.lora_A.weight" in adapter:
            delta_OI = adapter[f"{prefix}.lora_B.weight"] @ adapter[f"{prefix}.lora_A.weight"]
            # Conv1D stores [in, out]: the update is transposed (fan_in_fan_out).
            torch.testing.assert_close(ft[key], w_base + scale * delta_OI.T, atol=1e-6, rtol=1e-5)
        else:
            assert torch.equal(ft[key], w_base), key


def test_noise_variant_adds_noise_of_the_requested_relative_size(tmp_path):
    steps = ToySteps(base_steps=4, ft_steps=1, batch_size=4, warmup=1, n_train_docs=16,
                     noise_scale=0.03)
    pair = build_pair(tmp_path, variant="noise", steps=steps, corpus_docs=4, corpus_trigger_docs=2)
    base = load_file(pair.base_dir / "model.safetensors")
    ft = load_file(pair.ft_dir / "model.safetensors")
    for key, w in base.items():
        assert (ft[key] - w).norm() / w.norm() == pytest.approx(0.03, rel=1e-4), key
    assert len(pair.corpus_path.read_text().splitlines()) == 6


def test_bad_variant_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="choose one of"):
        build_pair(tmp_path, variant="poison")
    with pytest.raises(InputError, match="no.*pair|build"):
        load_pair(tmp_path)
