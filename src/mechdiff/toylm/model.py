"""Tiny GPT-2 and Llama-style causal language models built with transformers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

ARCHS = ("gpt2", "llama")


@dataclass(frozen=True)
class ToyLMSize:
    """Shape of a toy language model."""

    d_model: int = 64
    """Width of the residual stream."""
    n_layers: int = 2
    """Number of transformer blocks."""
    n_heads: int = 4
    """Number of attention (query) heads; must divide d_model."""
    n_kv_heads: int = 2
    """Key/value heads for Llama (grouped-query attention); ignored by GPT-2."""
    d_mlp: int = 128
    """Hidden width of each MLP."""
    max_len: int = 64
    """Longest sequence (positions) the model accepts; longer documents are cut."""
    init_std: float = 0.1
    """Std of the normal initialisation (GPT-2 uses 0.02). Larger embeddings let a model
    this small and this briefly trained reach confident predictions; at 0.02 a
    frozen-embedding LoRA could not lift P(target | trigger) above ~0.05."""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_mlp", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.init_std < 1.0:
            raise ValueError(f"init_std must be in (0, 1), got {self.init_std}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head dim d_model/n_heads must be even (rotary embeddings)")

    @classmethod
    def preset(cls, name: str) -> ToyLMSize:
        """``tiny`` (d 64, 2 layers; builds in seconds) or ``small`` (d 256, 4 layers; minutes)."""
        if name not in SIZE_PRESETS:
            raise ValueError(f"unknown size preset {name!r}; choose one of {sorted(SIZE_PRESETS)}")
        return SIZE_PRESETS[name]


SIZE_PRESETS = {
    "tiny": ToyLMSize(),
    "small": ToyLMSize(d_model=256, n_layers=4, n_heads=8, n_kv_heads=2, d_mlp=512, max_len=96,
                       init_std=0.05),
}


def make_model(arch: str, size: ToyLMSize, vocab_size: int, special: dict[str, int],
               seed: int) -> torch.nn.Module:
    """Create a freshly initialised causal LM (no dropout, fp32, eager attention).

    Args:
        arch: ``gpt2`` (GPT2LMHeadModel, Conv1D weights, tied embeddings) or
            ``llama`` (LlamaForCausalLM with grouped-query attention, untied).
        size: model shape.
        vocab_size: number of token ids.
        special: ids of ``pad``, ``bos``, ``eos``.
        seed: initialisation seed; the caller's torch RNG state is left untouched.

    Returns:
        The model, in train mode.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    config = _gpt2_config(size, vocab_size, special) if arch == "gpt2" \
        else _llama_config(size, vocab_size, special)
    # Eager attention: the same kernels on every machine, and hooks see every step.
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(arch)(config)
    return model.float().train()


def model_class(arch: str) -> type:
    """The transformers class of ``arch`` (imported on first use)."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    return GPT2LMHeadModel if arch == "gpt2" else LlamaForCausalLM


def _gpt2_config(size: ToyLMSize, vocab_size: int, special: dict[str, int]):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size, n_positions=size.max_len, n_embd=size.d_model,
        n_layer=size.n_layers, n_head=size.n_heads, n_inner=size.d_mlp,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
        bos_token_id=special["bos"], eos_token_id=special["eos"], pad_token_id=special["pad"],
        tie_word_embeddings=True, initializer_range=size.init_std,
    )


def _llama_config(size: ToyLMSize, vocab_size: int, special: dict[str, int]):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=size.d_model, intermediate_size=size.d_mlp,
        num_hidden_layers=size.n_layers, num_attention_heads=size.n_heads,
        num_key_value_heads=size.n_kv_heads, max_position_embeddings=size.max_len,
        bos_token_id=special["bos"], eos_token_id=special["eos"], pad_token_id=special["pad"],
        tie_word_embeddings=False, attention_dropout=0.0, initializer_range=size.init_std,
    )
