"""What makes a run reproducible: the machine, the library versions, the model's files, and a run lock.

A run records these once, at its first start (`rundir.open_run`), and a resume
compares them with the process that resumes it: different library versions, a
different CPU class or different model files change the numbers a run writes, so
such a resume is refused unless the user allows the drift knowingly. Timing
probes (is bf16 faster than fp32 here?) are cached per machine, so the same
command decides the same way whatever else the machine is doing.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ._version import __version__
from .storage import EmovecError, read_json, user_cache_dir, write_error, write_json

LOCK_FILE = ".emovec.lock"
SETTINGS_FILE = "settings.json"
log = logging.getLogger(__name__)
_HELD: set[str] = set()  # run directories this process holds the lock of
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")


def library_versions() -> dict[str, str]:
    """Versions of what decides the numbers a run writes: Python, torch, transformers, emovec."""
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "transformers": str(transformers.__version__), "emovec": __version__}


def cpu_info() -> dict[str, Any]:
    """The CPU class: model name, architecture and the vector/matrix extensions that change kernel choice."""
    name, flags = "", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not name:
                name = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": name or platform.processor() or platform.machine(), "arch": platform.machine(),
            "isa": sorted(f for f in _ISA_FLAGS if f in flags)}


def machine_key() -> str:
    """A short stable key for this machine class (CPU model and extensions, torch version)."""
    info = {"cpu": cpu_info(), "torch": library_versions()["torch"]}
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.glob("*") if p.suffix in (".safetensors", ".gguf", ".json", ".model", ".txt")
                   and p.is_file())
    return files


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 over a model's files (a GGUF file, or a directory's weights, config and tokenizer files).

    Hashing a large model takes a while, so the digest is cached per file by path, size
    and modification time; a changed file is hashed again.
    """
    path = Path(path)
    cache = _load_cache("fingerprints.json")
    total = hashlib.sha256()
    changed = False
    for f in _weight_files(path):
        digest, hashed = _file_digest(f, cache)
        changed |= hashed
        total.update(f"{f.name}:{digest}\n".encode())
    if changed:
        _save_cache("fingerprints.json", cache)
    return total.hexdigest()[:32]


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of one file (hex), cached like `file_fingerprint`'s: a changed file is hashed again."""
    cache = _load_cache("fingerprints.json")
    digest, hashed = _file_digest(Path(path), cache)
    if hashed:
        _save_cache("fingerprints.json", cache)
    return digest


def _file_digest(f: Path, cache: dict[str, Any]) -> tuple[str, bool]:
    """(sha256 hex of `f`, whether it was hashed now) from `cache`, keyed by path, size and mtime."""
    st = f.stat()
    key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    digest = cache.get(key)
    if isinstance(digest, str):
        return digest, False
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    cache[key] = h.hexdigest()
    return cache[key], True


def cached_probe(name: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
    """The result of a timing probe for this machine class, measured once and kept in the user cache.

    Returns (value, measured_now). A probe decides defaults for new runs only; runs record
    what was decided and never re-probe when they resume.
    """
    cache = _load_cache("probes.json")
    key = f"{machine_key()}|{name}"
    if key in cache:
        return cache[key], False
    value = compute()
    cache[key] = value
    _save_cache("probes.json", cache)
    return value, True


def _load_cache(name: str) -> dict[str, Any]:
    """A JSON table from the user cache ({} when missing or unreadable: a cache is never needed)."""
    path = user_cache_dir() / name
    try:
        data = read_json(path) if path.exists() else {}
    except EmovecError:
        return {}
    return data if isinstance(data, dict) else {}


def _save_cache(name: str, data: dict[str, Any]) -> None:
    """Write a JSON table to the user cache; a read-only or full cache only costs the next call a recompute."""
    try:
        write_json(user_cache_dir() / name, data)
    except (EmovecError, OSError):
        log.info("could not write the cache file %s; it will be recomputed next time", user_cache_dir() / name)


def drift(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The entries that differ between a run's recorded provenance and this process's: {key: (recorded, now)}."""
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(recorded) | set(current)):
        if recorded.get(key) != current.get(key):
            out[key] = (recorded.get(key), current.get(key))
    return out


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run directory's lock while a command writes into it; a second process is refused at once.

    The lock is an advisory `flock` on `RUN_DIR/.emovec.lock`: the kernel drops it when
    the process dies, so a killed run never leaves a stale lock behind.
    """
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD:  # this process holds it already (a command calling another): re-entrant
        yield
        return
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise write_error(run_dir, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise EmovecError(f"{run_dir} is in use by {holder}; wait for it to finish (or stop it), "
                              "then re-run to resume") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"emovec pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)
        if created and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:  # refused before writing: leave nothing
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
            run_dir.rmdir()


_F = TypeVar("_F", bound=Callable[..., Any])


def locked(fn: _F) -> _F:
    """Run `fn(run_dir, ...)` holding `run_lock(run_dir)`: for every entry point that writes into a run."""
    @functools.wraps(fn)
    def wrapper(run_dir: str | Path, *args: Any, **kwargs: Any) -> Any:
        with run_lock(run_dir):
            return fn(run_dir, *args, **kwargs)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature; mypy cannot see it


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def check_settings(out_dir: str | Path, settings: Mapping[str, Any], defaults: Mapping[str, Any] | None = None,
                   lm: Any = None, settings_file: str = SETTINGS_FILE, samples_file: str = "samples.jsonl") -> None:
    """Record `settings` in `out_dir/settings.json` on first start; refuse to resume with different ones.

    Samples made under different generation settings must never be mixed into one
    result, so a resume whose settings differ from the recorded ones raises a
    one-line EmovecError naming the keys. `defaults` gives, for keys added to an
    experiment's settings later, the value a results folder without them was made with.
    With `lm` (a LanguageModel), what else decides the samples is recorded and checked too:
    the model's dtype, the library versions and the CPU class (folders made before that was recorded
    are taken as made under the current ones).
    """
    path = Path(out_dir) / settings_file
    extra = {"dtype": str(lm.dtype).removeprefix("torch."), "versions": library_versions(),
             "cpu": cpu_info()} if lm is not None else {}
    now = json.loads(json.dumps({**dict(settings), **extra}))  # compared as stored: tuples are lists
    defaults = {**json.loads(json.dumps(extra)), **(defaults or {})}
    if path.exists():
        old = read_json(path)
        if not isinstance(old, dict):
            raise EmovecError(f"{path} is not a settings file; delete {path.parent} to start over")
        diff = [k for k in sorted(set(now) | set(old)) if old.get(k, defaults.get(k)) != now.get(k, defaults.get(k))]
        if diff:
            what = ", ".join(f"{k} ({_short(old.get(k, defaults.get(k)))} there, {_short(now.get(k, defaults.get(k)))} now)"
                             for k in diff)
            raise EmovecError(f"{path.parent} holds samples made with different {what}; use the same settings to resume, "
                              "or delete that folder to start over")
        return
    if (Path(out_dir) / samples_file).exists():
        log.warning("%s has samples but no %s (made by an older emovec): recording the current settings, which "
                    "the earlier samples cannot be checked against", out_dir, settings_file)
    write_json(path, now)
