"""Synthetic checkpoint pairs at real sizes (bf16, sharded like a real model) with known ground truth.

Every matrix gets Gaussian drift of a known per-entry sigma; a few get planted low-rank
edits. The manifest (manifest.json beside the pair) records the truth so benchmarks can
check accuracy, not only speed. Pairs are cached under bench-out/ by their spec.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

OUT_ROOT = Path(__file__).resolve().parent.parent / "bench-out"


@dataclass(frozen=True)
class PairSpec:
    """Sizes of a Llama-like synthetic model (defaults: ~1.03B parameters)."""

    d: int = 2048
    n_layers: int = 20
    n_heads: int = 16
    n_kv: int = 4
    ffn: int = 5632
    vocab: int = 32000
    shards: int = 5
    seed: int = 0

    @property
    def key(self) -> str:
        return f"d{self.d}-l{self.n_layers}-f{self.ffn}-v{self.vocab}-s{self.seed}"

    def shapes(self) -> dict[str, tuple[int, ...]]:
        hd = self.d // self.n_heads
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab, self.d)}
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            shapes |= {
                p + "self_attn.q_proj.weight": (self.d, self.d),
                p + "self_attn.k_proj.weight": (self.n_kv * hd, self.d),
                p + "self_attn.v_proj.weight": (self.n_kv * hd, self.d),
                p + "self_attn.o_proj.weight": (self.d, self.d),
                p + "mlp.gate_proj.weight": (self.ffn, self.d),
                p + "mlp.up_proj.weight": (self.ffn, self.d),
                p + "mlp.down_proj.weight": (self.d, self.ffn),
                p + "input_layernorm.weight": (self.d,),
                p + "post_attention_layernorm.weight": (self.d,),
            }
        shapes |= {"model.norm.weight": (self.d,), "lm_head.weight": (self.vocab, self.d)}
        return shapes

    def n_params(self) -> int:
        total = 0
        for shape in self.shapes().values():
            n = 1
            for dim in shape:
                n *= dim
            total += n
        return total

    def config(self) -> dict:
        return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": self.d,
                "num_attention_heads": self.n_heads, "num_key_value_heads": self.n_kv,
                "num_hidden_layers": self.n_layers, "intermediate_size": self.ffn, "vocab_size": self.vocab}

    def planted(self) -> dict[str, tuple[int, float]]:
        """tensor -> (rank, relative norm) of the planted edits."""
        last = self.n_layers - 1
        return {f"model.layers.{last // 2}.mlp.down_proj.weight": (1, 0.01),
                f"model.layers.{last}.self_attn.o_proj.weight": (2, 0.015),
                "model.layers.0.mlp.up_proj.weight": (4, 0.02)}


def build_pair(spec: PairSpec, root: Path = OUT_ROOT) -> Path:
    """Write (or reuse) ``root/<key>/{base,ft}`` and ``manifest.json``; returns the pair folder."""
    folder = root / spec.key
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return folder
    g = torch.Generator().manual_seed(spec.seed)
    rng_rel = torch.Generator().manual_seed(spec.seed + 1)
    truth: dict[str, dict] = {}
    names = list(spec.shapes())
    groups = [names[i::spec.shards] for i in range(spec.shards)]
    for part in ("base", "ft"):
        (folder / part).mkdir(parents=True, exist_ok=True)
        (folder / part / "config.json").write_text(json.dumps(spec.config()))
    weight_map = {}
    for s, group in enumerate(groups):
        base_shard, ft_shard = {}, {}
        for name in group:
            base_shard[name], ft_shard[name], truth[name] = _make_tensor(name, spec, g, rng_rel)
        shard = f"model-{s + 1:05d}-of-{spec.shards:05d}.safetensors"
        save_file(base_shard, str(folder / "base" / shard))
        save_file(ft_shard, str(folder / "ft" / shard))
        weight_map |= {name: shard for name in group}
    for part in ("base", "ft"):
        (folder / part / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    manifest.write_text(json.dumps({"spec": asdict(spec), "n_params": spec.n_params(), "truth": truth}))
    return folder


def _make_tensor(name: str, spec: PairSpec, g: torch.Generator, rng_rel: torch.Generator):
    shape = spec.shapes()[name]
    if len(shape) == 1:
        base = (1 + 0.05 * torch.randn(shape, generator=g)).to(torch.bfloat16)
        ft = (base.float() + 0.01 * torch.randn(shape, generator=g)).to(torch.bfloat16)
        return base, ft, {"rank": 0}
    std = shape[1] ** -0.5
    base = (torch.randn(shape, generator=g) * std).to(torch.bfloat16)
    rel = 0.01 + 0.02 * float(torch.rand((), generator=rng_rel))
    ft = base.float()
    ft += torch.randn(shape, generator=g) * (rel * std)
    rank, edit_rel = spec.planted().get(name, (0, 0.0))
    edit = None
    if rank:
        u, _ = torch.linalg.qr(torch.randn(shape[0], rank, generator=g))
        v, _ = torch.linalg.qr(torch.randn(shape[1], rank, generator=g))
        edit = (u * (edit_rel * float(base.float().norm()) / rank**0.5)) @ v.T
        ft += edit
    ft = ft.to(torch.bfloat16)
    noise = ft.float() - base.float()
    if edit is not None:
        noise -= edit
    return base, ft, {"rank": rank, "edit_rel": edit_rel, "drift_rel": rel,
                      "noise_sigma": float(noise.std()), "base_norm": float(base.float().norm())}
