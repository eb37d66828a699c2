"""Hypothesis strategies for hostile safetensors files, shared by the test suite and the nightly benchmark."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from hypothesis import strategies as st

from mechdiff.checkpoint import open_source
from mechdiff.errors import InputError

DTYPES = ["F32", "F16", "BF16", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "F64", "F4", "F8_E8M0",
          "F6_E2M3", "F6_E3M2", "C64", "U16", "U32", "U64", "F8_E4M3FNUZ"]
BITS = {"F32": 32, "F16": 16, "BF16": 16, "I64": 64, "I32": 32, "I8": 8, "U8": 8, "BOOL": 8, "F8_E4M3": 8,
        "F8_E5M2": 8, "F64": 64, "F4": 4, "F8_E8M0": 8, "F6_E2M3": 6, "F6_E3M2": 6, "C64": 64, "U16": 16,
        "U32": 32, "U64": 64, "F8_E4M3FNUZ": 8}
HUGE = 2**62

dims = st.one_of(st.integers(0, 6), st.integers(-3, -1), st.integers(2**31, HUGE), st.just("x"))
offsets = st.one_of(
    st.lists(st.integers(-8, 300), min_size=2, max_size=2),
    st.lists(st.integers(0, HUGE), min_size=2, max_size=2),
    st.lists(st.integers(0, 64), min_size=0, max_size=3),
    st.just("bad"),
)
entries = st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(DTYPES), st.text(max_size=6)),
    "shape": st.one_of(st.lists(dims, max_size=4), st.just({})),
    "data_offsets": offsets,
})
names = st.text(min_size=0, max_size=12)


@st.composite
def safetensors_files(draw) -> tuple[bytes, bytes, int | None]:
    """(header bytes, body bytes, declared header length or None for the true one)."""
    kind = draw(st.sampled_from(["consistent", "consistent", "json", "json", "duplicate", "raw"]))
    if kind == "raw":
        header = draw(st.binary(max_size=200))
    elif kind == "consistent":
        return draw(_consistent_files())
    else:
        table = draw(st.dictionaries(names, entries, max_size=4))
        if draw(st.booleans()):
            table["__metadata__"] = draw(st.one_of(st.dictionaries(names, names, max_size=2), st.integers()))
        text = json.dumps(table)
        if kind == "duplicate" and table:
            first = next(iter(table))
            text = text[:-1] + ", " + json.dumps(first) + ": " + json.dumps(table[first]) + "}"
        header = text.encode("utf-8")
        if draw(st.integers(0, 9)) == 0:
            header = header[: draw(st.integers(0, len(header)))]  # cut mid-JSON
    body = draw(st.binary(max_size=300))
    declared = draw(st.one_of(st.none(), st.integers(0, 2**64 - 1), st.integers(0, 400)))
    return header, body, declared


def check_file(path: Path, header: bytes, body: bytes, declared: int | None) -> str:
    """Write the case and read it back; returns "ok" or "refused", raises on anything else."""
    length = len(header) if declared is None else declared
    path.write_bytes(struct.pack("<Q", length) + header + body)
    try:
        source = open_source(path)
        for name in source.names():
            tensor = source.get(name)
            assert tensor.numel() == math.prod(source.meta(name).shape)
    except InputError as exc:
        message = str(exc)
        assert message and "\n" not in message
        return "refused"
    return "ok"


@st.composite
def _consistent_files(draw) -> tuple[bytes, bytes, int | None]:
    """Well-formed headers over real bytes (random values: NaN, Inf, denormals), every dtype."""
    table, offset = {}, 0
    for i in range(draw(st.integers(1, 4))):
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        size = (math.prod(shape) * BITS[dtype] + 7) // 8
        table[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    body = draw(st.binary(min_size=offset, max_size=offset))
    return json.dumps(table).encode(), body, None
