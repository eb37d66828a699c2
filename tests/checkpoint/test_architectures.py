"""Every supported architecture, built tiny from its transformers config: planted head and expert
edits come out first and attributed to the right (layer, head) and (layer, expert); the behaviour
lens and a crosscoder run on the planted pair; a LoRA adapter's rank and size come out exactly."""

from __future__ import annotations

import itertools
import json
import math
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ckpt_builders import drift, low_rank
from safetensors.torch import load_file, save_file

from mechdiff.checkpoint import LoraSource, open_source, pair_sources
from mechdiff.diffing.behaviour.kl import BehaviourConfig, behaviour_diff
from mechdiff.diffing.crosscoder.config import CrosscoderConfig
from mechdiff.diffing.crosscoder.pipeline import run_crosscoder
from mechdiff.diffing.weights.diff import DiffConfig, diff_sources
from mechdiff.models import load_causal_lm
from mechdiff.toylm.tokenizer import build_tokenizer, save_tokenizer

transformers = pytest.importorskip("transformers")

ATTN = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128}
MOE = {"num_experts_per_tok": 2, "moe_intermediate_size": 32}


@dataclass(frozen=True)
class Arch:
    """One architecture: its config and where the planted edits go (names as transformers saves them)."""

    model_type: str
    config: dict
    o_proj: str  # layer 1's attention output; head 1 is columns [width, 2 * width)
    head_width: int = 16
    expert: str | None = None  # layer 0's expert 2 (a per-expert tensor, or a fused one's slice [2])
    fused: bool = False  # the expert tensor is [experts, ...]: the edit goes into slice 2
    in_out: bool = False  # the fused expert slice is stored [in, out]
    layout: str = ""
    state_dict: bool = False  # save the model's own state dict (transformers' fused experts), not save_pretrained
    q_proj: str = "model.layers.0.self_attn.q_proj.weight"  # layer 0's query rows (maybe fused with k, v)
    q_row: int = 32  # first row of head 2's query in q_proj, from the architecture's own split


