"""HTML building blocks of the report: escaping, tables, figures, the page shell and its CSS.

Every string that comes from a results file goes through :func:`esc` (token strings
from tokenizers carry ``<``, ``&`` and quotes); functions here return markup as
:class:`Markup` so callers can tell escaped text from raw text.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# The markers crosscoder contexts use around the activating token (crosscoder_contexts.py).
MARK_OPEN, MARK_CLOSE = "[[", "]]"


class Markup(str):
    """A string that is already HTML (escaped where needed)."""


def esc(value: object) -> Markup:
    """HTML-escape any value's ``str`` (quotes included), unless it is already Markup."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def fmt_num(value: float | None, digits: int = 3) -> str:
    """A number with ``digits`` significant figures: 0.0123, 1.23e-05, 42, 1230; '-' for None/NaN."""
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.{digits - 1}e}"
    return np.format_float_positional(float(f"{value:.{digits}g}"), trim="-")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = (),
          css_class: str = "") -> Markup:
    """An HTML table; plain cells are escaped, Markup cells are inserted as they are.

    Args:
        headers: column titles.
        rows: cells per row.
        numeric: column indices to right-align.
        css_class: extra class on the table element.

    Returns:
        The table markup.
    """
    right = set(numeric)
    head = "".join(f'<th class="{"num" if i in right else ""}">{esc(h)}</th>' for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f'<td class="{"num" if i in right else ""}">{esc(c)}</td>' for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return Markup(f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def figure(png_base64: str, alt: str, caption: str = "", wide: bool = False) -> Markup:
    """An embedded PNG (``data:`` URI) with an optional caption; ``wide`` spans a whole grid row."""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    cls = ' class="wide"' if wide else ""
    return Markup(f'<figure{cls}><img alt="{esc(alt)}" src="data:image/png;base64,{png_base64}">{cap}</figure>')


def token_chip(token: str) -> Markup:
    """A token in a monospace chip; whitespace made visible so ' a' and 'a' differ."""
    shown = token.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"
    return Markup(f'<code class="tok">{esc(shown)}</code>')


def token_chips(tokens: Sequence[str], limit: int = 6) -> Markup:
    """Up to ``limit`` token chips, with a count of the rest."""
    chips = " ".join(token_chip(t) for t in tokens[:limit])
    more = f' <span class="muted">+{len(tokens) - limit}</span>' if len(tokens) > limit else ""
    return Markup(chips + more)


def highlight_context(context: str, token: str | None = None) -> Markup:
    """A context line with its token wrapped in ``<mark>``.

    The marked token is the one between ``[[`` and ``]]`` when the context has those
    markers (crosscoder contexts); otherwise ``token`` is appended after the context,
    which holds the tokens before it (behaviour contexts).

    Args:
        context: the text window.
        token: the token that follows the context, for contexts without markers.

    Returns:
        Escaped markup.
    """
    start = context.find(MARK_OPEN)
    end = context.find(MARK_CLOSE, start + len(MARK_OPEN)) if start >= 0 else -1
    if start >= 0 and end >= 0:
        left, mid, right = context[:start], context[start + len(MARK_OPEN):end], context[end + len(MARK_CLOSE):]
    elif token:
        left, mid, right = (context + " " if context and not context.endswith(" ") else context), token, ""
    else:
        return Markup(f'<span class="ctx">{esc(context)}</span>')
    return Markup(f'<span class="ctx">{esc(left)}<mark>{esc(mid)}</mark>{esc(right)}</span>')


def bar_cell(value: float, scale: float, label: str, negative: bool = False) -> Markup:
    """A small inline bar (pure CSS) proportional to ``|value| / scale``, then ``label``.

    Args:
        value: the number drawn.
        scale: the value that fills the bar.
        label: text after the bar (fixed width so bars line up).
        negative: draw in the "fell" colour.

    Returns:
        The markup.
    """
    width = 0.0 if scale <= 0 or not math.isfinite(value) else min(100.0, 100.0 * abs(value) / scale)
    tone = "neg" if negative else "pos"
    return Markup(f'<span class="barbox"><span class="bar {tone}" style="width:{width:.1f}%"></span></span>'
                  f'<span class="barnum">{esc(label)}</span>')


@dataclass(frozen=True)
class Section:
    """One titled block of the report."""

    title: str
    """Heading shown above the block (plain text)."""
    body: Markup
    """The block's markup."""
    note: str = ""
    """One line under the heading that says how to read the block."""
    anchor: str = ""
    """id for the table of contents; derived from the title when empty."""

    def __post_init__(self) -> None:
        if not self.title:
            raise ValueError("a section needs a title")

    @property
    def ident(self) -> str:
        return self.anchor or "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")

    def render(self) -> Markup:
        note = f'<p class="note">{esc(self.note)}</p>' if self.note else ""
        return Markup(f'<section id="{esc(self.ident)}"><h2>{esc(self.title)}</h2>{note}{self.body}</section>')


@dataclass(frozen=True)
class Banner:
    """The coloured verdict line at the top."""

    tone: str
    """"pass" (green), "findings" (red) or "info" (neutral blue)."""
    headline: str
    """The verdict in a few words."""
    detail: str = ""
    """One sentence under it."""

    def __post_init__(self) -> None:
        if self.tone not in ("pass", "findings", "info"):
            raise ValueError(f"banner tone must be pass, findings or info, got {self.tone!r}")

    def render(self) -> Markup:
        detail = f"<p>{esc(self.detail)}</p>" if self.detail else ""
        return Markup(f'<div class="banner {self.tone}"><strong>{esc(self.headline)}</strong>{detail}</div>')


def stat_tiles(stats: Sequence[tuple[str, str]]) -> Markup:
    """A row of (value, label) tiles under the banner."""
    tiles = "".join(f'<div class="tile"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for v, k in stats)
    return Markup(f'<div class="tiles">{tiles}</div>')


def page(title: str, header_lines: Sequence[str], banner: Banner, tiles: Markup,
         sections: Sequence[Section]) -> str:
    """The whole self-contained document (inline CSS, no scripts, no external references).

    Args:
        title: document title.
        header_lines: provenance lines under the title (plain text).
        banner: the verdict.
        tiles: headline numbers.
        sections: the blocks, in order.

    Returns:
        The HTML text.
    """
    toc = "".join(f'<a href="#{esc(s.ident)}">{esc(s.title)}</a>' for s in sections)
    header = "".join(f"<div>{esc(line)}</div>" for line in header_lines)
    body = "".join(s.render() for s in sections)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f'<header><h1>{esc(title)}</h1><div class="prov">{header}</div></header>'
        f"{banner.render()}{tiles}<nav>{toc}</nav>{body}"
        '<footer>Generated by mechdiff. Self-contained: no scripts, no network.</footer>'
        "</main></body></html>\n"
    )


CSS = """
:root{--fg:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#ffffff;--soft:#f6f7f9;--accent:#3559c7;
--pass:#0f7b3f;--passbg:#e7f6ed;--bad:#b42318;--badbg:#fdecea;--info:#2a4fa8;--infobg:#eaf0fb}
*{box-sizing:border-box}
body{margin:0;background:var(--soft);color:var(--fg);
font:14px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px 28px 40px;background:var(--bg);min-height:100vh}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:0 0 4px;padding-top:6px}
h3{font-size:13.5px;margin:10px 0 4px}
header{margin-bottom:14px}
.prov{color:var(--muted);font-size:12.5px;word-break:break-all}
.banner{border-radius:8px;padding:12px 16px;margin:10px 0 14px;border-left:6px solid}
.banner strong{font-size:18px}.banner p{margin:4px 0 0}
.banner.pass{background:var(--passbg);border-color:var(--pass);color:var(--pass)}
.banner.findings{background:var(--badbg);border-color:var(--bad);color:var(--bad)}
.banner.info{background:var(--infobg);border-color:var(--info);color:var(--info)}
.banner p{color:var(--fg)}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:12px}
.tile{flex:1 1 130px;max-width:230px;border:1px solid var(--line);border-radius:8px;padding:8px 12px;background:var(--soft)}
.tile b{display:block;font-size:19px}.tile span{color:var(--muted);font-size:12px}
nav{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12.5px;padding:8px 0 4px;border-bottom:1px solid var(--line)}
nav a{color:var(--accent);text-decoration:none}
section{padding:14px 0 10px;border-bottom:1px solid var(--line)}
.note{color:var(--muted);margin:0 0 8px;font-size:12.5px}
table{border-collapse:collapse;width:100%;font-size:12.5px;margin:4px 0 8px}
th{text-align:left;font-weight:600;color:var(--muted);border-bottom:2px solid var(--line);padding:5px 8px;
white-space:nowrap}
td{border-bottom:1px solid var(--line);padding:5px 8px;vertical-align:top}
tbody tr:nth-child(even){background:#fafbfc}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
code.tok{background:#eef1f6;border-radius:4px;padding:0 4px;white-space:pre}
.ctx{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;white-space:pre-wrap}
mark{background:#ffd84d;border-radius:3px;padding:0 2px;font-weight:600}
.muted{color:var(--muted)}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:12px}
figure{margin:0;border:1px solid var(--line);border-radius:8px;padding:8px;background:#fff}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figure.wide{grid-column:1/-1}
figcaption{color:var(--muted);font-size:12px;margin-top:4px}
details{font-size:12px}summary{cursor:pointer;color:var(--accent)}
dl.ev{display:grid;grid-template-columns:max-content 1fr;gap:0 10px;margin:4px 0}
dl.ev dt{color:var(--muted)}dl.ev dd{margin:0;word-break:break-word}
.barbox{display:inline-block;width:110px;text-align:left;vertical-align:middle}
.bar{display:block;height:9px;border-radius:2px}
.barnum{display:inline-block;min-width:4.2em;text-align:right}
.bar.pos{background:#d1495b}.bar.neg{background:#3c7dc4}
.two{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.pill{display:inline-block;border-radius:10px;padding:0 7px;font-size:11.5px;background:#eef1f6}
.pill.hi{background:var(--badbg);color:var(--bad)}
.pill.off{background:#f3f3f3;color:#888}
ul.plain{margin:4px 0;padding-left:18px}
.warn{color:#8a5a00}
pre.doc{white-space:pre-wrap;font-size:12px;background:var(--soft);padding:8px;border-radius:6px}
.linked{color:var(--muted);font-size:12px;margin-top:2px}
footer{color:var(--muted);font-size:12px;margin-top:18px}
"""
