"""SPD of a local Hugging Face causal language model on a text file (KL output distance)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mechdiff.errors import InputError
from mechdiff.models import load_causal_lm
from mechdiff.training import Checkpointing
from mechdiff.weightdecomp.spd.config import SPDConfig
from mechdiff.weightdecomp.spd.decomposition import Decomposition
from mechdiff.weightdecomp.spd.trainer import decompose_module


def token_batches(tokenizer: Any, text: str, seq_len: int, batch_sequences: int) -> list[Tensor]:
    """Tokenize ``text`` and cut it into [batch_sequences, seq_len] id batches (last partial batch dropped).

    Args:
        tokenizer: a transformers tokenizer.
        text: the corpus.
        seq_len: tokens per sequence.
        batch_sequences: sequences per batch.

    Returns:
        A list of int64 tensors.
    """
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    per_batch = seq_len * batch_sequences
    n_batches = len(ids) // per_batch
    if n_batches == 0:
        raise InputError(
            f"the data has {len(ids)} tokens, fewer than one batch ({batch_sequences} x {seq_len}); "
            "give more text or a smaller seq_len / batch"
        )
    return list(ids[: n_batches * per_batch].view(n_batches, batch_sequences, seq_len))


def _lm_forward(model: nn.Module, input_ids: Tensor) -> Tensor:
    return model(input_ids=input_ids).logits


def decompose_hf(
    model_dir: str | os.PathLike,
    module_globs: list[str],
    data_file: str | os.PathLike,
    config: SPDConfig,
    *,
    seq_len: int = 64,
    batch_sequences: int = 8,
    progress: bool = False,
    checkpointing: Checkpointing | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> Decomposition:
    """SPD of chosen weights of a local causal LM, KL between masked and original next-token distributions.

    Args:
        model_dir: local Hugging Face folder (loaded with ``local_files_only=True``).
        module_globs: fnmatch patterns on module names, e.g. ``["transformer.h.*.mlp.c_fc"]``.
        data_file: UTF-8 text file; batches are cycled when there are fewer than steps.
        config: SPD hyper-parameters (``batch_size`` is not used; see ``batch_sequences``).
        seq_len: tokens per sequence.
        batch_sequences: sequences per step.
        progress: show a progress bar on stderr.
        checkpointing: save / resume a long run.
        device: where the model runs and the components train ("cpu", "cuda", "cuda:N").
        dtype: "float32", "bfloat16" or "float16": the dtype the model runs in; the
            components and their causal-importance MLPs train in float32 whatever it is.

    Returns:
        The :class:`Decomposition` (output distance 'kl'; numpy, on the CPU).
    """
    model, tokenizer = load_causal_lm(model_dir, device, progress=progress, dtype=dtype)
    try:
        text = Path(data_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the data file {data_file}: {exc}") from exc
    return decompose_lm(model, tokenizer, module_globs, text, config, seq_len=seq_len,
                        batch_sequences=batch_sequences, progress=progress, checkpointing=checkpointing)


def decompose_lm(model: nn.Module, tokenizer: Any, module_globs: list[str], text: str, config: SPDConfig, *,
                 seq_len: int = 64, batch_sequences: int = 8, progress: bool = False,
                 checkpointing: Checkpointing | None = None) -> Decomposition:
    """`decompose_hf` on a model already loaded, trained where the model is (its parameters are set to requires_grad=False).

    Args:
        model: a causal LM returning ``.logits``; tokenizer: its tokenizer.
        module_globs, config, seq_len, batch_sequences, progress, checkpointing: as in `decompose_hf`.
        text: the corpus as one string.

    Returns:
        The :class:`Decomposition` (output distance 'kl').
    """
    batches = token_batches(tokenizer, text, seq_len, batch_sequences)
    return decompose_module(model, module_globs, batches, config, "kl", forward=_lm_forward, progress=progress,
                            checkpointing=checkpointing)
