"""The paper's core claims on the real model, at test scale: recognition, readout and steering."""

from __future__ import annotations

import pytest
import torch

from emovec import EmovecError, Sampling, SteeringVector, generate_text, score_text, score_texts, steer, top_emotions
from emovec.activations import load_corpus_activations
from emovec.rundir import make_config, open_run
from emovec.steering import parse_layers, parse_spec, steering_vector
from emovec.storage import read_json

SMALL_EMOTIONS = ["happy", "sad", "afraid", "angry", "calm", "desperate"]


def test_heldout_recognition_far_above_chance(small_run):
    rec = read_json(small_run / "recognition.json")
    assert rec["n_emotions"] == 6 and rec["n_stories"] == 48
    at = next(r for r in rec["layers"] if r["layer"] == 20)
    # chance is 1/6; hand-written stories with strong emotions should be recognised most of the time
    assert at["top1"] >= 0.5, at
    assert at["top1"] > 2.5 * rec["chance_top1"]


def test_lda_ceiling_recognises_hand_written_stories(small_run):
    """The trained decoder reads the same folds as the vectors; on strong stories both are far above chance."""
    from emovec.recognition import heldout_recognition

    acts = load_corpus_activations(small_run / "activations", "stories")
    lda = heldout_recognition(acts, None, SMALL_EMOTIONS, layers=[10, 20], folds=4, classifier="lda")
    vec = read_json(small_run / "recognition.json")
    assert lda["classifier"] == "lda" and lda["denoise_fraction"] is None
    assert lda["n_stories"] == vec["n_stories"] and lda["folds"] == vec["folds"]
    at = {r["layer"]: r for r in lda["layers"]}
    assert at[20]["top1"] >= 0.5 and at[20]["p_top1"] < 0.01, at
    assert all(r["top1"] <= r["top5"] <= 1.0 for r in lda["layers"])
    with pytest.raises(EmovecError, match="unknown classifier"):
        heldout_recognition(acts, None, SMALL_EMOTIONS, layers=[20], classifier="svm")


def test_activations_kept_per_story(small_run):
    acts = load_corpus_activations(small_run / "activations", "stories")
    assert acts.pooled.shape == (48, 30, 576)
    assert sorted(acts.counts) == sorted(SMALL_EMOTIONS) and set(acts.counts.values()) == {8}
    assert acts.mean_norm.shape == (30,) and bool((acts.mean_norm > 0).all())


def test_readout_per_token(lm, small_vectors):
    text = "My hands shook as the letter said the loan was refused and the rent is due tomorrow."
    df = score_text(lm, small_vectors, text)
    assert list(df.columns) == ["token", *small_vectors.emotions]
    assert len(df) == len(lm.tokenizer(text).input_ids)
    assert "".join(df["token"]) == text
    tops = top_emotions(df, k=2)
    assert list(tops.columns) == ["token", "top1", "top2", "score1", "score2"]
    cos = score_text(lm, small_vectors, text, method="cosine")
    assert cos[small_vectors.emotions].abs().max().max() <= 1.0
    with pytest.raises(EmovecError, match="out of range"):
        score_text(lm, small_vectors, text, layer=40)
    with pytest.raises(EmovecError, match="unknown emotion"):
        score_text(lm, small_vectors, text, emotions="joyfull")
    with pytest.raises(EmovecError, match="empty"):
        score_text(lm, small_vectors, "")


def test_readout_separates_unseen_sentences(lm, small_vectors):
    """Sentences not in the training stories score higher on their own emotion than on its opposite."""
    pairs = [("happy", "sad", "We won the lottery this morning and danced around the kitchen laughing."),
             ("sad", "happy", "After the funeral he sat alone in the dark, staring at her empty chair."),
             ("afraid", "calm", "Footsteps followed her down the dark alley and her heart hammered."),
             ("calm", "afraid", "He sipped warm tea by the lake, breathing slowly as the water lay still.")]
    df = score_texts(lm, small_vectors, [p[2] for p in pairs])
    wins = sum(row[a] > row[b] for (a, b, _), (_, row) in zip(pairs, df.iterrows()))
    assert wins >= 3, df


