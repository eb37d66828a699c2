"""A word-level tokenizer for the made-up language, saved in Hugging Face format."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def build_tokenizer(words: list[str]) -> Tokenizer:
    """Build a WordLevel tokenizer: special tokens first (ids 0..3), then ``words`` in order.

    Encoding splits on whitespace and prepends ``<bos>``, so every encoded document
    starts the way training documents do.

    Args:
        words: the vocabulary, without special tokens; must be unique.

    Returns:
        The tokenizer.
    """
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
    if len(vocab) != len(SPECIAL_TOKENS) + len(words):
        raise ValueError("words must be unique and must not contain special tokens")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])])
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def save_tokenizer(tok: Tokenizer, folder: Path, model_max_length: int) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json.

    ``transformers.AutoTokenizer.from_pretrained(folder)`` and
    ``tokenizers.Tokenizer.from_file(folder / "tokenizer.json")`` both load the result.

    Args:
        tok: the tokenizer from :func:`build_tokenizer`.
        folder: destination (created if missing).
        model_max_length: longest sequence the model accepts.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "padding_side": "right",
        "add_bos_token": True,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """Ids of the special tokens, keyed ``pad``, ``bos``, ``eos``, ``unk``."""
    return {name: tok.token_to_id(t) for name, t in zip(("pad", "bos", "eos", "unk"), SPECIAL_TOKENS)}
