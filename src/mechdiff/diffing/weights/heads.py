"""Per-attention-head slices of a delta and their aggregation into per-head scores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from mechdiff.checkpoint.layout import HeadGeometry


@dataclass(frozen=True)
class HeadSlice:
    """One head's block of an [out, in] matrix."""

    head: int
    group: str  # "attn" for query heads (q, o), "attn_kv" for key/value heads under GQA
    part: str  # attn_q, attn_k, attn_v, attn_o
    rows: slice | None
    cols: slice | None

    def take(self, matrix: torch.Tensor) -> torch.Tensor:
        block = matrix if self.rows is None else matrix[self.rows]
        return block if self.cols is None else block[:, self.cols]


def head_slices(spec: str, kind: str, shape: tuple[int, int], geometry: HeadGeometry) -> list[HeadSlice]:
    """Slices of a normalized [out, in] matrix, one per head.

    Args:
        spec: how the architecture lays heads out; "a|b" tries a, then b:
            "q" / "kv": rows by query / key-value head; "o": columns by query head;
            "qkv": fused q|k|v row blocks (GPT-2, Phi-3; key/value heads read off the shape);
            "qkv_interleaved": rows [q_h; k_h; v_h] per head (GPT-NeoX/Pythia, Falcon-RW);
            "qkv_grouped": rows [q of the group; k; v] per key/value group (Falcon, new and old
            decoder: the group count is read off the shape, so multi-query fits too);
            "q_split" / "o_split": rows / columns split evenly by query head (MLA's own head size);
            "mla_kv": DeepSeek's kv_b_proj, rows [k_nope_h; v_h] per head.
        kind: the tensor's kind, the name of its part in each head.
        shape: the matrix's [out, in] shape.
        geometry: heads and head size from the model's config.

    Returns:
        The slices; empty when the shape does not fit the geometry.
    """
    for option in spec.split("|"):
        slices = _LAYOUTS[option](kind, shape, geometry) if option in _LAYOUTS else []
        if slices:
            return slices
    return []


def _kv_group(geometry: HeadGeometry, n_kv: int) -> str:
    return "attn_kv" if n_kv != geometry.n_heads else "attn"


def _q_rows(kind: str, shape: tuple[int, int], g: HeadGeometry) -> list[HeadSlice]:
    return list(_row_heads(0, g.n_heads, g.head_dim, "attn", kind)) if shape[0] == g.n_heads * g.head_dim else []


def _kv_rows(kind: str, shape: tuple[int, int], g: HeadGeometry) -> list[HeadSlice]:
    if shape[0] != g.n_kv_heads * g.head_dim:
        return []
    return list(_row_heads(0, g.n_kv_heads, g.head_dim, _kv_group(g, g.n_kv_heads), kind))


def _o_cols(kind: str, shape: tuple[int, int], g: HeadGeometry) -> list[HeadSlice]:
    hd = g.head_dim
    if shape[1] != g.n_heads * hd:
        return []
    return [HeadSlice(h, "attn", kind, None, slice(h * hd, (h + 1) * hd)) for h in range(g.n_heads)]