def test_steering_hooks_are_removed(lm, small_vectors):
    ids = lm.tokenizer("The weather today is", return_tensors="pt")
    hooks_before = [len(layer._forward_hooks) for layer in lm.layers]  # transformers keeps some hooks of its own
    with torch.no_grad():
        base = lm.model(**ids).logits
        with steer(lm, small_vectors, "happy=0.5"):
            steered = lm.model(**ids).logits
        after = lm.model(**ids).logits
        with pytest.raises(RuntimeError):
            with steer(lm, small_vectors, "sad=0.5"):
                raise RuntimeError("boom")
        after_crash = lm.model(**ids).logits
    assert not torch.allclose(base, steered)
    assert torch.equal(base, after) and torch.equal(base, after_crash)
    assert [len(layer._forward_hooks) for layer in lm.layers] == hooks_before


def test_steering_arithmetic(small_vectors):
    a = steering_vector(small_vectors, "happy=0.1", layers="18-20")
    b = steering_vector(small_vectors, "sad=0.1", layers="20")
    assert sorted(a.deltas) == [18, 19, 20]
    li = small_vectors.layer_index(20)
    unit = small_vectors.matrix(20, ["happy"])[0]
    assert torch.allclose(a.deltas[20], 0.1 * small_vectors.mean_norm[li] * unit)
    diff = a - b
    assert torch.allclose(diff.deltas[20], a.deltas[20] - b.deltas[20])
    assert torch.allclose((2 * a).deltas[18], a.deltas[18] * 2)
    assert torch.allclose((-a).deltas[19], -a.deltas[19])
    both = steering_vector(small_vectors, "happy=0.1,sad=-0.1", layers="20")
    assert torch.allclose(both.deltas[20], (a - b).deltas[20], atol=1e-6)
    assert not SteeringVector()


def test_steering_spec_errors():
    assert parse_spec("calm=0.05, desperate=-0.1") == {"calm": 0.05, "desperate": -0.1}
    assert parse_spec(["calm=0.05", "calm=0.05"]) == {"calm": 0.1}
    with pytest.raises(EmovecError, match="not a number"):
        parse_spec("calm=lots")
    with pytest.raises(EmovecError, match="EMOTION=STRENGTH"):
        parse_spec("calm")
    with pytest.raises(EmovecError, match="out of range"):
        parse_layers("28-31", 30)
    assert parse_layers("-1", 30) == [29]


def test_happy_vs_sad_steering_changes_generation(lm, small_vectors):
    """Steering happy vs sad at the same strength moves the readout of the generated text the expected way."""
    prompts = ["Tell me about your weekend.", "Describe the view from your window.", "What happened at work today?"]
    sampling = Sampling(max_new_tokens=40, temperature=0)
    texts = {}
    for emotion in ("happy", "sad"):
        with steer(lm, small_vectors, {emotion: STEER_STRENGTH}, layers=STEER_LAYERS):
            texts[emotion] = [generate_text(lm, p, sampling) for p in prompts]
    scores = {e: score_texts(lm, small_vectors, t, emotions=["happy", "sad"]) for e, t in texts.items()}
    margin = {e: float((s["happy"] - s["sad"]).mean()) for e, s in scores.items()}
    assert texts["happy"] != texts["sad"]
    # measured here: happy-steered text reads ~+11 on happy-minus-sad, sad-steered ~-3 (layer 20, s=0.1)
    assert margin["happy"] - margin["sad"] > 3.0, (margin, texts)


# One layer at two thirds of depth; steering 10+ layers at once at these strengths breaks a 135M model's text.
STEER_STRENGTH = 0.1
STEER_LAYERS = "20"


def test_run_dir_guards(tmp_path):
    cfg = make_config("quick")
    open_run(tmp_path, cfg)
    with pytest.raises(EmovecError, match="was started with model"):
        open_run(tmp_path, make_config("quick", model="/some/other/model"))
    with pytest.raises(EmovecError, match="not a run directory"):
        open_run(tmp_path / "nothing")
    with pytest.raises(EmovecError, match="unknown preset"):
        make_config("huge")


def test_new_vectors_drop_stale_analyses(run_copy, lm):
    """Re-extracting (e.g. after adding stories) must not leave the old vectors' analyses for the report."""
    from emovec.pipeline import stage_extract
    from emovec.rundir import open_run

    (run_copy / "analyses").mkdir(exist_ok=True)
    (run_copy / "analyses" / "geometry.json").write_text("{}")
    stage_extract(run_copy, open_run(run_copy), lm, progress=False)
    assert not (run_copy / "analyses" / "geometry.json").exists()
    assert (run_copy / "vectors.safetensors").exists()
