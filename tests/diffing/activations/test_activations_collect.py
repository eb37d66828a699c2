"""Paired activation collection on a tiny random GPT-2 built in the test (no hub, no training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mechdiff.diffing.activations.collect import (
    ActivationConfig,
    ActivationSite,
    collect_activations,
    read_texts,
)
from mechdiff.errors import InputError

transformers = pytest.importorskip("transformers")

WORDS = ["ka", "lo", "mi", "nu", "pe", "ra", "so", "tu"]
TEXTS = ["ka lo mi nu", "pe ra", "so tu ka lo mi nu pe ra so", "mi"]




def _tokenizer(words: list[str] = WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>",
                                                unk_token="<unk>")


def _gpt2(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=16, n_positions=16, n_embd=8, n_layer=4, n_head=2)
    return transformers.GPT2LMHeadModel(config).eval()


def _hidden(model: nn.Module, ids: list[int], layer: int) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0]  # hidden_states[0] is the embedding output


def test_rows_match_hidden_states_and_skip_bos() -> None:
    base, ft, tok = _gpt2(0), _gpt2(1), _tokenizer()
    acts = collect_activations(base, ft, tok, TEXTS, site=ActivationSite(layer=1), progress=False)
    # 4 + 2 + 9 + 1 words; the BOS of every document is dropped
    assert acts.n_rows == 16 and acts.acts.shape == (16, 2, 8)
    assert acts.doc.tolist() == [0] * 4 + [1] * 2 + [2] * 9 + [3]
    assert acts.pos[:6].tolist() == [1, 2, 3, 4, 1, 2]
    assert acts.token[:4].tolist() == tok("ka lo mi nu")["input_ids"][1:]
    for doc, text in enumerate(TEXTS):
        ids = tok(text)["input_ids"]
        rows = acts.doc == doc
        torch.testing.assert_close(acts.acts[rows, 0], _hidden(base, ids, 1)[1:])
        torch.testing.assert_close(acts.acts[rows, 1], _hidden(ft, ids, 1)[1:])
    # scales bring each model's mean norm to sqrt(d)
    normed = acts.acts * acts.scales[None, :, None]
    torch.testing.assert_close(normed.norm(dim=-1).mean(dim=0), torch.full((2,), 8**0.5))


def test_early_stop_skips_later_layers_and_changes_nothing() -> None:
    base, ft, tok = _gpt2(0), _gpt2(1), _tokenizer()
    calls = []
    handle = base.transformer.h[3].register_forward_hook(lambda *_: calls.append(1))
    site = ActivationSite(layer=1)
    early = collect_activations(base, ft, tok, TEXTS, site=site, progress=False)
    assert calls == []
    full = collect_activations(base, ft, tok, TEXTS, site=site, progress=False, stop_early=False)
    handle.remove()
    assert len(calls) == 1  # one batch of 4 documents ran to the end
    torch.testing.assert_close(early.acts, full.acts)


def test_mlp_site_and_generic_module_by_name() -> None:
    base, ft, tok = _gpt2(0), _gpt2(1), _tokenizer()
    seen = {}

    def keep(_module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        seen["mlp"] = out[0, 1:].clone()

    base.transformer.h[2].mlp.register_forward_hook(keep)
    mlp = collect_activations(base, ft, tok, TEXTS[:1], site=ActivationSite(layer=2, kind="mlp"), progress=False)
    torch.testing.assert_close(mlp.acts[:, 0], seen["mlp"])
    named = collect_activations(base, ft, tok, TEXTS[:1], site=ActivationSite(module="transformer.h.2.mlp"),
                                progress=False)
    torch.testing.assert_close(named.acts, mlp.acts)


class _Plain(nn.Module):
    """Not a transformers model: embedding, two linear 'layers', called with ids only."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 4)
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return h


def test_any_module_through_its_layer_list() -> None:
    torch.manual_seed(0)
    base, ft, tok = _Plain(), _Plain(), _tokenizer()
    acts = collect_activations(base, ft, tok, TEXTS[:2], site=ActivationSite(layer=0), progress=False)
    ids = torch.tensor(tok(TEXTS[0])["input_ids"])
    want = base.layers[0](base.embed(ids))[1:]  # the Linear's own output, before tanh
    torch.testing.assert_close(acts.acts[:4, 0], want.detach())


def test_refuses_disagreeing_tokenizers_and_bad_layers() -> None:
    base, ft = _gpt2(0), _gpt2(1)
    other = _tokenizer(list(reversed(WORDS)))
    with pytest.raises(InputError, match="tokenizers disagree on document 0"):
        collect_activations(base, ft, (_tokenizer(), other), TEXTS, site=ActivationSite(layer=0), progress=False)
    with pytest.raises(InputError, match="layer 9 is out of range: the model has 4 layers"):
        collect_activations(base, ft, _tokenizer(), TEXTS, site=ActivationSite(layer=9), progress=False)
    with pytest.raises(InputError, match="no submodule"):
        collect_activations(base, ft, _tokenizer(), TEXTS, site=ActivationSite(module="nope"), progress=False)


def test_disk_cache_streams_the_same_rows(tmp_path) -> None:
    base, ft, tok = _gpt2(0), _gpt2(1), _tokenizer()
    site = ActivationSite(layer=1)
    memory = collect_activations(base, ft, tok, TEXTS, site=site, progress=False)
    config = ActivationConfig(memory_limit_bytes=0, cache_path=tmp_path / "acts.h5", chunk_rows=5)
    disk = collect_activations(base, ft, tok, TEXTS, site=site, config=config, progress=False)
    assert disk.on_disk and disk.acts.dtype == np.float16
    torch.testing.assert_close(disk.rows(0, disk.n_rows), memory.acts, rtol=2e-3, atol=2e-3)
    batches = [b for _, b in zip(range(4), disk.iter_batches(4, seed=0))]  # 16 rows = one pass
    seen = torch.cat(batches).reshape(16, -1)
    want = disk.rows(0, 16).reshape(16, -1)
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, want.tolist()))


def test_max_tokens_cuts_documents_in_order() -> None:
    acts = collect_activations(_gpt2(0), _gpt2(1), _tokenizer(), TEXTS, site=ActivationSite(layer=0),
                               config=ActivationConfig(max_tokens=5), progress=False)
    assert acts.doc.tolist() == [0, 0, 0, 0, 1]


def test_read_texts_lines_and_jsonl(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc\n")
    assert read_texts(tmp_path / "a.txt") == ["first doc", "second doc"]
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n{"text": "two", "id": 2}\n')
    assert read_texts(tmp_path / "b.jsonl") == ["one", "two"]
    (tmp_path / "c.jsonl").write_text('{"text": "one"}\n{"body": "x"}\n')
    with pytest.raises(InputError, match="c.jsonl:2 has no string 'text' field"):
        read_texts(tmp_path / "c.jsonl")
    with pytest.raises(InputError, match="does not exist"):
        read_texts(tmp_path / "missing.txt")
