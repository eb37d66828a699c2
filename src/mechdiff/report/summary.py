"""Summaries of any results file, as a JSON document and as text (what `mechdiff show` prints).

Each part's JSON comes from its own part type (``to_json``, registered by its lens
package); the text for people is rendered here. ``SUMMARIZERS`` maps a part name to
its renderer; a part without one gets a plain listing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mechdiff.report.terminal import render_audit, render_components, render_weight_diff
from mechdiff.results import open_results
from mechdiff.store import Part, Results

Summarizer = Callable[[Part, int | None], tuple[dict, str]]
SUMMARIZERS: dict[str, Summarizer] = {}
"""Part name -> function(part, top) -> (json, text)."""


def summarizer(part: str) -> Callable[[Summarizer], Summarizer]:
    """Register the summary of one results part."""

    def register(fn: Summarizer) -> Summarizer:
        SUMMARIZERS[part] = fn
        return fn

    return register


@summarizer("weights")
def _weights(part: Any, top: int | None) -> tuple[dict, str]:
    diff = part.diff()
    return diff.to_json(top=top), render_weight_diff(diff, top=top or 15)


@summarizer("audit")
def _audit(part: Any, top: int | None) -> tuple[dict, str]:
    document = part.to_json(top=top)
    return document, render_audit(document, top=top or 10)


@summarizer("crosscoder")
def _crosscoder(part: Any, top: int | None) -> tuple[dict, str]:
    from mechdiff.diffing.crosscoder.summary import format_summary

    document = part.to_json(top=top or 10)
    return document, format_summary(document)


@summarizer("components")
def _components(part: Any, top: int | None) -> tuple[dict, str]:
    document = part.to_json(top=top)
    return document, render_components(document, top=top or 15)


def _generic(part: Part) -> tuple[dict, str]:
    attrs = {k: v for k, v in part.attrs.items() if not isinstance(v, (list, dict)) or len(str(v)) < 400}
    text = f"/{part.name}: {', '.join(part.keys())}\n" + "\n".join(f"  {k}: {v}" for k, v in attrs.items())
    return {"datasets": part.keys(), "attrs": attrs}, text


def summarize_results(results: Results, top: int | None = None) -> tuple[dict[str, Any], str]:
    """Summaries of every part of an open results file: (json document, text)."""
    root = results.attrs
    document: dict[str, Any] = {"schema_version": results.schema_version,
                                "mechdiff_version": root.get("mechdiff_version"),
                                "command": root.get("command"), "created": root.get("created")}
    texts = [f"{results.path}: written {root.get('created')} by `{root.get('command')}`"]
    for name in results.parts:
        if name == "heads" and "weights" in results.parts:
            continue  # shown with /weights
        part = results.part(name)
        fn = SUMMARIZERS.get(name)
        doc, text = fn(part, top) if fn else _generic(part)
        document[name] = doc
        texts += ["", text]
    return document, "\n".join(texts)


def summarize(path: str | os.PathLike, top: int | None = None) -> tuple[dict[str, Any], str]:
    """Summaries of every part in a results file.

    Args:
        path: the results file.
        top: rows per ranked list (None: all in JSON, 15 in text).

    Returns:
        (json document, human-readable text).
    """
    with open_results(path) as results:
        return summarize_results(results, top)
