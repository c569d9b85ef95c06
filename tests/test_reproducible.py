"""Reproducible runs: what a run records, what a resume may not change, and the faults a run survives.

A run decides its writer dtype once (never "auto" on disk) and records library versions,
the CPU class and the model's files; a resume under other conditions is refused unless
allowed, and the allowance is recorded. The same command gives the same stories and
vectors with another process loading the CPU. A second process on the same run, a full
disk and a read-only run directory each end in one line, and nothing is lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from emovec.pipeline import prepare
from emovec.provenance import cached_probe, run_lock
from emovec.rundir import RUN_FILE, make_config, open_run
from emovec.storage import EmovecError, read_json, read_jsonl
from emovec.vectors import EmotionVectors

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
STORIES = {"emotions": ["happy", "sad"], "per_emotion": 10, "n_neutral": 0, "max_new_tokens": 8,
           "gen_batch_size": 4, "seed": 11}  # 20 prompts in five chunks of 4


def _cli(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "emovec.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _story_args(run_dir: Path, settings: dict = STORIES) -> list[str]:
    return ["stories", str(run_dir), "--emotions", ",".join(settings["emotions"]), "--per-emotion",
            str(settings["per_emotion"]), "--n-neutral", str(settings["n_neutral"]), "--gen-batch-size",
            str(settings["gen_batch_size"]), "--seed", str(settings["seed"]), "--max-new-tokens",
            str(settings["max_new_tokens"]), "--no-prime"]


def _import_settings(tmp_path: Path) -> dict:
    rows = [json.loads(line) for line in (DATA / "stories_small.jsonl").read_text().splitlines() if line.strip()]
    src = tmp_path / "import.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows if r["emotion"] in ("happy", "sad")))
    return {"emotions": ["happy", "sad"], "import_stories": str(src), "n_neutral": 0, "folds": 2, "keep_layers": [20],
            "topic_adjust": False}


def test_a_new_run_records_what_decides_its_numbers(lm, tmp_path):
    cfg, _ = prepare(tmp_path / "run", make_config(**_import_settings(tmp_path)), lm)
    stored = read_json(tmp_path / "run" / RUN_FILE)
    assert stored["gen_dtype"] in ("float32", "bfloat16")  # resolved once: never "auto" on disk
    prov = stored["provenance"]
    assert {"torch", "transformers", "emovec", "python"} <= set(prov["versions"])
    assert prov["cpu"]["model"] and isinstance(prov["cpu"]["isa"], list)
    assert isinstance(prov["model_files"], str) and len(prov["model_files"]) == 32
    assert prov["model_config"] == lm.fingerprint and "auto" in prov["writer_dtype_reason"]
    assert stored["gen_batch_size"] == cfg.gen_batch_size and stored["extract_batch_size"] == cfg.extract_batch_size
    assert stored["allowed_drift"] == []


def test_the_models_auto_dtype_is_decided_once_by_the_writers_probe_and_kept_on_resume(lm, tmp_path):
    """`--dtype auto` (the quick preset's): bfloat16 where this CPU runs bf16 matmuls natively, else float32; the run
    loads the model in it, records the concrete name and why, and a resume asking for "auto" again gets the same."""
    from emovec.generation import BF16_MIN_SPEEDUP, bf16_speedup

    want = "bfloat16" if bf16_speedup(lm) >= BF16_MIN_SPEEDUP else "float32"
    assert make_config("quick").dtype == "auto"
    cfg, run_lm = prepare(tmp_path / "run", make_config(**_import_settings(tmp_path), dtype="auto"), lm)
    stored = read_json(tmp_path / "run" / RUN_FILE)
    assert cfg.dtype == stored["dtype"] == want and str(run_lm.dtype) == f"torch.{want}"
    assert "auto" in stored["provenance"]["model_dtype_reason"]
    again, _ = prepare(tmp_path / "run", make_config(**_import_settings(tmp_path), dtype="auto"), run_lm)
    assert again.dtype == want
    with pytest.raises(EmovecError, match="was started with dtype"):
        prepare(tmp_path / "run", make_config(**_import_settings(tmp_path),
                                              dtype="float32" if want == "bfloat16" else "bfloat16"), lm)


def test_a_resume_under_other_versions_is_refused_unless_allowed(lm, tmp_path):
    run_dir = tmp_path / "run"
    settings = _import_settings(tmp_path)
    prepare(run_dir, make_config(**settings), lm)
    stored = read_json(run_dir / RUN_FILE)
    stored["provenance"]["versions"]["torch"] = "1.0.0"
    (run_dir / RUN_FILE).write_text(json.dumps(stored))
    with pytest.raises(EmovecError, match=r"other conditions \(versions: .*torch=1\.0\.0.*--allow-drift"):
        prepare(run_dir, make_config(**settings), lm)
    cfg, _ = prepare(run_dir, make_config(**settings), lm, allow_drift=True)
    again = read_json(run_dir / RUN_FILE)
    assert len(again["allowed_drift"]) == 1 and cfg.allowed_drift == again["allowed_drift"]
    assert again["allowed_drift"][0]["differences"]["versions"]["recorded"]["torch"] == "1.0.0"
    assert again["provenance"]["versions"]["torch"] == "1.0.0"  # the record of the first start is kept


def test_a_resume_with_another_batch_size_or_dtype_is_refused(lm, tmp_path):
    run_dir = tmp_path / "run"
    settings = _import_settings(tmp_path)
    cfg, _ = prepare(run_dir, make_config(**settings), lm)
    other = "float32" if cfg.gen_dtype == "bfloat16" else "bfloat16"
    assert cfg.backend == "fast"  # "auto" on a CPU, decided once and recorded
    for change in ({"extract_batch_size": 3}, {"gen_batch_size": 7}, {"gen_dtype": other}, {"backend": "hf"}):
        with pytest.raises(EmovecError, match=f"{next(iter(change))}="):
            open_run(run_dir, make_config(**settings, **change), write=False)
    resumed = open_run(run_dir, make_config(**settings, gen_dtype="auto", backend="auto"), write=False)
    assert (resumed.gen_dtype, resumed.backend) == (cfg.gen_dtype, "fast")


def test_the_dtype_probe_is_measured_once_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path))
    calls = []
    first, measured = cached_probe("test-probe", lambda: calls.append(1) or 1.7)
    second, measured_again = cached_probe("test-probe", lambda: calls.append(1) or 0.2)  # a busy moment
    assert (first, measured) == (1.7, True) and (second, measured_again) == (1.7, False) and len(calls) == 1


def _burn(seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"import time\nt=time.time()\nwhile time.time()-t<{seconds}: pass"])


def test_same_command_same_stories_and_vectors_with_the_cpu_loaded(tmp_path):
    quiet, busy = tmp_path / "quiet", tmp_path / "busy"
    settings = dict(STORIES, per_emotion=4, max_new_tokens=24)
    done = _cli(*_story_args(quiet, settings))
    assert done.returncode == 0, done.stderr[-2000:]
    burners = [_burn(240), _burn(240)]
    try:
        done = _cli(*_story_args(busy, settings))
    finally:
        for b in burners:
            b.kill()
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = read_jsonl(quiet / "stories.jsonl"), read_jsonl(busy / "stories.jsonl")
    assert [r["text"] for r in a] == [r["text"] for r in b]  # replacement rounds included (the quick preset's)
    assert sum(not r.get("refill") for r in a) == 8
    assert read_json(quiet / RUN_FILE)["gen_dtype"] == read_json(busy / RUN_FILE)["gen_dtype"]


def test_vectors_are_the_same_from_the_same_corpus_with_the_cpu_loaded(tmp_path):
    settings = _import_settings(tmp_path)
    got = []
    for name, load in (("quiet", False), ("busy", True)):
        run_dir = tmp_path / name
        open_run(run_dir, make_config(**settings))
        done = _cli("stories", str(run_dir))
        assert done.returncode == 0, done.stderr[-2000:]
        burners = [_burn(240), _burn(240)] if load else []
        try:
            done = _cli("extract", str(run_dir))
        finally:
            for b in burners:
                b.kill()
        assert done.returncode == 0, done.stderr[-2000:]
        got.append(EmotionVectors.load(run_dir / "vectors.safetensors"))
    for key in ("raw", "denoised", "grand_mean", "mean_norm"):
        assert torch.allclose(getattr(got[0], key), getattr(got[1], key), atol=1e-6, rtol=0), key


def test_a_second_process_on_the_same_run_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    with run_lock(run_dir):
        done = _cli(*_story_args(run_dir))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert "is in use by emovec pid" in done.stderr and "re-run to resume" in done.stderr
    assert not (run_dir / "stories.jsonl").exists()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom emovec.provenance import run_lock\n"
                               "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n",
                               str(run_dir)], stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    with pytest.raises(EmovecError, match="in use"), run_lock(run_dir):
        pass
    holder.kill()  # SIGKILL: the kernel drops the lock with the process, nothing stale is left
    holder.wait()
    with run_lock(run_dir):
        pass


def _mount(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to simulate the fault ({done.stderr.strip()}); needs root")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_ends_in_one_line_and_the_run_resumes_cleanly(lm, tmp_path):
    from emovec.pipeline import stage_stories

    settings = dict(STORIES, per_emotion=16, gen_batch_size=16)  # two chunks of 16 stories
    ref = tmp_path / "ref"
    cfg, _ = prepare(ref, make_config("quick", **settings), lm)
    stage_stories(ref, cfg, lm, progress=False)
    expected = read_jsonl(ref / "stories.jsonl")
    lines = (ref / "stories.jsonl").read_bytes().splitlines(keepends=True)

    def pages(n: int) -> int:
        return -(-n // 4096)

    first, total = sum(map(len, lines[:16])), sum(map(len, lines))
    assert pages(total) > pages(first), "the stories are too short to put the fault between the two chunks"
    # a new run's run.json (written once, so its atomic temporary never sits beside an old copy), the lock,
    # then room for the first chunk only
    size = (pages((ref / RUN_FILE).stat().st_size) + 1 + pages(first)) * 4096
    disk = tmp_path / "disk"
    _mount(disk, f"size={size}")
    try:
        run_dir = disk / "run"
        done = _cli(*_story_args(run_dir, settings))
        assert done.returncode == 2, done.stderr[-2000:]
        errors = [ln for ln in done.stderr.replace("\r", "\n").splitlines() if "error: " in ln]
        assert len(errors) == 1 and "no space left on the device" in errors[0], done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        partial = read_jsonl(run_dir / "stories.jsonl")
        assert len(partial) == 16  # whole chunks only: the failed append was undone
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)  # space is back
        done = _cli(*_story_args(run_dir, settings))
        assert done.returncode == 0, done.stderr[-2000:]
        got = read_jsonl(run_dir / "stories.jsonl")
        assert [r["id"] for r in got] == [r["id"] for r in expected]
        assert [r["text"] for r in got] == [r["text"] for r in expected]
    finally:
        _umount(disk)


def test_a_read_only_run_directory_ends_in_one_line(lm, tmp_path):
    disk = tmp_path / "ro"
    _mount(disk, "size=4m")
    try:
        run_dir = disk / "run"
        open_run(run_dir, make_config(**STORIES))
        before = (run_dir / RUN_FILE).read_bytes()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        done = _cli(*_story_args(run_dir))
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        errors = [ln for ln in done.stderr.replace("\r", "\n").splitlines() if "error: " in ln]
        assert len(errors) == 1 and "is not writable" in errors[0] and "Read-only" in errors[0], done.stderr[-2000:]
        assert (run_dir / RUN_FILE).read_bytes() == before
    finally:
        _umount(disk)
    time.sleep(0.1)


def test_experiment_and_speaker_folders_record_versions_and_refuse_other_ones(lm, tmp_path):
    from emovec.provenance import check_settings

    settings = {"model": "m", "seed": 0, "temperature": 0.7}
    check_settings(tmp_path, settings, lm=lm, settings_file="speakers.settings.json")
    stored = read_json(tmp_path / "speakers.settings.json")
    assert stored["dtype"] == "float32" and stored["versions"]["torch"] == torch.__version__ and stored["cpu"]["model"]
    check_settings(tmp_path, settings, lm=lm, settings_file="speakers.settings.json")  # same process: resumes
    stored["versions"]["transformers"] = "0.0.1"
    (tmp_path / "speakers.settings.json").write_text(json.dumps(stored))
    with pytest.raises(EmovecError, match="different versions"):
        check_settings(tmp_path, settings, lm=lm, settings_file="speakers.settings.json")
