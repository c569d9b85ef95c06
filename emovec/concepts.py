"""Emotion concepts: the built-in 171 words or a user's own list."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from .storage import EmovecError


def _parse(text: str, source: str) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for i, line in enumerate(text.splitlines(), 1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if len(name) > 64 or not re.fullmatch(r"[^\W\d_][\w' -]*", name):
            raise EmovecError(f"{source}:{i}: {name[:40]!r} is not a concept name (letters, spaces, hyphens; one per line)")
        key = name.lower()
        if key in seen:
            raise EmovecError(f"{source}:{i}: {name!r} is listed twice; keep one line per concept")
        seen.add(key)
        names.append(key)
    if not names:
        raise EmovecError(f"{source}: no concepts found; write one emotion word per line")
    return names


def load_concepts(source: str | Path | None = None) -> list[str]:
    """Return the concept list: the built-in 171 emotions, or one word per line from a text file."""
    if source is None or str(source) in ("default", "emotions-171"):
        text = resources.files("emovec").joinpath("data/emotions.txt").read_text(encoding="utf-8")
        return _parse(text, "emovec/data/emotions.txt")
    path = Path(source)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise EmovecError(f"{path}: concept list not found; pass a text file with one emotion per line") from None
    except UnicodeDecodeError:
        raise EmovecError(f"{path}: concept list is not UTF-8 text; save it as UTF-8 with one emotion per line") from None
    except OSError as exc:
        raise EmovecError(f"{path}: cannot read the concept list ({exc.strerror or type(exc).__name__})") from None
    return _parse(text, str(path))


def resolve_emotions(names: str | Sequence[str], known: list[str]) -> list[str]:
    """Check user-given emotion names against `known`; suggest the nearest names when one is unknown."""
    if isinstance(names, str):
        names = [n for n in re.split(r"\s*,\s*", names.strip()) if n]
    out = []
    lowered = {k.lower(): k for k in known}
    for name in names:
        key = name.strip().lower().replace("_", " ")
        if key in lowered:
            out.append(lowered[key])
            continue
        near = difflib.get_close_matches(key, list(lowered), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(near)}?" if near else "run `emovec info VECTORS` to list them"
        raise EmovecError(f"unknown emotion {name!r}: {hint}")
    return out


def data_lines(name: str) -> list[str]:
    """Read a package data file of one item per line, skipping blanks and # comments."""
    text = resources.files("emovec").joinpath(f"data/{name}").read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
