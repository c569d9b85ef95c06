"""The CLI: real commands on real files; bad input gives one line on stderr and a non-zero exit."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from emovec.cli import main


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _assert_clean_error(res, *needles: str):
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err  # one line, nothing else
    for n in needles:
        assert n in err, err


def test_info_on_vectors_and_run(small_run):
    res = _run("info", str(small_run / "vectors.safetensors"))
    assert res.exit_code == 0
    assert "width: 576" in res.output and "default_layer: 20" in res.output
    res = _run("info", str(small_run))
    assert res.exit_code == 0 and '"emotions"' in res.output


def test_score_and_generate(small_run):
    res = _run("score", "The storm tore the roof off and the children screamed.", "-v", str(small_run), "--top", "2")
    assert res.exit_code == 0, res.output
    assert "top1" in res.output and "storm" in res.output
    res = _run("generate", "Say one sentence about rain.", "-v", str(small_run), "--steer", "calm=0.05",
               "--max-new-tokens", "8")
    assert res.exit_code == 0, res.output
    assert "steering: calm=0.05" in res.stderr and res.stdout.strip()


@pytest.mark.parametrize("args,needles", [
    (["score", "hi", "--emotions", "hapy"], ["unknown emotion 'hapy'", "did you mean happy"]),
    (["score", "hi", "--layer", "45"], ["layer 45 is out of range", "0..29"]),
    (["generate", "hi", "--steer", "calm=strong"], ["not a number"]),
    (["generate", "hi", "--steer", "calmm=0.1"], ["unknown emotion", "calm"]),
    (["generate", "hi", "--layers", "10-40"], ["out of range"]),
])
def test_bad_arguments(small_run, args, needles):
    res = _run(*args[:2], "-v", str(small_run), *args[2:])
    _assert_clean_error(res, *needles)


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    _assert_clean_error(_run("info", str(bad)), "not a valid emovec vector file")
    _assert_clean_error(_run("info", str(tmp_path / "nope.safetensors")), "not found")
    _assert_clean_error(_run("info", str(tmp_path)), "not a run directory")
    _assert_clean_error(_run("extract", str(tmp_path)), "not a run directory")
    _assert_clean_error(_run("score", "hi", "-v", str(bad)), "not a valid emovec vector file")


def test_run_refuses_missing_model_and_empty_corpus(tmp_path):
    _assert_clean_error(_run("run", str(tmp_path / "r1"), "--model", str(tmp_path / "no-such-model")), "not found")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _assert_clean_error(_run("stories", str(tmp_path / "r2"), "--import", str(empty), "--n-neutral", "0"), "no stories")


def test_model_without_chat_template_is_refused_before_writing(plain_model_dir, tmp_path):
    run_dir = tmp_path / "r"
    res = _run("run", str(run_dir), "--model", str(plain_model_dir), "--emotions", "calm,sad", "--per-emotion", "1")
    _assert_clean_error(res, "has no chat template", "--import")
    assert not run_dir.exists()  # nothing half-written left behind


def test_a_base_model_reads_while_a_writer_writes(plain_model_dir, tmp_path):
    run_dir = tmp_path / "r"
    res = _run("stories", str(run_dir), "--model", str(plain_model_dir), "--writer", "smollm2-135m", "--emotions",
               "calm,sad", "--per-emotion", "1", "--max-new-tokens", "4", "--n-neutral", "0")
    assert res.exit_code == 0, res.output
    assert '"written": 2' in res.output
    stored = json.loads((run_dir / "run.json").read_text())
    assert stored["model"] == str(plain_model_dir) and stored["writer"] == "smollm2-135m"


def test_info_on_a_model(plain_model_dir):
    res = _run("info", "--model", "smollm2-135m")
    assert res.exit_code == 0, res.output
    assert "layers: 30 at model.layers" in res.output and "width: 576" in res.output
    assert "chat_template: yes" in res.output
    res = _run("info", "--model", str(plain_model_dir))
    assert res.exit_code == 0 and "chat_template: no" in res.output
    _assert_clean_error(_run("info"), "--model", "qwen2.5-coder-0.5b")


def test_run_dir_from_another_model_is_refused(small_run, plain_model_dir):
    res = _run("run", str(small_run), "--model", str(plain_model_dir))
    _assert_clean_error(res, "was started with model")
    res = _run("score", "hello", "-v", str(small_run), "--model", str(plain_model_dir))
    _assert_clean_error(res, "width 576", str(plain_model_dir))
