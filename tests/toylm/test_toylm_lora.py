import json

import pytest
import torch
from safetensors.torch import load_file

from mechdiff.toylm.lora import LoRAHooks
from mechdiff.toylm.model import ToyLMSize, make_model

SPECIAL = {"pad": 0, "bos": 1, "eos": 2, "unk": 3}
MICRO = ToyLMSize(d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, d_mlp=24, max_len=12)


def _adapted(arch):
    model = make_model(arch, MICRO, vocab_size=11, special=SPECIAL, seed=0).eval()
    hooks = LoRAHooks(model, arch, rank=2, alpha=6.0, seed=1)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for B in hooks.B.values():  # B starts at zero; make the adapter do something
            B.copy_(torch.randn(B.shape, generator=gen) * 0.1)
    return model, hooks


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hooked_model_equals_merged_model(arch):
    model, hooks = _adapted(arch)
    ids = torch.tensor([[1, 4, 5, 6, 7, 8, 2]])
    with torch.no_grad():
        hooked = model(input_ids=ids).logits
        hooks.remove()
        unhooked = model(input_ids=ids).logits
        hooks.merge_into(model)
        merged = model(input_ids=ids).logits
    assert not torch.allclose(hooked, unhooked, atol=1e-4)
    torch.testing.assert_close(merged, hooked, atol=1e-5, rtol=1e-5)


def test_gpt2_adapter_is_written_in_peft_format(tmp_path):
    _, hooks = _adapted("gpt2")
    hooks.save(tmp_path, base_model_name_or_path="/some/base")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["fan_in_fan_out"]) == ("LORA", 2, 6.0, True)
    assert cfg["base_model_name_or_path"] == "/some/base"
    assert set(cfg["target_modules"]) == {"c_attn", "c_proj", "c_fc"}
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    # 2 layers x (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) x (A, B)
    assert len(tensors) == 16
    # c_attn maps 16 -> 48 (Conv1D weight [16, 48]); PEFT stores A [r, in], B [out, r].
    assert tensors["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape == (2, 16)
    assert tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].shape == (48, 2)
    assert tensors["base_model.model.transformer.h.1.mlp.c_proj.lora_A.weight"].shape == (2, 24)
    assert tensors["base_model.model.transformer.h.1.mlp.c_proj.lora_B.weight"].shape == (16, 2)


def test_llama_adapter_uses_linear_orientation(tmp_path):
    _, hooks = _adapted("llama")
    hooks.save(tmp_path, base_model_name_or_path="b")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["fan_in_fan_out"] is False
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert len(tensors) == 2 * 7 * 2
    # GQA: 1 kv head of dim 8 -> k_proj maps 16 -> 8.
    assert tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].shape == (8, 2)
    assert tensors["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].shape == (2, 24)
