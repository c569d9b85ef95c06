"""Run untrusted (model-written) Python code with time, memory and process limits, no network, no secrets.

`run_sandboxed(files, command)` writes `files` into a fresh temporary directory,
runs `python ARGS` there and returns a `SandboxResult`; the directory is deleted
afterwards, so every run starts from pristine copies of the files (tests
included), and `SandboxResult.tampered` names the protected files the code
changed or deleted (compared by SHA-256).

Layers of protection, and where each one is active (`SandboxResult.protections`
lists the layers a run actually got):

* **Every platform** (Linux, macOS):
  - a child in its own session and process group, killed as a group (SIGKILL) at
    the wall-clock timeout;
  - resource limits (`setrlimit`): address space (`memory_mb`, so a memory bomb
    gets MemoryError), CPU seconds, processes (`max_procs`, ignored by the kernel
    for root, see below), file size (also bounds captured stdout/stderr), open
    files, no core dumps;
  - a scrubbed environment: only PATH, HOME and TMPDIR (the sandbox directory),
    LANG; no tokens or keys of the caller;
  - Python runs isolated (`-I -S -B`: no site-packages, no user site, no PYTHON*
    variables) with a prelude that installs an audit hook (`sys.addaudithook`,
    which cannot be removed) before the code runs. The hook refuses: sockets
    (creation, connect, bind, DNS); fork, exec, spawn, subprocess, os.system;
    signals to other processes (os.kill, killpg); importing ctypes,
    _posixsubprocess and friends; gc referrer walks; symlinks and hard links;
    opening files for writing, deleting, renaming or creating them outside the
    sandbox directory; reading or listing files outside the sandbox directory
    and the interpreter's standard library. Audit hooks are a strong speed bump,
    not a security boundary on their own (CPython documents that code in the same
    process may find ways round them).
* **Linux, as root** (true here): the launcher unshares a new network namespace
  (only a down loopback: no network at all) and a new PID namespace (the code
  cannot see or signal outside processes, and when its init dies the kernel
  kills every process it started), then drops to user `nobody` when the
  interpreter is reachable by other users (otherwise it picks a world-readable
  system interpreter such as /usr/bin/python3), so the kernel itself refuses
  reads of private files (/root) and writes outside world-writable places, and
  RLIMIT_NPROC applies (the kernel exempts root from it).
* **Linux, not root, with unprivileged user namespaces**: the same network and
  PID namespaces inside a new user namespace; files are accessed as the calling
  user, so file rules come from the audit hook only.
* **macOS, or Linux without namespaces**: rlimits, process-group kill, scrubbed
  environment and the audit hook only. Run hostile code in a container or VM if
  that is not enough.

Only Python code runs here: the guards live in the interpreter, so a command is
the argument list after `python` (a script in the directory, or `-m module`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO

from ..storage import EmovecError

NOBODY = 65534
_OUTPUT_CAP = 1 << 20

CODE_PACKAGE = "emovec.experiments"
CODE_DIR = "sandbox_code"


@functools.cache
def sandbox_code(name: str) -> str:
    """The text of one of the stdlib-only scripts shipped in `emovec/experiments/sandbox_code/` (package data).

    `prelude.py` runs in the child before the user's code (audit hook, then the script or module),
    `launcher.py` sets up namespaces, limits and privileges, `test_runner.py` is the coding tasks' test runner.
    """
    try:
        return resources.files(CODE_PACKAGE).joinpath(CODE_DIR).joinpath(name).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise EmovecError(f"sandbox script {name!r} is missing from {CODE_PACKAGE}/{CODE_DIR}; reinstall emovec") from None


@dataclass
class SandboxResult:
    """What a sandboxed run did. `killed_reason` is None for a normal exit."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    killed_reason: str | None
    duration: float
    protections: tuple[str, ...] = ()
    tampered: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if the code exited with status 0 within its limits."""
        return self.returncode == 0 and not self.timed_out and self.killed_reason is None


def digests(files: Mapping[str, str | bytes]) -> dict[str, str]:
    """SHA-256 of each file's content (str is hashed as UTF-8)."""
    return {name: hashlib.sha256(c.encode("utf-8") if isinstance(c, str) else c).hexdigest() for name, c in files.items()}


