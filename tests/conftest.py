"""Shared fixtures: the real embedded model (loaded once) and a small real run built from hand-written stories."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

# One torch thread for the tests and the processes they start (set before torch is imported; OMP_NUM_THREADS in
# the environment wins). On a 2-core machine with another CPU-bound process beside it, two threads made the suite
# several times slower (oversubscription); one thread is also what makes a reference run and a subprocess's run
# of the same settings use the same kernels.
os.environ.setdefault("OMP_NUM_THREADS", "1")

DATA = Path(__file__).parent / "data"
# 6 emotions x 8 hand-written stories in tests/data; big enough to see signal, small enough to be fast.
SMALL_EMOTIONS = ["happy", "sad", "afraid", "angry", "calm", "desperate"]


def edit_run_file(run_dir: Path, **values: object) -> None:
    """Overwrite settings in a run's `run.json` by hand, as a user or a damaged disk might."""
    path = run_dir / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


@pytest.fixture(scope="session")
def lm():
    from emovec import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def plain_model_dir(tmp_path_factory):
    """A tiny real Llama saved as a local directory, with a tokenizer that has no chat template (a base model)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the cat sat on the mat", "a calm day"], trainers.WordLevelTrainer(
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                                bos_token="<s>", eos_token="</s>")
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=len(fast), pad_token_id=0)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("plain-model")
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    fast.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def small_run(lm, tmp_path_factory) -> Path:
    """A run directory with imported stories + neutral dialogues, extracted at every layer."""
    from emovec.pipeline import stage_extract, stage_recognition, stage_stories
    from emovec.rundir import make_config, open_run
    from emovec.storage import append_jsonl

    run_dir = tmp_path_factory.mktemp("small_run")
    cfg = make_config(emotions=SMALL_EMOTIONS, import_stories=str(DATA / "stories_small.jsonl"), n_neutral=0, folds=4)
    open_run(run_dir, cfg)
    neutral = [json.loads(line) for line in (DATA / "neutral_small.jsonl").read_text().splitlines() if line.strip()]
    append_jsonl(run_dir / "neutral.jsonl", [{"id": f"n{i}", "job": f"n{i}", "text": r["text"], "kept": True}
                                               for i, r in enumerate(neutral)])
    stage_stories(run_dir, cfg, lm, progress=False)
    stage_extract(run_dir, cfg, lm, progress=False)
    stage_recognition(run_dir, cfg)
    return run_dir


@pytest.fixture(scope="session")
def small_vectors(small_run, lm):
    from emovec import EmotionVectors

    return EmotionVectors.load(small_run / "vectors.safetensors", model=lm)


@pytest.fixture
def run_copy(small_run, tmp_path) -> Path:
    """A private copy of the small run, for tests that modify files."""
    dst = tmp_path / "run"
    shutil.copytree(small_run, dst)
    return dst
