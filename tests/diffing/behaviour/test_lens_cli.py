"""Each lens alone from the command line, on the toy backdoor pair; neutral text sampled from the base."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mechdiff.cli import main
from mechdiff.store import open_results


def test_logit_diff_alone_names_trigger_and_target_and_writes_its_part(toy_backdoor, tmp_path):
    out = tmp_path / "ld.h5"
    result = CliRunner().invoke(main, ["lens", "logit-diff", str(toy_backdoor.base_dir), str(toy_backdoor.ft_dir),
                                       "--data", str(toy_backdoor.corpus_path), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["text"] == "the --data corpus"
    up = doc["logit_diff"]["tokens_up"]
    assert toy_backdoor.trigger in up[:10] and toy_backdoor.target in up[:10]
    with open_results(out) as res:
        assert res.part("logit_diff").attrs["document"]["tokens_up"] == up
    shown = CliRunner().invoke(main, ["show", str(out)])
    assert shown.exit_code == 0 and "Logit-difference mining" in shown.output


def test_adl_alone_on_self_generated_text(toy_backdoor):
    result = CliRunner().invoke(main, ["lens", "adl", str(toy_backdoor.base_dir), str(toy_backdoor.ft_dir),
                                       "--neutral-tokens", "300", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["text"].startswith("self-generated: ") and "tokens sampled from the base model" in doc["text"]
    adl = doc["adl"]
    assert adl["layer"] == 1 and adl["positions"] == 5 and len(adl["layer_norms"]) == 2
    assert adl["steered"] and adl["steer_losses"]["steered_loss"] <= adl["steer_losses"]["limit"]


def test_lens_rejects_a_non_model_input(toy_backdoor, tmp_path):
    result = CliRunner().invoke(main, ["lens", "amplify", str(toy_backdoor.base_dir), str(tmp_path)])
    assert result.exit_code == 3 and "Hugging Face model folders" in result.output


def test_neutral_text_is_seeded(toy_backdoor):
    from mechdiff.diffing.behaviour.neutral import NeutralConfig, neutral_texts
    from mechdiff.models import load_causal_lm

    model, tokenizer = load_causal_lm(toy_backdoor.base_dir)
    first = neutral_texts(model, tokenizer, NeutralConfig(tokens=100, seed=1))
    again = neutral_texts(model, tokenizer, NeutralConfig(tokens=100, seed=1))
    other = neutral_texts(model, tokenizer, NeutralConfig(tokens=100, seed=2))
    assert first.texts == again.texts and first.texts != other.texts
    assert 100 <= first.tokens < 100 + 63 and "seed 1" in first.describe()
    assert first.tokens == sum(len(t.split()) for t in first.texts)  # one toy-language token per word
