"""decompose_module / decompose_hf end to end on tiny models, and the /components round trip."""

import numpy as np
import pytest
import torch
from ckpt_builders import tiny_gpt2_lm
from torch import nn

from mechdiff.errors import InputError
from mechdiff.results import open_results
from mechdiff.store import ResultsWriter
from mechdiff.weightdecomp.spd.config import SPDConfig
from mechdiff.weightdecomp.spd.trainer import decompose_module


def test_decompose_hf_gpt2_conv1d_and_embedding(tmp_path):
    from mechdiff.weightdecomp.spd.hf import decompose_hf

    folder = tiny_gpt2_lm(tmp_path)
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
    folder = tiny_gpt2_lm(tmp_path)
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


def test_a_bfloat16_model_is_decomposed_into_float32_components_and_its_dtype_is_kept(tmp_path):
    torch.manual_seed(0)
    model = _TwoLayer().to(torch.bfloat16)
    batches = [torch.randn(32, 4, dtype=torch.bfloat16) for _ in range(2)]
    decomp = decompose_module(model, ["a", "b"], batches, SPDConfig(n_components=3, steps=20, eval_batches=2), "mse")
    assert decomp.model_dtype == "bfloat16" and decomp.summary()["model_dtype"] == "bfloat16"
    assert all(m.V_IC.dtype == np.float32 and m.U_CO.dtype == np.float32 for m in decomp.modules.values())
    assert np.isfinite([h["total"] for h in decomp.history]).all()
    assert next(model.parameters()).dtype == torch.bfloat16  # the model itself still runs in bf16
    out = tmp_path / "bf16.h5"
    with ResultsWriter(out, command="test") as w:
        decomp.write(w)
    with open_results(out) as res:
        assert res.components.decomposition().model_dtype == "bfloat16"
        assert res.components.to_json()["model_dtype"] == "bfloat16"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_every_tensor_of_the_training_lives_on_the_named_device(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from mechdiff.weightdecomp.spd.trainer import SPDTrainer

    torch.manual_seed(0)
    model = _TwoLayer()  # built on the CPU: the trainer moves it
    trainer = SPDTrainer(model, ["a", "b"], SPDConfig(n_components=3, steps=2), "mse", device=device)
    trainer.step(torch.randn(8, 4), 0)  # a CPU batch: moved too
    want = torch.device(device).type
    tensors = [*model.parameters(), *trainer.params, *trainer.target_weights, *trainer.hooks.inputs.values(),
               *(b for layer in trainer.layers.values() for b in layer.buffers())]
    assert {t.device.type for t in tensors} == {want} and trainer.generator.device.type == want
    assert {s.device.type for st in trainer.optimizer.state.values() for k, s in st.items() if k != "step"} == {want}
    decomp = trainer.decomposition(trainer.ci_statistics([torch.randn(8, 4)]), [])
    assert isinstance(decomp.modules["a"].V_IC, np.ndarray)  # results come back on the CPU
    trainer.hooks.remove()


def test_one_shot_iterator_that_runs_out_is_an_input_error():
    model = _TwoLayer()
    with pytest.raises(InputError, match="ran out"):
        decompose_module(model, ["a"], iter([torch.randn(2, 4)] * 3), SPDConfig(steps=5), "mse")
