"""The crosscoder's training precision: which one a run uses, and the scope that applies it.

Four settings (``CrosscoderConfig.precision``):

- ``fp32``: IEEE float32 everywhere (TF32 matmuls switched off for the run).
- ``tf32``: float32 tensors, the encoder matmul on TF32 tensor cores (CUDA only).
- ``bf16``: the forward under ``torch.autocast(dtype=bfloat16)``; the encoder matmul (the one
  dense product of a step) runs in bf16, and everything sparse (top-k scores, the sparse
  encode/decode autograd ops and their numba kernels, the loss) in float32. Parameters and
  Adam state stay float32 (no loss scaling is needed: bf16 has float32's exponent range).
- ``auto``: ``tf32`` on a CUDA GPU that has TF32 (compute capability >= 8.0), else ``fp32``;
  the command line maps ``--dtype bfloat16`` with ``--precision auto`` to ``bf16``.

A run records the precision it resolved to, so a checkpoint written under ``auto`` on a GPU
(tf32) refuses to resume on the CPU (fp32): resume with the same precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

from mechdiff.diffing.crosscoder.config import PRECISIONS
from mechdiff.errors import UsageError

TF32_MIN_CAPABILITY = (8, 0)  # Ampere: the first GPUs with TF32 tensor cores


def requested_precision(precision: str, model_dtype: str) -> str:
    """What ``--precision`` asks for once ``--dtype`` is taken into account.

    Args:
        precision: one of :data:`PRECISIONS`.
        model_dtype: the dtype the models run in ("float32", "bfloat16", "float16").

    Returns:
        ``bf16`` for ``auto`` with bfloat16 models (they were run in bf16; train the same way),
        otherwise ``precision`` unchanged.
    """
    return "bf16" if precision == "auto" and model_dtype == "bfloat16" else precision


def resolve_precision(precision: str, device: str) -> str:
    """The concrete precision (fp32, tf32 or bf16) a run on ``device`` uses.

    Args:
        precision: one of :data:`PRECISIONS`.
        device: "cpu", "cuda" or "cuda:N".

    Returns:
        ``precision`` itself unless it is ``auto``.

    Raises:
        UsageError: an unknown precision, tf32 off CUDA, or bf16 on a GPU without bf16.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    on_cuda = torch.device(device).type == "cuda"
    if precision == "auto":
        return "tf32" if on_cuda and _has_tf32(device) else "fp32"
    if precision == "tf32" and not on_cuda:
        raise UsageError(f"precision tf32 is a CUDA matmul mode; on device {device} use fp32 or bf16")
    if precision == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise UsageError(f"precision bf16 needs a GPU with bfloat16 support; {device} has none: use fp32 or tf32")
    return precision


def check_precision(precision: str, device: str) -> None:
    """Refuse, before any work, a precision ``device`` cannot run ('auto' always can).

    Raises:
        UsageError: as :func:`resolve_precision`.
    """
    if precision != "auto":
        resolve_precision(precision, device)


def _has_tf32(device: str) -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= TF32_MIN_CAPABILITY


def autocast(precision: str, device: str) -> AbstractContextManager:
    """The context a training forward runs in: bf16 autocast for ``bf16``, nothing otherwise."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def matmul_scope(precision: str) -> Iterator[None]:
    """Set the CUDA float32-matmul mode for one training call and restore it afterwards.

    TF32 for ``tf32``, IEEE float32 otherwise (so ``fp32`` means fp32 even when the user
    switched TF32 on globally). The previous setting comes back on exit, also after an
    exception. Setting it is harmless on a machine without a GPU.
    """
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the legacy flag and this one must not be mixed
        previous = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if precision == "tf32" else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = previous
        return
    previous_flag = matmul.allow_tf32
    matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        matmul.allow_tf32 = previous_flag
