"""The report's pictures, drawn with matplotlib (the ``report`` extra) and returned as base64 PNG.

Figures are built with ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot), so
drawing touches no global state and needs no display; matplotlib is imported only when a
picture is drawn.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mechdiff.errors import InputError

CLASS_COLORS = {"ft-only": "#d1495b", "base-only": "#3c7dc4", "shared": "#7a9a5a", "other": "#b8bec8"}
STRUCTURED, DRIFT = "#d1495b", "#9aa3b2"
# Order of kinds on the heatmap's y axis; kinds not listed follow alphabetically.
KIND_ORDER = ("embed", "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "mlp_gate", "mlp_in", "mlp_out",
              "norm", "bias", "unembed", "other")
DPI = 110


def require_matplotlib() -> Any:
    """Return matplotlib.figure.Figure, or raise InputError telling how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise InputError("the report needs matplotlib: pip install matplotlib") from exc
    return Figure


def _new_figure(width: float, height: float) -> Any:
    Figure = require_matplotlib()
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig


def to_png_base64(fig: Any) -> str:
    """Render a figure to PNG and return it base64-encoded (for a ``data:`` URI)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _style(ax: Any) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.tick_params(labelsize=8)


def kind_order(kinds: Sequence[str]) -> list[str]:
    """Kinds sorted into the order of a transformer block (embed, attention, MLP, ...)."""
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    return sorted(set(kinds), key=lambda k: (rank.get(k, len(rank)), k))


def layer_kind_heatmap(layers: Sequence[int], kinds: Sequence[str], scores: Sequence[float],
                       ranks: Sequence[int]) -> str | None:
    """Heatmap of the largest score per (kind, layer) cell; cells with structure show 'r<rank>'.

    Args:
        layers: layer of each tensor (tensors outside layers, -1, are left out).
        kinds: kind of each tensor.
        scores: score of each tensor.
        ranks: structured rank of each tensor.

    Returns:
        base64 PNG, or None when no tensor belongs to a layer.
    """
    rows = [(int(la), str(k), float(s), int(r)) for la, k, s, r in zip(layers, kinds, scores, ranks) if la >= 0]
    if not rows:
        return None
    layer_ids = sorted({r[0] for r in rows})
    kind_ids = kind_order([r[1] for r in rows])
    grid_KL = np.full((len(kind_ids), len(layer_ids)), np.nan)
    rank_KL = np.zeros_like(grid_KL, dtype=int)
    col, row = {la: i for i, la in enumerate(layer_ids)}, {k: i for i, k in enumerate(kind_ids)}
    for la, k, s, r in rows:
        i, j = row[k], col[la]
        if np.isnan(grid_KL[i, j]) or s > grid_KL[i, j]:
            grid_KL[i, j] = s
        rank_KL[i, j] = max(rank_KL[i, j], r)
    fig = _new_figure(min(10.0, 2.8 + 0.4 * len(layer_ids)), 1.0 + 0.28 * len(kind_ids))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid_KL), aspect="auto", cmap=_cmap(), norm=_score_norm(grid_KL),
                      interpolation="nearest")
    ax.set_yticks(range(len(kind_ids)), kind_ids)
    step = max(1, math.ceil(len(layer_ids) / 32))
    ax.set_xticks(range(0, len(layer_ids), step), [str(la) for la in layer_ids[::step]])
    ax.set_xlabel("layer", fontsize=9)
    ax.set_ylabel("tensor kind", fontsize=9)
    ax.tick_params(labelsize=8, length=0)
    if len(layer_ids) <= 48:
        for i, j in zip(*np.nonzero(rank_KL)):
            ax.text(j, i, f"r{rank_KL[i, j]}", ha="center", va="center", fontsize=7, color="white",
                    fontweight="bold")
    fig.colorbar(image, ax=ax, label="score (max per cell)", shrink=0.9, pad=0.01).ax.tick_params(labelsize=7)
    return to_png_base64(fig)


def _cmap() -> Any:
    from matplotlib import colormaps

    return colormaps["YlOrRd"].with_extremes(bad="#eef0f3")


def _score_norm(values: np.ndarray) -> Any:
    from matplotlib.colors import LogNorm, Normalize

    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size and positive.max() > positive.min():
        return LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))
    top = float(positive.max()) if positive.size else 1.0
    return Normalize(vmin=0.0, vmax=top)


def head_bars(labels: Sequence[str], scores: Sequence[float], ranks: Sequence[int]) -> str | None:
    """Horizontal bars of head scores, most changed on top; heads with structure in red.

    Args:
        labels: one label per head ("L0 H2 attn").
        scores: their scores.
        ranks: their structured ranks.

    Returns:
        base64 PNG, or None for no heads.
    """
    if not labels:
        return None
    n = len(labels)
    fig = _new_figure(5.6, 0.9 + 0.26 * n)
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]
    colors = [STRUCTURED if r > 0 else DRIFT for r in ranks]
    ax.barh(y, scores, color=colors, height=0.7)
    ax.set_yticks(y, list(labels))
    top = max(max(scores), 1e-12)
    for yi, s, r in zip(y, scores, ranks):
        ax.text(s + 0.01 * top, yi, f"{s:.3g}" + (f"  rank {r}" if r else ""), va="center", fontsize=7)
    ax.set_xlim(0, top * 1.3)
    ax.set_xlabel("score", fontsize=9)
    ax.set_ylabel("head (layer, head, part)", fontsize=9)
    _style(ax)
    return to_png_base64(fig)


@dataclass(frozen=True)
class SpectrumPanel:
    """One tensor's top singular values and its noise bulk."""

    title: str
    """Panel title (tensor short name)."""
    singular_values: np.ndarray
    """Top singular values of the delta, descending (float [k])."""
    bulk_edge: float
    """Noise-bulk edge sigma (sqrt m + sqrt n)."""
    threshold: float | None
    """Detection cut above the edge, when it could be computed."""
    rank: int
    """Values counted as structured."""

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"rank must be >= 0, got {self.rank}")


