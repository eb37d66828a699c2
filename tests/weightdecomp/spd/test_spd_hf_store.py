"""decompose_module / decompose_hf end to end on tiny models, and the /components round trip."""

import numpy as np
import pytest
import torch
from torch import nn

from mechdiff.errors import InputError
from mechdiff.results import open_results
from mechdiff.store import ResultsWriter
from mechdiff.weightdecomp.spd.config import SPDConfig
from mechdiff.weightdecomp.spd.trainer import decompose_module


def _tiny_gpt2(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "red", "blue"]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=16, n_embd=8, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    (tmp_path / "data.txt").write_text(" ".join(rng.choice(words, size=400)))
    return tmp_path


def test_decompose_hf_gpt2_conv1d_and_embedding(tmp_path):
    from mechdiff.weightdecomp.spd.hf import decompose_hf

    folder = _tiny_gpt2(tmp_path)
    config = SPDConfig(n_components=4, steps=6, eval_batches=2, lr=1e-2)
    decomp = decompose_hf(folder, ["transformer.h.0.mlp.c_fc", "transformer.wte"], folder / "data.txt",
                          config, seq_len=8, batch_sequences=4)
    assert decomp.output == "kl"
    assert list(decomp.modules) == ["transformer.wte", "transformer.h.0.mlp.c_fc"]
    fc = decomp.modules["transformer.h.0.mlp.c_fc"]
    wte = decomp.modules["transformer.wte"]
    assert fc.kind == "conv1d" and fc.V_IC.shape == (8, 4) and fc.U_CO.shape == (4, 32)
    assert wte.kind == "embedding" and wte.V_IC.shape == (12, 4) and wte.U_CO.shape == (4, 8)
    assert np.isfinite([h["total"] for h in decomp.history]).all()
    summary = decomp.summary()
    assert [(m["module"], m["d_in"], m["d_out"]) for m in summary["modules"]] == [
        ("transformer.wte", 12, 8), ("transformer.h.0.mlp.c_fc", 8, 32)]
    assert ((fc.alive_frequency_C >= 0) & (fc.alive_frequency_C <= 1)).all()


def test_decompose_hf_input_errors(tmp_path):
    from mechdiff.weightdecomp.spd.hf import decompose_hf

    with pytest.raises(InputError, match="config.json"):
        decompose_hf(tmp_path, ["x"], tmp_path / "d.txt", SPDConfig())
    folder = _tiny_gpt2(tmp_path)
    (folder / "short.txt").write_text("the cat")
    with pytest.raises(InputError, match="fewer than one batch"):
        decompose_hf(folder, ["transformer.h.0.mlp.c_fc"], folder / "short.txt", SPDConfig(steps=1))


class _TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3, bias=False)
        self.b = nn.Linear(3, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_decompose_module_becomes_faithful_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = _TwoLayer()
    batches = [torch.randn(64, 4) for _ in range(4)]
    config = SPDConfig(n_components=6, steps=100, lr=1e-2, eval_batches=2)
    decomp = decompose_module(model, ["a", "b"], batches, config, "mse")
    # Hooks are gone afterwards: the model computes what it did before.
    assert not model.a._forward_hooks and not model.b._forward_hooks
    for name, module in (("a", model.a), ("b", model.b)):
        W = module.weight.detach().numpy()
        rel = np.linalg.norm(decomp.modules[name].weight() - W) / np.linalg.norm(W)
        assert rel < 0.3, (name, rel)  # starts near 1: random components of the same scale
    first, last = decomp.history[0], decomp.history[-1]
    assert last["faithfulness"] < 0.05 * first["faithfulness"]

    out = tmp_path / "spd.h5"
    with ResultsWriter(out, command="test", inputs={"base": "tiny"}) as w:
        decomp.write(w)
    with open_results(out) as res:
        part = res.components
        assert part.modules == ["a", "b"]
        np.testing.assert_allclose(part.U("a"), decomp.modules["a"].U_CO, rtol=1e-6)
        back = part.decomposition()
    assert back.config == config
    for name in ("a", "b"):
        mod, got = decomp.modules[name], back.modules[name]
        np.testing.assert_allclose(got.V_IC, mod.V_IC, rtol=1e-6)
        np.testing.assert_allclose(got.alive_frequency_C, mod.alive_frequency_C, rtol=1e-6)
        np.testing.assert_allclose(got.norms_C, mod.norms_C, rtol=1e-5)
        x = torch.randn(5, 4 if name == "a" else 3)
        torch.testing.assert_close(got.causal_importance(x), mod.causal_importance(x))


def test_one_shot_iterator_that_runs_out_is_an_input_error():
    model = _TwoLayer()
    with pytest.raises(InputError, match="ran out"):
        decompose_module(model, ["a"], iter([torch.randn(2, 4)] * 3), SPDConfig(steps=5), "mse")
