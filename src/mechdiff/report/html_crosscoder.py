"""Report sections of the crosscoder (/crosscoder): latent classes, pictures, ft-only contexts."""

from __future__ import annotations

from typing import Any

import numpy as np

from mechdiff.report import plots
from mechdiff.report.html_page import (
    Banner,
    Markup,
    Section,
    esc,
    figure,
    fmt_num,
    highlight_context,
    table,
)

TOP_LATENTS = 10
CONTEXTS_PER_LATENT = 3
# Column names of the text of a top context, in the order they are looked for.
CONTEXT_TEXT_COLUMNS = ("context", "text")


def find_table(part: Any, needed: set[str], preferred: str) -> np.ndarray | None:
    """The first table of ``part`` (``preferred`` first) that has all ``needed`` columns.

    Only compound datasets are read, so big weight arrays stay on disk.
    """
    present = list(part.keys())
    for name in [preferred] + [k for k in present if k != preferred]:
        node = part.group.get(name) if name in present else None
        names = getattr(getattr(node, "dtype", None), "names", None)
        if names and needed <= set(names):
            return part.table(name)
    return None


def crosscoder_sections(part: Any) -> list[Section]:
    """What the crosscoder contributes: headline numbers, the two pictures, ft-only latents.

    Args:
        part: the ``/crosscoder`` part of an open results file.

    Returns:
        Sections (empty when the part holds no per-latent table).
    """
    latents = find_table(part, {"delta", "cls"}, "latents")
    if latents is None:
        return []
    figures = _figures(latents)
    sections = [Section("Crosscoder latents", Markup(_headline(latents, part.attrs)
                                                     + f'<div class="figs">{"".join(figures)}</div>'),
                        "Relative decoder norm \u0394 per latent: near 1 the latent exists only in the fine-tune, "
                        "near 0 only in the base; decoder cosine says whether shared latents kept their direction.")]
    contexts = find_table(part, {"latent"}, "contexts")
    ft_only = _ft_only_section(latents, contexts)
    if ft_only:
        sections.append(ft_only)
    leaning = _leaning_section(latents, contexts)
    if leaning:
        sections.append(leaning)
    return sections


def crosscoder_banner(part: Any) -> Banner | None:
    """The top line of a file that holds only a crosscoder: how many latents are fine-tune only.

    Args:
        part: the ``/crosscoder`` part.

    Returns:
        An info banner, or None without a per-latent table.
    """
    latents = find_table(part, {"cls"}, "latents")
    if latents is None:
        return None
    classes = [str(c) for c in latents["cls"]]
    site = part.attrs.get("site")
    where = f" at {site}" if site else ""
    detail = "No audit verdict in this file; run `mechdiff audit` for one."
    live = [i for i, c in enumerate(classes) if c != "dead" and np.isfinite(float(latents["delta"][i]))]
    if live and "delta" in latents.dtype.names:
        top = max(live, key=lambda i: float(latents["delta"][i]))
        latent = int(latents["latent"][top]) if "latent" in latents.dtype.names else top
        detail = (f"Most fine-tune-leaning live latent: {latent} (relative norm "
                  f"{fmt_num(float(latents['delta'][top]))}, {classes[top]}); see below. " + detail)
    return Banner("info", f"Crosscoder{where}: {classes.count('ft-only')} fine-tune-only and "
                  f"{classes.count('base-only')} base-only latents of {len(classes)}", detail)


def _headline(latents: np.ndarray, attrs: dict[str, Any]) -> str:
    classes = [str(c) for c in latents["cls"]]
    counts = ", ".join(f"{name} {classes.count(name)}" for name in ("ft-only", "base-only", "shared", "other", "dead")
                       if classes.count(name))
    stats = [f"{len(classes)} latents ({counts})"]
    for key, label in (("fve_base", "FVE base"), ("fve_ft", "FVE ft"), ("l0", "L0"), ("dead_fraction", "dead")):
        if key in attrs and isinstance(attrs[key], (int, float)):
            stats.append(f"{label} {fmt_num(attrs[key])}")
    return f'<p>{esc("; ".join(stats))}</p>'


