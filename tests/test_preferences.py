"""Activity preferences: the Bradley-Terry/Elo fit, the A/B choice reader, token spans, masked steering, a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from emovec.experiments import EXPERIMENTS, activities
from emovec.experiments.activities import (
    answer_ids,
    feeling_batch,
    load_activities,
    p_first,
    pair_batch,
    pair_preferences,
    pair_question,
    split_halves,
)
from emovec.experiments.elo import ELO_PER_LOGIT, all_pairs, bradley_terry, fit_elo, group_shift
from emovec.experiments.preferences import run_preferences, summary_lines, valence_agreement, valence_text
from emovec.steering import SteeringVector
from emovec.storage import EmovecError


def _synthetic(n: int = 12, bias: float = 0.6, seed: int = 0):
    rng = np.random.default_rng(seed)
    true = rng.normal(0, 1.2, n)
    pairs = all_pairs(n)
    f, g = np.array([i for i, _ in pairs]), np.array([j for _, j in pairs])
    p = 1 / (1 + np.exp(-(true[f] - true[g] + bias)))
    return true - true.mean(), f, g, np.clip(p + rng.normal(0, 0.03, len(p)), 0, 1)


def test_bradley_terry_recovers_ranking_and_position_bias():
    true, f, g, p = _synthetic()
    s, b = bradley_terry(f, g, p, len(true))
    assert np.corrcoef(s, true)[0, 1] > 0.99
    assert np.max(np.abs(s - true)) < 0.15 and abs(b - 0.6) < 0.05
    elo, b_elo = fit_elo(f, g, p, len(true))
    assert np.allclose(elo, s * ELO_PER_LOGIT) and abs(elo.mean()) < 1e-6 and b_elo == pytest.approx(b * ELO_PER_LOGIT)
    # hard 0/1 outcomes drawn from the model also recover the order (Spearman-like check on ranks)
    rng = np.random.default_rng(1)
    y = (rng.random((20, len(p))) < 1 / (1 + np.exp(-(true[f] - true[g] + 0.6)))).astype(float)
    s_hard, _ = bradley_terry(np.tile(f, 20), np.tile(g, 20), y.ravel(), len(true))
    assert np.corrcoef(np.argsort(np.argsort(s_hard)), np.argsort(np.argsort(true)))[0, 1] > 0.95


def test_group_shift_recovers_a_known_shift():
    true, f, g, _ = _synthetic(seed=2)
    steered = np.zeros(len(true), dtype=bool)
    steered[::2] = True
    sign = steered[f].astype(float) - steered[g]
    p = 1 / (1 + np.exp(-(true[f] - true[g] + 0.3 + 0.8 * sign)))
    assert group_shift(f, g, p, true, 0.3, steered) == pytest.approx(0.8, abs=1e-6)
    with pytest.raises(EmovecError, match="steered activity against a control"):
        group_shift(f, g, p, true, 0.3, np.ones(len(true), dtype=bool))


def test_activities_and_split():
    acts = load_activities()
    assert len(acts) == 64 and len({a.group for a in acts}) == 8
    st = split_halves(acts, seed=3)
    for group in {a.group for a in acts}:
        assert sum(st[i] for i, a in enumerate(acts) if a.group == group) == 4
    assert not np.array_equal(st, split_halves(acts, seed=4)) and np.array_equal(st, split_halves(acts, seed=3))
    assert len(load_activities(per_group=1)) == 8


def test_sample_keys_separate_texts_and_steered_sides():
    from emovec.experiments.activities import Activity
    from emovec.experiments.preferences import _sample_key

    a, b, a2 = Activity("x-1", "x", "sort a list"), Activity("x-2", "x", "read a poem"), Activity("x-1", "x", "edited")
    keys = {_sample_key("unsteered", a, b, None, None), _sample_key("unsteered", a2, b, None, None),
            _sample_key("calm=+0.5@20", a, b, True, False), _sample_key("calm=+0.5@20", a, b, False, True)}
    assert len(keys) == 4


def test_valence_agreement_over_rated_emotions():
    norms = pd.DataFrame({"valence": [8.0, 2.0, 7.0, 3.0], "arousal": [5.0] * 4},
                         index=["happy", "sad", "calm", "afraid"])
    v = valence_agreement({"happy": 0.5, "sad": -0.4, "calm": 0.2, "afraid": -0.1, "unrated": 0.9, "blank": None}, norms)
    assert v is not None and v["n"] == 4 and v["pearson"] > 0.9 and v["spearman"] == pytest.approx(1.0)
    flipped = valence_agreement({"happy": -0.5, "sad": 0.4, "calm": -0.2, "afraid": 0.1}, norms)
    assert flipped is not None and flipped["pearson"] == pytest.approx(-v["pearson"])
    assert valence_agreement({"happy": 0.5, "sad": -0.4}, norms) is None
    assert valence_agreement({"happy": 0.5, "sad": -0.4, "calm": 0.2}, None) is None
    assert "not computed" in valence_text(None) and "n = 4 rated" in valence_text(v)


def test_bad_activity_file(tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text(json.dumps({"groups": {"x": ["same", "same"]}}))
    with pytest.raises(EmovecError, match="unique"):
        load_activities(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(EmovecError, match="groups"):
        load_activities(bad)


def _last_logits(lm, text: str, mask: list[bool] | None = None, steering: SteeringVector | None = None) -> np.ndarray:
    """Reference: a plain full forward pass and the A/B logits at the last position."""
    enc = lm.tokenizer([text], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        if steering is None:
            logits = lm.model(**enc).logits[0, -1]
        else:
            with steering.apply(lm, mask=torch.tensor([mask])):
                logits = lm.model(**enc).logits[0, -1]
    return logits[answer_ids(lm)].numpy()


def test_choice_reader_matches_full_pass_and_order_matters(lm):
    acts = load_activities(per_group=1)
    pairs = [(0, 7), (7, 0), (2, 4)]
    logits = pair_preferences(lm, acts, pairs, batch_size=2)
    for (i, j), row in zip(pairs, logits):
        text = lm.chat(pair_question(acts[i].text, acts[j].text)[0])
        assert np.allclose(row, _last_logits(lm, text), atol=1e-3)
    p = p_first(logits)
    assert np.all((p > 0) & (p < 1))
    assert not np.allclose(logits[0], logits[1], atol=1e-3)  # swapping the options changes what the model sees
    assert p[0] != pytest.approx(1 - p[1], abs=1e-3)  # position bias is measurable, not assumed zero


def test_activation_span_decodes_to_the_activity(lm):
    acts = load_activities(per_group=1)
    enc, mask = feeling_batch(lm, acts)
    for r, a in enumerate(acts):
        ids = enc["input_ids"][r][mask[r]].tolist()
        assert lm.tokenizer.decode(ids).strip() == a.text
        assert mask[r].sum() < enc["attention_mask"][r].sum()


def test_steering_mask_touches_only_the_steered_activity(lm, small_vectors):
    from emovec.steering import steering_vector

    acts = load_activities(per_group=1)
    pairs = [(1, 5), (5, 1), (5, 3)]
    batch = pair_batch(lm, acts, pairs, steer_on={1})
    for r, (i, j) in enumerate(pairs):
        ids, mask = batch.full_ids(r), batch.full_mask(r)
        marked = lm.tokenizer.decode([t for t, m in zip(ids, mask) if m]).strip()
        assert marked == (acts[1].text if 1 in (i, j) else "")
    sv = steering_vector(small_vectors, {"happy": 2.0})
    steered = pair_preferences(lm, acts, pairs, steering=sv, steer_on={1}, batch_size=4)
    plain = pair_preferences(lm, acts, pairs, batch_size=4)
    for r, (i, j) in enumerate(pairs):
        text = lm.chat(pair_question(acts[i].text, acts[j].text)[0])
        ref = _last_logits(lm, text, batch.full_mask(r), sv)
        assert np.allclose(steered[r], ref, atol=1e-3)  # steered in the cached prefix or in the suffix alike
    assert not np.allclose(steered[0], plain[0], atol=1e-3) and not np.allclose(steered[1], plain[1], atol=1e-3)
    assert np.allclose(steered[2], plain[2], atol=1e-5)  # a pair without the steered activity is untouched


def test_tiny_run_then_resume(run_copy):
    kw = dict(emotions="happy,sad", per_group=1, n_vectors=2, steer_prompts=8, n_boot=20, progress=False)
    s = run_preferences(run_copy, **kw)
    out = run_copy / "experiments" / "preferences"
    samples = (out / "samples.jsonl").read_text().splitlines()
    assert s["n_activities"] == 8 and s["n_prompts_unsteered"] == 56
    assert len(samples) == 56 + 2 * 8 and s["n_samples"] == len(samples)
    assert [c["n"] for c in s["correlations"]] == [8, 8] and {c["emotion"] for c in s["correlations"]} == {"happy", "sad"}
    assert {v["emotion"] for v in s["steering"]["vectors"]} == {"happy", "sad"}
    assert s["steering"]["n_steered"] == 4 and s["steering"]["prompts_per_vector"] == 8
    assert abs(sum(a["elo"] for a in s["elo"])) < 1e-6
    assert 0 <= s["position_bias"]["first_chosen"]["rate"] <= 1
    for name in ("summary.json", "elo.csv", "correlations.csv", "steering.csv", "elo.png", "correlation.png", "steering.png"):
        assert (out / name).stat().st_size > 0
    again = run_preferences(run_copy, **kw)
    assert (out / "samples.jsonl").read_text().splitlines() == samples
    assert [a["elo"] for a in again["elo"]] == [a["elo"] for a in s["elo"]]
    assert again["steering"]["vectors"] == s["steering"]["vectors"]
    assert set(s["steering"]["shift_vs_r"]) == {"n", "r", "p"} and s["timing"]["total_s"] > 0
    assert s["valence"] is None  # two emotions are too few to correlate with their valence
    lines = EXPERIMENTS["preferences"].result_lines(s, run_copy)
    assert lines[:-1] == summary_lines(s) and lines[0].startswith("8 activities, 56 ordered pairs")
    with pytest.raises(EmovecError, match="hostile"):
        run_preferences(run_copy, emotions="hostile", per_group=1, progress=False)


def test_resume_with_another_question_is_refused(run_copy, lm, monkeypatch):
    """Stored answers are keyed by activities, condition and steered sides, not by the question asked: a results
    folder made with another pair question (or model) is refused instead of serving its answers as fresh ones."""
    kw = dict(emotions="happy", per_group=1, n_vectors=0, progress=False, lm=lm)
    run_preferences(run_copy, **kw)
    out = run_copy / "experiments" / "preferences"
    assert json.loads((out / "settings.json").read_text())["model"] == lm.name
    run_preferences(run_copy, **kw)  # the same settings resume
    monkeypatch.setattr(activities, "PAIR_LEAD", "Answer with A or B. Which would you rather do: (A)")
    with pytest.raises(EmovecError, match="different pair_prompt") as err:
        run_preferences(run_copy, **kw)
    assert "\n" not in str(err.value)
