"""Paired activation collection: the same tokens through two models, read at the same site.

Each forward pass stops right after the chosen site (a hook raises once it has
the output), so a layer in the first half of the model costs well under a full
forward. BOS and padding positions are skipped; every kept row remembers its
(document, position, token). Small runs stay in memory, large ones go to an
HDF5 cache that :class:`PairedActivations` streams back in shuffled chunks.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mechdiff.diffing.activations.cache import (
    PairedActivations,
    norm_scales,
    open_cache,
)
from mechdiff.diffing.activations.hooks import ActivationSite, SiteCapture, resolve_site
from mechdiff.errors import InputError
from mechdiff.progress import new_bar

__all__ = ["ActivationConfig", "ActivationSite", "PairedActivations", "collect_activations", "read_texts", "tokenize_pair"]

CACHE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class ActivationConfig:
    """How many activations to collect and where to keep them."""

    max_tokens: int = 1_000_000
    """Rows (token positions) to collect at most; documents are taken in order until reached."""
    ctx_len: int = 128
    """Tokens per document at most (longer ones are truncated)."""
    batch_docs: int = 16
    """Documents per forward pass."""
    skip_bos: bool = True
    """Drop a leading BOS token (it carries no content and often has an outsized norm)."""
    scale_sample_rows: int = 20_000
    """Rows sampled to estimate each model's normalization scale."""
    memory_limit_bytes: int = 2 << 30
    """Keep activations in memory (float32) up to this size, else cache them on disk (0: always cache)."""
    cache_path: Path | None = None
    """HDF5 cache file used when over memory_limit_bytes (None then is an error)."""
    cache_dtype: str = "float16"
    """Storage dtype of the disk cache ('float16' halves the size; 'float32' for huge activations)."""
    chunk_rows: int = 65536
    """Rows per shuffled chunk when streaming from the disk cache."""
    device: str = "cpu"
    """Device the models run on."""

    def __post_init__(self) -> None:
        for name in ("max_tokens", "ctx_len", "batch_docs", "scale_sample_rows", "chunk_rows"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ActivationConfig: {name} must be positive")
        if self.memory_limit_bytes < 0:
            raise ValueError("ActivationConfig: memory_limit_bytes must be >= 0")
        if self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"ActivationConfig: cache_dtype must be one of {CACHE_DTYPES}")


def read_texts(path: str | Path) -> list[str]:
    """Documents from a text file (one per line) or JSONL (a ``text`` field per line).

    Raises:
        InputError: missing file, bad JSON, a line without ``text``, or no documents.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"data file {path} does not exist; pass a .txt (one document per line) or .jsonl file")
    lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    texts = _jsonl_texts(p, lines) if p.suffix.lower() in (".jsonl", ".json") else [ln for ln in lines if ln.strip()]
    if not texts:
        raise InputError(f"data file {path} has no documents")
    return texts


def _jsonl_texts(path: Path, lines: list[str]) -> list[str]:
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number} is not valid JSON ({exc.msg}); JSONL needs one object per line") from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputError(f"{path}:{number} has no string 'text' field; each JSONL line needs one")
        if record["text"].strip():
            texts.append(record["text"])
    return texts


def tokenize(tokenizer: Any, texts: Sequence[str], ctx_len: int) -> list[np.ndarray]:
    """Token ids per document with the tokenizer's own special tokens, truncated to ctx_len.

    Accepts a transformers tokenizer (callable) or a ``tokenizers.Tokenizer``.
    """
    docs = []
    for text in texts:
        if callable(tokenizer):
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        else:
            ids = tokenizer.encode(text).ids
        docs.append(np.asarray(ids[:ctx_len], dtype=np.int64))
    return docs


def tokenize_pair(tokenizers: Any, texts: Sequence[str], ctx_len: int) -> list[np.ndarray]:
    """Tokenize with both models' tokenizers and insist they agree.

    Args:
        tokenizers: one tokenizer shared by both models, or a (base, ft) pair.
        texts: documents.
        ctx_len: truncation length.

    Returns:
        Token ids per document.

    Raises:
        InputError: the two tokenizers give different ids for some document.
    """
    if isinstance(tokenizers, (tuple, list)):
        base_tok, ft_tok = tokenizers
    else:
        base_tok = ft_tok = tokenizers
    base_docs = tokenize(base_tok, texts, ctx_len)
    if ft_tok is base_tok:
        return base_docs
    for number, (a, b) in enumerate(zip(base_docs, tokenize(ft_tok, texts, ctx_len))):
        if not np.array_equal(a, b):
            raise InputError(
                f"the base and fine-tuned tokenizers disagree on document {number} "
                f"(first ids {a[:8].tolist()} vs {b[:8].tolist()}); crosscoders need both models to see the same tokens"
            )
    return base_docs


def kept_positions(docs: list[np.ndarray], bos_id: int | None, skip_bos: bool, max_tokens: int) -> list[np.ndarray]:
    """Positions to keep per document (BOS dropped), cut so the total is at most max_tokens."""
    kept, total = [], 0
    for ids in docs:
        start = 1 if skip_bos and bos_id is not None and len(ids) and ids[0] == bos_id else 0
        positions = np.arange(start, len(ids), dtype=np.int64)[: max(0, max_tokens - total)]
        kept.append(positions)
        total += len(positions)
    return kept


def collect_activations(
    base_model: nn.Module,
    ft_model: nn.Module,
    tokenizers: Any,
    texts: Sequence[str],
    *,
    site: ActivationSite,
    config: ActivationConfig | None = None,
    progress: bool = True,
    stop_early: bool = True,
) -> PairedActivations:
    """Run both models on the same tokens and keep their activations at one site.

    Args:
        base_model: base model (a transformers causal LM or any nn.Module taking input_ids [b, T]).
        ft_model: fine-tuned model with the same architecture at the site.
        tokenizers: one tokenizer for both, or a (base, ft) pair (they must agree on the data).
        texts: documents.
        site: where to read (block output / MLP / attention of a layer, or a module name).
        config: how much to collect and where to keep it (default ActivationConfig()).
        progress: show a tokens/s bar on stderr.
        stop_early: stop each forward pass right after the site (False runs the whole model).

    Returns:
        Paired activations [N, 2, D] with doc/pos/token per row and per-model scales.

    Raises:
        InputError: tokenizers disagree, the site does not exist, or no tokens remain.
    """
    config = config or ActivationConfig()
    docs = tokenize_pair(tokenizers, texts, min(config.ctx_len, max_positions(base_model), max_positions(ft_model)))
    tok = tokenizers[0] if isinstance(tokenizers, (tuple, list)) else tokenizers
    kept = kept_positions(docs, _special_id(tok, "bos"), config.skip_bos, config.max_tokens)
    n_rows = sum(len(k) for k in kept)
    if n_rows == 0:
        raise InputError("no tokens to collect: the data is empty after tokenization (or only BOS tokens)")
    models = [base_model.to(config.device).eval(), ft_model.to(config.device).eval()]
    captures = [SiteCapture(resolve_site(m, site), stop=stop_early) for m in models]
    pad_id = _special_id(tok, "pad") or 0
    d_model = _probe_width(models[0], SiteCapture(captures[0].module), docs, pad_id, config.device)
    store, cache_file = _allocate(n_rows, d_model, config)
    try:
        _fill(store, models, captures, docs, kept, pad_id, config, progress)
    finally:
        if cache_file is not None:
            cache_file.flush()
    doc_ids = np.concatenate([np.full(len(k), d, dtype=np.int64) for d, k in enumerate(kept)])
    positions = np.concatenate(kept)
    acts = PairedActivations(store, doc_ids, positions, np.concatenate([docs[d][k] for d, k in enumerate(kept)]),
                             torch.ones(2), docs, config.chunk_rows)
    acts.scales = norm_scales(acts.scale_estimate_rows(config.scale_sample_rows))
    return acts


def max_positions(model: nn.Module) -> int:
    """Longest sequence a transformers model accepts (unbounded for other modules)."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30


