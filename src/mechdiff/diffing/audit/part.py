"""Reading an audit back: ``open_results(path).audit`` is an :class:`AuditPart`."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mechdiff.diffing.audit.coverage import normalize_lenses
from mechdiff.store.reader import Part, register_part

TOKEN_SEP = "\x1f"


class AuditPart(Part):
    """``/audit``: the verdict, the lenses that ran, the ranked findings and behavioural evidence."""

    @property
    def verdict(self) -> str:
        """"findings" or "pass"."""
        return str(self.attrs.get("verdict", ""))

    def lenses(self) -> list[dict[str, Any]]:
        """Every lens as ``{"name", "ran", "why"}`` (files from before 0.1 list only the names that ran)."""
        return normalize_lenses(self.attrs.get("lenses", []))

    def findings(self) -> list[dict[str, Any]]:
        """The ranked findings, as ``mechdiff audit --json`` lists them."""
        if "findings" not in self:
            return []
        table = self.table("findings")
        names = set(table.dtype.names)
        return [_finding(row, names) for row in table]

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        """Verdict, thresholds, lenses, warnings and the first ``top`` findings."""
        attrs = self.attrs
        return {"verdict": attrs.get("verdict"), "thresholds": attrs.get("thresholds", {}),
                "fail_above": attrs.get("fail_above"), "lenses": self.lenses(),
                "warnings": list(attrs.get("warnings", [])), "findings": self.findings()[:top]}

    def pandas_column(self, table: str, column: str, values: np.ndarray) -> Any:
        """Tokens as lists; evidence and links as Python objects."""
        if table == "findings" and column == "tokens":
            return [[t for t in str(v).split(TOKEN_SEP) if t] for v in values]
        if table == "findings" and column in ("evidence", "linked"):
            return [json.loads(v) if str(v) else None for v in values]
        return super().pandas_column(table, column, values)


def _finding(row: np.void, names: set[str]) -> dict[str, Any]:
    def loc(name: str) -> int | None:
        return None if int(row[name]) < 0 else int(row[name])

    return {"rank": int(row["rank"]), "method": str(row["method"]), "score": float(row["score"]),
            "summary": str(row["summary"]),
            "location": {"layer": loc("layer"), "head": loc("head"), "tensor": str(row["tensor"]) or None,
                         "latent": loc("latent")},
            "tokens": [t for t in str(row["tokens"]).split(TOKEN_SEP) if t] if "tokens" in names else [],
            "evidence": json.loads(row["evidence"]) if str(row["evidence"]) else {},
            "linked": json.loads(row["linked"]) if str(row["linked"]) else []}


register_part("audit", AuditPart)
