"""`--ray`: story writing and extraction over Ray actors write what one process writes, survive a killed worker
and an interrupted driver, with no story lost or duplicated. A tiny random Llama (with a chat template) and a local
Ray instance with 2 CPUs; skipped, with the reason, where Ray is not installed (`make ray`)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

EMOTIONS = ["happy", "sad", "afraid", "angry", "calm", "desperate"]
# 6 emotions x 8 stories = 48 prompts = 3 chunks of 16 (chunk = max(gen_batch_size, 16)); 24 neutral = 2 chunks.
SETTINGS = {"emotions": EMOTIONS, "per_emotion": 8, "n_neutral": 24, "max_new_tokens": 48, "gen_batch_size": 4,
            "token_start": 4, "topics": 4}
CLI_ARGS = ["--emotions", ",".join(EMOTIONS), "--per-emotion", "8", "--n-neutral", "24", "--max-new-tokens", "48",
            "--gen-batch-size", "4", "--token-start", "4", "--topics", "4", "--dtype", "float32",
            "--content-check", "0", "--refill", "0"]  # as SETTINGS (the CLI's quick preset: dtype auto, a check, refill)
WORDS = ("the a cat dog sat ran on under mat table chair window door kitchen garden street morning evening rain sun cup "
         "tea coffee bread letter phone train bus road hill river tree leaf stone paper pen desk lamp wall floor shoe "
         "coat hat bag box key clock bell song voice hand face eye step walk talk look wait open close").split()


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance with 2 CPUs for this module (the pools join it and leave it running)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: run `make ray`")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama that can write: a word-level tokenizer with a chat template, and an output layer
    scaled so the end-of-text token (logit 0) is rarely sampled, so stories reach the 40-word minimum."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                                bos_token="<s>", eos_token="</s>")
    fast.chat_template = ("{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
                          "{% if add_generation_prompt %}<s> assistant {% endif %}")
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=len(fast), pad_token_id=0, bos_token_id=1,
                                   eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
        model.lm_head.weight[:4] = 0
    d = tmp_path_factory.mktemp("chat-model")
    model.save_pretrained(d)
    fast.save_pretrained(d)
    return d


def _config(model_dir: Path):
    from emovec.rundir import make_config

    return make_config(model=str(model_dir), **SETTINGS)


@pytest.fixture(scope="module")
def reference(chat_model_dir, tmp_path_factory) -> Path:
    """The same run in one process (no Ray)."""
    from emovec.pipeline import run

    run_dir = tmp_path_factory.mktemp("one-process")
    run(run_dir, _config(chat_model_dir), progress=False)
    return run_dir


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _assert_same_run(run_dir: Path, reference: Path, activations: bool = True) -> None:
    """Each job once, the reference's ids, rows and order; with `activations`, the same shard tensors and vectors."""
    for name in ("stories.jsonl", "neutral.jsonl"):
        rows, ref = _rows(run_dir / name), _rows(reference / name)
        dup = [job for job, n in Counter(r["job"] for r in rows).items() if n > 1]
        assert not dup, f"{name}: jobs written twice: {dup}"
        assert {r["id"] for r in rows} == {r["id"] for r in ref}, f"{name}: other story ids than one process"
        assert rows == ref, f"{name}: other rows (or order) than one process"
    if not activations:
        return
    shards = sorted(p.name for p in (reference / "activations").glob("*.safetensors"))
    assert shards == sorted(p.name for p in (run_dir / "activations").glob("*.safetensors"))
    for name in [f"activations/{s}" for s in shards] + ["vectors.safetensors"]:
        a, b = load_file(str(run_dir / name)), load_file(str(reference / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs from one process"


def _task_log(log_dir: Path):
    """A task hook (runs in the actors) that records `method-chunk-pid` for every task start."""
    def hook(method: str, index: int) -> None:
        (log_dir / f"{method}-{index}-{os.getpid()}-{time.monotonic_ns()}").touch()
    return hook


def _starts(log_dir: Path, method: str) -> list[tuple[int, int]]:
    """(chunk, pid) of every start of `method` the hook recorded."""
    return [(int(p.name.split("-")[1]), int(p.name.split("-")[2])) for p in log_dir.glob(f"{method}-*")]


def test_a_ray_run_with_two_workers_writes_what_one_process_writes(ray_local, chat_model_dir, reference, tmp_path):
    from emovec.distributed import RayOptions
    from emovec.pipeline import run

    log_dir = tmp_path / "tasks"
    log_dir.mkdir()
    summary = run(tmp_path / "run", _config(chat_model_dir), progress=False,
                  ray=RayOptions(workers=2, task_hook=_task_log(log_dir)))
    assert summary["ray"] == {"workers": 2, "cpus_per_worker": 1, "address": "local"}
    _assert_same_run(tmp_path / "run", reference)
    gen = _starts(log_dir, "generate")
    assert sorted(c for c, _ in gen) == [0, 0, 1, 1, 2], gen  # 3 story chunks, 2 neutral chunks
    assert len({pid for _, pid in gen}) == 2, f"the chunks were not split over both workers: {gen}"
    assert len(_starts(log_dir, "pool")) == 2  # one shard each of stories and neutral


def test_a_worker_killed_mid_task_is_restarted_and_its_chunk_written_once(ray_local, chat_model_dir, reference, tmp_path):
    from emovec.distributed import RayOptions
    from emovec.pipeline import run

    log_dir, marks = tmp_path / "tasks", tmp_path / "marks"
    log_dir.mkdir()
    marks.mkdir()
    for name in ("generate-1", "pool-0"):
        (marks / name).touch()
    record = _task_log(log_dir)

    def kill_once(method: str, index: int) -> None:  # SIGKILL this worker at the start of these tasks, once each
        record(method, index)
        mark = marks / f"{method}-{index}"
        if mark.exists():
            mark.unlink()
            os.kill(os.getpid(), signal.SIGKILL)

    run(tmp_path / "run", _config(chat_model_dir), progress=False, ray=RayOptions(workers=2, task_hook=kill_once))
    assert not list(marks.iterdir()), "the workers were not killed"
    started = Counter(c for c, _ in _starts(log_dir, "generate"))
    assert started[1] == 3, started  # story chunk 1 twice (killed, retried), neutral chunk 1 once
    assert len(_starts(log_dir, "pool")) == 3  # the stories shard twice (killed, retried), the neutral shard once
    _assert_same_run(tmp_path / "run", reference)


def test_a_worker_process_killed_from_outside_while_writing_loses_and_duplicates_nothing(ray_local, chat_model_dir,
                                                                                          reference, tmp_path):
    from emovec.distributed import RayOptions, RayPool
    from emovec.pipeline import prepare_models, stage_stories

    log_dir = tmp_path / "tasks"
    log_dir.mkdir()
    record = _task_log(log_dir)

    def slow(method: str, index: int) -> None:
        record(method, index)
        time.sleep(0.5)

    run_dir = tmp_path / "run"
    cfg, lm, writer = prepare_models(run_dir, _config(chat_model_dir))
    errors: list[BaseException] = []
    with RayPool(cfg, RayOptions(workers=2, task_hook=slow)) as pool:
        victim = pool.infos[0]["pid"]

        def work() -> None:
            try:
                stage_stories(run_dir, cfg, lm, progress=False, writer=writer, pool=pool)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(exc)

        thread = threading.Thread(target=work)
        thread.start()
        deadline = time.time() + 60
        while not any(pid == victim for _, pid in _starts(log_dir, "generate")) and time.time() < deadline:
            time.sleep(0.02)
        os.kill(victim, signal.SIGKILL)  # in the middle of its first task's 0.5 s
        thread.join(120)
        assert not errors, errors
        assert ray_local.get(pool.actors[0].info.remote())["pid"] != victim, "the killed worker was not restarted"
    _assert_same_run(run_dir, reference, activations=False)


def test_an_interrupted_driver_resumes_with_the_chunks_it_has(ray_local, chat_model_dir, reference, tmp_path, monkeypatch):
    import emovec.corpus
    from emovec.distributed import RayOptions
    from emovec.pipeline import run
    from emovec.storage import append_jsonl

    appended = []

    def append_then_interrupt(path, rows):
        append_jsonl(path, rows)
        appended.append(len(rows))
        raise KeyboardInterrupt  # Ctrl-C right after the first chunk is on disk, other chunks in flight

    run_dir = tmp_path / "run"
    monkeypatch.setattr(emovec.corpus, "append_jsonl", append_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(run_dir, _config(chat_model_dir), progress=False, ray=RayOptions(workers=2))
    assert appended == [16] and len(_rows(run_dir / "stories.jsonl")) == 16
    deadline = time.time() + 30  # the pool's actors were killed: the local instance has its 2 CPUs back
    while ray_local.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.1)
    assert ray_local.available_resources().get("CPU", 0) == 2
    monkeypatch.undo()
    run(run_dir, _config(chat_model_dir), progress=False, ray=RayOptions(workers=1))  # resumes with any worker count
    _assert_same_run(run_dir, reference)


def test_cli_stories_and_extract_with_ray(ray_local, chat_model_dir, reference, tmp_path):
    from emovec.cli import main

    run_dir = str(tmp_path / "run")  # one worker each: Ray here only adds process starts to this test's time
    res = CliRunner().invoke(main, ["stories", run_dir, "--model", str(chat_model_dir), *CLI_ARGS, "--ray", "--ray-workers", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["stories"]["written"] == 48
    res = CliRunner().invoke(main, ["extract", run_dir, "--ray", "--ray-workers", "1"])
    assert res.exit_code == 0, res.output
    _assert_same_run(Path(run_dir), reference)


def test_ray_options_are_checked_before_anything_is_written(chat_model_dir, tmp_path, monkeypatch):
    from emovec.cli import main

    res = CliRunner().invoke(main, ["run", str(tmp_path / "a"), "--model", str(chat_model_dir), "--ray-workers", "2"])
    assert res.exit_code == 2 and "--ray-workers needs --ray" in res.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    res = CliRunner().invoke(main, ["run", str(tmp_path / "b"), "--model", str(chat_model_dir), "--ray"])
    assert res.exit_code == 2 and "make ray" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


def test_an_unreachable_cluster_is_one_line_before_anything_is_written(chat_model_dir, tmp_path):
    import subprocess

    pytest.importorskip("ray", reason="Ray is not installed: run `make ray`")
    run_dir = tmp_path / "r"  # a fresh process: this module's local Ray instance would be used as it is
    res = subprocess.run([sys.executable, "-m", "emovec.cli", "stories", str(run_dir), "--model", str(chat_model_dir),
                          "--ray", "http://nowhere.invalid:1"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "cannot start or reach Ray at http://nowhere.invalid:1" in lines[0], res.stderr
    assert not run_dir.exists()


def test_workers_unlike_the_runs_start_are_refused_unless_drift_is_allowed(ray_local, chat_model_dir, tmp_path):
    import dataclasses

    from emovec.distributed import RayOptions, RayPool
    from emovec.pipeline import prepare_models
    from emovec.storage import EmovecError

    cfg, _, _ = prepare_models(tmp_path / "run", _config(chat_model_dir))
    other = dataclasses.replace(cfg, provenance={**cfg.provenance, "cpu": {"model": "another CPU"}})
    with pytest.raises(EmovecError, match="differs from the run's start in cpu"):
        RayPool(other, RayOptions(workers=1))
    with RayPool(other, RayOptions(workers=1), allow_drift=True) as pool:
        assert len(pool.infos) == 1 and pool.infos[0]["cpu"] == cfg.provenance["cpu"]  # (other tests: like the driver)
