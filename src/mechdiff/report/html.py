"""The HTML report: one self-contained file rendered from any mechdiff results file.

Entry point: :func:`render_report`. It renders whatever parts the file holds (only
``/weights`` is enough): the audit's verdict and findings, behavioural evidence, the
weight diff's pictures, the crosscoder's latents, and a plain listing of other parts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mechdiff.errors import InputError
from mechdiff.report.html_page import (
    Banner,
    Markup,
    Section,
    esc,
    fmt_num,
    page,
    stat_tiles,
    table,
)
from mechdiff.results import open_results
from mechdiff.store import Results

SHOWN_ELSEWHERE = {"weights", "heads", "audit", "crosscoder", "components"}
GENERIC_ROWS = 10


def render_report(results_path: str | os.PathLike, out_html: str | os.PathLike) -> Path:
    """Render a results file as one self-contained HTML page (inline CSS, embedded PNGs).

    Args:
        results_path: an ``.h5`` written by ``mechdiff diff/crosscoder/decompose/audit``.
        out_html: where to write the page; written to ``OUT.tmp`` first and moved into
            place, so a failure never leaves a half-written report.

    Returns:
        The path of the written report.

    Raises:
        InputError: the results file cannot be read, the output folder is missing, or
            matplotlib (the ``report`` extra) is not installed.
    """
    from mechdiff.report.plots import require_matplotlib

    require_matplotlib()
    out = Path(out_html).expanduser()
    if out.is_dir():
        raise InputError(f"report output {out_html} is a folder; give a file name such as {out / 'report.html'}")
    if not out.parent.is_dir():
        raise InputError(f"report folder {out.parent} does not exist; create it first")
    if out.resolve() == Path(results_path).expanduser().resolve():
        raise InputError(f"the report {out_html} would overwrite the results file; choose another name")
    with open_results(results_path) as results:
        document = build_html(results)
    _write_atomic(out, document)
    return out


def build_html(results: Results) -> str:
    """The report of an open results file, as HTML text.

    Args:
        results: an open results file.

    Returns:
        The whole document.
    """
    parts = set(results.parts)
    diff = _weight_diff(results) if "weights" in parts else None
    audit = results.part("audit") if "audit" in parts else None
    findings = audit.table("findings") if audit is not None and "findings" in list(audit.keys()) else None
    sections = _audit_sections(audit, findings) + _weights_sections(diff)
    if "crosscoder" in parts:
        from mechdiff.report.html_crosscoder import crosscoder_sections

        sections += crosscoder_sections(results.part("crosscoder"))
    if "components" in parts:
        from mechdiff.report.html_components import components_sections

        sections += components_sections(results.part("components"))
    shown = SHOWN_ELSEWHERE if "weights" in parts else SHOWN_ELSEWHERE - {"heads"}  # heads come with /weights
    sections += [_generic_section(results, name) for name in results.parts if name not in shown]
    root = results.attrs
    title = "mechdiff audit report" if audit is not None else "mechdiff report"
    return page(title, _provenance(root), _banner(audit, findings, diff, results),
                stat_tiles(_tiles(diff, findings, audit, results)), sections)


def _weight_diff(results: Results) -> Any:
    from mechdiff.diffing.weights.result import load_weight_diff

    return load_weight_diff(results)


def _audit_sections(audit: Any, findings: np.ndarray | None) -> list[Section]:
    if audit is None:
        return []
    from mechdiff.report.html_audit import (
        behaviour_section,
        coverage_section,
        findings_section,
    )

    sections = [findings_section(findings, audit.attrs)] if findings is not None and len(findings) else []
    extra = [behaviour_section(audit), coverage_section(audit.attrs)]
    return sections + [section for section in extra if section is not None]


def _weights_sections(diff: Any) -> list[Section]:
    if diff is None:
        return []
    from mechdiff.report.html_weights import weight_sections

    return weight_sections(diff)


def _provenance(root: dict[str, Any]) -> list[str]:
    lines = []
    if root.get("base") or root.get("ft"):
        lines.append(f"base {root.get('base', '?')}  \u2192  fine-tune {root.get('ft', '?')}")
    if root.get("model"):
        lines.append(f"model {root['model']}")
    lines.append(f"written {root.get('created', '?')} by `{root.get('command', '?')}`")
    lines.append(f"mechdiff {root.get('mechdiff_version', '?')}, results schema {root.get('schema_version', '?')}")
    return lines


def _banner(audit: Any, findings: np.ndarray | None, diff: Any, results: Results) -> Banner:
    parts = results.parts
    if audit is not None:
        from mechdiff.report.html_audit import audit_banner

        return audit_banner(audit.attrs, findings)
    if diff is not None:
        structured = [c for c in diff.changes if c.rank > 0]
        if not structured:
            return Banner("info", "Weight diff: drift only (no audit verdict in this file)",
                          f"None of {len(diff.changes)} tensors shows a change that stands above its noise bulk.")
        top = structured[0]
        return Banner("info", f"Weight diff: {len(structured)} of {len(diff.changes)} tensors with structured change",
                      f"Largest: {top.tensor} (rank {top.rank}, score {fmt_num(top.score)}). "
                      "No audit verdict in this file; run `mechdiff audit` for one.")
    if "crosscoder" in parts:
        from mechdiff.report.html_crosscoder import crosscoder_banner

        banner = crosscoder_banner(results.part("crosscoder"))
        if banner is not None:
            return banner
    if "components" in parts:
        from mechdiff.report.html_components import components_banner

        return components_banner(results.part("components"))
    return Banner("info", "mechdiff results", f"parts: {', '.join(parts) or 'none'}")


def _tiles(diff: Any, findings: np.ndarray | None, audit: Any, results: Results) -> list[tuple[str, str]]:
    tiles: list[tuple[str, str]] = []
    if findings is not None:
        tiles.append((str(len(findings)), "findings"))
    if audit is not None and "mean_kl" in audit.attrs:
        tiles.append((fmt_num(audit.attrs["mean_kl"]), "mean KL (nats/token)"))
    if diff is not None:
        structured = sum(1 for c in diff.changes if c.rank > 0)
        tiles += [(str(len(diff.changes)), "tensors compared"), (str(structured), "with structured change")]
        if diff.changes:
            tiles.append((fmt_num(diff.changes[0].score), "top tensor score"))
        if diff.heads:
            head = diff.heads[0]
            tiles.append((f"L{head.layer} H{head.head}", f"top head (rank {head.rank})"))
        if diff.added or diff.removed:
            tiles.append((f"+{len(diff.added)} / -{len(diff.removed)}", "tensors added / removed"))
    if "crosscoder" in results.parts:
        tiles += _crosscoder_tiles(results.part("crosscoder"))
    return tiles


def _crosscoder_tiles(part: Any) -> list[tuple[str, str]]:
    from mechdiff.report.html_crosscoder import find_table

    latents = find_table(part, {"cls"}, "latents")
    if latents is None:
        return []
    return [(str(sum(1 for c in latents["cls"] if str(c) == "ft-only")), "ft-only latents")]


def _generic_section(results: Results, name: str) -> Section:
    """Any other part: its scalar attributes and the first rows of its tables."""
    part = results.part(name)
    attrs = {k: v for k, v in part.attrs.items() if not isinstance(v, (dict, list)) and len(str(v)) < 200}
    blocks = []
    if attrs:
        blocks.append(table(["attribute", "value"], [[k, _cell(v)] for k, v in attrs.items()]))
    for key in list(part.keys()):
        node = part.group[key]
        if isinstance(node, h5py.Dataset) and node.dtype.names:
            data = part.table(key)
            cols = list(data.dtype.names)[:8]
            rows = [[_cell(row[c]) for c in cols] for row in data[:GENERIC_ROWS]]
            more = f" (first {GENERIC_ROWS} of {len(data)})" if len(data) > GENERIC_ROWS else ""
            blocks.append(f"<h3>{esc(key)}{esc(more)}</h3>" + table(cols, rows))
        else:
            shape = f" {node.shape}" if isinstance(node, h5py.Dataset) else " (group)"
            blocks.append(f'<p class="muted mono">{esc(key)}{esc(shape)}</p>')
    return Section(f"/{name}", Markup("".join(blocks)), f"the {name} part of the results file", anchor=f"part-{name}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        return fmt_num(float(value))
    if isinstance(value, np.ndarray):
        return np.array2string(value, precision=3, threshold=8)
    return str(value)


def _write_atomic(out: Path, document: str) -> None:
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_text(document, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write the report {out}: {exc.strerror or exc}") from exc
