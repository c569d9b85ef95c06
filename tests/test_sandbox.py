"""The sandbox for model-written code: hostile snippets never escape, hang the run or hurt the test process.

Each hostile snippet runs with every guard on; the `_kernel_only` variants turn the
audit hook off to check that the kernel layers (namespaces, user nobody, rlimits)
hold on their own where they are available (Linux as root or with user namespaces).
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from emovec.experiments.sandbox import run_sandboxed
from emovec.storage import EmovecError

SOLUTION = "def add(a, b):\n    return a + b\n"
TESTS = ("import unittest\nfrom solution import add\n\n\nclass T(unittest.TestCase):\n"
         "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n")
UNITTEST = ["-m", "unittest", "-q", "test_solution"]


def _run(code: str, **kw):
    kw.setdefault("timeout_s", 3.0)
    kw.setdefault("memory_mb", 256)
    return run_sandboxed({"main.py": code}, "main.py", **kw)


@pytest.fixture(scope="module")
def layers() -> tuple[str, ...]:
    return _run("print('ok')").protections


def _needs_kernel_layers(layers: tuple[str, ...]) -> None:
    if "pid-namespace" not in layers:
        pytest.skip(f"no PID/network namespaces on this machine (layers: {', '.join(layers)})")


def _no_survivors(marker: str) -> None:
    """No process whose command line carries `marker` is left running."""
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    left.append(entry.name)
            except OSError:
                continue
    assert not left, f"sandbox processes survived: {left}"


def test_benign_tests_pass_and_fail_honestly():
    res = run_sandboxed({"solution.py": SOLUTION, "test_solution.py": TESTS}, UNITTEST, timeout_s=8)
    assert res.ok, res.stderr
    assert "Ran 1 test" in res.stderr and res.tampered == []
    wrong = run_sandboxed({"solution.py": SOLUTION.replace("a + b", "a - b"), "test_solution.py": TESTS}, UNITTEST,
                          timeout_s=8)
    assert wrong.returncode == 1 and not wrong.ok and "FAILED" in wrong.stderr


def test_infinite_loop_times_out():
    res = _run("while True:\n    pass\n", timeout_s=1.5)
    assert res.timed_out and res.killed_reason == "timeout" and res.returncode is None
    assert res.duration < 4


def test_fork_bomb_blocked():
    res = _run("import os\nwhile True:\n    os.fork()\n")
    assert not res.ok and "os.fork is not allowed" in res.stderr
    res = _run("import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])\n")
    assert not res.ok and "PermissionError" in res.stderr
    res = _run("import os\nos.system('echo pwned')\n")
    assert "pwned" not in res.stdout and not res.ok


def test_fork_bomb_contained_by_kernel_only(layers):
    _needs_kernel_layers(layers)
    marker = f"forkbomb{uuid.uuid4().hex}"
    code = (f"# {marker}\nimport os, time\nfor _ in range(500):\n    try:\n        os.fork()\n"
            "    except OSError:\n        pass\ntime.sleep(30)\n")
    res = run_sandboxed({"main.py": code}, ["main.py", marker], timeout_s=2, memory_mb=128, max_procs=8,
                        audit_hook=False)
    assert res.timed_out
    _no_survivors(marker)


def test_memory_bomb_killed():
    res = _run("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n", memory_mb=128)
    assert not res.ok and not res.timed_out
    assert res.killed_reason is not None and ("memory" in res.killed_reason or "SIGKILL" in res.killed_reason)
    res = _run("x = bytearray(8 * 1024**3)\n", memory_mb=128)
    assert res.killed_reason == "memory limit"


def test_socket_connect_refused(layers):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    code = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "s.sendall(b'stolen')\nprint('connected')\n")
    try:
        res = _run(code)
        assert "connected" not in res.stdout and not res.ok
        if "pid-namespace" in layers:
            bare = _run(code, audit_hook=False)
            assert "connected" not in bare.stdout and not bare.ok
            assert "unreachable" in bare.stderr or "refused" in bare.stderr
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


def test_writing_outside_its_directory():
    target = Path(f"/tmp/emovec-escape-{uuid.uuid4().hex}")
    attempts = [
        f"open({str(target)!r}, 'w').write('x')",
        f"import os\nos.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)",
        f"import os\nos.makedirs({str(target)!r})",
        f"import os\nopen('../../{target.name}', 'w').write('x')",
        f"import os\nos.symlink('/tmp', 'link')\nopen('link/{target.name}', 'w').write('x')",
        f"import shutil\nshutil.copy('main.py', {str(target)!r})",
    ]
    for code in attempts:
        res = _run(code)
        assert not res.ok and "PermissionError" in res.stderr, (code, res.stderr)
        assert not target.exists(), code
    inside = _run("open('notes.txt', 'w').write('fine')\nimport os\nos.makedirs('a/b')\nprint(os.getcwd())\n")
    assert inside.ok, inside.stderr
    assert not Path(inside.stdout.strip()).exists()  # the sandbox directory is gone afterwards


def test_reading_the_users_home(layers):
    real_home = os.path.expanduser("~")
    res = _run("import os\nprint(os.path.expanduser('~'))\nprint(os.listdir(os.path.expanduser('~')))\n")
    assert res.ok and real_home not in res.stdout  # HOME is the sandbox directory
    for code in [f"print(os.listdir({real_home!r}))", f"print(open({real_home + '/.bashrc'!r}).read())",
                 "print(open('/etc/passwd').read())", "print(open('/proc/1/environ', 'rb').read())",
                 "print(os.listdir('/'))"]:
        res = _run("import os\n" + code)
        assert not res.ok and "outside the sandbox" in res.stderr, (code, res.stderr)
    if "nobody" in layers and os.stat(real_home).st_mode & 0o005 == 0:
        bare = _run(f"import os\nprint(os.listdir({real_home!r}))", audit_hook=False)
        assert not bare.ok and "Permission denied" in bare.stderr


def test_environment_scrubbed(monkeypatch):
    monkeypatch.setenv("EMOVEC_TEST_SECRET_TOKEN", "hunter2")
    res = _run("import os\nprint(sorted(os.environ))\nprint(os.environ.get('EMOVEC_TEST_SECRET_TOKEN'))\n")
    assert res.ok and "hunter2" not in res.stdout
    assert eval(res.stdout.splitlines()[0]) == ["HOME", "LANG", "LC_ALL", "PATH", "TMPDIR"]


def test_deleting_the_tests_is_detected_and_undone():
    files = {"solution.py": SOLUTION, "test_solution.py": TESTS}
    hack = ("import os\nos.remove('test_solution.py')\nopen('solution.py', 'w').write('add = None')\n"
            "open('extra.py', 'w').write('')\n")
    res = run_sandboxed(dict(files, **{"hack.py": hack}), "hack.py", timeout_s=5,
                        protected=["solution.py", "test_solution.py"])
    assert res.ok and res.tampered == ["solution.py", "test_solution.py"]
    again = run_sandboxed(files, UNITTEST, timeout_s=8)  # a fresh directory with pristine copies
    assert again.ok and again.tampered == []


def test_killing_its_parent(layers):
    me = os.getpid()
    for code in ["import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
                 f"import os, signal\nos.kill({me}, signal.SIGKILL)", "import os, signal\nos.killpg(0, signal.SIGKILL)",
                 "import os, signal\nos.kill(-1, signal.SIGKILL)"]:
        res = _run(code)
        assert not res.ok and "not allowed" in res.stderr, (code, res.stderr)
    if "pid-namespace" in layers:
        bare = _run(f"import os, signal\nos.kill({me}, signal.SIGKILL)", audit_hook=False)
        assert "ProcessLookupError" in bare.stderr or "PermissionError" in bare.stderr
    assert os.getpid() == me  # still alive


def test_escape_hatches_closed():
    for code in ["import ctypes", "import gc\nprint(gc.get_objects()[:1])",
                 "import _posixsubprocess"]:
        res = _run(code)
        assert not res.ok and "not allowed" in res.stderr, (code, res.stderr)


def test_output_flood_bounded():
    res = _run("while True:\n    print('x' * 1000)\n", timeout_s=3, max_file_mb=2)
    assert not res.ok and len(res.stdout) <= (1 << 20) + 100


def test_bad_arguments():
    with pytest.raises(EmovecError, match="relative path"):
        run_sandboxed({"../evil.py": "x"}, "evil.py")
    with pytest.raises(EmovecError, match="script or -m"):
        run_sandboxed({"a.py": ""}, ["-c", "print(1)"])
    with pytest.raises(EmovecError, match="limits too small"):
        run_sandboxed({"a.py": ""}, "a.py", timeout_s=0)


@pytest.mark.parametrize("name", ["prelude.py", "launcher.py", "test_runner.py"])
def test_sandbox_scripts_are_real_stdlib_only_files(name):
    """The code run in the sandbox ships as package data: it compiles, imports without side effects (its work
    sits behind `if __name__ == "__main__"`), is what `sandbox_code` hands out, and imports nothing outside the stdlib."""
    import ast
    import importlib.util
    import sys

    from emovec.experiments import sandbox

    path = Path(sandbox.__file__).parent / "sandbox_code" / name
    text = path.read_text(encoding="utf-8")
    assert sandbox.sandbox_code(name) == text
    tree = ast.parse(text)
    compile(tree, str(path), "exec")
    imported = {a.name.partition(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.partition(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names
    assert "%(" not in text  # no string substitution: values arrive as argv
    spec = importlib.util.spec_from_file_location(f"_emovec_sandbox_{name[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # no side effects when not run as __main__
    with pytest.raises(EmovecError, match="missing"):
        sandbox.sandbox_code("nope.py")
