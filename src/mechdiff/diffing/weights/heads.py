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
        spec: "q" (rows by query head), "kv" (rows by key/value head), "o" (columns by
            query head) or "qkv" (GPT-2 style fused q|k|v row blocks).
        kind: the tensor's kind, the name of its part in each head.
        shape: the matrix's [out, in] shape.
        geometry: heads and head size from the model's config.

    Returns:
        The slices; empty when the shape does not fit the geometry.
    """
    hd, nq, nkv = geometry.head_dim, geometry.n_heads, geometry.n_kv_heads
    kv_group = "attn_kv" if nkv != nq else "attn"
    if spec == "q" and shape[0] == nq * hd:
        return list(_row_heads(0, nq, hd, "attn", kind))
    if spec == "kv" and shape[0] == nkv * hd:
        return list(_row_heads(0, nkv, hd, kv_group, kind))
    if spec == "o" and shape[1] == nq * hd:
        return [HeadSlice(h, "attn", kind, None, slice(h * hd, (h + 1) * hd)) for h in range(nq)]
    if spec == "qkv" and shape[0] == (nq + 2 * nkv) * hd:
        slices = list(_row_heads(0, nq, hd, "attn", "attn_q"))
        slices += _row_heads(nq * hd, nkv, hd, kv_group, "attn_k")
        slices += _row_heads((nq + nkv) * hd, nkv, hd, kv_group, "attn_v")
        return slices
    return []


def _row_heads(start: int, n: int, hd: int, group: str, part: str) -> Iterator[HeadSlice]:
    for h in range(n):
        yield HeadSlice(h, group, part, slice(start + h * hd, start + (h + 1) * hd), None)


@dataclass
class HeadChange:
    """Aggregated change of one attention head across its q/k/v/o slices."""

    layer: int
    head: int
    kind: str
    score: float = 0.0
    rank: int = 0
    parts: dict[str, dict] = field(default_factory=dict)

    def add(self, part: str, score: float, rank: int, rel_delta: float) -> None:
        self.parts[part] = {"score": score, "rank": rank, "rel_delta": rel_delta}
        # root-sum-square: two slices changed together count more than one, never double
        self.score = sum(p["score"] ** 2 for p in self.parts.values()) ** 0.5
        self.rank = max(p["rank"] for p in self.parts.values())

    def to_json(self) -> dict:
        return {"layer": self.layer, "head": self.head, "kind": self.kind, "score": self.score,
                "rank": self.rank, "parts": self.parts}
