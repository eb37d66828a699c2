"""Loading runnable models: local Hugging Face causal LMs only (never a hub, never remote code)."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from mechdiff.errors import InputError
from mechdiff.hf_tokenizer import check_tokenizer, load_tokenizer
from mechdiff.progress import hf_progress


def load_causal_lm(model_dir: str | os.PathLike, device: str = "cpu", *, progress: bool = True,
                   dtype: str = "float32") -> tuple[nn.Module, Any]:
    """Load a causal LM and its tokenizer from a local folder, in eval mode, float32.

    Args:
        model_dir: folder with config.json, weights and tokenizer files.
        device: where the model goes.
        progress: transformers' loading bars (only on a terminal).
        dtype: "float32", "bfloat16" or "float16": the dtype the model runs in.

    Returns:
        (model, tokenizer).

    Raises:
        InputError: transformers is missing, or the folder is not a loadable model.
    """
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError("running models needs transformers: pip install transformers") from exc
    from mechdiff.checkpoint.hub_cache import resolve_model

    path = resolve_model(model_dir)
    if not (path / "config.json").is_file():
        raise InputError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    try:
        with hf_progress(progress):
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                                         dtype=getattr(torch, dtype))
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load the model or tokenizer in {model_dir}: {exc}") from exc
    check_tokenizer(tokenizer, model.get_input_embeddings().weight.shape[0], model_dir)
    return model.to(device).eval(), tokenizer


def load_model_pair(base_dir: str | os.PathLike, ft_dir: str | os.PathLike, device: str = "cpu", *,
                    progress: bool = True, dtype: str = "float32") -> tuple[nn.Module, nn.Module, Any, Any]:
    """Both models and tokenizers: (base_model, ft_model, base_tokenizer, ft_tokenizer)."""
    base, base_tok = load_causal_lm(base_dir, device, progress=progress, dtype=dtype)
    ft, ft_tok = load_causal_lm(ft_dir, device, progress=progress, dtype=dtype)
    return base, ft, base_tok, ft_tok