def tampered_files(directory: str | Path, expected: Mapping[str, str]) -> list[str]:
    """Names in `expected` (name -> SHA-256) whose file in `directory` is missing or changed."""
    out = []
    for name, digest in expected.items():
        p = Path(directory) / name
        try:
            ok = p.is_file() and not p.is_symlink() and hashlib.sha256(p.read_bytes()).hexdigest() == digest
        except OSError:
            ok = False
        if not ok:
            out.append(name)
    return sorted(out)


def _world_usable(path: str) -> bool:
    """True if user `nobody` can reach and execute `path` (every parent directory o+x, the file o+rx)."""
    p = Path(path).resolve()
    try:
        if (p.stat().st_mode & 0o005) != 0o005:
            return False
        return all(q.stat().st_mode & 0o001 for q in p.parents)
    except OSError:
        return False


def _interpreter(python: str | None, drop: bool) -> tuple[str, bool]:
    """The interpreter to run and whether privileges can be dropped with it."""
    if python is not None:
        return python, drop and _world_usable(python)
    if not drop:
        return sys.executable, False
    candidates = [sys.executable, getattr(sys, "_base_executable", sys.executable)]
    candidates += [shutil.which(n, path="/usr/bin:/usr/local/bin:/bin") or "" for n in
                   (f"python{sys.version_info.major}.{sys.version_info.minor}", "python3")]
    for c in candidates:
        if c and _world_usable(c):
            return os.path.realpath(c), True
    return sys.executable, False


def _write_files(root: Path, files: Mapping[str, str | bytes]) -> None:
    for name, content in files.items():
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise EmovecError(f"sandbox file name {name!r} must be a relative path inside the sandbox")
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            dest.write_text(content, encoding="utf-8")
        else:
            dest.write_bytes(content)


def _chown_tree(root: Path, uid: int) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chown(dirpath, uid, uid)
        for n in filenames:
            os.chown(os.path.join(dirpath, n), uid, uid)


def _remove_tree(root: Path) -> None:
    def fix(func: object, path: str, _exc: object) -> None:
        try:
            os.chmod(os.path.dirname(path), stat.S_IRWXU)
            os.chmod(path, stat.S_IRWXU)
        except OSError:
            pass
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)

    shutil.rmtree(root, onerror=fix)


def _read_capped(fh: IO[bytes]) -> str:
    fh.seek(0)
    data = fh.read(_OUTPUT_CAP + 1)
    text = data[:_OUTPUT_CAP].decode("utf-8", errors="replace")
    return text + ("\n[output truncated]" if len(data) > _OUTPUT_CAP else "")


def _signal_reason(sig: int) -> str:
    names: dict[int, str] = {signal.SIGXCPU: "cpu time limit", signal.SIGXFSZ: "file size limit",
                             signal.SIGSEGV: "crashed (SIGSEGV)", signal.SIGKILL: "killed (SIGKILL, likely the memory limit)"}
    return names.get(sig, f"killed by signal {signal.Signals(sig).name}")