LLAMA_O = "model.layers.1.self_attn.o_proj.weight"
ARCHS = [
    # GPT-NeoX: query_key_value rows are [q_h; k_h; v_h] per head, so head 2's query starts at 3 * 2 * 16
    Arch("gpt_neox", {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128},
         "gpt_neox.layers.1.attention.dense.weight", layout="gpt_neox",
         q_proj="gpt_neox.layers.0.attention.query_key_value.weight", q_row=96),
    # Falcon (new decoder, 2 kv groups of 2 query heads): rows [q0 q1 k0 v0 | q2 q3 k1 v1]
    Arch("falcon", {"hidden_size": 64, "num_attention_heads": 4, "new_decoder_architecture": True, "num_kv_heads": 2},
         "transformer.h.1.self_attention.dense.weight", layout="falcon",
         q_proj="transformer.h.0.self_attention.query_key_value.weight", q_row=64),
    # Falcon-7B style multi-query: rows [q0 q1 q2 q3 k v]
    Arch("falcon", {"hidden_size": 64, "num_attention_heads": 4, "new_decoder_architecture": False,
                    "multi_query": True}, "transformer.h.1.self_attention.dense.weight", layout="falcon",
         q_proj="transformer.h.0.self_attention.query_key_value.weight", q_row=32),
    # Falcon-RW: one group per head, [q_h k_h v_h] like GPT-NeoX
    Arch("falcon", {"hidden_size": 64, "num_attention_heads": 4, "new_decoder_architecture": False,
                    "multi_query": False}, "transformer.h.1.self_attention.dense.weight", layout="falcon",
         q_proj="transformer.h.0.self_attention.query_key_value.weight", q_row=96),
    # Phi-3: qkv_proj is blocked [q | k | v]
    Arch("phi3", {**ATTN, "pad_token_id": 0}, LLAMA_O, layout="phi3", q_proj="model.layers.0.self_attn.qkv_proj.weight"),
    Arch("gptj", {"n_embd": 64, "n_head": 4, "rotary_dim": 8}, "transformer.h.1.attn.out_proj.weight", layout="gptj",
         q_proj="transformer.h.0.attn.q_proj.weight"),
    # logit_scale 1, not Cohere's 0.0625: logits of ~0.07 put this tiny model's KL (~4e-7) in float32 rounding
    Arch("cohere", {**ATTN, "logit_scale": 1.0}, LLAMA_O, layout="llama"),
    Arch("granite", ATTN, LLAMA_O, layout="llama"),
    Arch("stablelm", ATTN, LLAMA_O, layout="llama"),
    Arch("qwen3", {**ATTN, "head_dim": 16}, LLAMA_O, layout="llama"),
    Arch("gemma3_text", {**ATTN, "head_dim": 16}, LLAMA_O, layout="gemma"),
    Arch("olmo2", ATTN, LLAMA_O, layout="llama"),
    Arch("starcoder2", ATTN, LLAMA_O, layout="llama"),
    Arch("deepseek_v3", {**ATTN, **MOE, "num_key_value_heads": 4, "n_routed_experts": 4, "q_lora_rank": 32,
                         "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
                         "first_k_dense_replace": 0, "n_group": 1, "topk_group": 1},
         LLAMA_O, expert="model.layers.0.mlp.experts.2.down_proj.weight", layout="deepseek",
         q_proj="model.layers.0.self_attn.q_b_proj.weight"),  # MLA: qk_nope + qk_rope = 16 rows per head
    Arch("mixtral", {**ATTN, "num_local_experts": 4, "num_experts_per_tok": 2}, LLAMA_O,
         expert="model.layers.0.block_sparse_moe.experts.2.w2.weight", layout="mixtral"),
    Arch("mixtral", {**ATTN, "num_local_experts": 4, "num_experts_per_tok": 2}, LLAMA_O,
         expert="model.layers.0.mlp.experts.down_proj", fused=True, layout="mixtral", state_dict=True),
    Arch("qwen2_moe", {**ATTN, **MOE, "num_experts": 4, "shared_expert_intermediate_size": 64}, LLAMA_O,
         expert="model.layers.0.mlp.experts.2.down_proj.weight", layout="qwen_moe"),
    Arch("qwen3_moe", {**ATTN, **MOE, "num_experts": 4, "head_dim": 16}, LLAMA_O,
         expert="model.layers.0.mlp.experts.2.down_proj.weight", layout="qwen_moe"),
    Arch("gpt_oss", {**ATTN, "intermediate_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2,
                     "head_dim": 16}, LLAMA_O, expert="model.layers.0.mlp.experts.down_proj", fused=True,
         in_out=True, layout="gpt_oss"),
]
IDS = [f"{a.model_type}-{i}" for i, a in enumerate(ARCHS)]

# the lenses read documents of random words: 4 special tokens + 96 two-letter words fill the 100-token vocabulary
WORDS = ["".join(pair) for pair in itertools.product(string.ascii_lowercase, repeat=2)][:96]
LENGTHS = [3, 7, 12, 15, 16, 19, 24, 9]  # words per document; with <bos>, 16, 19 and 24 words pass CTX and are cut
CTX = 16
TEXTS = [" ".join(np.random.default_rng(n).choice(WORDS, size=n)) for n in LENGTHS]


def _build(arch: Arch, folder: Path) -> dict[str, torch.Tensor]:
    """Save a seeded tiny model of `arch` (2 layers) to `folder`; return its saved tensors."""
    if arch.model_type not in transformers.CONFIG_MAPPING:
        pytest.skip(f"transformers {transformers.__version__} has no {arch.model_type} model")
    config = transformers.AutoConfig.for_model(arch.model_type, num_hidden_layers=2, vocab_size=100, **arch.config)
    if type(config) not in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        pytest.skip(f"transformers {transformers.__version__} has no causal-LM class for {type(config).__name__}")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    if arch.state_dict:
        folder.mkdir(parents=True)
        config.to_json_file(folder / "config.json")
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if "lm_head" not in k or
                   not config.tie_word_embeddings}, str(folder / "model.safetensors"))
    else:
        model.save_pretrained(folder)
    return load_file(str(folder / "model.safetensors"))


