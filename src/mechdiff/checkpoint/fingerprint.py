"""Fingerprints of checkpoints: a hash of every tensor's bytes, taken while the diff reads them anyway.

A source's fingerprint is sha256 over its tensors in name order (name, dtype, shape and
the sha256 of the bytes), so equal weights give equal fingerprints whatever the file
layout, and one changed value gives another. Each tensor's digest is remembered per
(file, size, mtime, name): a results file written after the diff (the audit opens its
inputs again) reuses the digests of the streamed read instead of reading the model a
second time. Tensors the diff never read (added, removed, another command) are read here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from mechdiff.checkpoint.sources import TensorMeta

_DIGESTS: dict[tuple[str, int, int, str], str] = {}
"""Digest of a tensor's bytes by (file, size, mtime_ns, name); a rewritten file gets new keys."""


class HashableSource(Protocol):
    """A tensor source that can say which file holds each tensor."""

    def names(self) -> list[str]: ...

    def get(self, name: str) -> torch.Tensor: ...

    def meta(self, name: str) -> TensorMeta: ...

    def tensor_file(self, name: str) -> Path: ...


def tensor_bytes_digest(tensor: torch.Tensor) -> str:
    """sha256 of a CPU tensor's bytes in row-major order (dtype-agnostic: bf16 and fp8 too)."""
    flat = tensor.detach().reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    if flat.dtype != torch.bool:
        flat = flat.view(torch.uint8)
    return hashlib.sha256(flat.cpu().numpy().data).hexdigest()  # hashlib releases the GIL on large buffers


def _key(source: HashableSource, name: str) -> tuple[str, int, int, str] | None:
    path = source.tensor_file(name)
    try:
        st = os.stat(path)
    except OSError:
        return None
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns, name


def note_read(source: object, name: str, tensor: torch.Tensor) -> None:
    """Record the digest of a tensor just read from ``source`` (once per file and name)."""
    if not hasattr(source, "tensor_file"):
        return  # derived sources (a base plus an adapter) fingerprint their parts instead
    key = _key(source, name)  # type: ignore[arg-type]
    if key is not None and key not in _DIGESTS:
        _DIGESTS[key] = tensor_bytes_digest(tensor)


def known_digests(source: object, names: Iterable[str]) -> dict[str, str]:
    """Digests already taken for ``names`` of ``source`` (to send to another rank)."""
    if not hasattr(source, "tensor_file"):
        return {}
    found = {}
    for name in names:
        key = _key(source, name)  # type: ignore[arg-type]
        if key is not None and key in _DIGESTS:
            found[name] = _DIGESTS[key]
    return found


def remember_digests(source: object, digests: dict[str, str]) -> None:
    """Take digests computed elsewhere (another rank's share of the same files)."""
    if not hasattr(source, "tensor_file"):
        return
    for name, digest in digests.items():
        key = _key(source, name)  # type: ignore[arg-type]
        if key is not None:
            _DIGESTS.setdefault(key, digest)


def tensor_fingerprint(source: HashableSource) -> str:
    """The source's fingerprint: sha256 over (name, dtype, shape, bytes digest) of every tensor, in name order.

    Args:
        source: the checkpoint; tensors whose digest is not known yet are read now.

    Returns:
        16 hex digits.
    """
    combined = hashlib.sha256()
    for name in sorted(source.names()):
        key = _key(source, name)
        digest = _DIGESTS.get(key) if key is not None else None
        if digest is None:
            digest = tensor_bytes_digest(source.get(name))
            if key is not None:
                _DIGESTS[key] = digest
        meta = source.meta(name)
        combined.update(f"{name}\0{meta.dtype}\0{list(meta.shape)}\0{digest}\n".encode())
    return combined.hexdigest()[:16]
