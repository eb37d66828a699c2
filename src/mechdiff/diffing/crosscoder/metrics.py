"""Per-latent decoder statistics and the ft-only / base-only / shared classification."""

from __future__ import annotations

import numpy as np
import torch

FT_ONLY_MIN = 0.9
BASE_ONLY_MAX = 0.1
SHARED_RANGE = (0.4, 0.6)
CLASSES = ("ft-only", "base-only", "shared", "other", "dead")


def relative_norm(W_dec_FMD: torch.Tensor) -> torch.Tensor:
    """[F] Delta_j = 1/2 ((||d_ft|| - ||d_base||) / max(||d_ft||, ||d_base||) + 1); model 0 base, 1 ft.

    1 means the latent only writes to the fine-tuned model, 0 only to the base.
    """
    norms = W_dec_FMD.detach().norm(dim=-1)
    base, ft = norms[:, 0], norms[:, 1]
    return 0.5 * ((ft - base) / torch.maximum(ft, base).clamp_min(1e-12) + 1)


def decoder_cosine(W_dec_FMD: torch.Tensor) -> torch.Tensor:
    """[F] cosine between each latent's base and ft decoder vectors."""
    dec = W_dec_FMD.detach()
    return torch.nn.functional.cosine_similarity(dec[:, 0], dec[:, 1], dim=-1, eps=1e-12)


def classify(delta: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """Class per latent from its relative norm; latents that never fired are 'dead'.

    Args:
        delta: [F] relative decoder norms.
        freq: [F] firing frequency on the evaluation data.

    Returns:
        [F] object array of class names (see CLASSES).
    """
    cls = np.full(delta.shape, "other", dtype=object)
    cls[(delta >= SHARED_RANGE[0]) & (delta <= SHARED_RANGE[1])] = "shared"
    cls[delta >= FT_ONLY_MIN] = "ft-only"
    cls[delta <= BASE_ONLY_MAX] = "base-only"
    cls[freq <= 0] = "dead"
    return cls