def _plant(arch: Arch, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """1% drift on every tensor, rank-2 edits in head 1 of layer 1's attention output, in head 2's
    query of layer 0, and in expert 2 of layer 0 (MoE). Returns the fine-tune and the planted rows' names."""
    ft = drift(state, 0.01, seed=1)
    o = ft[arch.o_proj].clone()
    cols = slice(arch.head_width, 2 * arch.head_width)
    o[:, cols] += low_rank((o.shape[0], arch.head_width), 2, 0.3 * float(state[arch.o_proj][:, cols].norm()))
    ft[arch.o_proj] = o
    q = ft[arch.q_proj].clone()
    rows = slice(arch.q_row, arch.q_row + 16)
    q[rows] += low_rank((16, q.shape[1]), 2, 0.1 * float(state[arch.q_proj][rows].norm()), seed=5)
    ft[arch.q_proj] = q
    planted = {arch.o_proj, arch.q_proj}
    if arch.expert is not None:
        w = ft[arch.expert].clone()
        block = w[2] if arch.fused else w
        edit = low_rank(tuple(block.shape), 2, 0.3 * float(block.norm()), seed=3)
        block += edit
        ft[arch.expert] = w
        planted.add(f"{arch.expert}[2]" if arch.fused else arch.expert)
    return ft, planted


def _save_ft(base: Path, ft: Path, state: dict[str, torch.Tensor]) -> None:
    """A fine-tune folder beside `base`: its config, the given tensors."""
    ft.mkdir()
    (ft / "config.json").write_text((base / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in state.items()}, str(ft / "model.safetensors"))


@dataclass(frozen=True)
class PlantedPair:
    """Folders of one architecture's base and planted fine-tune (each with a tokenizer), and the planted tensors."""

    arch: Arch
    base: Path
    ft: Path
    planted: set[str]


@pytest.fixture(scope="module", params=ARCHS, ids=IDS)
def planted_pair(request, tmp_path_factory) -> PlantedPair:
    """Each architecture's base and planted fine-tune, saved once with a word-level tokenizer."""
    arch, folder = request.param, tmp_path_factory.mktemp(IDS[ARCHS.index(request.param)])
    ft_state, planted = _plant(arch, _build(arch, folder / "base"))
    _save_ft(folder / "base", folder / "ft", ft_state)
    tokenizer = build_tokenizer(WORDS)
    for model in ("base", "ft"):
        save_tokenizer(tokenizer, folder / model, model_max_length=64)
    return PlantedPair(arch, folder / "base", folder / "ft", planted)


def _diff(base: Path, ft: object) -> object:
    base_source = open_source(base)
    ft_source = ft if isinstance(ft, LoraSource) else open_source(ft)
    return diff_sources(base_source, ft_source, DiffConfig(device="cpu", intruder_top=0))


def test_planted_head_and_expert_come_first(planted_pair):
    arch, planted = planted_pair.arch, planted_pair.planted
    result = _diff(planted_pair.base, planted_pair.ft)
    assert result.layout == arch.layout
    assert {c.tensor for c in result.changes[: len(planted)]} == planted
    assert result.heads and (result.heads[0].layer, result.heads[0].head) == (1, 1)
    assert result.heads[0].rank == 2
    query = next(h for h in result.heads if (h.layer, h.head, h.kind) == (0, 2, "attn"))
    assert query.parts["attn_q"]["rank"] == 2  # the query edit lands in head 2's query, not a k/v slice
    assert all(p["rank"] == 0 for h in result.heads if (h.layer, h.head) not in ((0, 2), (1, 1))
               for p in h.parts.values())
    assert not result.unclassified, result.unclassified
    if arch.expert is not None:
        assert (result.experts[0].layer, result.experts[0].expert) == (0, 2)
        assert result.experts[0].rank == 2
        n_experts = arch.config.get("num_local_experts") or arch.config.get("num_experts") or 4
        assert len(result.experts) == 2 * n_experts  # every expert of both layers is a unit
        assert all(c.expert is None for c in result.changes if ".experts." not in c.tensor)


def test_behaviour_lens_reads_the_planted_pair(planted_pair):
    """KL is counted at every real position of padded, truncated documents, matches the KL of each
    document run alone (no padding), is exactly 0 against an identical copy and positive for the edit."""
    base, tokenizer = load_causal_lm(planted_pair.base, progress=False)
    ft, _ = load_causal_lm(planted_pair.ft, progress=False)
    copy, _ = load_causal_lm(planted_pair.base, progress=False)
    config = BehaviourConfig(ctx_len=CTX, batch_docs=len(TEXTS))
    edited = behaviour_diff(base, ft, tokenizer, TEXTS, config)
    same = behaviour_diff(base, copy, tokenizer, TEXTS, config)
    positions = sum(min(n + 1, CTX) for n in LENGTHS)  # <bos> + words, cut at CTX
    assert edited.n_tokens == same.n_tokens == positions
    assert same.mean_kl == same.max_kl == 0.0
    assert edited.mean_kl > 0.0
    docs = [tokenizer(text)["input_ids"][:CTX] for text in TEXTS]
    # float32 log-probs leave ~5e-8 of rounding in the mean (KL ~3e-5 to 1e-3 here; measured <= 0.11% off)
    assert edited.mean_kl == pytest.approx(_kl_one_document_at_a_time(base, ft, docs) / positions, rel=5e-3)


@torch.no_grad()
def _kl_one_document_at_a_time(base: torch.nn.Module, ft: torch.nn.Module, docs: list[list[int]]) -> float:
    """Summed KL(ft || base) over every position, each document run alone (no padding, no mask), in float64."""
    total = 0.0
    for doc in docs:
        ids = torch.tensor([doc])
        logp_base = F.log_softmax(base(input_ids=ids).logits.double(), -1)
        logp_ft = F.log_softmax(ft(input_ids=ids).logits.double(), -1)
        total += float((logp_ft.exp() * (logp_ft - logp_base)).sum())
    return total


def test_crosscoder_trains_on_the_planted_pair(planted_pair, tmp_path):
    """50 steps on the middle block's output, the path `mechdiff crosscoder` takes: loss falls, all finite."""
    data = tmp_path / "data.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    config = CrosscoderConfig(dict_size=32, k=4, lr=1e-3, warmup_steps=5, batch=64, tokens=64 * 50,
                              dead_after_tokens=64 * 20)
    result = run_crosscoder(planted_pair.base, planted_pair.ft, data, 1, config, progress=False)
    assert result.site == "resid.1" and result.module.d_model == 64
    assert result.n_tokens == sum(LENGTHS)  # every word position; <bos> is left out
    first, last = result.history[0], result.history[-1]
    assert (first["step"], last["step"]) == (1, 50)
    assert last["loss"] < first["loss"]
    assert all(bool(torch.isfinite(p).all()) for p in result.module.parameters())
    assert all(math.isfinite(v) for v in result.evaluation.fve)


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_lora_adapter_comes_out_exactly(arch, tmp_path):
    state = _build(arch, tmp_path / "base")
    module = arch.o_proj.removesuffix(".weight")
    out_dim, in_dim = state[arch.o_proj].shape
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, in_dim, generator=g), torch.randn(out_dim, 2, generator=g) * 0.05
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": [module.rsplit(".", 1)[-1]]}))
    save_file({f"base_model.model.{module}.lora_A.weight": a, f"base_model.model.{module}.lora_B.weight": b},
              str(adapter / "adapter_model.safetensors"))
    result = _diff(tmp_path / "base", LoraSource(open_source(tmp_path / "base"), adapter))
    row = result.changes[0]
    expected = float((2.0 * b @ a).norm() / state[arch.o_proj].float().norm())
    assert row.tensor == arch.o_proj and row.rank == 2
    assert row.rel_delta == pytest.approx(expected, rel=1e-5)
    assert all(c.rel_delta == 0.0 for c in result.changes[1:])


