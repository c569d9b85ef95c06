"""Sandbox launcher: namespaces, limits and privileges, then exec of the child interpreter.

Runs as the caller (trusted) in the new session, as `python -I -S -c <this text> <json config>`.
Exits with the child's status (re-raising its signal). Stdlib only.
"""

import ctypes
import ctypes.util
import json
import os
import resource
import signal
import sys
from typing import Any

CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def main(cfg: dict[str, Any]) -> None:
    notes: list[str] = []
    libc = _libc()

    def unshare(flags: int) -> bool:
        return libc is not None and libc.unshare(flags) == 0

    ns = False
    if libc is not None and cfg["namespaces"]:
        base = CLONE_NEWPID | (0 if cfg["network"] else CLONE_NEWNET)
        if os.geteuid() == 0 and unshare(base):
            ns = True
        elif unshare(CLONE_NEWUSER | base):
            ns = True
            notes.append("user-namespace")
        if ns:
            notes += ["pid-namespace"] + ([] if cfg["network"] else ["network-namespace"])

    def limits() -> None:
        lim = [(resource.RLIMIT_AS, cfg["memory"]), (resource.RLIMIT_CPU, cfg["cpu"]), (resource.RLIMIT_FSIZE, cfg["fsize"]),
               (resource.RLIMIT_NOFILE, cfg["nofile"]), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, cfg["nproc"])]
        for what, value in lim:
            if value is None:
                continue
            try:
                resource.setrlimit(what, (value, value))
            except (ValueError, OSError):
                pass

    def drop() -> None:
        if cfg["uid"] is None:
            return
        os.setgroups([])
        os.setresgid(cfg["uid"], cfg["uid"], cfg["uid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])

    def child() -> None:
        if libc is not None:
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the launcher
        limits()
        drop()
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])

    notes += ["nobody"] if cfg["uid"] is not None else []

    def report(pid: int | None) -> None:
        os.write(cfg["notes_fd"], json.dumps({"layers": notes, "init_pid": pid}).encode())
        os.close(cfg["notes_fd"])

    if not ns:
        report(None)
        child()
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(127)
    report(pid)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
