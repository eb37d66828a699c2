"""Token readouts: a planted change must read out as the tokens it was built from."""

from __future__ import annotations

import torch
from ckpt_builders import LLAMA_CONFIG, drift, llama_state, save_folder
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from mechdiff.api import diff_checkpoints

WORDS = [f"w{i}" for i in range(100)]
WORDS[17], WORDS[42], WORDS[63] = "zq", "banana", "moved"


def _save_tokenizer(folder):
    Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="w0")).save(str(folder / "tokenizer.json"))


def test_change_directions_read_out_as_their_tokens(tmp_path):
    state = llama_state(0)
    ft = drift(state, 0.005, seed=1)
    embed, unembed, gain = state["model.embed_tokens.weight"], state["lm_head.weight"], state["model.norm.weight"]
    # q_proj reads the residual stream: an edit whose input direction is the embedding of "zq"
    v_in = embed[17] / embed[17].norm()
    q = "model.layers.1.self_attn.q_proj.weight"
    ft[q] = ft[q] + 0.05 * float(state[q].norm()) * torch.outer(torch.randn(64, generator=torch.Generator().manual_seed(0)).div(8), v_in)
    # down_proj writes it: an edit whose output direction makes "banana" (after the final norm gain)
    u_out = unembed[42] * gain
    u_out = u_out / u_out.norm()
    down = "model.layers.0.mlp.down_proj.weight"
    ft[down] = ft[down] + 0.05 * float(state[down].norm()) * torch.outer(u_out, torch.ones(128) / 128**0.5)
    ft["model.embed_tokens.weight"] = ft["model.embed_tokens.weight"].clone()
    ft["model.embed_tokens.weight"][63] += 3.0
    base_dir, ft_dir = save_folder(tmp_path / "b", state, LLAMA_CONFIG), save_folder(tmp_path / "f", ft, LLAMA_CONFIG)
    _save_tokenizer(base_dir)
    result = diff_checkpoints(base_dir, ft_dir, progress=False)
    by_name = {c.tensor: c for c in result.changes}
    assert by_name[q].rank == 1 and by_name[q].tokens_in[0] == "zq"
    assert by_name[down].rank == 1 and by_name[down].tokens_out[0] == "banana"
    assert result.moved_tokens[0] == "moved"


def test_without_tokenizer_tokens_are_ids(tmp_path):
    state = llama_state(0)
    ft = dict(state)
    ft["model.embed_tokens.weight"] = state["model.embed_tokens.weight"].clone()
    ft["model.embed_tokens.weight"][5] += 1.0
    result = diff_checkpoints(save_folder(tmp_path / "b", state, LLAMA_CONFIG),
                              save_folder(tmp_path / "f", ft, LLAMA_CONFIG), progress=False)
    assert result.moved_tokens == ["#5"]