def test_fused_expert_pairs_read_one_expert_each(tmp_path):
    arch = ARCHS[IDS.index("gpt_oss-18")]
    state = _build(arch, tmp_path / "m")
    pairing = pair_sources(open_source(tmp_path / "m"), open_source(tmp_path / "m"))
    slices = [p for p in pairing.pairs if p.base_name == "model.layers.0.mlp.experts.down_proj"]
    assert [(p.expert, p.base_shape) for p in slices] == [(e, tuple(state[arch.expert].shape[1:])) for e in range(4)]
    router = next(p for p in pairing.pairs if p.base_name == "model.layers.0.mlp.router.weight")
    assert router.info.kind == "router" and router.expert is None


def test_router_change_reads_out_which_tokens_move(tmp_path):
    """Layer 1's router is edited to send tokens 10-19 to expert 3: the routing readout says so."""
    arch = ARCHS[IDS.index("mixtral-14")]
    state = _build(arch, tmp_path / "base")
    router, embed = "model.layers.1.block_sparse_moe.gate.weight", state["model.embed_tokens.weight"]
    # a token class: tokens 10-19 share one embedding direction (as a topic's tokens do)
    direction = torch.randn(embed.shape[1], generator=torch.Generator().manual_seed(6))
    direction /= direction.norm()
    embed[10:20] += 2.0 * embed.norm(dim=1).mean() * direction
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "base" / "model.safetensors"))
    ft = dict(state)
    ft[router] = state[router].clone()
    ft[router][3] += 4.0 * direction * state[router][3].norm()
    _save_ft(tmp_path / "base", tmp_path / "ft", ft)
    result = _diff(tmp_path / "base", tmp_path / "ft")
    assert result.changes[0].tensor == router and result.changes[0].kind == "router"
    (routing,) = result.routing
    before = (embed @ state[router].T).topk(2, dim=1).indices
    newly_sent = [t for t in range(10, 20) if 3 not in before[t]]
    top = routing["experts"][0]
    assert top["expert"] == 3 and top["gained"] >= len(newly_sent) > 0
    assert set(top["tokens_gained"]) <= {f"#{t}" for t in newly_sent}  # listed by how far they moved
    # only expert 3's row changed: every token it gained left another expert, every token it lost went to one
    others = routing["experts"][1:]
    assert sum(e["lost"] for e in others) == top["gained"] and sum(e["gained"] for e in others) == top["lost"]
    assert routing["tokens_rerouted"] == top["gained"] + top["lost"]


