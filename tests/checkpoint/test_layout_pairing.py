"""Layouts as data, and aligning two checkpoints' tensors."""

from __future__ import annotations

import pytest
import torch
from ckpt_builders import (
    GPT2_CONFIG,
    LLAMA_CONFIG,
    gpt2_state,
    llama_state,
    save_folder,
)

from mechdiff.checkpoint import open_source, pair_sources, select_layout
from mechdiff.checkpoint.layout import layout_names
from mechdiff.errors import InputError


def test_builtin_layouts():
    assert {"gpt2", "llama", "gemma", "bert"} <= set(layout_names())


def test_gpt2_layout_marks_conv1d_orientation_and_fused_qkv():
    layout = select_layout(GPT2_CONFIG, list(gpt2_state()))
    info = layout.describe("transformer.h.1.attn.c_attn.weight")
    assert (info.layer, info.kind, info.orientation, info.heads) == (1, "attn_qkv", "in_out", "qkv")
    assert layout.describe("transformer.h.0.attn.bias") is None  # causal mask buffer, not a weight
    assert layout.geometry.n_heads == 4 and layout.geometry.head_dim == 16


def test_llama_layout_reads_gqa_geometry():
    layout = select_layout(LLAMA_CONFIG, list(llama_state()))
    assert (layout.geometry.n_heads, layout.geometry.n_kv_heads, layout.geometry.head_dim) == (4, 2, 16)
    assert layout.describe("model.layers.0.self_attn.k_proj.weight").heads == "kv"
    assert layout.describe("model.layers.1.mlp.gate_proj.weight").kind == "mlp_gate"


def test_gemma_norm_offset_and_bert_aliases():
    gemma = select_layout({"model_type": "gemma2", "num_attention_heads": 8, "num_key_value_heads": 4,
                           "head_dim": 256, "hidden_size": 2304}, [])
    assert gemma.norm_offset == 1.0 and gemma.geometry.head_dim == 256
    bert = select_layout({"model_type": "bert", "num_attention_heads": 2, "hidden_size": 8}, [])
    assert bert.canonical("bert.encoder.layer.0.output.LayerNorm.gamma") == "encoder.layer.0.output.LayerNorm.weight"
    assert bert.describe("bert.encoder.layer.3.attention.self.query.weight").kind == "attn_q"


def test_unknown_architecture_is_inferred_from_names():
    names = ["blocks.0.attn.q_proj.weight", "blocks.0.ff.fc1.weight", "blocks.0.ff.fc2.weight", "blocks.0.norm.weight"]
    layout = select_layout(None, names)
    assert layout.name == "generic"
    kinds = [(layout.describe(n).layer, layout.describe(n).kind) for n in names]
    assert kinds == [(0, "attn_q"), (0, "mlp_in"), (0, "mlp_out"), (0, "norm")]


def test_prefix_variants_and_tied_embeddings_pair_up(tmp_path):
    state = llama_state(0, tied=True)
    ft = {k.removeprefix("model."): v for k, v in state.items()}  # saved from the inner model
    ft["lm_head.weight"] = state["model.embed_tokens.weight"] + 0.1  # untied by the fine-tune
    base_src = open_source(save_folder(tmp_path / "b", state, LLAMA_CONFIG))
    ft_src = open_source(save_folder(tmp_path / "f", ft, LLAMA_CONFIG))
    pairing = pair_sources(base_src, ft_src)
    assert not pairing.added and not pairing.removed
    unembed = next(p for p in pairing.pairs if p.info.kind == "unembed")
    assert unembed.base_name == "model.embed_tokens.weight" and unembed.ft_name == "lm_head.weight"
    assert len(pairing.pairs) == len(ft)


