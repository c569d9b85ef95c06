"""Killing a subprocess with SIGKILL at a point detected from its files, as the crash tests do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from emovec.storage import read_jsonl


def start(driver: str, *args: str) -> subprocess.Popen:
    """Run `driver` (Python source) in a fresh interpreter, in its own process group, without progress bars."""
    env = dict(os.environ, TQDM_DISABLE="1")
    return subprocess.Popen([sys.executable, "-c", driver, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 180) -> bool:
    """SIGKILL `proc` (and its group) as soon as `ready()` holds; False if it finished first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    raise AssertionError("the kill point was never reached")


def finish(proc: subprocess.Popen, timeout: float = 600) -> None:
    """Wait for `proc` to end; it must succeed and print "done"."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and b"done" in out, err.decode()[-2000:]


def count_lines(path: Path) -> int:
    """Complete lines in a JSONL file (0 if it does not exist yet)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def unique_rows(path: Path) -> list[dict]:
    """The rows of a JSONL file, asserting that no `id`/`key` appears twice."""
    rows = read_jsonl(path)
    keys = [r.get("key", r.get("id")) for r in rows]
    assert len(keys) == len(set(keys)), f"duplicated rows in {path}"
    return rows


def tear(path: Path, row: dict) -> None:
    """Append half of a JSON line, as a writer killed mid-append leaves behind."""
    line = json.dumps(row)
    with open(path, "ab") as fh:
        fh.write(line[: len(line) // 2].encode())