def test_experts_and_routing_survive_the_results_file(tmp_path):
    """`diff -o` then `show --json`: the expert column, the experts table and the routing readout
    come back from the HDF5 file; the terminal summary lists experts and the rerouted tokens."""
    from click.testing import CliRunner

    from mechdiff.cli import main

    arch = ARCHS[IDS.index("mixtral-14")]
    state = _build(arch, tmp_path / "base")
    ft_state, _ = _plant(arch, state)
    ft_state["model.layers.0.block_sparse_moe.gate.weight"] = 3.0 * state["model.layers.0.block_sparse_moe.gate.weight"].flip(0)
    _save_ft(tmp_path / "base", tmp_path / "ft", ft_state)
    out = tmp_path / "out.h5"
    ran = CliRunner().invoke(main, ["diff", str(tmp_path / "base"), str(tmp_path / "ft"), "-o", str(out), "--json",
                                    "--no-progress"])
    assert ran.exit_code == 0, ran.output
    direct = json.loads(ran.stdout)
    shown = CliRunner().invoke(main, ["show", str(out), "--json"])
    stored = json.loads(shown.stdout)["weights"]
    assert [(e["layer"], e["expert"]) for e in stored["experts"]] == [(e["layer"], e["expert"]) for e in direct["experts"]]
    assert (stored["experts"][0]["layer"], stored["experts"][0]["expert"]) == (0, 2)
    expert_rows = {c["tensor"]: c["expert"] for c in stored["changes"] if c["expert"] is not None}
    assert expert_rows["model.layers.0.block_sparse_moe.experts.2.w2.weight"] == 2 and len(expert_rows) == 2 * 4 * 3
    assert stored["routing"] == direct["routing"] and stored["routing"][0]["tokens_rerouted"] > 0
    text = CliRunner().invoke(main, ["show", str(out)]).stdout
    assert "Top experts" in text and "Router model.layers.0.block_sparse_moe.gate.weight" in text
