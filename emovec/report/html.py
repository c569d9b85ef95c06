"""Small HTML building blocks shared by the report's sections."""

from __future__ import annotations

import html
from typing import Any

from ..plotting import data_uri


def img(fig: Any, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{data_uri(fig)}">'



CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}td,th{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:.8em 0}.note{color:#555;font-size:.9em}.err{color:#a00}
code{background:#f3f3f3;padding:0 .2em}"""


def esc(x: Any) -> str:
    return html.escape(str(x))


def fmt(x: Any, spec: str = ".2f") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return format(x, spec)
    return esc(x)


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header) if any(header) else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def section(title: str, result: dict[str, Any] | None, render: Any) -> str:
    if result is None:
        return f"<h2>{esc(title)}</h2><p class='note'>not computed</p>"
    if "error" in result:
        return f"<h2>{esc(title)}</h2><p class='err'>not available: {esc(result['error'])}</p>"
    try:
        return f"<h2>{esc(title)}</h2>" + render(result)
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        return f"<h2>{esc(title)}</h2><p class='err'>could not render ({esc(type(exc).__name__)}: {esc(exc)}); re-run with --force</p>"


