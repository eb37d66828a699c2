"""The terminal summary of `mechdiff decompose` (its JSON is behind --json)."""

from __future__ import annotations

from typing import Any


def format_decompose(document: dict[str, Any]) -> str:
    """A few readable lines: a toy's ground-truth scores, or a model's modules and live components.

    Args:
        document: what ``api.decompose_model`` returns.

    Returns:
        The text to print.
    """
    if "mmcs" not in document:
        modules = document.get("modules", [])
        return (f"Decomposed {len(modules)} module(s): {', '.join(modules)}\n"
                f"Live subcomponents: {document.get('n_alive')}")
    per_module = ", ".join(f"{name} {n}" for name, n in document.get("n_alive_per_module", {}).items())
    met = document.get("targets", {})
    lines = [
        (f"Toy {document['name']}: {document['n_components']} subcomponents per matrix, {document['steps']} steps "
        f"({document['seconds']:.1f} s)"),
        f"  alive: {document['n_alive']} of {document['n_components']} in the feature-reading matrix ({per_module})",
        (f"  MMCS {document['mmcs']:.4f}   ML2R {document['ml2r']:.3f}   "
        f"features read by one component: {document['features_one_component']} of {document['n_features']}"),
        "  targets: " + (", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items()) or "none"),
    ]
    return "\n".join(lines)
