"""Report sections of the data-free weight diff (/weights and /heads)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from mechdiff.diffing.weights.result import TensorChange, WeightDiff
from mechdiff.report import plots
from mechdiff.report.html_page import (
    Markup,
    Section,
    esc,
    figure,
    fmt_num,
    table,
    token_chips,
)

TOP_TENSORS = 15
TOP_HEADS = 12
TOP_SPECTRA = 6
WIDE_HEATMAP_LAYERS = 8  # more layers than this: the heatmap takes a whole row


def short_name(tensor: str) -> str:
    """A tensor name without the model prefix and '.weight' ('layers.1.mlp.down_proj')."""
    name = re.sub(r"^(model\.|transformer\.|encoder\.|decoder\.)", "", tensor)
    return re.sub(r"\.weight$", "", name)


def weight_sections(diff: WeightDiff) -> list[Section]:
    """Everything the weight diff contributes to the report.

    Args:
        diff: the diff rebuilt with ``load_weight_diff``.

    Returns:
        Sections: top tensors, heatmap and head bars, spectra, added/removed/warnings.
    """
    sections = [_changes_section(diff)]
    pictures = _pictures(diff)
    if pictures:
        sections.append(Section("Where the structured change is", Markup(f'<div class="figs">{"".join(pictures)}</div>'),
                                "Heatmap: the largest score per layer and kind of tensor (log colour scale; "
                                "r<k> marks k directions above the noise bulk). Bars: the most changed attention "
                                "heads, red where a head's change is structured."))
    spectrum = _spectra_figure(diff)
    if spectrum:
        sections.append(Section("Singular-value spectra of the top tensors", spectrum,
                                "Top singular values of each delta W_ft - W_base. Values above the detection cut "
                                "(dotted) are structured change; the grey bulk is fine-tuning drift below the "
                                "noise edge (dashed)."))
    inventory = _inventory(diff)
    if inventory:
        sections.append(Section("Other changes and warnings", inventory))
    return sections


def _changes_section(diff: WeightDiff) -> Section:
    structured = sum(1 for c in diff.changes if c.rank > 0)
    rows = [_change_row(i, c) for i, c in enumerate(diff.changes[:TOP_TENSORS])]
    body = table(["#", "tensor", "kind", "layer", "score", "rank", "rel \u0394", "structured", "reads", "writes"],
                 rows, numeric=(0, 3, 4, 5, 6, 7))
    more = len(diff.changes) - TOP_TENSORS
    if more > 0:
        body = Markup(body + f'<p class="muted">{more} more tensors in the results file (/weights/changes).</p>')
    note = (f"{len(diff.changes)} tensors compared, {structured} with structured (low-rank) change. "
            "score = size of the structured change relative to the base tensor's norm (plus a small drift term); "
            "reads/writes = tokens the change directions read from the embedding / write to the unembedding.")
    return Section("Top changed tensors", body, note)


def _change_row(i: int, c: TensorChange) -> list[Any]:
    rank = Markup(f'<span class="pill{" hi" if c.rank > 0 else ""}">{c.rank}</span>')
    return [i + 1, Markup(f'<span class="mono">{esc(c.tensor)}</span>'), c.kind,
            "-" if c.layer is None else c.layer, fmt_num(c.score), rank, fmt_num(c.rel_delta),
            f"{c.structured_fraction:.2f}", token_chips(c.tokens_in, 4), token_chips(c.tokens_out, 4)]


def _pictures(diff: WeightDiff) -> list[Markup]:
    out = []
    heat = plots.layer_kind_heatmap([-1 if c.layer is None else c.layer for c in diff.changes],
                                    [c.kind for c in diff.changes], [c.score for c in diff.changes],
                                    [c.rank for c in diff.changes])
    if heat:
        n_layers = len({c.layer for c in diff.changes if c.layer is not None})
        out.append(figure(heat, "layer by kind heatmap of scores", "score per layer and tensor kind",
                          wide=n_layers > WIDE_HEATMAP_LAYERS))
    heads = diff.heads[:TOP_HEADS]
    bars = plots.head_bars([f"L{h.layer} H{h.head} {h.kind}" for h in heads], [h.score for h in heads],
                           [h.rank for h in heads])
    if bars:
        out.append(figure(bars, "per-head scores", f"top {len(heads)} of {len(diff.heads)} attention heads"))
    return out


def _spectra_figure(diff: WeightDiff) -> Markup | None:
    top = [c for c in diff.changes if len(c.shape) == 2 and c.singular_values is not None
           and len(c.singular_values)][:TOP_SPECTRA]
    panels = [plots.SpectrumPanel(short_name(c.tensor), np.asarray(c.singular_values), c.bulk_edge,
                                  detection_cut(c, diff.config), c.rank) for c in top]
    png = plots.spectra(panels)
    return figure(png, "singular value spectra") if png else None


def detection_cut(change: TensorChange, config: dict[str, Any]) -> float | None:
    """The cut a singular value had to pass to count as structured, when it can be recomputed.

    Args:
        change: a 2-D tensor's row (noise_sigma and shape).
        config: the diff's stored config (``/weights`` attrs), for the margin.

    Returns:
        The cut, or None for vectors, exact low-rank deltas, or when the spectral
        module or its settings are unavailable.
    """
    if len(change.shape) != 2 or change.noise_sigma <= 0:
        return None
    try:
        from mechdiff.weightdecomp.spectral import SpectralConfig, detection_threshold

        known = {f.name for f in dataclasses.fields(SpectralConfig)}
        # files written by other versions may carry settings this one does not know
        spectral = SpectralConfig(**{k: v for k, v in (config.get("spectral") or {}).items() if k in known})
        m, n = change.shape
        return float(detection_threshold(change.noise_sigma, m, n, spectral))
    except (ImportError, TypeError, ValueError):
        return None


def _inventory(diff: WeightDiff) -> Markup:
    parts = []
    for title, names in (("Added", diff.added), ("Removed", diff.removed)):
        if names:
            items = "".join(f'<li class="mono">{esc(n)}</li>' for n in names[:30])
            extra = f"<li>... and {len(names) - 30} more</li>" if len(names) > 30 else ""
            parts.append(f"<h3>{title} ({len(names)})</h3><ul class='plain'>{items}{extra}</ul>")
    if diff.reshaped:
        rows = [[Markup(f'<span class="mono">{esc(r.get("tensor", ""))}</span>'), _shape(r.get("base_shape")),
                 _shape(r.get("ft_shape"))] for r in diff.reshaped]
        parts.append(f"<h3>Reshaped ({len(diff.reshaped)})</h3>" + table(["tensor", "base", "fine-tune"], rows))
    if diff.moved_tokens:
        parts.append("<h3>Embedding rows that moved most</h3><p>" + token_chips(diff.moved_tokens, 20) + "</p>")
    if diff.warnings:
        items = "".join(f'<li class="warn">{esc(w)}</li>' for w in diff.warnings[:40])
        extra = f"<li>... and {len(diff.warnings) - 40} more</li>" if len(diff.warnings) > 40 else ""
        parts.append(f"<h3>Warnings ({len(diff.warnings)})</h3><ul class='plain'>{items}{extra}</ul>")
    return Markup("".join(parts))


def _shape(shape: Any) -> str:
    return "x".join(str(d) for d in shape) if isinstance(shape, (list, tuple)) else str(shape)
