"""vLLM as an engine (`--backend vllm`): the same vectors, readout and steering as the transformers path.

Runs in the environment `make vllm` builds (`.venv-vllm/bin/python -m pytest tests/test_vllm.py`); in the
default environment only the "not installed" error is tested and the rest is skipped with that reason.
Every engine here is the real vLLM CPU engine on the embedded SmolLM2-135M-Instruct in float32.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import SMALL_EMOTIONS

from emovec.storage import EmovecError

HAVE_VLLM = importlib.util.find_spec("vllm") is not None and importlib.util.find_spec("vllm_lens") is not None
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed here: `make vllm`, then run this file "
                                                      "with .venv-vllm/bin/python -m pytest")

PROMPTS = ["Describe your morning.", "Tell me about the weather today."]


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed in this environment")
def test_missing_vllm_is_one_line_before_anything_is_written(tmp_path):
    from click.testing import CliRunner

    from emovec.cli import main

    res = CliRunner().invoke(main, ["run", str(tmp_path / "r"), "--emotions", "happy,sad", "--backend", "vllm"])
    assert res.exit_code != 0
    assert "make vllm" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "stories.jsonl").exists()


def test_ray_with_the_vllm_backend_is_refused_in_one_line():
    from emovec.distributed import RayPool
    from emovec.rundir import make_config

    with pytest.raises(EmovecError, match="--ray with --backend vllm is not supported"):
        RayPool(make_config(emotions=["happy"], backend="vllm"))


@pytest.fixture(scope="module")
def engine(lm):
    from emovec.vllm_engine import VLLMEngine

    with VLLMEngine(lm, max_model_len=1024, kv_cache_gib=0.5) as eng:
        yield eng


@pytest.fixture(scope="module")
def vllm_run(lm, small_run, tmp_path_factory):
    """The small run's imported stories and neutral dialogues, extracted through the vLLM engine."""
    import shutil

    from emovec.pipeline import stage_extract
    from emovec.rundir import open_run

    run_dir = tmp_path_factory.mktemp("vllm_run")
    for name in ("stories.jsonl", "neutral.jsonl"):
        shutil.copy(small_run / name, run_dir / name)
    cfg = open_run(small_run)
    cfg.backend = "vllm"
    open_run(run_dir, cfg)
    stage_extract(run_dir, cfg, lm, progress=False)
    return run_dir


@needs_vllm
def test_pooling_matches_transformers_for_every_length(lm, engine):
    from emovec.activations import pool_texts

    texts = ["Hi", "A short line that stays under the token start.",
             " ".join(["The river rose all night and by morning the whole street was under water."] * 8)]
    layers = [0, 9, 29]
    ref, ref_norm, ref_n = pool_texts(lm, texts, layers, start=50)
    got, got_norm, got_n = engine.pool(texts, layers, start=50)
    assert got_n == ref_n
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert cos.min() > 0.9999, cos
    assert torch.allclose(got_norm, ref_norm, rtol=1e-4)


@needs_vllm
def test_vectors_from_the_engine_equal_the_transformers_path(lm, small_run, vllm_run):
    from emovec import EmotionVectors

    ref = EmotionVectors.load(small_run / "vectors.safetensors", model=lm)
    got = EmotionVectors.load(vllm_run / "vectors.safetensors", model=lm)
    assert got.emotions == ref.emotions == SMALL_EMOTIONS
    for layer in ref.layers:
        cos = torch.nn.functional.cosine_similarity(got.matrix(layer), ref.matrix(layer), dim=-1)
        assert cos.min() >= 0.999, (layer, cos)


@needs_vllm
def test_token_readout_in_the_engine_matches_score_text(lm, engine, small_vectors):
    from emovec.readout import score_text

    text = "The letter said the job was mine, and I read it three times before I believed it."
    ref = torch.tensor(score_text(lm, small_vectors, text).drop(columns="token").to_numpy(), dtype=torch.float32)
    got = engine.token_scores([text], small_vectors)[0]
    assert got.shape == ref.shape
    assert (got - ref).abs().max() < 1e-3 * ref.abs().max()
    # while generating: the prompt's rows equal the transformers readout, then one row per generated token read
    from emovec.generation import Sampling

    prompt = lm.chat("Describe your morning.")
    ((_, live),) = engine.generate_with_readout([prompt], Sampling(max_new_tokens=5, temperature=0.0), 0, small_vectors)
    ref = torch.tensor(score_text(lm, small_vectors, prompt).drop(columns="token").to_numpy(), dtype=torch.float32)
    assert ref.shape[0] < live.shape[0] <= ref.shape[0] + 4
    assert (live[:ref.shape[0]] - ref).abs().max() < 1e-3 * ref.abs().max()


