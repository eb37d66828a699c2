"""Tensor sources: one interface over safetensors (single or sharded), torch pickles and adapters.

Every source hands out one tensor at a time in its stored dtype; nothing here
holds a whole model in memory.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mechdiff.checkpoint.fingerprint import tensor_fingerprint
from mechdiff.checkpoint.safetensors_header import (
    SafetensorsHeader,
    read_header,
)
from mechdiff.errors import InputError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# safetensors dtype -> torch dtype, for the dtypes this torch build has (sub-byte ones are refused)
TORCH_DTYPES = {
    name: getattr(torch, attr)
    for name, attr in {
        "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
        "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn",
        "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
        "F8_E8M0": "float8_e8m0fnu", "C64": "complex64", "U16": "uint16", "U32": "uint32", "U64": "uint64",
    }.items()
    if hasattr(torch, attr)
}


@dataclass(frozen=True)
class TensorMeta:
    """What a source knows about a tensor before reading it."""

    name: str
    shape: tuple[int, ...]
    dtype: str


class TensorSource(Protocol):
    """A read-only collection of named tensors."""

    label: str
    folder: Path | None
    config: dict[str, Any] | None

    def names(self) -> list[str]: ...

    def meta(self, name: str) -> TensorMeta: ...

    def get(self, name: str) -> torch.Tensor: ...

    def fingerprint(self) -> str:
        """A hash of every tensor's bytes (see checkpoint/fingerprint.py)."""
        ...


class SafetensorsFile:
    """One ``.safetensors`` file. Each tensor is read with one positioned read of exactly its bytes.

    The header is validated first (offsets, sizes, dtypes), so a read never allocates more
    than the file holds; and no file mapping outlives a read, so resident memory stays the
    size of the tensors in use, never the size of the file.
    """

    def __init__(self, path: Path, *, folder: Path | None = None, config: dict | None = None) -> None:
        self.path = path
        self.label = str(path)
        self.folder = folder
        self.config = config
        self.header: SafetensorsHeader = read_header(path)

    def names(self) -> list[str]:
        return list(self.header.entries)

    def meta(self, name: str) -> TensorMeta:
        entry = self.header.entries[name]
        return TensorMeta(name, entry.shape, entry.dtype)

    def get(self, name: str) -> torch.Tensor:
        return self.get_into(name, None)

    def get_into(self, name: str, buffer: bytearray | None, rows: slice | None = None) -> torch.Tensor:
        """`get`, reading into the front of `buffer` when it is large enough (a new one otherwise).

        Why: a fresh buffer per tensor faults in every page again (the allocator returns
        large blocks to the OS); a streaming caller that reuses two buffers reads faster.
        The tensor is a view of `buffer`: it is valid until the caller reuses the buffer.
        `rows` reads only that range of the first axis (one expert of a fused [experts, ...]
        tensor, a block of rows of a large matrix): its bytes are contiguous in the file.
        """
        entry = self.header.entries[name]
        dtype = TORCH_DTYPES.get(entry.dtype)
        if dtype is None:
            raise InputError(f"{self.path}: tensor {name!r} has dtype {entry.dtype}, which mechdiff cannot read yet")
        shape, begin, size = _row_range(entry.shape, entry.begin, entry.end - entry.begin, rows)
        # a new buffer is left uninitialized: zero-filling it first cost as much as the read
        buffer = memoryview(buffer)[:size] if buffer is not None and len(buffer) >= size else np.empty(size, np.uint8)
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.header.data_start + begin)
                got = fh.readinto(buffer)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read tensor {name!r}: {exc.strerror or exc}") from exc
        if got != len(buffer):
            raise InputError(f"{self.path}: tensor {name!r} is cut short (the file changed or is truncated)")
        if size == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(shape)

    def tensor_file(self, name: str) -> Path:
        return self.path

    def fingerprint(self) -> str:
        return tensor_fingerprint(self)