def spectra(panels: Sequence[SpectrumPanel], columns: int = 3) -> str | None:
    """Small multiples: singular values (log scale) against the bulk edge and detection cut.

    Args:
        panels: one per tensor (those without values are skipped).
        columns: panels per row.

    Returns:
        base64 PNG, or None when no panel has values.
    """
    panels = [p for p in panels if len(p.singular_values)]
    if not panels:
        return None
    columns = min(columns, len(panels))
    n_rows = math.ceil(len(panels) / columns)
    fig = _new_figure(3.5 * columns, 2.35 * n_rows)
    axes = fig.subplots(n_rows, columns, squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        _spectrum_panel(ax, panel)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), fontsize=7.5, frameon=False)
    return to_png_base64(fig)


def _spectrum_panel(ax: Any, panel: SpectrumPanel) -> None:
    s = np.asarray(panel.singular_values, dtype=float)
    index = np.arange(1, len(s) + 1)
    above = index <= panel.rank
    ax.scatter(index[~above], s[~above], s=10, color=DRIFT, label="bulk")
    ax.scatter(index[above], s[above], s=22, color=STRUCTURED, label="structured", zorder=3)
    if panel.bulk_edge > 0:
        ax.axhline(panel.bulk_edge, color="#444", ls="--", lw=1, label="noise edge")
    if panel.threshold and panel.threshold > 0:
        ax.axhline(panel.threshold, color="#444", ls=":", lw=1, label="detection cut")
    if (s > 0).any():
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

        ax.set_yscale("log")
        # spectra often span less than a decade, where log axes get no labelled tick
        ax.yaxis.set_major_locator(FixedLocator(log_ticks(*ax.get_ylim())))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.2g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # singular value index: 1, 2, 3, ...
    ax.set_title(f"{panel.title}  (rank {panel.rank})", fontsize=8.5)
    ax.set_xlabel("singular value index", fontsize=8)
    ax.set_ylabel("singular value", fontsize=8)
    _style(ax)


