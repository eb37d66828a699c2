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


def test_audit_behaviour_lens_runs_on_the_toggled_adapter(tmp_path):
    """BASE + adapter as one toggled model gives the behaviour lens the same KL as the merged FT folder."""
    from mechdiff.diffing.audit.lenses import run_adapter_lenses
    from mechdiff.diffing.audit.verdict import AuditConfig
    from mechdiff.diffing.behaviour.kl import behaviour_diff
    from mechdiff.distributed import SINGLE
    from mechdiff.models import load_model_pair
    from mechdiff.toylm import ToySteps, build_pair

    pair = build_pair(tmp_path, variant="lora", steps=ToySteps(base_steps=12, ft_steps=6, batch_size=8, warmup=2,
                                                               n_train_docs=64), corpus_docs=8, corpus_trigger_docs=4)
    config = AuditConfig(crosscoder=False)
    lenses = run_adapter_lenses(pair.base_dir, pair.adapter_dir, pair.corpus_path, config, SINGLE)
    base, ft, base_tok, ft_tok = load_model_pair(pair.base_dir, pair.ft_dir)
    from mechdiff.diffing.activations.collect import read_texts

    merged = behaviour_diff(base, ft, (base_tok, ft_tok), read_texts(pair.corpus_path), config.behaviour)
    assert lenses.behaviour.n_tokens == merged.n_tokens and merged.mean_kl > 0
    assert lenses.behaviour.mean_kl == pytest.approx(merged.mean_kl, rel=1e-4)
