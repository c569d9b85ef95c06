"""emovec test runner: run test_solution's tests one by one, print their outcomes as one JSON line.

Runs inside the sandbox (stdlib only), as a file of the sandbox directory, started by
`coding_tasks.check_solution`. argv: nonce, per-test time limit (s), total budget (s),
JSON list of the `time` functions whose replacement is reported.
"""

import builtins
import datetime
import importlib
import json
import math
import os
import random
import re
import signal
import sys
import time
import traceback
import types
import unittest
import unittest.case
import unittest.loader
import unittest.result
import unittest.suite

_START, _clock, _BOX = time.monotonic(), time.monotonic, os.getcwd() + "/"
_write, _dumps, _exit, _ModuleType = os.write, json.dumps, os._exit, types.ModuleType
_MODULES = {"time": time, "unittest": unittest, "random": random, "math": math, "datetime": datetime, "re": re,
            "sys": sys, "os": os, "json": json}
_NONCE, _LIMIT, _BUDGET = "", 0.0, 0.0  # set from argv when run
_TIMERS: tuple[str, ...] = ()
_ExcInfo = tuple[type[BaseException], BaseException, object] | tuple[None, None, None]


class _Timeout(Exception):
    pass


def _test_line(tb: object) -> str:
    """The line of the test file where a test failed (as a developer's traceback shows it), then " -> "."""
    try:
        frames = [f for f in traceback.extract_tb(tb) if f.filename.endswith("test_solution.py") and f.line]  # type: ignore[arg-type]
    except Exception:  # a traceback a solution tampered with is not worth failing the report for
        return ""
    return str(frames[-1].line).strip()[:200] + " -> " if frames else ""


class _Result(unittest.TestResult):
    def __init__(self) -> None:
        super().__init__()
        self.outcomes: dict[str, str] = {}
        self.details: dict[str, str] = {}

    def _note(self, test: unittest.TestCase, outcome: str, err: _ExcInfo | None = None) -> None:
        name = getattr(test, "_testMethodName", str(test))
        if self.outcomes.get(name) in ("fail", "error") and outcome == "pass":
            return
        self.outcomes[name] = outcome
        if err is not None:
            lines = traceback.format_exception_only(err[0], err[1])
            message = "".join(lines).strip().replace(_BOX, "")[-400:]
            self.details[name] = _test_line(err[2]) + message

    def addSuccess(self, test: unittest.TestCase) -> None:
        self._note(test, "pass")

    def addFailure(self, test: unittest.TestCase, err: _ExcInfo) -> None:
        self._note(test, "fail", err)

    def addError(self, test: unittest.TestCase, err: _ExcInfo) -> None:
        self._note(test, "error", err)

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        self._note(test, "skip")
        self.details[test._testMethodName] = "skipped: " + str(reason)[:200]

    def addExpectedFailure(self, test: unittest.TestCase, err: _ExcInfo) -> None:
        self._note(test, "pass")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        self._note(test, "fail")

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase, err: _ExcInfo | None) -> None:
        if err is not None and err[0] is not None:
            self._note(test, "fail" if issubclass(err[0], test.failureException) else "error", err)


def _snapshot() -> dict[str, object]:
    snap: dict[str, object] = {}
    for n in _TIMERS:
        if hasattr(time, n):
            snap["time." + n] = getattr(time, n)
    for label, obj in (("unittest", unittest), ("unittest.case", unittest.case), ("builtins", builtins)):
        for k, v in list(vars(obj).items()):
            if callable(v) and not k.startswith("__"):
                snap[label + "." + k] = v
    for cls in (unittest.TestCase, unittest.TestResult, unittest.TestSuite, unittest.TestLoader, _Result,
                vars(unittest.case)["_Outcome"]):
        for k, v in list(vars(cls).items()):
            if callable(v) or isinstance(v, (staticmethod, classmethod, property)):
                snap[cls.__qualname__ + "." + k] = v
    for k in _MODULES:
        snap["sys.modules." + k] = sys.modules.get(k)
    return snap


def _changed(before: dict[str, object], after: dict[str, object]) -> list[str]:
    out = [k for k in before if after.get(k, None) is not before[k]]
    out += [k for k in after if k not in before and (k.startswith("time.") or "." in k and k.split(".")[0] in
            ("TestCase", "TestResult", "TestSuite", "TestLoader", "_Result", "_Outcome"))]
    return sorted(set(out))


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout(f"test took longer than {_LIMIT:g} s")


def _report(doc: dict[str, object]) -> None:
    _write(1, (_NONCE + _dumps(doc) + "\n").encode())
    _exit(0)


def _main() -> None:
    before = _snapshot()
    patched: list[str] = []
    try:
        module = importlib.import_module("test_solution")
    except BaseException as exc:
        _report({"import_error": "".join(traceback.format_exception_only(type(exc), exc)).strip().replace(_BOX, "")[-400:],
                 "outcomes": {}, "details": {}, "patched": _changed(before, _snapshot())})
    result = _Result()
    tests: list[unittest.TestCase] = []

    def walk(suite: unittest.TestSuite) -> None:
        for t in suite:
            if isinstance(t, unittest.TestCase):
                tests.append(t)
            else:
                walk(t)

    walk(unittest.TestLoader().loadTestsFromModule(module))
    signal.signal(signal.SIGALRM, _alarm)
    for test in tests:
        fn = getattr(type(test), test._testMethodName, None)
        code = getattr(fn, "__code__", None)
        if code is None or os.path.basename(code.co_filename) != "test_solution.py":
            patched.append("test-method:" + test._testMethodName)
        left = _BUDGET - (_clock() - _START)
        if left <= 0.05:
            result._note(test, "error")
            result.details[test._testMethodName] = "not run: the test run's time budget was used up"
            continue
        signal.setitimer(signal.ITIMER_REAL, min(_LIMIT, left))
        try:
            test(result)
        except BaseException as exc:
            result._note(test, "error", (type(exc), exc, None))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    for k, v in vars(module).items():
        if k in _MODULES and v is not _MODULES[k]:
            patched.append("test-global:" + k)
    _report({"outcomes": result.outcomes, "details": result.details,
             "patched": sorted(set(patched + _changed(before, _snapshot())))})


if __name__ == "__main__":
    _NONCE, _LIMIT, _BUDGET, _TIMERS = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), tuple(json.loads(sys.argv[4]))
    _main()
