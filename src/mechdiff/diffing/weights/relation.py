"""Is FT a fine-tune of BASE at all? Identical weights, and weights that share nothing with BASE.

A fine-tune starts from BASE, so its matrices stay close in direction: even a long,
aggressive fine-tune keeps the cosine of W_ft with W_base well above 0.5 (a change of
the base's own norm, rel_delta = 1, orthogonal to it still leaves cosine 0.71).
Independently initialised matrices of the same shape have cosine ~ 0 +- 1/sqrt(numel).
"""

from __future__ import annotations

import statistics
from typing import Any

UNRELATED_COSINE = 0.3
"""Median cosine(W_base, W_ft) over matrices below which FT does not look like a fine-tune of BASE."""


def relation(changes: list[Any], added: list[str], removed: list[str], reshaped: list[Any]) -> str:
    """"identical", "unrelated" or "fine-tune".

    Args:
        changes: the diff's TensorChange rows (norm_delta, cosine, shape).
        added, removed, reshaped: tensors only one side has, or with another shape.
    """
    if changes and not (added or removed or reshaped) and all(c.norm_delta == 0 for c in changes):
        return "identical"
    cosines = [c.cosine for c in changes if len(c.shape) >= 2 and c.norm_base > 0]
    if cosines and statistics.median(cosines) < UNRELATED_COSINE:
        return "unrelated"
    return "fine-tune"


def relation_warning(kind: str, changes: list[Any]) -> str | None:
    """The warning a diff carries when FT is not a fine-tune of BASE."""
    if kind != "unrelated":
        return None
    cosines = [c.cosine for c in changes if len(c.shape) >= 2 and c.norm_base > 0]
    return (f"FT does not look like a fine-tune of BASE: the median cosine of its matrices with BASE's is "
            f"{statistics.median(cosines):.2f} (a fine-tune keeps it near 1); were they trained from "
            "different initialisations?")
