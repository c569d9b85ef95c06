"""Corpus scaling on the small hand-written run (6 emotions x 8 stories): the ks and shapes of its rows,
recognition far above chance at full size, split-half agreement growing with k; and the shared PCA helper."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from emovec.activations import load_corpus_activations
from emovec.validate.analyses import pca_against_norms
from emovec.validate.scaling import common_k, corpus_scaling, default_ks, null_abs_r, scaling_analysis


@pytest.fixture(scope="module")
def scaled(small_run, small_vectors):
    stories = load_corpus_activations(small_run / "activations", "stories")
    neutral = load_corpus_activations(small_run / "activations", "neutral")
    return scaling_analysis(stories, neutral, small_vectors, {"a second layer": 10}, seeds=3)


def test_default_ks_and_common_k():
    assert default_ks(8) == [2, 3, 4, 6, 8]
    assert default_ks(15) == [2, 3, 4, 6, 8, 12, 15]
    assert default_ks(2) == [2] and default_ks(1) == []
    assert common_k([15] * 19 + [2]) == 15  # one starved emotion does not cap the curve
    assert common_k([15] * 5 + [2] * 5) == 2


def test_null_abs_r_is_the_mean_abs_r_of_unrelated_data():
    assert null_abs_r(2) is None
    assert null_abs_r(3) == pytest.approx(2 / math.pi)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 4000, 20))
    xc, yc = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    r = (xc * yc).sum(1) / np.sqrt((xc**2).sum(1) * (yc**2).sum(1))
    assert np.abs(r).mean() == pytest.approx(null_abs_r(20), abs=0.01)


def test_rows_have_the_right_ks_and_shapes(scaled, small_vectors):
    assert scaled["layer"] == small_vectors.default_layer
    assert scaled["ks"] == [2, 3, 4, 6, 8] and [r["k"] for r in scaled["rows"]] == scaled["ks"]
    assert scaled["n_emotions"] == 6 and scaled["emotions_left_out"] == []
    assert scaled["chance_top1"] == pytest.approx(1 / 6) and scaled["chance_top5"] == pytest.approx(5 / 6)
    for row in scaled["rows"]:
        assert row["n_stories"] == 6 * row["k"]
        assert row["top1"]["n"] == row["top5"]["n"] == row["pc1_variance"]["n"] == 3
        assert row["top1"]["min"] <= row["top1"]["mean"] <= row["top1"]["max"]
        assert row["split_half"]["n"] == (3 if 2 * row["k"] <= 8 else 0)  # needs two disjoint draws of k
        assert 0 < row["pc1_variance"]["mean"] < 1
    assert list(scaled["other_layers"]) == ["10"] and scaled["other_layers"]["10"]["role"] == "a second layer"
    assert [r["k"] for r in scaled["other_layers"]["10"]["rows"]] == scaled["ks"]


def test_recognition_at_all_stories_is_far_above_chance(scaled):
    last = scaled["rows"][-1]
    assert last["top1"]["mean"] > 3 * scaled["chance_top1"]
    assert last["top1"]["min"] > 2 * scaled["chance_top1"]


def test_split_half_agreement_grows_with_k(scaled):
    halves = [r["split_half"]["mean"] for r in scaled["rows"] if r["split_half"]["n"]]
    assert len(halves) >= 3
    assert halves[-1] > halves[0] + 0.05
    assert np.mean(np.diff(halves)) > 0


def test_scaling_refuses_a_layer_that_was_not_kept(small_run):
    stories = load_corpus_activations(small_run / "activations", "stories")
    with pytest.raises(Exception, match="not kept at layer 99"):
        corpus_scaling(stories, None, sorted(set(stories.labels)), 99)


def test_pca_against_norms_orients_pcs_and_adds_pc3():
    rng = np.random.default_rng(1)
    names = [f"e{i}" for i in range(12)]
    valence = np.linspace(1, 9, 12)
    arousal = rng.uniform(1, 9, 12)
    units = np.outer(valence - 5, rng.standard_normal(32)) * 3 + np.outer(arousal - 5, rng.standard_normal(32))
    units += 0.1 * rng.standard_normal((12, 32))
    norms = pd.DataFrame({"valence": valence, "arousal": arousal}, index=names)
    two, three = pca_against_norms(units, names, norms), pca_against_norms(units, names, norms, n_pcs=3)
    assert two["scores"].shape == (12, 2) and three["scores"].shape == (12, 3)
    assert np.allclose(three["scores"][:, :2], two["scores"])
    assert set(three["correlations"]) == {f"pc{j}_{n}" for j in (1, 2, 3) for n in ("valence", "arousal")}
    assert two["correlations"]["pc1_valence"]["pearson"] > 0.95
    assert two["correlations"]["pc2_arousal"]["pearson"] >= 0
    assert pca_against_norms(units, names, None)["correlations"] == {}
