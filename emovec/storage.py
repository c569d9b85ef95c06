"""Crash-safe file primitives shared by every stage.

Every artefact emovec writes goes through here: whole files are written to a
temporary name in the same directory and renamed into place (so a reader never
sees half a file), and JSONL corpora are appended in whole-line batches whose
torn tail (from a killed process) is dropped on the next read.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class EmovecError(Exception):
    """A user-facing error: one line that says what is wrong and how to fix it."""


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def write_error(path: str | Path, exc: BaseException) -> EmovecError:
    """The one-line error for a write that failed: disk full, read-only, or another OS error.

    Libraries that write through their own code (safetensors) report a full disk only in
    their message, so that is recognised too.
    """
    code = exc.errno if isinstance(exc, OSError) else None
    text = str(exc)
    if code in _FULL or "No space left" in text or "StorageFull" in text or "File too large" in text:
        return EmovecError(f"{path}: no space left on the device; free some space and re-run the same command: "
                           "the run resumes where it stopped")
    if code in _READ_ONLY or "Read-only file system" in text:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "read-only"
        return EmovecError(f"{path} is not writable ({why}); use a directory you can write to, or copy the run "
                           "somewhere writable to resume it")
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    return EmovecError(f"{path}: cannot write ({why})")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only on success.

    A failed write (disk full, read-only directory) leaves the old file as it was and
    raises a one-line EmovecError.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the final file the usual permissions
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except EmovecError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) or "No space left" in str(exc) or "StorageFull" in str(exc):
            raise write_error(path, exc) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Write a JSON file atomically (pretty-printed, UTF-8)."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, turning every failure into a one-line EmovecError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EmovecError(f"{path}: file not found") from None
    except OSError as exc:
        raise EmovecError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, absurd nesting or number sizes
        why = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
        raise EmovecError(f"{path}: not valid UTF-8 JSON ({why}); delete it and re-run the stage that writes it") from None


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    """Rows as JSONL text: one UTF-8 JSON object per line, each line ending in a newline."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace a JSONL file with `rows`, atomically (a failed write leaves the old file as it was)."""
    write_text(path, jsonl_text(rows))


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows as one write of whole lines, then fsync.

    A process killed mid-write can leave at most one torn final line, which
    `read_jsonl` drops and `repair_jsonl` truncates before the next append; a write
    that fails (disk full) is truncated back at once and raises a one-line EmovecError.
    """
    data = jsonl_text(rows)
    if not data:
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(path)
        size = path.stat().st_size if path.exists() else 0
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with open(path, "ab") as fh:
            fh.write(data.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):  # a short write (disk full) is undone, so no chunk is ever half on disk
            os.truncate(path, size)
        raise write_error(path, exc) from None


def repair_jsonl(path: str | Path) -> int:
    """Truncate a torn last line left by a killed writer; return bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return 0
        fh.seek(0)
        data = fh.read()
        keep = data.rfind(b"\n") + 1
        fh.truncate(keep)
        return size - keep


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file written by `append_jsonl` (or by a user).

    A torn final line without a newline is ignored; any other malformed line
    is an error naming the file and line number.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EmovecError(f"{path}: file not found") from None
    except OSError as exc:
        raise EmovecError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    lines = raw.split(b"\n")
    if lines and lines[-1] != b"":
        lines = lines[:-1]  # torn tail from an interrupted append
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, absurd nesting or number sizes
            raise EmovecError(f"{path}:{i}: not a valid UTF-8 JSON line ({exc.__class__.__name__})") from None
        if not isinstance(row, dict):
            raise EmovecError(f"{path}:{i}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
    return rows


def user_cache_dir() -> Path:
    """emovec's cache directory: $EMOVEC_CACHE, else $XDG_CACHE_HOME/emovec, else ~/.cache/emovec."""
    if os.environ.get("EMOVEC_CACHE"):
        return Path(os.environ["EMOVEC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "emovec"