def test_vocab_resize_added_and_removed(tmp_path):
    state = llama_state(0)
    ft = dict(state)
    ft["model.embed_tokens.weight"] = torch.cat([state["model.embed_tokens.weight"], torch.randn(3, 64)])
    ft["score.weight"] = torch.randn(2, 64)
    del ft["model.layers.1.post_attention_layernorm.weight"]
    pairing = pair_sources(open_source(save_folder(tmp_path / "b", state, LLAMA_CONFIG)),
                           open_source(save_folder(tmp_path / "f", ft, LLAMA_CONFIG)))
    assert pairing.added == ["score.weight"]
    assert pairing.removed == ["model.layers.1.post_attention_layernorm.weight"]
    assert pairing.reshaped == [{"tensor": "model.embed_tokens.weight", "base_shape": [100, 64], "ft_shape": [103, 64]}]
    embed = next(p for p in pairing.pairs if p.info.kind == "embed")
    assert embed.shared_rows == 100


@pytest.mark.parametrize("change", ["layers", "hidden", "config"])
def test_different_architectures_are_refused_up_front(tmp_path, change):
    base = llama_state(0)
    if change == "layers":
        ft, cfg = llama_state(0, n_layers=3), {**LLAMA_CONFIG, "num_hidden_layers": 3}
        message = "architectures"
    elif change == "hidden":
        ft, cfg = llama_state(0, d=32, ffn=64, n_heads=2, n_kv=1), dict(LLAMA_CONFIG)
        message = "differ in shape"
    else:
        ft, cfg = base, {**LLAMA_CONFIG, "num_attention_heads": 8, "head_dim": 8}
        message = "n_heads: 4 vs 8"
    with pytest.raises(InputError, match=message):
        pair_sources(open_source(save_folder(tmp_path / "b", base, LLAMA_CONFIG)),
                     open_source(save_folder(tmp_path / "f", ft, cfg)))


def test_layer_count_mismatch_without_config(tmp_path):
    from safetensors.torch import save_file

    save_file(llama_state(0), str(tmp_path / "a.safetensors"))
    save_file(llama_state(0, n_layers=3), str(tmp_path / "b.safetensors"))
    with pytest.raises(InputError, match="BASE has 2 layers, FT has 3"):
        pair_sources(open_source(tmp_path / "a.safetensors"), open_source(tmp_path / "b.safetensors"))


def test_unknown_moe_names_are_inferred_and_the_rest_reported(tmp_path):
    """No config, unknown names: kinds, experts and routers come from keywords; a tensor no keyword
    knows is compared as "other" and named in `unclassified` and in a warning."""
    from mechdiff.diffing.weights.diff import DiffConfig, diff_sources

    g = torch.Generator().manual_seed(0)
    state = {"blocks.0.attn.q_proj.weight": torch.randn(16, 16, generator=g),
             "blocks.0.moe.router.weight": torch.randn(4, 16, generator=g),
             "blocks.0.moe.experts.3.w2.weight": torch.randn(16, 32, generator=g),
             "blocks.0.moe.experts.down_proj": torch.randn(4, 16, 32, generator=g),
             "blocks.0.mystery_blob": torch.randn(8, 8, generator=g)}
    ft = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in state.items()}
    base_src = open_source(save_folder(tmp_path / "b", state, None))
    ft_src = open_source(save_folder(tmp_path / "f", ft, None))
    layout = select_layout(None, list(state))
    described = {n: layout.describe(n) for n in state}
    assert (described["blocks.0.moe.router.weight"].kind, described["blocks.0.moe.router.weight"].expert) == ("router", None)
    assert (described["blocks.0.moe.experts.3.w2.weight"].kind, described["blocks.0.moe.experts.3.w2.weight"].expert) == ("mlp_out", 3)
    assert described["blocks.0.moe.experts.down_proj"].fused_experts
    assert not described["blocks.0.mystery_blob"].classified
    result = diff_sources(base_src, ft_src, DiffConfig(device="cpu", intruder_top=0))
    assert result.unclassified == ["blocks.0.mystery_blob"]
    assert any("could not classify 1 tensors" in w and "mystery_blob" in w for w in result.warnings)
    assert sorted(c.expert for c in result.changes if c.expert is not None) == [0, 1, 2, 3, 3]
