"""Crash safety: SIGKILL the pipeline at several points, resume, and get what an uninterrupted run gets.

The pipeline runs in a subprocess (what `emovec run` / `emovec stories` call) and
is killed with SIGKILL, not a polite signal, at points detected by watching its
run directory: after the first story chunk is on disk (mid generation), after
the first activation shard (mid extraction), after vectors.safetensors (mid
recognition). A stale half-written temporary file, as a writer killed inside
`atomic_path` leaves behind, is planted too. Each run is then resumed to the end
and compared with an uninterrupted run of the same seed made in this process:
stories identical (same ids once each, same texts) and vectors equal to 1e-5.

Generation is kept tiny (8 new tokens: every story is then "too short" and
filtered, which does not matter for resuming the corpus); the extraction part
imports the hand-written test stories instead of generating them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch
from crash_helpers import finish, kill_when, start, unique_rows

from emovec.pipeline import run, stage_stories
from emovec.rundir import make_config, open_run
from emovec.vectors import EmotionVectors

DATA = Path(__file__).parent / "data"
EMOTIONS = ["happy", "sad"]
PER_EMOTION = 4  # imported hand-written stories per emotion; with 4 neutral texts, 12 forward passes per extraction
TOLERANCE = 1e-5

_DRIVER = """
import json, sys
from emovec.pipeline import run, stage_stories
from emovec.rundir import make_config, open_run, run_model
run_dir, stage, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cfg = make_config(**settings)
if stage == "stories":
    cfg = open_run(run_dir, cfg)
    stage_stories(run_dir, cfg, run_model(cfg), progress=False)
else:
    run(run_dir, cfg, progress=False)
print("done")
"""

STORY_SETTINGS = {"emotions": ["happy", "sad"], "per_emotion": 10, "n_neutral": 0, "max_new_tokens": 8,
                  "gen_batch_size": 16, "seed": 7}  # 20 prompts: two generation chunks (16 + 4)


def _extract_settings(tmp_path: Path) -> dict:
    """Settings of the extraction runs, importing a few of the hand-written test stories."""
    rows = [json.loads(line) for line in (DATA / "stories_small.jsonl").read_text().splitlines() if line.strip()]
    picked = [r for e in EMOTIONS for r in [r for r in rows if r["emotion"] == e][:PER_EMOTION]]
    src = tmp_path / "stories.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in picked))
    return {"emotions": EMOTIONS, "import_stories": str(src), "n_neutral": 0, "folds": 2, "keep_layers": [10, 20],
            "topic_adjust": False, "seed": 7}


def _start(run_dir: Path, stage: str, settings: dict) -> subprocess.Popen:
    return start(_DRIVER, str(run_dir), stage, json.dumps(settings))


def _finish(run_dir: Path, stage: str, settings: dict) -> None:
    finish(_start(run_dir, stage, settings), timeout=300)


def _seed_neutral(run_dir: Path) -> None:
    from emovec.storage import append_jsonl

    rows = [json.loads(line) for line in (DATA / "neutral_small.jsonl").read_text().splitlines() if line.strip()][:4]
    append_jsonl(run_dir / "neutral.jsonl", [{"id": f"n{i}", "job": f"n{i}", "text": r["text"], "kept": True}
                                             for i, r in enumerate(rows)])


def test_killed_story_generation_resumes_identically(lm, tmp_path):
    ref = tmp_path / "ref"
    cfg = open_run(ref, make_config(**STORY_SETTINGS))
    stage_stories(ref, cfg, lm, progress=False)
    expected = unique_rows(ref / "stories.jsonl")
    assert len(expected) == 20

    crashed = tmp_path / "crashed"
    proc = _start(crashed, "stories", STORY_SETTINGS)
    killed = kill_when(proc, lambda: (crashed / "stories.jsonl").exists())
    if killed:
        partial = unique_rows(crashed / "stories.jsonl")
        assert len(partial) < 20, "killed too late to test a resume"
        with open(crashed / "stories.jsonl", "ab") as fh:
            fh.write(b'{"id": "happy|9#0", "job": "happy|9", "text": "torn wri')  # a torn tail as from a kill mid-append
    _finish(crashed, "stories", STORY_SETTINGS)
    got = unique_rows(crashed / "stories.jsonl")
    assert [r["id"] for r in got] == [r["id"] for r in expected]  # nothing lost, nothing twice, same order
    assert [r["text"] for r in got] == [r["text"] for r in expected]  # per-chunk seeds: same stories


def test_killed_extraction_resumes_to_the_same_vectors(lm, tmp_path):
    settings = _extract_settings(tmp_path)
    ref = tmp_path / "ref"
    open_run(ref, make_config(**settings))
    _seed_neutral(ref)
    run(ref, make_config(**settings), lm=lm, progress=False)
    expected = EmotionVectors.load(ref / "vectors.safetensors")

    crashed = tmp_path / "crashed"
    open_run(crashed, make_config(**settings))
    _seed_neutral(crashed)
    acts = crashed / "activations"
    kill_points = [
        ("mid extraction", lambda: (acts / "stories-00000.safetensors").exists()),
        ("after vectors, mid recognition", lambda: (crashed / "vectors.safetensors").exists()),
    ]
    for name, ready in kill_points:
        proc = _start(crashed, "run", settings)
        assert kill_when(proc, ready), f"the run finished before the kill point {name!r}"
        assert not (crashed / "summary.json").exists()
    # a writer killed inside atomic_path leaves a half-written temporary file: it must never be taken for the real one
    good = (crashed / "vectors.safetensors").read_bytes()
    (crashed / "vectors.safetensors").unlink()
    (crashed / ".vectors.safetensors.dead1234.tmp").write_bytes(good[: len(good) // 3])
    (acts / ".neutral-00000.safetensors.dead5678.tmp").write_bytes(b"\x00" * 100)
    _finish(crashed, "run", settings)

    got = EmotionVectors.load(crashed / "vectors.safetensors")
    assert got.emotions == expected.emotions and got.layers == expected.layers
    for key in ("raw", "denoised", "grand_mean", "mean_norm"):
        assert torch.allclose(getattr(got, key), getattr(expected, key), atol=TOLERANCE, rtol=0), key
    assert got.components.keys() == expected.components.keys()
    for layer, comps in expected.components.items():
        assert torch.allclose(got.components[layer], comps, atol=TOLERANCE, rtol=0)
    assert unique_rows(crashed / "stories.jsonl") == unique_rows(ref / "stories.jsonl")
    summary = json.loads((crashed / "summary.json").read_text())
    assert summary["recognition"]["n_stories"] == len(EMOTIONS) * PER_EMOTION

