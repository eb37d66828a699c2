"""A LoRA fine-tune as one model with its adapter toggled: the FT view equals the merged model,
the BASE view equals the base, and no second copy of the weights exists."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mechdiff.adapter_toggle import AdapterToggle
from mechdiff.checkpoint import LoraSource, open_source
from mechdiff.toylm.lora import LoRAHooks
from mechdiff.toylm.model import ToyLMSize, make_model

SPECIAL = {"pad": 0, "bos": 1, "eos": 2, "unk": 3}
MICRO = ToyLMSize(d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, d_mlp=24, max_len=12)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_toggled_adapter_matches_base_and_merged_model(arch, tmp_path):
    model = make_model(arch, MICRO, vocab_size=11, special=SPECIAL, seed=0).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight" or arch == "llama"},
              str(tmp_path / "model.safetensors"))
    ids = torch.tensor([[1, 4, 5, 6, 7, 8, 2]])
    with torch.no_grad():
        base_logits = model(input_ids=ids).logits
        hooks = LoRAHooks(model, arch, rank=2, alpha=6.0, seed=1)
        gen = torch.Generator().manual_seed(2)
        for B in hooks.B.values():  # B starts at zero; make the adapter do something
            B.copy_(torch.randn(B.shape, generator=gen) * 0.1)
        ft_logits = model(input_ids=ids).logits
    hooks.save(tmp_path / "adapter", base_model_name_or_path=str(tmp_path))
    hooks.remove()
    n_params = sum(p.numel() for p in model.parameters())
    toggle = AdapterToggle(model, LoraSource(open_source(tmp_path / "model.safetensors"), tmp_path / "adapter"))
    base_view, ft_view = toggle.views()
    with torch.no_grad():
        torch.testing.assert_close(ft_view(input_ids=ids).logits, ft_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(base_view(input_ids=ids).logits, base_logits, atol=0, rtol=0)
        torch.testing.assert_close(ft_view(input_ids=ids).logits, ft_logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ft_logits, base_logits, atol=1e-4)
    assert sum(p.numel() for p in model.parameters()) == n_params  # one copy: hooks, no new weights
    assert base_view.config is model.config  # attributes pass through to the one model
    toggle.remove()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, base_logits, atol=0, rtol=0)
