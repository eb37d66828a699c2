"""Summaries of any results file, as a JSON document and as text (what `mechdiff show` prints)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mechdiff.store import Results, open_results

# part name -> function(results, top) -> (json, text); other modules add theirs
SUMMARIZERS: dict[str, Callable[[Results, int | None], tuple[dict, str]]] = {}


def summarizer(part: str) -> Callable:
    """Register the summary of one results part."""

    def register(fn: Callable[[Results, int | None], tuple[dict, str]]) -> Callable:
        SUMMARIZERS[part] = fn
        return fn

    return register


@summarizer("weights")
def _weights(results: Results, top: int | None) -> tuple[dict, str]:
    from mechdiff.diffing.weights.result import load_weight_diff
    from mechdiff.report.terminal import render_weight_diff

    diff = load_weight_diff(results)
    return diff.to_json(top=top), render_weight_diff(diff, top=top or 15)


@summarizer("audit")
def _audit(results: Results, top: int | None) -> tuple[dict, str]:
    import json

    from mechdiff.report.terminal import render_audit

    part = results.part("audit")
    attrs = part.attrs
    findings = []
    if "findings" in list(part.keys()):
        for row in part.table("findings"):
            findings.append({"rank": int(row["rank"]), "method": str(row["method"]), "score": float(row["score"]),
                             "summary": str(row["summary"]), "evidence": json.loads(row["evidence"]),
                             "linked": json.loads(row["linked"]),
                             "location": {"layer": _none(row["layer"]), "head": _none(row["head"]),
                                          "tensor": str(row["tensor"]) or None, "latent": _none(row["latent"])}})
            if "causal" in row.dtype.names and row["causal"]:
                findings[-1]["causal"] = json.loads(row["causal"])
    document = {"verdict": attrs.get("verdict"), "thresholds": attrs.get("thresholds", {}),
                "lenses": attrs.get("lenses", []), "findings": findings[:top]}
    document.update({k: attrs[k] for k in ("causal", "text") if k in attrs})
    return document, render_audit(document, top=top or 10)


def _none(value: object) -> int | None:
    number = int(value)  # type: ignore[arg-type]
    return None if number < 0 else number


def _generic(results: Results, name: str) -> tuple[dict, str]:
    part = results.part(name)
    attrs = {k: v for k, v in part.attrs.items() if not isinstance(v, (list, dict)) or len(str(v)) < 400}
    text = f"/{name}: {', '.join(part.keys())}\n" + "\n".join(f"  {k}: {v}" for k, v in attrs.items())
    return {"datasets": part.keys(), "attrs": attrs}, text


def _load_optional_summarizers() -> None:
    import importlib

    for module in ("mechdiff.diffing.crosscoder.summary", "mechdiff.weightdecomp.components_summary",
                   "mechdiff.diffing.audit_summary", "mechdiff.report.lenses_summary"):
        try:
            importlib.import_module(module)
        except ImportError:
            continue


def summarize(path: str | os.PathLike, top: int | None = None) -> tuple[dict[str, Any], str]:
    """Summaries of every part in a results file.

    Args:
        path: the results file.
        top: rows per ranked list (None: all in JSON, 15 in text).

    Returns:
        (json document, human-readable text).
    """
    _load_optional_summarizers()
    with open_results(path) as results:
        root = results.attrs
        document: dict[str, Any] = {"schema_version": root.get("schema_version"),
                                    "mechdiff_version": root.get("mechdiff_version"),
                                    "command": root.get("command"), "created": root.get("created")}
        texts = [f"{path}: written {root.get('created')} by `{root.get('command')}`"]
        for name in results.parts:
            if name == "heads":
                continue  # shown with /weights
            fn = SUMMARIZERS.get(name)
            doc, text = fn(results, top) if fn else _generic(results, name)
            document[name] = doc
            texts += ["", text]
    return document, "\n".join(texts)