def _row_range(shape: tuple[int, ...], begin: int, size: int, rows: slice | None) -> tuple[tuple[int, ...], int, int]:
    """(shape, first byte, byte count) of rows `rows` of a C-contiguous tensor stored at `begin`."""
    if rows is None or not shape:
        return tuple(shape), begin, size
    start, stop, _ = rows.indices(shape[0])
    row_bytes = size // shape[0] if shape[0] else 0
    stop = max(start, stop)
    return (stop - start, *shape[1:]), begin + start * row_bytes, (stop - start) * row_bytes


class PickleFile:
    """A torch pickle (``.bin``/``.pt``) loaded with ``weights_only=True``: its code never runs."""

    def __init__(self, path: Path, *, folder: Path | None = None, config: dict | None = None) -> None:
        self.path = path
        self.label = str(path)
        self.folder = folder
        self.config = config
        self._tensors = _flatten_state_dict(_load_weights_only(path), path)

    def names(self) -> list[str]:
        return list(self._tensors)

    def meta(self, name: str) -> TensorMeta:
        t = self._tensors[name]
        return TensorMeta(name, tuple(t.shape), _dtype_name(t.dtype))

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def tensor_file(self, name: str) -> Path:
        return self.path

    def fingerprint(self) -> str:
        return tensor_fingerprint(self)


class ShardedSource:
    """A sharded checkpoint: an ``*.index.json`` weight map over several files."""

    def __init__(self, index_path: Path, *, folder: Path | None, config: dict | None) -> None:
        self.label = str(index_path)
        self.folder = folder
        self.config = config
        self._index_path = index_path
        weight_map = _read_weight_map(index_path)
        self._shard_of = {name: index_path.parent / shard for name, shard in weight_map.items()}
        self._open: dict[Path, SafetensorsFile | PickleFile] = {}
        for shard in sorted(set(self._shard_of.values())):
            if not shard.is_file():
                raise InputError(f"{index_path} lists shard {shard.name}, which is missing")
        self._metas = self._collect_metas()

    def _collect_metas(self) -> dict[str, TensorMeta]:
        metas: dict[str, TensorMeta] = {}
        for shard in sorted(set(self._shard_of.values())):
            if shard.suffix == ".safetensors":
                source = self._source(shard)
                for name in source.names():
                    if self._shard_of.get(name) == shard:
                        metas[name] = source.meta(name)
        return metas

    def _source(self, shard: Path) -> SafetensorsFile | PickleFile:
        if shard not in self._open:
            if shard.suffix != ".safetensors":
                self._open.clear()  # pickle shards are loaded whole: keep one at a time
                self._open[shard] = PickleFile(shard)
            else:
                self._open[shard] = SafetensorsFile(shard)
        return self._open[shard]

    def names(self) -> list[str]:
        return list(self._shard_of)

    def meta(self, name: str) -> TensorMeta:
        if name in self._metas:
            return self._metas[name]
        return self._source(self._shard_of[name]).meta(name)

    def get(self, name: str) -> torch.Tensor:
        return self.get_into(name, None)

    def get_into(self, name: str, buffer: bytearray | None, rows: slice | None = None) -> torch.Tensor:
        """`get`, reading into `buffer` where the shard is a safetensors file (see SafetensorsFile)."""
        source = self._source(self._shard_of[name])
        if name not in source.names():
            raise InputError(f"{self._index_path} maps {name!r} to {source.label}, which does not contain it")
        return read_tensor(source, name, buffer, rows)

    def tensor_file(self, name: str) -> Path:
        return self._shard_of[name]

    def fingerprint(self) -> str:
        return tensor_fingerprint(self)


def read_tensor(source: TensorSource, name: str, buffer: bytearray | None, rows: slice | None = None) -> torch.Tensor:
    """source.get(name)[rows], read into `buffer` when the source can (safetensors files and shards).

    Args:
        source: any tensor source.
        name: the tensor to read.
        buffer: a reusable byte buffer; used when it holds the tensor's bytes.
        rows: a range of the first axis to read alone (None: the whole tensor).

    Returns:
        The tensor, possibly a view of `buffer` (valid until the buffer is reused).
    """
    get_into = getattr(source, "get_into", None)
    if get_into is not None:
        return get_into(name, buffer) if rows is None else get_into(name, buffer, rows)
    tensor = source.get(name)
    return tensor if rows is None else tensor[rows]


