"""The ``/bench`` part of a results file written by ``mechdiff bench``."""

from __future__ import annotations

from typing import Any

from mechdiff.store.reader import Part, register_part


class BenchPart(Part):
    """Per-pair rows (``table("pairs")``) and the benchmark's totals."""

    @property
    def summary(self) -> dict[str, Any]:
        """Detection, false positives, relevance and times over all pairs (``scoring.summarize``)."""
        return self.attrs.get("summary", {})

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        """The summary and the first ``top`` pair rows."""
        rows = self.table("pairs")
        return {"summary": self.summary, "pairs": [{k: row[k].item() if hasattr(row[k], "item") else row[k]
                                                    for k in rows.dtype.names} for row in rows[:top]]}


register_part("bench", BenchPart)