def log_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Round tick values (m * 10^k) inside [low, high], as many as fit up to ``most``.

    Args:
        low: lower axis limit (> 0).
        high: upper axis limit.
        most: the most ticks to return (fewer mantissas are tried until they fit).

    Returns:
        Ascending tick values; at least the two limits' nearest round values.
    """
    if not (0 < low < high):
        return []
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    ticks: list[float] = []
    for mantissas in ((1, 1.5, 2, 3, 4, 5, 7), (1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10.0**k for k in decades for m in mantissas if low <= m * 10.0**k <= high]
        if len(ticks) <= most:
            break
    while len(ticks) > most:
        ticks = ticks[::2]
    return ticks or [low, high]


def _live(delta: np.ndarray, cls: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    classes = np.asarray([str(c) for c in cls], dtype=object)
    keep = (classes != "dead") & np.isfinite(delta)
    return keep, classes


def relnorm_histogram(delta: np.ndarray, cls: Sequence[str]) -> str | None:
    """Histogram of the crosscoder's relative decoder norms, class bands shaded.

    Args:
        delta: relative norm per latent (0 base-only, 0.5 shared, 1 ft-only).
        cls: class per latent ("dead" latents are left out).

    Returns:
        base64 PNG, or None when every latent is dead.
    """
    delta = np.asarray(delta, dtype=float)
    keep, classes = _live(delta, cls)
    if not keep.any():
        return None
    fig = _new_figure(5.4, 2.9)
    ax = fig.add_subplot()
    for lo, hi, name in ((0.0, 0.1, "base-only"), (0.4, 0.6, "shared"), (0.9, 1.0, "ft-only")):
        ax.axvspan(lo, hi, color=CLASS_COLORS[name], alpha=0.1, lw=0)
        ax.text((lo + hi) / 2, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=7, color=CLASS_COLORS[name])
    names = [name for name in CLASS_COLORS if (keep & (classes == name)).any()]
    ax.hist([delta[keep & (classes == name)] for name in names], bins=np.linspace(0, 1, 41), stacked=True,
            color=[CLASS_COLORS[name] for name in names])
    ax.set_yscale("log")
    _integer_log_ticks(ax)
    ax.set_xlim(0, 1)
    ax.set_xlabel("relative decoder norm  \u0394 (0 = base only, 1 = fine-tune only)", fontsize=8.5)
    ax.set_ylabel("latents", fontsize=8.5)
    _style(ax)
    return to_png_base64(fig)


def _integer_log_ticks(ax: Any) -> None:
    """Counts on a log axis get whole-number ticks (1, 2, 5, 10, ...), never 10^0.5."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    low, high = ax.get_ylim()
    ticks = [t for t in log_ticks(max(low, 1.0), high) if float(t).is_integer()] or [1.0]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0f}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def delta_cos_scatter(delta: np.ndarray, cos: np.ndarray, cls: Sequence[str]) -> str | None:
    """Relative norm against decoder cosine, one dot per live latent, coloured by class.

    Args:
        delta: relative norm per latent.
        cos: cosine between the latent's base and ft decoder vectors.
        cls: class per latent.

    Returns:
        base64 PNG, or None when every latent is dead.
    """
    delta, cos = np.asarray(delta, dtype=float), np.asarray(cos, dtype=float)
    keep, classes = _live(delta, cls)
    if not keep.any():
        return None
    fig = _new_figure(5.4, 2.9)
    ax = fig.add_subplot()
    for name, color in CLASS_COLORS.items():
        mask = keep & (classes == name)
        if mask.any():
            ax.scatter(delta[mask], cos[mask], s=9, color=color, alpha=0.75, lw=0, label=f"{name} ({mask.sum()})")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("relative decoder norm  \u0394", fontsize=8.5)
    ax.set_ylabel("decoder cosine", fontsize=8.5)
    ax.legend(fontsize=7, frameon=False, loc="lower left")
    _style(ax)
    return to_png_base64(fig)
