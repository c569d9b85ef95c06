"""`--writer`: another model writes a run's stories and neutral dialogues while the run's model reads them.

The writer is part of a run's identity (recorded in run.json; an old run.json without it was written by its
model), its files and config are recorded with the run's provenance, and a base model without a chat template
can be read while an instruct model writes for it. All on SmolLM2 and a tiny random Llama, so it stays cheap.
"""

from __future__ import annotations

import json

import pytest

from emovec import load_model
from emovec.pipeline import prepare, prepare_models, stage_stories
from emovec.rundir import RUN_FILE, make_config, open_run
from emovec.storage import EmovecError, read_json, read_jsonl

WRITE = {"emotions": ["happy", "sad"], "per_emotion": 2, "n_neutral": 1, "max_new_tokens": 12, "gen_batch_size": 4,
         "seed": 5}


def test_the_model_named_as_writer_writes_byte_identical_corpora(lm, tmp_path):
    """`--writer smollm2-135m` on SmolLM2 (here a second, separately loaded copy) writes what no writer writes."""
    a, b = tmp_path / "a", tmp_path / "b"
    cfg_a, _, writer_a = prepare_models(a, make_config(**WRITE), lm)
    assert writer_a is lm
    stage_stories(a, cfg_a, lm, progress=False)
    cfg_b, _, _ = prepare_models(b, make_config(**WRITE, writer="smollm2-135m"), lm)
    stage_stories(b, cfg_b, lm, progress=False, writer=load_model("smollm2-135m"))
    for name in ("stories.jsonl", "neutral.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert len(read_jsonl(a / "stories.jsonl")) == 4 and len(read_jsonl(a / "neutral.jsonl")) == 1
    for run in (a, b):  # a new run records its writer by name; the same model needs no writer provenance
        stored = read_json(run / RUN_FILE)
        assert stored["writer"] == "smollm2-135m" and "writer_files" not in stored["provenance"]


def test_the_writer_is_part_of_a_runs_identity(lm, tmp_path):
    run_dir = tmp_path / "run"
    settings = {"emotions": ["happy", "sad"], "n_neutral": 0, "import_stories": str(tmp_path / "unused.jsonl")}
    prepare(run_dir, make_config(**settings), lm)
    with pytest.raises(EmovecError, match=r"started with writer='smollm2-135m', not 'qwen2.5-coder-0.5b'"):
        open_run(run_dir, make_config(**settings, writer="qwen2.5-coder-0.5b"), write=False)
    assert open_run(run_dir, make_config(**settings, writer="smollm2-135m"), write=False).writer == "smollm2-135m"
    stored = json.loads((run_dir / RUN_FILE).read_text())
    del stored["writer"]  # a run.json from before --writer: its model wrote it
    (run_dir / RUN_FILE).write_text(json.dumps(stored))
    old = open_run(run_dir)
    assert old.writer is None and old.writer_model() == "smollm2-135m"
    assert open_run(run_dir, make_config(**settings, writer="smollm2-135m"), write=False).writer_model() == "smollm2-135m"
    with pytest.raises(EmovecError, match=r"writer='smollm2-135m', not 'qwen2.5-coder-0.5b'"):
        open_run(run_dir, make_config(**settings, writer="qwen2.5-coder-0.5b"), write=False)


def test_a_base_model_reads_what_an_instruct_writer_writes(lm, plain_model_dir, tmp_path):
    base = load_model(str(plain_model_dir))
    assert not base.has_chat_template
    settings = {"model": str(plain_model_dir), "emotions": ["calm", "sad"], "per_emotion": 1, "n_neutral": 1,
                "max_new_tokens": 8, "gen_batch_size": 4}
    with pytest.raises(EmovecError, match=r"has no chat template.*--writer smollm2-135m.*--import"):
        prepare_models(tmp_path / "alone", make_config(**settings), base)
    assert not (tmp_path / "alone" / RUN_FILE).exists()

    run_dir = tmp_path / "run"
    cfg, reader, writer = prepare_models(run_dir, make_config(**settings, writer="smollm2-135m"), base, writer=lm)
    assert reader is base and writer is lm
    stage_stories(run_dir, cfg, base, progress=False, writer=writer)
    assert len(read_jsonl(run_dir / "stories.jsonl")) == 2 and len(read_jsonl(run_dir / "neutral.jsonl")) == 1
    prov = read_json(run_dir / RUN_FILE)["provenance"]
    assert prov["writer_config"] == lm.fingerprint and prov["model_config"] == base.fingerprint
    assert len(prov["writer_files"]) == 32

    stored = read_json(run_dir / RUN_FILE)
    stored["provenance"]["writer_files"] = "0" * 32  # as if the writer's weights had changed since the start
    (run_dir / RUN_FILE).write_text(json.dumps(stored))
    with pytest.raises(EmovecError, match=r"other conditions \(writer_files: 0+ then"):
        prepare_models(run_dir, cfg, base, writer=lm)


def test_a_writer_without_chat_template_is_refused(lm, plain_model_dir, tmp_path):
    cfg = make_config(emotions=["calm", "sad"], per_emotion=1, writer=str(plain_model_dir))
    with pytest.raises(EmovecError, match=r"the writer .* has no chat template.*instruct model as --writer"):
        prepare_models(tmp_path / "run", cfg, lm)
    assert not (tmp_path / "run").exists()
