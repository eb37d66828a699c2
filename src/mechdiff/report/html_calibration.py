"""The audit's calibration table in the HTML report: the numbers behind the score scale."""

from __future__ import annotations

from typing import Any

from mechdiff.report.html_page import Markup, Section, esc, table

LABELS = {
    "gate": "default gate (a score of 1.0 is worth a look)",
    "weight_unit": "weights: structured share of the weight's norm that scores 1.0",
    "null_floor": "weights: structured shares below this are never findings",
    "dtype_margin": "weights: no finding within this many eps(dtype) x ||W||",
    "rewritten_cos": "weights: matrices with cosine to the base below this were rewritten (no finding)",
    "head_majority": "heads: share of the layer's head change one head needs to be named",
    "behaviour_unit_nats": "behaviour: mean KL (nats) that scores 1.0",
    "behaviour_prior_count": "behaviour: pseudo-occurrences at the corpus mean KL (shrinks rare tokens)",
    "rose_unit": "behaviour: token-rise KL term that scores 1.0",
}


def calibration_section(attrs: dict[str, Any]) -> Section | None:
    """The calibration numbers stored in /audit (None when the file predates them)."""
    numbers = attrs.get("calibration_numbers")
    if not isinstance(numbers, dict):
        return None
    rows = [(LABELS.get(k, k), v) for k, v in numbers.items() if not isinstance(v, dict)]
    measured = numbers.get("nulls_measured") or {}
    rows += [(f"null control '{kind}': highest top score measured", score)
             for kind, score in (measured.get("max_top_score") or {}).items()]
    body = table(("quantity", "value"), [(esc(label), esc(value)) for label, value in rows], numeric=(1,))
    return Section("Score calibration", Markup(body),
                   note="How scores were calibrated on null controls (mechdiff bench); see calibration.py.")
