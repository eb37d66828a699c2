"""HDF5 schema constants and the conversions between Python values and HDF5 attributes."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import h5py
import numpy as np

SCHEMA_VERSION = 1
MAGIC_ATTR = "mechdiff_schema"  # older files marked themselves with it too; read, never written
PARTS = ("weights", "heads", "crosscoder", "components", "audit")
CHUNK_THRESHOLD = 1 << 16  # arrays with more elements than this are chunked + compressed
STR_DTYPE = h5py.string_dtype(encoding="utf-8")


def to_attr(value: Any) -> Any:
    """Convert a Python value to something h5py stores as an attribute.

    Scalars and strings are stored as they are; dataclasses, dicts, lists and
    None are stored as JSON strings prefixed with ``json:`` so the reader can
    tell them apart from plain strings.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, (dict, list, tuple)) or value is None:
        return "json:" + json.dumps(value, default=_json_default)
    if isinstance(value, np.generic):
        return value.item()
    return value


def from_attr(value: Any) -> Any:
    """Inverse of :func:`to_attr`."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return str(obj)


def columns_to_structured(columns: dict[str, Any]) -> np.ndarray:
    """Turn a dict of equal-length columns into a numpy structured array.

    String columns (lists of str, or numpy unicode/object arrays) become HDF5
    variable-length UTF-8 strings.
    """
    if not columns:
        raise ValueError("a table needs at least one column")
    arrays = {name: _column_array(values) for name, values in columns.items()}
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"table columns differ in length: {lengths}")
    n = next(iter(lengths.values()))
    dtype = np.dtype([(name, _h5_dtype(a)) for name, a in arrays.items()])
    table = np.empty(n, dtype=dtype)
    for name, a in arrays.items():
        table[name] = a
    return table


def _column_array(values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind in "OUS" or (array.size == 0 and _looks_textual(values)):
        return np.array([_to_str(v) for v in values], dtype=object)
    if array.ndim == 0:
        raise ValueError("table columns must be one-dimensional sequences")
    return array


def _looks_textual(values: Any) -> bool:
    return isinstance(values, list) and not values


def _to_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def _h5_dtype(array: np.ndarray) -> Any:
    if array.dtype == object:
        return STR_DTYPE
    if array.ndim > 1:
        return (array.dtype, array.shape[1:])
    return array.dtype


def decode_structured(table: np.ndarray) -> np.ndarray:
    """Decode the byte-string columns h5py returns into Python ``str`` objects."""
    if table.dtype.names is None:
        return table
    fields = []
    for name in table.dtype.names:
        field_dtype = table.dtype[name]
        fields.append((name, object if field_dtype.kind in "OS" else field_dtype))
    out = np.empty(table.shape, dtype=fields)
    for name in table.dtype.names:
        column = table[name]
        if table.dtype[name].kind in "OS":
            out[name] = [v.decode("utf-8") if isinstance(v, bytes) else v for v in column]
        else:
            out[name] = column
    return out
