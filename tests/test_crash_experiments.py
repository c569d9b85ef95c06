"""Crash safety of the behavioural experiments: SIGKILL each one at several points, resume, get the same samples.

Each experiment runs in a subprocess on a copy of the small test run and is killed with
SIGKILL twice: once after its first chunk of samples is on disk and once about half-way
through (counted in samples.jsonl lines). A torn half line, as a kill inside an append
leaves behind, is planted after the first kill. The run is then finished and its samples
compared with an uninterrupted run made in this process: the same keys once each, in the
same order, the same replies, and the same readouts (to 1e-4).
"""

from __future__ import annotations

import json
import shutil

import pytest
from crash_helpers import count_lines, finish, kill_when, start, tear, unique_rows

from emovec.experiments.blackmail import run_blackmail
from emovec.experiments.hacking import run_reward_hacking
from emovec.experiments.preferences import run_preferences

_DRIVER = """
import json, sys
from emovec.experiments.blackmail import run_blackmail
from emovec.experiments.hacking import run_reward_hacking
from emovec.experiments.preferences import run_preferences
run = {"blackmail": run_blackmail, "reward-hacking": run_reward_hacking, "preferences": run_preferences}[sys.argv[1]]
run(sys.argv[2], **json.loads(sys.argv[3]))
print("done")
"""

# name -> (function, settings, samples expected); every setting small enough for several chunks in a few seconds each
CASES = {
    "blackmail": (run_blackmail, dict(n=2, emotions="desperate", strengths="0.1", max_new_tokens=12, batch_size=1,
                                      seed=5, guard="calm=0.1", guard_alert="desperate=0.5", progress=False), 6),
    "reward-hacking": (run_reward_hacking, dict(n=2, attempts=2, tasks="next-prime,median", emotions="calm",
                                                strengths="0.05", max_new_tokens=12, batch_size=1, seed=5), None),
    "preferences": (run_preferences, dict(emotions="happy", per_group=1, n_vectors=1, steer_prompts=4, n_boot=10,
                                          batch_size=4, chunk=8, seed=5, progress=False), 56 + 4),
}
FLOAT_TOLERANCE = 1e-4
TIMINGS = {"chunk_seconds", "gen_seconds", "duration"}  # wall-clock fields, the only ones allowed to differ


def _same(a: object, b: object, path: str = "") -> None:
    """Equal JSON values, floats to FLOAT_TOLERANCE (readouts are recomputed in another process)."""
    if isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, abs=FLOAT_TOLERANCE), path
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("name", sorted(CASES))
def test_killed_experiment_resumes_to_the_same_samples(name, small_run, lm, small_vectors, tmp_path):
    run, settings, expected_n = CASES[name]
    ref_dir, crashed = tmp_path / "ref", tmp_path / "crashed"
    for d in (ref_dir, crashed):
        shutil.copytree(small_run, d)
    extra = {"vectors": small_vectors} if name == "blackmail" else {}
    run(ref_dir, **settings, lm=lm, **extra)
    folder = "experiments/" + name
    expected = unique_rows(ref_dir / folder / "samples.jsonl")
    if expected_n is not None:
        assert len(expected) == expected_n
    samples = crashed / folder / "samples.jsonl"
    total = len(expected)
    assert total >= 4, "too few samples to kill the run in between"

    for point, at_least in (("after the first chunk", 1), ("half-way", max(2, total // 2))):
        proc = start(_DRIVER, name, str(crashed), json.dumps(settings))
        assert kill_when(proc, lambda n=at_least: count_lines(samples) >= n), f"{name} finished before {point}"
        partial = unique_rows(samples)
        assert len(partial) < total, f"{name}: killed {point} too late to test a resume"
        assert not (crashed / folder / "summary.json").exists()
        if point == "after the first chunk":
            tear(samples, expected[len(partial)])
    finish(start(_DRIVER, name, str(crashed), json.dumps(settings)))

    got = unique_rows(samples)
    assert [r["key"] for r in got] == [r["key"] for r in expected]  # nothing lost, nothing twice, same order
    for want, have in zip(expected, got):
        _same({k: v for k, v in want.items() if k not in TIMINGS}, {k: v for k, v in have.items() if k not in TIMINGS},
              want["key"])
    summary = json.loads((crashed / folder / "summary.json").read_text())
    assert json.loads((ref_dir / folder / "summary.json").read_text()).keys() == summary.keys()