def _fused_kv_heads(shape: tuple[int, int], g: HeadGeometry) -> int | None:
    """Key/value heads of a fused q|k|v matrix, read off its rows (configs of multi-query
    models often state the query count there)."""
    rows, hd, nq = shape[0], g.head_dim, g.n_heads
    if rows % hd or (rows // hd - nq) <= 0 or (rows // hd - nq) % 2:
        return None
    n_kv = (rows // hd - nq) // 2
    return n_kv if nq % n_kv == 0 else None


def _qkv_blocked(kind: str, shape: tuple[int, int], g: HeadGeometry) -> list[HeadSlice]:
    n_kv, hd, nq = _fused_kv_heads(shape, g), g.head_dim, g.n_heads
    if n_kv is None:
        return []
    group = _kv_group(g, n_kv)
    slices = list(_row_heads(0, nq, hd, "attn", "attn_q"))
    slices += _row_heads(nq * hd, n_kv, hd, group, "attn_k")
    slices += _row_heads((nq + n_kv) * hd, n_kv, hd, group, "attn_v")
    return slices


def _qkv_grouped(kind: str, shape: tuple[int, int], g: HeadGeometry) -> list[HeadSlice]:
    n_kv, hd = _fused_kv_heads(shape, g), g.head_dim
    if n_kv is None:
        return []
    per_group, group = g.n_heads // n_kv, _kv_group(g, n_kv)
    block = (per_group + 2) * hd  # one key/value group: its query heads, then k, then v
    slices = []
    for kv in range(n_kv):
        start = kv * block
        for i in range(per_group):
            head = kv * per_group + i
            slices.append(HeadSlice(head, "attn", "attn_q", slice(start + i * hd, start + (i + 1) * hd), None))
        k_start = start + per_group * hd
        slices.append(HeadSlice(kv, group, "attn_k", slice(k_start, k_start + hd), None))
        slices.append(HeadSlice(kv, group, "attn_v", slice(k_start + hd, k_start + 2 * hd), None))
    return slices


def _qkv_interleaved(kind: str, shape: tuple[int, int], g: HeadGeometry) -> list[HeadSlice]:
    hd, nq = g.head_dim, g.n_heads
    if shape[0] != 3 * nq * hd:
        return []
    return [HeadSlice(h, "attn", part, slice((3 * h + i) * hd, (3 * h + i + 1) * hd), None)
            for h in range(nq) for i, part in enumerate(("attn_q", "attn_k", "attn_v"))]


def _q_split(kind: str, shape: tuple[int, int], g: HeadGeometry) -> list[HeadSlice]:
    if shape[0] % g.n_heads:
        return []
    return list(_row_heads(0, g.n_heads, shape[0] // g.n_heads, "attn", kind))


def _o_split(kind: str, shape: tuple[int, int], g: HeadGeometry) -> list[HeadSlice]:
    if shape[1] % g.n_heads:
        return []
    width = shape[1] // g.n_heads
    return [HeadSlice(h, "attn", kind, None, slice(h * width, (h + 1) * width)) for h in range(g.n_heads)]


def _mla_kv(kind: str, shape: tuple[int, int], g: HeadGeometry) -> list[HeadSlice]:
    if g.v_head_dim is None or shape[0] % g.n_heads:
        return []
    per_head = shape[0] // g.n_heads
    k_rows = per_head - g.v_head_dim
    if k_rows <= 0:
        return []
    slices = []
    for h in range(g.n_heads):
        start = h * per_head
        slices.append(HeadSlice(h, "attn", "attn_k", slice(start, start + k_rows), None))
        slices.append(HeadSlice(h, "attn", "attn_v", slice(start + k_rows, start + per_head), None))
    return slices


_LAYOUTS = {
    "q": _q_rows, "kv": _kv_rows, "o": _o_cols, "qkv": _qkv_blocked, "qkv_grouped": _qkv_grouped,
    "qkv_interleaved": _qkv_interleaved, "q_split": _q_split, "o_split": _o_split, "mla_kv": _mla_kv,
}


def _row_heads(start: int, n: int, hd: int, group: str, part: str) -> Iterator[HeadSlice]:
    for h in range(n):
        yield HeadSlice(h, group, part, slice(start + h * hd, start + (h + 1) * hd), None)


class PartsAggregate:
    """A unit (an attention head, an expert) scored from its parts (slices, tensors); the
    dataclasses using it hold `parts`, `score` and `rank`."""

    def add(self, part: str, score: float, rank: int, rel_delta: float) -> None:
        self.parts[part] = {"score": score, "rank": rank, "rel_delta": rel_delta}
        # root-sum-square: two parts changed together count more than one, never double
        self.score = sum(p["score"] ** 2 for p in self.parts.values()) ** 0.5
        self.rank = max(p["rank"] for p in self.parts.values())


@dataclass
class HeadChange(PartsAggregate):
    """Aggregated change of one attention head across its q/k/v/o slices."""

    layer: int
    head: int
    kind: str
    score: float = 0.0
    rank: int = 0
    parts: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"layer": self.layer, "head": self.head, "kind": self.kind, "score": self.score,
                "rank": self.rank, "parts": self.parts}