def _special_id(tokenizer: Any, name: str) -> int | None:
    value = getattr(tokenizer, f"{name}_token_id", None)
    if value is None and hasattr(tokenizer, "token_to_id"):
        value = tokenizer.token_to_id({"bos": "<bos>", "pad": "<pad>"}[name])
    return value


def _forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
    # transformers models take the mask; any other module gets the ids alone (right padding
    # never changes earlier positions of a causal model, and pads are dropped anyway)
    if "attention_mask" in inspect.signature(model.forward).parameters:
        return model(input_ids=input_ids, attention_mask=attention_mask)
    return model(input_ids)


@torch.inference_mode()
def _probe_width(model: nn.Module, capture: SiteCapture, docs: list[np.ndarray], pad_id: int, device: str) -> int:
    ids = torch.as_tensor(docs[0][:4] if len(docs[0]) else [pad_id], device=device)[None]
    with capture:
        out = capture.run(lambda: _forward(model, ids, torch.ones_like(ids)))
    if out.dim() != 3:
        raise InputError(f"the site's output has shape {list(out.shape)}; expected [batch, tokens, width]")
    return int(out.shape[-1])


def _allocate(n_rows: int, d_model: int, config: ActivationConfig) -> tuple[Any, Any]:
    if n_rows * 2 * d_model * 4 <= config.memory_limit_bytes:
        return torch.empty(n_rows, 2, d_model), None
    if config.cache_path is None:
        raise InputError(
            f"{n_rows} rows of width {d_model} exceed the in-memory limit; set a cache path (or collect fewer tokens)"
        )
    file, dataset = open_cache(Path(config.cache_path), n_rows, 2, d_model, config.cache_dtype)
    return dataset, file


@torch.inference_mode()
def _fill(store: Any, models: list[nn.Module], captures: list[SiteCapture], docs: list[np.ndarray],
          kept: list[np.ndarray], pad_id: int, config: ActivationConfig, progress: bool) -> None:
    order = [d for d in range(len(docs)) if len(kept[d])]
    row = 0
    with new_bar(total=sum(len(k) for k in kept), unit="tok", unit_scale=True, desc="activations",
              disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(order), config.batch_docs):
            batch = order[start:start + config.batch_docs]
            ids, mask = pad_batch([docs[d] for d in batch], pad_id, config.device)
            rows_b, pos_b = _batch_rows(batch, kept)
            pair = []
            for model, capture in zip(models, captures):
                with capture:
                    out = capture.run(lambda m=model, i=ids, a=mask: _forward(m, i, a))
                pair.append(out[rows_b, pos_b].float().cpu())
            block = torch.stack(pair, dim=1)
            _write(store, row, block)
            row += block.shape[0]
            bar.update(block.shape[0])


def pad_batch(seqs: list[np.ndarray], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id arrays into [B, T] ids and an attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(seqs), width), dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.from_numpy(s)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _batch_rows(batch: list[int], kept: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.concatenate([np.full(len(kept[d]), i) for i, d in enumerate(batch)])
    return torch.from_numpy(rows), torch.from_numpy(np.concatenate([kept[d] for d in batch]))


def _write(store: Any, row: int, block: torch.Tensor) -> None:
    if isinstance(store, torch.Tensor):
        store[row:row + block.shape[0]] = block
        return
    data = block.numpy().astype(store.dtype)
    if not np.isfinite(data).all():
        raise InputError("activations overflow the float16 cache; use cache_dtype='float32'")
    store[row:row + block.shape[0]] = data
