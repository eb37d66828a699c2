"""A model folder's tokenizer, loaded the way it was saved and checked against the model.

Why: a folder with `tokenizer.json` but no `tokenizer_config.json` (what `tokenizers`'
own `save` leaves) makes `AutoTokenizer` guess the class from `config.json`; for a GPT-2
config it wraps the file in GPT-2's byte-level BPE settings and adds `<|endoftext|>`, so
a word-level vocabulary encodes to wrong ids, some past the embedding. Such a folder is
loaded from the file alone, and every tokenizer is checked before any model runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechdiff.errors import InputError

# special-token roles, recognised by name in a bare tokenizer.json (no config says which is which)
_ROLE_NAMES = {
    "pad_token": ("<pad>", "[pad]", "<|pad|>", "<|padding|>"),
    "bos_token": ("<bos>", "<s>", "[cls]", "<|startoftext|>", "<|begin_of_text|>"),
    "eos_token": ("<eos>", "</s>", "[sep]", "<|endoftext|>", "<|end_of_text|>", "<|eos|>"),
    "unk_token": ("<unk>", "[unk]", "<|unk|>"),
}
_SAMPLE_WORDS = 8


def load_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer: `tokenizer.json` alone when no tokenizer config says more, else AutoTokenizer."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
        special = {str(t.content) for t in tokenizer.backend_tokenizer.get_added_tokens_decoder().values() if t.special}
        for role, names in _ROLE_NAMES.items():
            found = next((tok for tok in sorted(special) if tok.lower() in names), None)
            if found is not None:
                setattr(tokenizer, role, found)
        return tokenizer
    return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)


def check_tokenizer(tokenizer: Any, vocab_size: int, folder: Path | str) -> None:
    """Refuse a tokenizer that does not fit the model: ids past the embedding, or text that does not round-trip.

    Args:
        tokenizer: a transformers tokenizer.
        vocab_size: rows of the model's input embedding.
        folder: named in the error.

    Raises:
        InputError: one line naming the folder and what is wrong.
    """
    vocab = tokenizer.get_vocab()
    largest = max(vocab.values(), default=-1)
    if largest >= vocab_size:
        token = next(t for t, i in vocab.items() if i == largest)
        raise InputError(f"{folder}: the tokenizer has id {largest} ({token!r}) but the model embeds only {vocab_size} "
                         "tokens; the tokenizer files do not belong to this model")
    words = sample_words(vocab)
    if not words:
        return
    text = " ".join(words)
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    if decoded.lower().split() != [w.lower() for w in words]:
        raise InputError(f"{folder}: the tokenizer does not read its own vocabulary back ({text!r} -> {decoded!r}); "
                         "add the tokenizer_config.json saved with the model, or save it with transformers")


def sample_words(vocab: dict[str, int]) -> list[str]:
    """Up to 8 plain words of the vocabulary (ASCII letters, 2+ long), lowest ids first."""
    words = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1]) if t.isascii() and t.isalpha() and len(t) > 1]
    return words[:_SAMPLE_WORDS]
