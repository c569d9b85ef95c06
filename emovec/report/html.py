"""Small HTML building blocks shared by the report's sections."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from ..plotting import data_uri


def img(fig: Any, alt: str) -> str:
    """An <img> tag embedding `fig` as a PNG data URI, so the report is one self-contained file."""
    return f'<img alt="{html.escape(alt)}" src="{data_uri(fig)}">'



CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}
td,th{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:.8em 0}.note{color:#555;font-size:.9em}.err{color:#a00}
code{background:#f3f3f3;padding:0 .2em}"""


def esc(x: Any) -> str:
    """`str(x)` HTML-escaped, so run data (emotion names, model text) cannot break the page."""
    return html.escape(str(x))


def fmt(x: Any, spec: str = ".2f") -> str:
    """A number for a table cell: floats formatted by `spec`, None as "n/a", anything else escaped."""
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return format(x, spec)
    return esc(x)


def table(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table of escaped cells; the header row is left out when every header is empty."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header) if any(header) else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def section(title: str, result: dict[str, Any] | None, render: Callable[[dict[str, Any]], str]) -> str:
    """One titled report section: `render(result)`, or a note when the result is missing, failed or unreadable.

    A result written by an older emovec may lack keys the renderer expects; that shows as a note
    instead of failing the whole report.
    """
    if result is None:
        return f"<h2>{esc(title)}</h2><p class='note'>not computed</p>"
    if "error" in result:
        return f"<h2>{esc(title)}</h2><p class='err'>not available: {esc(result['error'])}</p>"
    try:
        return f"<h2>{esc(title)}</h2>" + render(result)
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        return f"<h2>{esc(title)}</h2><p class='err'>could not render ({esc(type(exc).__name__)}: {esc(exc)}); re-run with --force</p>"


