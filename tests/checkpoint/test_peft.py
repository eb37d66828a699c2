"""PEFT LoRA adapters applied over a base: the delta must equal scale * B @ A, computed independently."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ckpt_builders import (
    GPT2_CONFIG,
    LLAMA_CONFIG,
    gpt2_state,
    llama_state,
    save_folder,
)
from safetensors.torch import save_file

from mechdiff.checkpoint import LoraSource, open_source
from mechdiff.errors import InputError

PREFIX = "base_model.model."


def write_adapter(folder, tensors, **config):
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
    return folder


def test_lora_delta_with_alpha_over_r_and_rslora(tmp_path):
    state = llama_state(0)
    base = open_source(save_folder(tmp_path / "base", state, LLAMA_CONFIG))
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 64, generator=g), torch.randn(64, 4, generator=g)
    module = "model.layers.1.self_attn.q_proj"
    tensors = {f"{PREFIX}{module}.lora_A.weight": a, f"{PREFIX}{module}.lora_B.weight": b}
    name = module + ".weight"
    plain = LoraSource(base, write_adapter(tmp_path / "plain", tensors))
    expected = state[name] + (b @ a) * (8 / 4)  # alpha / r = 2
    torch.testing.assert_close(plain.get(name), expected)
    rs = LoraSource(base, write_adapter(tmp_path / "rs", tensors, use_rslora=True))
    torch.testing.assert_close(rs.get(name), state[name] + (b @ a) * (8 / math.sqrt(4)))
    untouched = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(plain.get(untouched), state[untouched])


def test_rank_and_alpha_patterns(tmp_path):
    state = llama_state(0)
    base = open_source(save_folder(tmp_path / "base", state, LLAMA_CONFIG))
    tensors = {}
    for i, r in ((0, 4), (1, 2)):
        m = f"model.layers.{i}.self_attn.q_proj"
        tensors[f"{PREFIX}{m}.lora_A.weight"] = torch.ones(r, 64)
        tensors[f"{PREFIX}{m}.lora_B.weight"] = torch.ones(64, r)
    src = LoraSource(base, write_adapter(tmp_path / "pat", tensors, rank_pattern={"layers.1.self_attn.q_proj": 2},
                                         alpha_pattern={"layers.1.self_attn.q_proj": 1}))
    d0 = src.get("model.layers.0.self_attn.q_proj.weight") - state["model.layers.0.self_attn.q_proj.weight"]
    d1 = src.get("model.layers.1.self_attn.q_proj.weight") - state["model.layers.1.self_attn.q_proj.weight"]
    torch.testing.assert_close(d0, torch.full((64, 64), 4 * 8 / 4))  # r=4 ones: B@A = 4, scale 2
    torch.testing.assert_close(d1, torch.full((64, 64), 2 * 1 / 2))  # r=2, alpha 1: scale 0.5


def test_gpt2_fan_in_fan_out_embedding_adapter_and_modules_to_save(tmp_path):
    state = gpt2_state(0)
    base = open_source(save_folder(tmp_path / "base", state, GPT2_CONFIG))
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 64, generator=g), torch.randn(192, 2, generator=g)
    ea, eb = torch.randn(2, 100, generator=g), torch.randn(64, 2, generator=g)
    score = torch.randn(3, 64, generator=g)
    tensors = {
        f"{PREFIX}transformer.h.0.attn.c_attn.lora_A.weight": a,
        f"{PREFIX}transformer.h.0.attn.c_attn.lora_B.weight": b,
        f"{PREFIX}transformer.wte.lora_embedding_A": ea,
        f"{PREFIX}transformer.wte.lora_embedding_B": eb,
        f"{PREFIX}score.weight": score,
    }
    src = LoraSource(base, write_adapter(tmp_path / "ad", tensors, r=2, lora_alpha=2, fan_in_fan_out=True))
    # Conv1D stores [in, out]: the update is (B @ A)^T
    torch.testing.assert_close(src.get("transformer.h.0.attn.c_attn.weight"),
                               state["transformer.h.0.attn.c_attn.weight"] + (b @ a).T)
    torch.testing.assert_close(src.get("transformer.wte.weight"), state["transformer.wte.weight"] + (eb @ ea).T)
    assert "score.weight" in src.names() and torch.equal(src.get("score.weight"), score)


def test_dora_and_wrong_base_are_refused(tmp_path):
    base = open_source(save_folder(tmp_path / "base", llama_state(0), LLAMA_CONFIG))
    with pytest.raises(InputError, match="DoRA"):
        LoraSource(base, write_adapter(tmp_path / "dora", {"x.lora_A.weight": torch.ones(1, 1)}, use_dora=True))
    bad = {f"{PREFIX}model.layers.7.self_attn.q_proj.lora_A.weight": torch.ones(4, 64),
           f"{PREFIX}model.layers.7.self_attn.q_proj.lora_B.weight": torch.ones(64, 4)}
    with pytest.raises(InputError, match="does not have"):
        LoraSource(base, write_adapter(tmp_path / "bad", bad))
