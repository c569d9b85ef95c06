"""Figures without pyplot: every figure emovec draws is a `matplotlib.figure.Figure` of its own.

Nothing here selects a backend or touches pyplot's global state, so a notebook
user's backend and open figures stay as they were; `png` and `data_uri` render
through the Agg canvas directly.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from .storage import atomic_path


def figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.8), **kw: Any) -> tuple[Any, Any]:
    """A new (Figure, axes) pair, as `pyplot.subplots` would give, without registering it with pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def png_bytes(fig: Any, dpi: int = 110) -> bytes:
    """The figure rendered as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_png(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write the figure as a PNG file, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(fig, dpi))
    return Path(path)


def data_uri(fig: Any, dpi: int = 110) -> str:
    """The figure as a `data:image/png;base64,...` URI, for self-contained HTML."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig, dpi)).decode()
