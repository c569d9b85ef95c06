"""Steering efficacy on the small vectors with a tiny configuration: the result's shape, strength 0 is exactly
unsteered generation, perplexity and repetition are computed, and the external judge scores plain sentences sanely."""

from __future__ import annotations

import math

import pytest

from emovec.generation import Sampling
from emovec.validate.steering import Arm, SteeringConfig, generate_arms, judge, repetition_rate, steering_efficacy, steering_prompts

LAYER = 20
TINY = SteeringConfig(emotions=("happy", "sad"), layer_emotions=(), strengths=(-0.2, 0.0, 0.2), layers=(LAYER,),
                      prompts=tuple(steering_prompts()[:4]), samples=1, max_new_tokens=16)


@pytest.fixture(scope="module")
def result(lm, small_vectors):
    return steering_efficacy(lm, small_vectors, TINY)


def test_the_judge_scores_plain_sentences_the_right_way():
    good, bad, empty = judge(["What a wonderful morning! I feel happy, grateful and full of joy.",
                              "This is awful. I feel miserable, hopeless and afraid, and I hate it.", ""])
    assert good > 0.5 and bad < -0.5 and empty == 0.0


def test_repetition_rate():
    assert repetition_rate("") == repetition_rate("one") == 0.0
    assert repetition_rate("the cat sat on the mat") == 0.0
    assert repetition_rate("a b a b a b") == pytest.approx(3 / 5)


def test_result_shape(result):
    assert result["n_arms"] == 1 + 2 * 2 and result["n_samples"] == 5 * 4
    assert [(c["emotion"], c["layer"]) for c in result["curves"]] == [("happy", LAYER), ("sad", LAYER)]
    for c in result["curves"]:
        assert [p["strength"] for p in c["points"]] == [-0.2, 0.0, 0.2]
        assert all(p["n"] == 4 and -1 <= p["judge"]["mean"] <= 1 for p in c["points"])
        assert c["expected"] == {"happy": 1, "sad": -1}[c["emotion"]]
        lo, hi = c["useful_range"]
        assert lo <= 0 <= hi and c["fit"]["n"] == 4 * len([p for p in c["points"] if lo <= p["strength"] <= hi])
    assert [(r["layer"], r["strength"]) for r in result["separations"]] == [(LAYER, 0.2)]
    assert result["separations"][0]["n_a"] == result["separations"][0]["n_b"] == 4
    assert isinstance(result["headline"]["text"], str) and "timing" in result
    assert result["recommended"]["layer"] in (LAYER, None)


def test_perplexity_and_repetition_are_computed(result):
    replies = [s for s in result["samples"] if s["text"]]
    assert replies and all(s["nll"] is not None and 0 < s["nll"] < 20 for s in replies)
    assert all(0 <= s["repetition"] <= 1 for s in result["samples"])
    assert all(s["readout"] is not None for s in replies if s["emotion"])
    base = result["unsteered"]
    assert math.isfinite(base["nll"]) and 0 <= base["repetition"] <= 1
    for c in result["curves"]:
        zero = next(p for p in c["points"] if p["strength"] == 0)
        assert zero["ppl_ratio"] == pytest.approx(1.0) and zero["fluent"]
        assert all(p["ppl_ratio"] is None or p["ppl_ratio"] > 0 for p in c["points"])


def test_strength_zero_is_unsteered_generation(lm, small_vectors):
    prompts = [lm.chat(p) for p in steering_prompts()[:3]]
    sampling = Sampling(max_new_tokens=10, temperature=0.7, top_p=0.95, repetition_penalty=1.0)

    def texts(arms):
        gens = generate_arms(lm, small_vectors, arms, prompts, 1, sampling, seed=3)
        return [[g["text"] for g in gens if g["arm"] == a] for a in range(len(arms))]

    plain = texts([Arm(None, 0.0, None), Arm(None, 0.0, None)])
    zero = texts([Arm(None, 0.0, None), Arm("happy", 0.0, LAYER)])
    assert zero == plain  # the same batch layout and seed: strength 0 samples exactly what unsteered does
    steered = texts([Arm(None, 0.0, None), Arm("happy", 0.5, LAYER)])
    assert steered[0] == plain[0]  # steering one arm leaves the other rows of the batch exactly unsteered
    assert steered[1] != plain[1]
