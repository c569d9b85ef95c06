"""The lexical baseline: recognition and geometry from the stories' words alone, on planted and real stories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emovec.storage import EmovecError, read_json
from emovec.validate.lexical import lexical_baseline
from emovec.validate.runner import run_analyses, summarize

DATA = Path(__file__).parent / "data"
FILLER = "the morning went on and she walked to the station and looked at the trains and the people there".split()
CUES = {"happy": "bright laughing joy delighted", "sad": "tears grief lonely loss", "afraid": "trembling dread panic dark",
        "calm": "quiet still slow breath", "angry": "shouted furious slammed rage"}


def planted(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n stories per emotion: shared filler words plus two of the emotion's own cue words."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for emotion, cues in CUES.items():
        for _ in range(n):
            words = list(rng.choice(FILLER, 12)) + list(rng.choice(cues.split(), 2, replace=False))
            rng.shuffle(words)
            texts.append(" ".join(words))
            labels.append(emotion)
    return texts, labels


def test_planted_words_are_recognised_and_shuffled_labels_are_not() -> None:
    texts, labels = planted(12)
    found = lexical_baseline(texts, labels, norms=None)
    assert found["top1"] > 0.9 and found["p_top1"] < 1e-10
    assert found["n_emotions"] == 5 and found["n_stories"] == 60 and found["folds"] == 5
    shuffled = list(np.random.default_rng(1).permutation(labels))
    null = lexical_baseline(texts, shuffled, norms=None)
    assert null["top1"] < 0.45 and null["p_top1"] > 0.001


def test_real_stories_give_valence_geometry_fields() -> None:
    rows = [json.loads(line) for line in (DATA / "stories_small.jsonl").read_text().splitlines() if line.strip()]
    res = lexical_baseline([r["text"] for r in rows], [r["emotion"] for r in rows])
    assert res["n_stories"] == len(rows) and 0 <= res["top1"] <= 1 and res["chance_top1"] == 1 / res["n_emotions"]
    if res["n_matched"] >= 3:  # the norms package is installed
        assert -1 <= res["pc1_valence"]["pearson"] <= 1 and res["pc1_valence"]["n"] == res["n_matched"]


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(EmovecError, match="at least 2 emotions"):
        lexical_baseline(["a story", "another"], ["happy", "happy"])
    with pytest.raises(EmovecError, match="3 texts but 2 labels"):
        lexical_baseline(["a", "b", "c"], ["happy", "sad"])
    with pytest.raises(EmovecError, match="no shared vocabulary"):
        lexical_baseline(["alpha", "beta", "gamma", "delta"], ["happy", "happy", "sad", "sad"])


def test_runner_scores_the_runs_stories_on_its_recognition_folds(run_copy: Path) -> None:
    out = run_analyses(run_copy, only=["lexical"])
    saved = read_json(run_copy / "analyses" / "lexical.json")
    rec = read_json(run_copy / "recognition.json")
    assert saved["n_stories"] == rec["n_stories"] and saved["folds"] == rec["folds"]
    assert out["lexical"]["top5"] == saved["top5"]
    assert summarize("lexical", saved).startswith("lexical baseline (the stories' words, no model): top-1 ")
