"""The crosscoder summary shared by ``--json``, ``mechdiff show`` and the Python API.

Built from the stored columns only, so a result in memory and one read back from
HDF5 give the same document.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mechdiff.diffing.crosscoder.metrics import CLASSES


def summary_json(latents: dict[str, np.ndarray] | np.ndarray, contexts: dict[str, np.ndarray] | np.ndarray,
                 attrs: dict[str, Any], top: int = 10) -> dict[str, Any]:
    """Counts per class, the top ft-only latents and the most ft-leaning live latents, with contexts.

    Args:
        latents: the per-latent table (columns latent, delta, cos, freq, mean_act, cls, nu_eps, nu_r).
        contexts: the contexts table (columns latent, rank, act, doc, pos, text).
        attrs: run attributes (fve_base, fve_ft, l0, dead_fraction, layer/site, config).
        top: latents listed per list (ft-only ranked by frequency x mean activation;
            most_ft_leaning by relative decoder norm, any class but dead).

    Returns:
        A JSON-ready dict.
    """
    cls = np.asarray(latents["cls"]).astype(str)
    ft_ids = np.nonzero(cls == "ft-only")[0]
    weight = np.asarray(latents["freq"])[ft_ids] * np.asarray(latents["mean_act"])[ft_ids]
    chosen = ft_ids[np.argsort(-weight, kind="stable")[:top]]
    live = np.nonzero(cls != "dead")[0]
    leaning = live[np.argsort(-np.asarray(latents["delta"])[live], kind="stable")[:top]]
    return {
        "site": attrs.get("site"),
        "fve_base": attrs.get("fve_base"),
        "fve_ft": attrs.get("fve_ft"),
        "l0": attrs.get("l0"),
        "dead_fraction": attrs.get("dead_fraction"),
        "counts": {name: int(np.sum(cls == name)) for name in CLASSES},
        "top_ft_only": [_latent_entry(latents, contexts, int(i)) for i in chosen],
        "most_ft_leaning": [_latent_entry(latents, contexts, int(i)) for i in leaning],
    }


def _latent_entry(latents: Any, contexts: Any, row: int) -> dict[str, Any]:
    latent = int(latents["latent"][row])
    mask = np.asarray(contexts["latent"]) == latent
    order = np.argsort(np.asarray(contexts["rank"])[mask], kind="stable")
    texts = np.asarray(contexts["text"], dtype=object)[mask][order]
    acts = np.asarray(contexts["act"])[mask][order]
    return {
        "latent": latent,
        "delta": _num(latents["delta"][row]),
        "cos": _num(latents["cos"][row]),
        "freq": _num(latents["freq"][row]),
        "cls": str(latents["cls"][row]),
        "mean_act": _num(latents["mean_act"][row]),
        "nu_eps": _num(latents["nu_eps"][row]),
        "nu_r": _num(latents["nu_r"][row]),
        "contexts": [{"act": _num(a), "text": str(t)} for a, t in zip(acts, texts)],
    }


def _num(value: Any) -> float | None:
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def format_summary(summary: dict[str, Any], contexts_per_latent: int = 3) -> str:
    """The summary as a few readable lines (for ``mechdiff show``)."""
    counts = ", ".join(f"{n} {name}" for name, n in summary["counts"].items())
    head = (f"crosscoder at {summary['site']}: FVE base {_pct(summary['fve_base'])}, "
            f"ft {_pct(summary['fve_ft'])}, L0 {summary['l0']:.1f}, dead {_pct(summary['dead_fraction'])}")
    lines = [head, f"latents: {counts}"]
    for key, title in (("top_ft_only", "top ft-only latents"), ("most_ft_leaning", "most ft-leaning latents")):
        if summary.get(key):
            lines.append(f"{title}:")
        for entry in summary.get(key, []):
            lines.append(f"  #{entry['latent']} {entry['cls']}  delta {entry['delta']:.2f}  cos {_opt(entry['cos'])}  "
                         f"freq {entry['freq']:.4f}  nu_eps {_opt(entry['nu_eps'])}  nu_r {_opt(entry['nu_r'])}")
            lines.extend(f"      {c['act']:.2f}  {c['text']}" for c in entry["contexts"][:contexts_per_latent])
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _opt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
