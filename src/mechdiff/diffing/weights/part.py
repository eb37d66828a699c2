"""Reading the weight diff back: ``open_results(path).weights`` is a :class:`WeightsPart`."""

from __future__ import annotations

from typing import Any

import numpy as np

from mechdiff.diffing.weights.result import TOKEN_SEP, WeightDiff, load_weight_diff
from mechdiff.store.reader import Part, register_part


class WeightsPart(Part):
    """``/weights``: one ranked row per tensor (table ``changes``), singular values and vectors."""

    def diff(self) -> WeightDiff:
        """The whole :class:`WeightDiff` (with ``/heads``), without the singular vectors."""
        return load_weight_diff(self.results)

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        """The ``mechdiff diff --json`` document (``top`` rows of changes and heads)."""
        return self.diff().to_json(top=top)

    def pandas_column(self, table: str, column: str, values: np.ndarray) -> Any:
        """Token lists as lists; shapes as tuples (``[out, in]`` in files that say ``shape_order``)."""
        if table == "changes" and column.startswith("tokens_"):
            sep = self.attrs.get("token_separator", TOKEN_SEP)
            return [[t for t in str(v).split(sep) if t] for v in values]
        if table == "changes" and column == "shape":
            return [tuple(int(d) for d in str(v).split("x") if d) for v in values]
        return super().pandas_column(table, column, values)


register_part("weights", WeightsPart)
