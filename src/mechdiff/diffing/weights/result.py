"""Results of the data-free weight diff: per-tensor rows, per-head rows, JSON and HDF5 forms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mechdiff import __version__
from mechdiff.diffing.weights.experts import ExpertChange, expert_changes
from mechdiff.diffing.weights.heads import HeadChange
from mechdiff.diffing.weights.relation import relation, relation_warning

if TYPE_CHECKING:
    from mechdiff.store.protocol import PartWriter

JSON_SCHEMA_VERSION = 1
# Columns of /weights/changes, in order; `tokens_*` are joined with "\x1f" in HDF5.
CHANGE_COLUMNS = (
    "tensor", "layer", "kind", "score", "rel_delta", "rank", "structured_fraction", "cosine",
    "max_abs_delta", "norm_base", "norm_delta", "noise_sigma", "bulk_edge", "stable_rank",
    "n_intruders", "nan_base", "inf_base", "nan_ft", "inf_ft", "shape", "expert",
)
TOKEN_SEP = "\x1f"


@dataclass
class TensorChange:
    """How one aligned tensor changed."""

    tensor: str
    layer: int | None
    kind: str
    score: float
    rel_delta: float
    rank: int
    structured_fraction: float
    cosine: float
    max_abs_delta: float
    norm_base: float
    norm_delta: float
    noise_sigma: float = 0.0
    bulk_edge: float = 0.0
    stable_rank: float = 0.0
    n_intruders: int = 0
    nan_base: int = 0
    inf_base: int = 0
    nan_ft: int = 0
    inf_ft: int = 0
    shape: tuple[int, ...] = ()
    tokens_in: list[str] = field(default_factory=list)
    tokens_out: list[str] = field(default_factory=list)
    singular_values: np.ndarray | None = None  # float32[k]
    U: np.ndarray | None = None  # float16[out, r]
    V: np.ndarray | None = None  # float16[in, r]
    expert: int | None = None  # the MoE expert this tensor (or fused-tensor slice) belongs to
    routing: dict[str, Any] | None = None  # routers: where tokens are sent now (experts.routing_change)

    def to_json(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor, "layer": self.layer, "kind": self.kind, "head": None, "expert": self.expert,
            "score": self.score, "rel_delta": self.rel_delta, "rank": self.rank,
            "structured_fraction": self.structured_fraction, "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out, "cosine": self.cosine, "max_abs_delta": self.max_abs_delta,
            "noise_sigma": self.noise_sigma, "bulk_edge": self.bulk_edge, "stable_rank": self.stable_rank,
            "n_intruders": self.n_intruders, "shape": list(self.shape),
            "nan_ft": self.nan_ft, "inf_ft": self.inf_ft, "nan_base": self.nan_base, "inf_base": self.inf_base,
            "top_singular_values": [] if self.singular_values is None
            else [float(s) for s in self.singular_values[: max(self.rank, 1)]],
        }


@dataclass
class WeightDiff:
    """The whole data-free diff of two checkpoints, ranked."""

    base: str
    ft: str
    layout: str
    changes: list[TensorChange]
    heads: list[HeadChange]
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reshaped: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    moved_tokens: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    experts: list[ExpertChange] = field(default_factory=list)
    unclassified: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.changes.sort(key=lambda c: (-c.score, c.tensor))
        self.heads.sort(key=lambda h: (-h.score, h.layer, h.head, h.kind))
        if not self.experts:
            self.experts = expert_changes(self.changes)
        warning = relation_warning(self.relation, self.changes)
        if warning is not None and warning not in self.warnings:
            self.warnings.insert(0, warning)

    @property
    def relation(self) -> str:
        """"identical" (same weights), "unrelated" (not a fine-tune of BASE) or "fine-tune"."""
        return relation(self.changes, self.added, self.removed, self.reshaped)

    @property
    def routing(self) -> list[dict[str, Any]]:
        """Router changes read out through the embedding, one per router, most rerouting first."""
        rows = [{"tensor": c.tensor, "layer": c.layer, **c.routing} for c in self.changes if c.routing]
        return sorted(rows, key=lambda r: -r["tokens_rerouted"])

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        """The ``--json`` document of DESIGN.md (``top`` limits changes and heads)."""
        return {
            "schema_version": JSON_SCHEMA_VERSION, "mechdiff_version": __version__,
            "base": self.base, "ft": self.ft, "layout": self.layout, "relation": self.relation,
            "changes": [c.to_json() for c in self.changes[:top]],
            "heads": [h.to_json() for h in self.heads[:top]],
            "experts": [e.to_json() for e in self.experts[:top]],
            "routing": self.routing, "unclassified": self.unclassified,
            "added": self.added, "removed": self.removed, "reshaped": self.reshaped,
            "moved_tokens": self.moved_tokens, "warnings": self.warnings,
        }

    def write(self, writer: PartWriter) -> None:
        """Store under /weights and /heads of a ResultsWriter."""
        columns: dict[str, Any] = {name: [] for name in CHANGE_COLUMNS}
        for change in self.changes:
            for name in CHANGE_COLUMNS:
                value = getattr(change, name)
                columns[name].append(_cell(name, value))
        columns["tokens_in"] = [TOKEN_SEP.join(c.tokens_in) for c in self.changes]
        columns["tokens_out"] = [TOKEN_SEP.join(c.tokens_out) for c in self.changes]
        writer.table("weights/changes", columns)
        writer.array("weights/singular_values", _padded([c.singular_values for c in self.changes]))
        for i, change in enumerate(self.changes):
            if change.U is not None and change.U.size:
                writer.array(f"weights/vectors/{i}/U", change.U)
                writer.array(f"weights/vectors/{i}/V", change.V)
        writer.attrs("weights", {
            "config": self.config, "layout": self.layout, "added": self.added, "removed": self.removed,
            "reshaped": self.reshaped, "warnings": self.warnings, "moved_tokens": self.moved_tokens,
            "token_separator": TOKEN_SEP, "shape_order": "out,in", "rows": "ranked by score; vectors/<row>/U,V are float16",
            "routing": self.routing, "unclassified": self.unclassified,
        })
        if self.experts:
            writer.table("weights/experts", {
                "layer": [e.layer for e in self.experts], "expert": [e.expert for e in self.experts],
                "score": [e.score for e in self.experts], "rank": [e.rank for e in self.experts],
                "parts": [",".join(sorted(e.parts)) for e in self.experts],
            })
        if self.heads:
            writer.table("heads/heads", {
                "layer": [h.layer for h in self.heads], "head": [h.head for h in self.heads],
                "kind": [h.kind for h in self.heads], "score": [h.score for h in self.heads],
                "rank": [h.rank for h in self.heads],
                "parts": [",".join(sorted(h.parts)) for h in self.heads],
            })
            writer.attrs("heads", {"parts": [h.parts for h in self.heads]})


def _cell(name: str, value: Any) -> Any:
    if name in ("layer", "expert"):
        return -1 if value is None else value
    if name == "shape":
        return "x".join(str(d) for d in value)
    return value


def _padded(rows: list[np.ndarray | None]) -> np.ndarray:
    width = max((len(r) for r in rows if r is not None), default=0)
    out = np.full((len(rows), width), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        if row is not None:
            out[i, : len(row)] = row
    return out


def load_weight_diff(results: Any) -> WeightDiff:
    """Rebuild a WeightDiff (without singular vectors) from an open results file."""
    part = results.part("weights")
    attrs, table = part.attrs, part.table("changes")
    singular = np.asarray(part.array("singular_values"))
    changes = []
    for i, row in enumerate(table):
        present = [name for name in CHANGE_COLUMNS if name in table.dtype.names]  # files before `expert`
        values = {name: row[name].item() if hasattr(row[name], "item") else row[name] for name in present}
        values["layer"] = None if values["layer"] < 0 else values["layer"]
        values["expert"] = None if values.get("expert", -1) < 0 else values["expert"]
        values["shape"] = tuple(int(d) for d in str(values["shape"]).split("x") if d)
        change = TensorChange(**values)
        change.tokens_in = [t for t in str(row["tokens_in"]).split(TOKEN_SEP) if t]
        change.tokens_out = [t for t in str(row["tokens_out"]).split(TOKEN_SEP) if t]
        sv = singular[i] if singular.size else np.zeros(0, np.float32)
        change.singular_values = sv[~np.isnan(sv)]
        changes.append(change)
    by_tensor = {c.tensor: c for c in changes}
    for row in attrs.get("routing", []):
        if row.get("tensor") in by_tensor:
            by_tensor[row["tensor"]].routing = {k: v for k, v in row.items() if k not in ("tensor", "layer")}
    heads = []
    if "heads" in results.parts:
        hpart = results.part("heads")
        parts = hpart.attrs.get("parts", [])
        for i, row in enumerate(hpart.table("heads")):
            head = HeadChange(int(row["layer"]), int(row["head"]), str(row["kind"]), float(row["score"]),
                              int(row["rank"]), parts[i] if i < len(parts) else {})
            heads.append(head)
    root = results.attrs
    return WeightDiff(
        base=str(root.get("base", "")), ft=str(root.get("ft", "")), layout=str(attrs.get("layout", "")),
        changes=changes, heads=heads, added=attrs.get("added", []), removed=attrs.get("removed", []),
        reshaped=attrs.get("reshaped", []), warnings=attrs.get("warnings", []),
        moved_tokens=attrs.get("moved_tokens", []), config=attrs.get("config", {}),
        unclassified=attrs.get("unclassified", []),
    )
