"""Validating a safetensors header ourselves before any library touches the body.

A hostile or truncated file must end in one clear InputError, never a crash,
a hang or an allocation sized by a number the file made up.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from mechdiff.errors import InputError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's own cap
# Bits per element of every dtype the safetensors format defines.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2": 8, "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header declares it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: entries by name, metadata and a fingerprint."""

    path: Path
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]
    fingerprint: str
    data_start: int  # file offset of the data section (8 + header length)


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Read and validate the header of a ``.safetensors`` file.

    Args:
        path: the file.

    Returns:
        The validated header.

    Raises:
        InputError: with a message naming the file and what is wrong.
    """
    p = Path(path)
    size = _file_size(p)
    if size < 8:
        raise InputError(f"{p} is not a safetensors file: {size} bytes is shorter than the 8-byte header length")
    with open(p, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > size - 8:
            raise InputError(
                f"{p} is truncated or not safetensors: its header claims {header_len} bytes but the file has {size}"
            )
        if header_len > MAX_HEADER_BYTES:
            raise InputError(f"{p}: header of {header_len} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
        raw = fh.read(header_len)
    body_len = size - 8 - header_len
    parsed = _parse_json(p, raw)
    metadata = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise InputError(f"{p}: __metadata__ must be a JSON object of strings")
    entries = {name: _entry(p, name, spec, body_len) for name, spec in parsed.items()}
    _check_layout(p, entries, body_len)
    fingerprint = hashlib.sha256(raw + struct.pack("<Q", size)).hexdigest()[:16]
    return SafetensorsHeader(p, entries, {str(k): str(v) for k, v in metadata.items()}, fingerprint, 8 + header_len)


def _file_size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read {p}: {exc.strerror or exc}") from exc


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"duplicate tensor name {dup!r}")
    return dict(pairs)


def _parse_json(p: Path, raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
        parsed = json.loads(text, object_pairs_hook=_reject_duplicates)
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: safetensors header is not UTF-8 ({exc.reason}); the file is corrupt") from exc
    except ValueError as exc:
        raise InputError(f"{p}: safetensors header is not valid JSON ({exc}); the file is corrupt") from exc
    if not isinstance(parsed, dict):
        raise InputError(f"{p}: safetensors header must be a JSON object")
    return parsed


def _entry(p: Path, name: str, spec: object, body_len: int) -> TensorEntry:
    if not isinstance(spec, dict):
        raise InputError(f"{p}: entry {name!r} is not an object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise InputError(f"{p}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise InputError(f"{p}: tensor {name!r} has an invalid shape {shape!r}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise InputError(f"{p}: tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if begin > end or end > body_len:
        raise InputError(
            f"{p}: tensor {name!r} spans bytes {begin}..{end} but the data section has {body_len} bytes "
            "(truncated or corrupt file)"
        )
    n_elements = 1
    for dim in shape:
        n_elements *= dim  # Python ints: no overflow, however large the declared shape
    if (n_elements * DTYPE_BITS[dtype] + 7) // 8 != end - begin:
        raise InputError(
            f"{p}: tensor {name!r} declares shape {shape} of {dtype} but occupies {end - begin} bytes"
        )
    return TensorEntry(name, dtype, tuple(shape), begin, end)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(p: Path, entries: dict[str, TensorEntry], body_len: int) -> None:
    spans = sorted((e.begin, e.end, e.name) for e in entries.values() if e.end > e.begin)
    for (_, end_a, name_a), (begin_b, _, name_b) in itertools.pairwise(spans):
        if begin_b < end_a:
            raise InputError(f"{p}: tensors {name_a!r} and {name_b!r} overlap in the file; it is corrupt")
