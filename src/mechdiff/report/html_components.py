"""Report sections of a parameter decomposition (/components): ground truth of a toy, components by importance."""

from __future__ import annotations

from typing import Any

from mechdiff.report.html_page import Banner, Markup, Section, esc, fmt_num, table

TOP_COMPONENTS = 20


def components_banner(part: Any) -> Banner:
    """The top line of a file that holds a decomposition: the toy's metrics, or the alive counts."""
    document = part.to_json(top=0)
    toy = document.get("toy")
    alive = ", ".join(f"{m['module']} {m['n_alive']}/{m['n_components']}" for m in document["modules"])
    if toy:
        return Banner("info", f"Decomposition of the toy {toy.get('name')}: MMCS {fmt_num(toy.get('mmcs'))}, "
                      f"ML2R {fmt_num(toy.get('ml2r'))}", f"Alive components per module: {alive}.")
    return Banner("info", "Parameter decomposition (SPD)", f"Alive components per module: {alive}.")


def components_sections(part: Any) -> list[Section]:
    """The toy's ground-truth metrics (when it was a toy) and the components table, most important first.

    Args:
        part: the ``/components`` part of an open results file (a ``ComponentsPart``).

    Returns:
        The sections.
    """
    document = part.to_json(top=TOP_COMPONENTS)
    blocks = [_toy_table(document["toy"])] if document.get("toy") else []
    rows = [[c["module"], c["index"], fmt_num(c["mean_ci"]), fmt_num(c["alive_frequency"]), fmt_num(c["norm"]),
             "yes" if c["alive"] else "no"] for c in document["components"]]
    blocks.append(table(["module", "component", "mean causal importance", "alive frequency", "norm", "alive"],
                        rows, numeric=(1, 2, 3, 4)))
    total = sum(m["n_components"] for m in document["modules"])
    note = (f"The {min(TOP_COMPONENTS, total)} most important of {total} components (mean causal importance "
            "over the data, then how often they are alive). MMCS = mean over true features of the best "
            "component's cosine with it; ML2R = mean norm ratio of those matches (1 is perfect).")
    return [Section("Parameter components", Markup("".join(blocks)), note)]


def _toy_table(toy: dict[str, Any]) -> str:
    rows = [["MMCS", fmt_num(toy.get("mmcs"))], ["ML2R", fmt_num(toy.get("ml2r"))],
            ["alive components (feature-reading matrix)", f"{toy.get('n_alive')} of {toy.get('n_components')}"],
            ["true features", toy.get("n_features")],
            ["features read by exactly one component", toy.get("features_one_component")],
            ["SPD steps", toy.get("steps")]]
    met = toy.get("targets") or {}
    if met:
        rows.append(["targets met", ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in met.items())])
    return f"<h3>Ground truth of the toy {esc(toy.get('name'))}</h3>" + table(["metric", "value"], rows, numeric=())