@needs_vllm
def test_steering_through_vllm_does_what_the_hook_path_does(lm, engine, small_vectors):
    from emovec.generation import HFBackend, Sampling
    from emovec.readout import score_texts
    from emovec.steering import steering_vector

    greedy = Sampling(max_new_tokens=24, temperature=0.0, repetition_penalty=1.0)
    prompts = [lm.chat(p) for p in PROMPTS]
    vec = steering_vector(small_vectors, {"happy": 0.3, "sad": -0.3}, layers=[12])
    plain_v = engine.generate(prompts, greedy, seed=0)
    steered_v = engine.generate(prompts, greedy, seed=0, steer=vec)
    mixed_v = engine.generate(prompts, greedy, seed=0, steer=[vec, None])  # one request of the batch steered
    hf = HFBackend(lm, batch_size=1)
    plain_h = hf.generate(prompts, greedy, seed=0)
    with vec.apply(lm):
        steered_h = hf.generate(prompts, greedy, seed=0)
    assert steered_v != plain_v
    assert mixed_v == [steered_v[0], plain_v[1]]

    def head(text: str) -> list[int]:
        return lm.tokenizer(text, add_special_tokens=False)["input_ids"][:8]

    assert [head(t) for t in plain_v] == [head(t) for t in plain_h]
    assert [head(t) for t in steered_v] == [head(t) for t in steered_h]

    def shift(steered: list[str], plain: list[str]) -> float:
        s = score_texts(lm, small_vectors, steered + plain, emotions=["happy", "sad"], start=1)
        d = (s["happy"] - s["sad"]).to_numpy()
        return float(d[:len(steered)].mean() - d[len(steered):].mean())

    assert shift(steered_v, plain_v) > 0 and shift(steered_h, plain_h) > 0


@needs_vllm
def test_vllm_backend_writes_resumable_reproducible_corpora(lm, engine, tmp_path):
    from emovec import EmotionVectors
    from emovec.activations import extract_corpus
    from emovec.pipeline import stage_stories
    from emovec.rundir import make_config, open_run
    from emovec.storage import read_jsonl
    from emovec.vllm_engine import VLLMPooler

    cfg = make_config(emotions=["happy", "sad"], per_emotion=2, n_neutral=2, max_new_tokens=48, backend="vllm",
                      gen_dtype="float32")
    runs = []
    for name in ("a", "b"):
        open_run(tmp_path / name, cfg)
        stage_stories(tmp_path / name, cfg, lm, progress=False)
        runs.append(tmp_path / name)
    a = [json.dumps(r, sort_keys=True) for r in read_jsonl(runs[0] / "stories.jsonl")]
    b = [json.dumps(r, sort_keys=True) for r in read_jsonl(runs[1] / "stories.jsonl")]
    assert a == b and len(a) == 4
    assert all(r["text"] for r in read_jsonl(runs[0] / "stories.jsonl"))
    before = (runs[0] / "stories.jsonl").read_bytes()
    stage_stories(runs[0], cfg, lm, progress=False)  # resume: everything is there, nothing is written again
    assert (runs[0] / "stories.jsonl").read_bytes() == before
    # the vLLM-written corpus (every row: the filter does not matter here) read back through the engine and
    # through transformers: the same vectors
    stories, neutral = read_jsonl(runs[0] / "stories.jsonl"), read_jsonl(runs[0] / "neutral.jsonl")
    built = []
    for name, pooler in (("engine", VLLMPooler(engine)), ("transformers", None)):
        acts = extract_corpus(lm, stories, tmp_path / name, "stories", start=20, progress=False, pooler=pooler)
        neu = extract_corpus(lm, neutral, tmp_path / name, "neutral", start=20, progress=False, pooler=pooler)
        present = sorted({r["emotion"] for r in stories})
        built.append(EmotionVectors.from_activations(acts, neu, present, 0.5, model=lm))
    for layer in built[0].layers:
        cos = torch.nn.functional.cosine_similarity(built[0].matrix(layer), built[1].matrix(layer), dim=-1)
        assert cos.min() >= 0.999, (layer, cos)


@needs_vllm
def test_seeded_batch_larger_than_one_engine_step(lm, engine):
    """More prompt tokens than one step takes, each request with its own seed: the case that crashed vLLM's CPU
    worker while chunked prefill was on; the completions must not depend on which requests share a step."""
    from emovec.generation import Sampling

    long = [lm.chat(f"Story {i}: " + "the harbour at dawn, the boats, the gulls and the nets; " * 30) for i in range(24)]
    assert sum(len(lm.tokenizer(p).input_ids) for p in long) > engine.batch_tokens
    sampling = Sampling(max_new_tokens=6, temperature=0.9)
    every = engine.generate(long, sampling, seed=3)
    assert engine.generate(long[5:7], sampling, seed=8) == every[5:7]


@needs_vllm
def test_engine_errors_are_one_line(lm, engine):
    from emovec.generation import Sampling

    with pytest.raises(EmovecError, match="max_model_len"):
        engine.generate(["word " * 2000], Sampling(max_new_tokens=8), seed=0)
    with pytest.raises(EmovecError, match="no texts"):
        engine.pool([], [3])
    with pytest.raises(EmovecError, match="token start"):
        engine.pool(["a text"], [3], start=0)