def _figures(latents: np.ndarray) -> list[Markup]:
    cls = [str(c) for c in latents["cls"]]
    delta = np.asarray(latents["delta"], dtype=float)
    out = []
    hist = plots.relnorm_histogram(delta, cls)
    if hist:
        out.append(figure(hist, "relative norm histogram", "relative decoder norm of live latents (log count)"))
    if "cos" in latents.dtype.names:
        scatter = plots.delta_cos_scatter(delta, np.asarray(latents["cos"], dtype=float), cls)
        if scatter:
            out.append(figure(scatter, "relative norm against decoder cosine", "\u0394 against decoder cosine"))
    return out


def _ft_only_section(latents: np.ndarray, contexts: np.ndarray | None) -> Section | None:
    names = latents.dtype.names
    chosen = [(int(row["latent"]) if "latent" in names else i, row)
              for i, row in enumerate(latents) if str(row["cls"]) == "ft-only"]
    if not chosen:
        return None
    if "freq" in names:
        chosen.sort(key=lambda item: -float(item[1]["freq"]))
    body = _latent_table(chosen[:TOP_LATENTS], contexts)
    note = (f"{len(chosen)} latents with \u0394 \u2265 0.9, most frequent first. Small \u03bd\u03b5 / \u03bdr "
            "(latent scaling) mean the latent is genuinely fine-tune specific, not a sparsity artifact.")
    return Section("Fine-tune-only latents", body, note)


def _leaning_section(latents: np.ndarray, contexts: np.ndarray | None) -> Section | None:
    """The live latents that lean most towards the fine-tune, whatever their class.

    A planted behaviour often lands in a latent the fine-tune rewrote (relative norm
    0.6-0.9) rather than a clean ft-only one, so these are shown even when no latent is ft-only.
    """
    names = latents.dtype.names
    live = [(int(row["latent"]) if "latent" in names else i, row) for i, row in enumerate(latents)
            if str(row["cls"]) not in ("dead", "ft-only") and np.isfinite(float(row["delta"]))]
    if not live:
        return None
    live.sort(key=lambda item: -float(item[1]["delta"]))
    return Section("Most fine-tune-leaning latents", _latent_table(live[:TOP_LATENTS], contexts, with_class=True),
                   "Live latents by relative decoder norm Δ, highest first (ft-only latents are listed above). "
                   "A low decoder cosine means the fine-tune rewrote what the latent writes.")


def _latent_table(chosen: list[tuple[int, np.void]], contexts: np.ndarray | None, with_class: bool = False) -> Markup:
    by_latent = _contexts_by_latent(contexts)
    rows = []
    for latent, row in chosen:
        texts = by_latent.get(latent, [])[:CONTEXTS_PER_LATENT]
        cells = "".join(f"<div>{highlight_context(text)}</div>" for text in texts)
        rows.append([latent] + ([str(row["cls"])] if with_class else [])
                    + [fmt_num(float(row["delta"])), _opt(row, "cos"), _opt(row, "freq"), _opt(row, "nu_eps"),
                       _opt(row, "nu_r"), Markup(cells or '<span class="muted">no contexts stored</span>')])
    headers = ["latent"] + (["class"] if with_class else []) + [
        "\u0394", "cos", "freq", "\u03bd^\u03b5", "\u03bd^r", "top-activating contexts"]
    first = 2 if with_class else 1
    return table(headers, rows, numeric=(0, *range(first, first + 5)))


def _opt(row: np.void, name: str) -> str:
    return fmt_num(float(row[name])) if name in row.dtype.names else "-"


def _contexts_by_latent(contexts: np.ndarray | None) -> dict[int, list[str]]:
    """Context texts per latent, strongest activation first ('doc D, pos P' when no text was stored)."""
    if contexts is None:
        return {}
    names = contexts.dtype.names
    column = next((c for c in CONTEXT_TEXT_COLUMNS if c in names), None)
    order = np.arange(len(contexts))
    for key in ("act", "activation"):
        if key in names:
            order = np.argsort(-np.asarray(contexts[key], dtype=float), kind="stable")
            break
    grouped: dict[int, list[str]] = {}
    for i in order:
        row = contexts[i]
        text = str(row[column]) if column else ""
        if not text and {"doc", "pos"} <= set(names):
            text = f"doc {int(row['doc'])}, pos {int(row['pos'])}"
        texts = grouped.setdefault(int(row["latent"]), [])
        if text and text not in texts:  # the same window repeated in many documents is shown once
            texts.append(text)
    return grouped
