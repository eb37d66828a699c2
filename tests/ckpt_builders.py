"""Tiny seeded checkpoints in every format the readers support (built in tmp folders, never stored)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

LLAMA_CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_hidden_layers": 2,
    "intermediate_size": 128, "vocab_size": 100,
}
GPT2_CONFIG = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 64, "n_head": 4,
               "n_layer": 2, "vocab_size": 100}


def llama_state(seed: int = 0, *, n_layers: int = 2, d: int = 64, n_heads: int = 4, n_kv: int = 2,
                head_dim: int = 16, ffn: int = 128, vocab: int = 100, tied: bool = False) -> dict[str, torch.Tensor]:
    """A Llama-style (GQA) state dict with unit-variance-ish weights."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) / shape[-1] ** 0.5

    state = {"model.embed_tokens.weight": w(vocab, d), "model.norm.weight": 1 + 0.1 * torch.randn(d, generator=g)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        state[p + "self_attn.q_proj.weight"] = w(n_heads * head_dim, d)
        state[p + "self_attn.k_proj.weight"] = w(n_kv * head_dim, d)
        state[p + "self_attn.v_proj.weight"] = w(n_kv * head_dim, d)
        state[p + "self_attn.o_proj.weight"] = w(d, n_heads * head_dim)
        state[p + "mlp.gate_proj.weight"] = w(ffn, d)
        state[p + "mlp.up_proj.weight"] = w(ffn, d)
        state[p + "mlp.down_proj.weight"] = w(d, ffn)
        state[p + "input_layernorm.weight"] = torch.ones(d)
        state[p + "post_attention_layernorm.weight"] = torch.ones(d)
    if not tied:
        state["lm_head.weight"] = w(vocab, d)
    return state


def gpt2_state(seed: int = 0, *, n_layers: int = 2, d: int = 64, vocab: int = 100) -> dict[str, torch.Tensor]:
    """A GPT-2 state dict: Conv1D weights stored [in, out], causal-mask buffers included."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) / shape[0] ** 0.5

    state = {"transformer.wte.weight": w(vocab, d), "transformer.wpe.weight": w(32, d),
             "transformer.ln_f.weight": torch.ones(d), "transformer.ln_f.bias": torch.zeros(d)}
    for i in range(n_layers):
        p = f"transformer.h.{i}."
        state[p + "attn.c_attn.weight"] = w(d, 3 * d)
        state[p + "attn.c_attn.bias"] = torch.zeros(3 * d)
        state[p + "attn.c_proj.weight"] = w(d, d)
        state[p + "mlp.c_fc.weight"] = w(d, 4 * d)
        state[p + "mlp.c_proj.weight"] = w(4 * d, d)
        state[p + "ln_1.weight"] = torch.ones(d)
        state[p + "ln_2.weight"] = torch.ones(d)
        state[p + "attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
    return state


def save_folder(folder: Path, state: dict[str, torch.Tensor], config: dict | None, fmt: str = "safetensors") -> Path:
    """Write a Hugging Face style model folder.

    fmt: "safetensors", "sharded" (two safetensors shards + index), "bin", "bin-sharded".
    """
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in state.items()}
    if fmt == "safetensors":
        save_file(state, str(folder / "model.safetensors"))
    elif fmt == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    elif fmt in ("sharded", "bin-sharded"):
        names = sorted(state)
        halves = [names[: len(names) // 2], names[len(names) // 2:]]
        ext = "safetensors" if fmt == "sharded" else "bin"
        weight_map = {}
        for i, part in enumerate(halves):
            shard = f"model-{i + 1:05d}-of-00002.{ext}" if ext == "safetensors" else f"pytorch_model-{i + 1:05d}-of-00002.bin"
            sub = {n: state[n] for n in part}
            save_file(sub, str(folder / shard)) if ext == "safetensors" else torch.save(sub, folder / shard)
            weight_map.update({n: shard for n in part})
        index = "model.safetensors.index.json" if ext == "safetensors" else "pytorch_model.bin.index.json"
        (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        raise ValueError(fmt)
    return folder


def drift(state: dict[str, torch.Tensor], rel: float | dict[str, float], seed: int = 1) -> dict[str, torch.Tensor]:
    """Add iid Gaussian drift of relative size ``rel`` (per tensor if a dict) to every float tensor."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        size = rel[name] if isinstance(rel, dict) else rel
        if t.is_floating_point() and size > 0 and t.norm() > 0:
            noise = torch.randn(t.shape, generator=g)
            t = t + noise * (size * t.norm() / noise.norm())
        out[name] = t
    return out


def low_rank(shape: tuple[int, int], rank: int, norm: float, seed: int = 2) -> torch.Tensor:
    """A rank-``rank`` matrix with Frobenius norm ``norm`` and equal singular values."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(shape[0], rank, generator=g))
    v, _ = torch.linalg.qr(torch.randn(shape[1], rank, generator=g))
    return (u @ v.T) * (norm / rank ** 0.5)


LLAMA_DOWN = "model.layers.1.mlp.down_proj.weight"
LLAMA_Q0 = "model.layers.0.self_attn.q_proj.weight"


def planted_llama(*, down_rel: float = 0.01, head_rel: float = 0.02, d: int = 64, ffn: int = 128, n_heads: int = 4,
                  n_kv: int = 2, head_dim: int = 16) -> tuple[dict, dict, dict]:
    """(base state, fine-tuned state, config) of a Llama pair with planted mechanisms over diffuse drift.

    Every tensor drifts by 1-3% of its norm; LLAMA_DOWN gets a rank-1 edit of norm down_rel * ||W||;
    head 2 of LLAMA_Q0 gets a rank-2 edit of norm head_rel * ||W|| confined to its rows.
    """
    import numpy as np

    state = llama_state(0, d=d, ffn=ffn, n_heads=n_heads, n_kv=n_kv, head_dim=head_dim)
    rng = np.random.default_rng(5)
    ft = drift(state, {name: float(rng.uniform(0.01, 0.03)) for name in state})
    ft[LLAMA_DOWN] = ft[LLAMA_DOWN] + low_rank(tuple(state[LLAMA_DOWN].shape), 1,
                                               down_rel * float(state[LLAMA_DOWN].norm()))
    q = state[LLAMA_Q0]
    head_edit = torch.zeros_like(q)
    head_edit[2 * head_dim:3 * head_dim] = low_rank((head_dim, q.shape[1]), 2, head_rel * float(q.norm()), seed=9)
    ft[LLAMA_Q0] = ft[LLAMA_Q0] + head_edit
    config = {**LLAMA_CONFIG, "hidden_size": d, "num_attention_heads": n_heads, "num_key_value_heads": n_kv,
              "head_dim": head_dim, "intermediate_size": ffn}
    return state, ft, config


def tiny_gpt2_lm(folder: Path, *, n_positions: int = 16, n_words: int = 400) -> Path:
    """A runnable 1-block GPT-2 (width 8) with a word-level tokenizer and ``data.txt`` of ``n_words`` seeded words."""
    import numpy as np
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "red", "blue"]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=n_positions, n_embd=8, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(folder)
    rng = np.random.default_rng(0)
    (folder / "data.txt").write_text(" ".join(rng.choice(words, size=n_words)))
    return folder