def open_source(path: str | os.PathLike) -> TensorSource:
    """Open a checkpoint: a Hugging Face folder, a single file, a shard index, or a cached model id.

    Args:
        path: folder with config.json and model.safetensors / a sharded index /
            pytorch_model.bin, a single .safetensors/.bin/.pt file, or ``org/name[@revision]``
            found in the local Hugging Face cache (offline).

    Returns:
        A TensorSource over the checkpoint's tensors.

    Raises:
        InputError: the path is missing, unreadable, or holds no known checkpoint.
    """
    from mechdiff.checkpoint.hub_cache import resolve_model

    p = resolve_model(path)
    if not p.exists():
        raise InputError(f"{path} does not exist")
    if p.is_dir():
        return _open_folder(p)
    return _open_file(p, folder=None, config=None)


def _open_folder(folder: Path) -> TensorSource:
    config = read_config(folder)
    candidates = [
        "model.safetensors.index.json",
        "model.safetensors",
        "pytorch_model.bin.index.json",
        "pytorch_model.bin",
    ]
    found = [folder / name for name in candidates if (folder / name).is_file()]
    singles = sorted(folder.glob("*.safetensors"))
    if not found and len(singles) == 1 and not (folder / "adapter_config.json").exists():
        found = singles
    if found:
        source = _open_file(found[0], folder=folder, config=config)
        source.label = str(folder)
        return source
    if (folder / "adapter_config.json").exists():
        raise InputError(f"{folder} is a PEFT adapter, not a model: pass the base model and use --adapter {folder}")
    raise InputError(
        f"{folder} holds no model weights (looked for model.safetensors, a sharded index, pytorch_model.bin)"
    )


def _open_file(p: Path, *, folder: Path | None, config: dict | None) -> TensorSource:
    if p.name.endswith(".index.json"):
        return ShardedSource(p, folder=folder or p.parent, config=config or read_config(p.parent))
    if p.suffix == ".safetensors":
        return SafetensorsFile(p, folder=folder, config=config)
    if p.suffix in PICKLE_SUFFIXES:
        return PickleFile(p, folder=folder, config=config)
    raise InputError(f"{p}: unknown checkpoint format (expected .safetensors, .bin, .pt or a model folder)")


def read_config(folder: Path) -> dict[str, Any] | None:
    """The folder's config.json as a dict, or None when there is none."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path} is not valid JSON: {_first_line(exc)}") from exc
    if not isinstance(config, dict):
        raise InputError(f"{path} must hold a JSON object")
    return config


def _read_weight_map(index_path: Path) -> dict[str, str]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{index_path} is not a valid shard index (needs a 'weight_map')") from exc
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"{index_path}: 'weight_map' must map tensor names to file names")
    for shard in set(weight_map.values()):
        if Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise InputError(f"{index_path}: shard path {shard!r} leaves the checkpoint folder")
    return weight_map


def _load_weights_only(path: Path) -> Any:
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty")
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise InputError(
            f"{path} refused: it needs more than plain tensors to load (a pickle that would run code "
            "or import modules); convert it to safetensors with a trusted tool"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is not a readable torch checkpoint (truncated or corrupt?): {_first_line(exc)}") from exc


def _flatten_state_dict(obj: Any, path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return {prefix.rstrip("."): obj}
    if not isinstance(obj, dict):
        return {}
    if prefix == "" and set(obj) & {"state_dict", "model"} and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = obj.get("state_dict", obj.get("model"))
        return _flatten_state_dict(inner, path)
    flat: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        flat.update(_flatten_state_dict(value, path, f"{prefix}{key}."))
    if prefix == "" and not flat:
        raise InputError(f"{path} holds no tensors")
    return flat


def _dtype_name(dtype: torch.dtype) -> str:
    names = {
        torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
        torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
        torch.uint8: "U8", torch.bool: "BOOL",
    }
    return names.get(dtype, str(dtype).removeprefix("torch."))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