def run_sandboxed(files: Mapping[str, str | bytes], command: str | Sequence[str], timeout_s: float = 10.0,
                  memory_mb: int = 512, max_procs: int = 16, max_file_mb: int = 16, max_open_files: int = 64,
                  protected: Iterable[str] | None = None, network: bool = False, namespaces: bool = True,
                  drop_privileges: bool = True, audit_hook: bool = True, python: str | None = None) -> SandboxResult:
    """Run Python code from `files` in a fresh temporary directory under every available guard.

    `files` maps relative names to contents; `command` is a script name in it
    (e.g. "test_solution.py") or the arguments after `python` (e.g.
    ["-m", "unittest", "-q", "test_solution"]). `protected` names the files whose
    tampering is reported in `SandboxResult.tampered` (default: every file given).
    `network=True` keeps the network (never needed for tests). `drop_privileges`
    runs as user `nobody` when the caller is root; `namespaces`, `drop_privileges`
    and `audit_hook` exist so tests can check each layer alone. The directory is deleted
    afterwards; nothing the code wrote survives.
    """
    if timeout_s <= 0 or memory_mb < 32:
        raise EmovecError(f"sandbox limits too small: timeout {timeout_s}s, memory {memory_mb} MB (need > 0 s, >= 32 MB)")
    args = [command] if isinstance(command, str) else list(command)
    if not args:
        raise EmovecError("sandbox command is empty: give a script name or python arguments")
    if args[0] == "-m" and len(args) < 2:
        raise EmovecError("sandbox command `-m` needs a module name")
    if args[0].startswith("-") and args[0] != "-m":
        raise EmovecError(f"sandbox command must be a script or -m MODULE, got {args[0]!r}")
    expected = digests({n: files[n] for n in (files if protected is None else protected)})
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    interpreter, drop = _interpreter(python, drop_privileges and is_root)
    root = Path(tempfile.mkdtemp(prefix="emovec-sandbox-"))
    box = root / "box"
    box.mkdir()
    t0 = time.monotonic()
    try:
        _write_files(box, files)
        if drop:
            _chown_tree(box, NOBODY)
            os.chmod(root, 0o711)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(box), "TMPDIR": str(box), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        nproc = _user_tasks() + max_procs if (not is_root and sys.platform.startswith("linux")) else max_procs
        prelude, launcher = sandbox_code("prelude.py"), sandbox_code("launcher.py")
        child_argv = [interpreter, "-I", "-S", "-B", "-c", prelude, str(box), "1" if audit_hook else "0", *args]
        notes_r, notes_w = os.pipe()
        cfg = {"argv": child_argv, "env": env, "network": network, "namespaces": namespaces,
               "uid": NOBODY if drop else None, "memory": memory_mb << 20, "cpu": int(timeout_s) + 2,
               "fsize": max_file_mb << 20, "nofile": max_open_files, "nproc": nproc, "notes_fd": notes_w}
        with tempfile.TemporaryFile(dir=root) as out, tempfile.TemporaryFile(dir=root) as err:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", launcher, json.dumps(cfg)], cwd=box, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                                    pass_fds=(notes_w,))
            os.close(notes_w)
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)
                proc.wait()
            _kill_group(proc.pid)  # stragglers that stayed in the group
            with os.fdopen(notes_r, "rb") as fh:
                raw_notes = fh.read()
            stdout, stderr = _read_capped(out), _read_capped(err)
        duration = time.monotonic() - t0
        try:
            notes = json.loads(raw_notes or b"{}")
        except ValueError:
            notes = {}
        layers = list(notes.get("layers", []))
        if timed_out and notes.get("init_pid"):
            _wait_gone(int(notes["init_pid"]))
        layers = ["process-group", "rlimits", "clean-env", *(["audit-hook"] if audit_hook else []), *layers]
        rc = proc.returncode
        reason = None
        if timed_out:
            reason = "timeout"
        elif rc is not None and rc < 0:
            reason = _signal_reason(-rc)
        elif "MemoryError" in (stderr.strip().splitlines() or [""])[-1]:
            reason = "memory limit"
        return SandboxResult(returncode=None if timed_out else rc, stdout=stdout, stderr=stderr, timed_out=timed_out,
                             killed_reason=reason, duration=duration, protections=tuple(layers),
                             tampered=tampered_files(box, expected))
    finally:
        _remove_tree(root)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pid: int, limit_s: float = 5.0) -> None:
    """Wait until a killed PID-namespace init has exited (a zombie or gone): the kernel has then killed and
    reaped every process of its namespace, so nothing the code started outlives the call."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return
        if fields[0] in ("Z", "X"):
            return
        time.sleep(0.01)


def _user_tasks() -> int:
    """Tasks (processes and threads) the current user owns: RLIMIT_NPROC counts them all."""
    uid, n = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    n += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return n
