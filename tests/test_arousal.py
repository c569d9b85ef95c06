"""The arousal investigation on synthetic activations with a planted arousal direction (no model is loaded).

Stories of 40 made-up emotions are drawn around means that carry human-like "arousal" on one
direction and "valence" on another at layer 1 and nothing at layer 0; a neutral corpus with
one large nuisance direction that also leaks into the stories lets denoising matter.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from emovec.activations import CorpusActivations
from emovec.validate import arousal as ar
from emovec.vectors import EmotionVectors

E, D, K_STORIES = 40, 24, 6


def _corpus(pooled: np.ndarray, labels: list[str]) -> CorpusActivations:
    x = torch.tensor(pooled, dtype=torch.float32)
    groups = sorted(set(labels))
    lab = np.array(labels)
    sums = {g: x[torch.tensor(lab == g)].to(torch.float64).sum(0) for g in groups}
    return CorpusActivations(layers=[0, 1], keep_layers=[0, 1], ids=[f"{lab_}#{i}" for i, lab_ in enumerate(labels)],
                             labels=list(labels), pooled=x, sums=sums, counts={g: int((lab == g).sum()) for g in groups},
                             norm_sum=torch.ones(2), norm_count=1, start=1)


def synthetic(arousal_scale: float, valence_scale: float, seed: int = 0):
    """(stories, neutral, vectors, norms): arousal on axis 0 and valence on axis 1 of layer 1, a nuisance on axis 2."""
    rng = np.random.default_rng(seed)
    names = [f"emo{i}" for i in range(E)]
    aro, val = rng.uniform(1, 9, E), rng.uniform(1, 9, E)
    means = np.zeros((E, 2, D))
    means[:, 1, 0] = arousal_scale * (aro - aro.mean())
    means[:, 1, 1] = valence_scale * (val - val.mean())
    rows, labels = [], []
    for e in range(E):
        for _ in range(K_STORIES):
            x = means[e] + 0.3 * rng.standard_normal((2, D))
            x[:, 2] += 6.0 * rng.standard_normal(2)  # nuisance the neutral corpus also has
            rows.append(x)
            labels.append(names[e])
    stories = _corpus(np.stack(rows), labels)
    neutral_rows = 0.3 * rng.standard_normal((30, 2, D))
    neutral_rows[:, :, 2] += 6.0 * rng.standard_normal((30, 2))
    neutral = _corpus(neutral_rows, ["neutral"] * 30)
    vectors = EmotionVectors.from_activations(stories, neutral, names, denoise_fraction=0.5,
                                              extra_meta={"default_layer": 1, "n_layers": 2})
    norms = pd.DataFrame({"valence": val, "arousal": aro}, index=pd.Index(names, name="word"))
    return stories, neutral, vectors, norms


@pytest.fixture(scope="module")
def arousal_pc1():
    return synthetic(arousal_scale=1.0, valence_scale=0.4)


@pytest.fixture(scope="module")
def arousal_pc2():
    return synthetic(arousal_scale=0.4, valence_scale=1.0, seed=1)


def test_grid_rebuilds_the_stored_vectors(arousal_pc1):
    stories, neutral, vectors, _ = arousal_pc1
    grid = ar.build_grid(stories, neutral, vectors.emotions, fractions=(0.0, 0.5), ridge_fraction=0.5, n_pcs=4)
    assert grid.layers == [0, 1] and grid.fractions == [0.0, 0.5] and grid.scores.shape == (2, 2, 4, E)
    stored = vectors.matrix(1).to(torch.float64).numpy()
    assert np.allclose((grid.units[1] * stored).sum(1), 1.0, atol=1e-5)
    assert np.all(np.diff(grid.variance, axis=-1) <= 1e-12)  # PCs come in order of variance


def test_planted_arousal_is_found_on_its_pc_and_layer(arousal_pc1, arousal_pc2):
    for (stories, neutral, vectors, norms), pc in ((arousal_pc1, 0), (arousal_pc2, 1)):
        grid = ar.build_grid(stories, neutral, vectors.emotions, n_pcs=4)
        aro, val = norms.loc[grid.emotions, "arousal"].to_numpy(), norms.loc[grid.emotions, "valence"].to_numpy()
        r = ar.grid_r(grid.scores, ar.targets(aro, val))
        fi = grid.fractions.index(0.5)
        assert abs(r[1, fi, pc, 0]) > 0.9  # arousal on its PC at layer 1, denoised
        assert abs(r[1, fi, 1 - pc, 2]) > 0.75  # valence on the other
        assert np.abs(r[0, :, :, 0]).max() < 0.6  # layer 0 carries nothing
        denoised = r[:, fi:fi + 1]
        index, _ = ar.select(denoised, ar.family_mask(denoised.shape, "any_pc"))
        assert index[0] == 1 and index[2] == pc
    raw = r[1, grid.fractions.index(0.0)]  # arousal_pc2 undenoised: the nuisance takes PC2, arousal drops to PC3
    assert abs(raw[2, 0]) > 0.9 and abs(raw[1, 0]) < 0.3


def test_analysis_reports_the_planted_pc2_and_holds_out(arousal_pc2):
    stories, neutral, vectors, norms = arousal_pc2
    res = ar.arousal_analysis(stories, neutral, vectors, norms=norms, n_pcs=4, split_seeds=3, n_perm=50,
                              seeds=2, fractions=(0.0, 0.5), folds=5)
    assert res["n_matched"] == E and res["default"]["layer"] == 1 and res["default"]["fraction"] == 0.5
    assert res["default"]["rebuilt_vs_stored_min_cosine"] > 0.99999
    assert res["default"]["pc2_arousal"]["r"] > 0.9 and res["default"]["pc2_arousal"]["n"] == E
    assert res["default"]["pc1_valence"]["r"] > 0.9
    assert res["same_data_max"]["pc2"]["familywise_p"] == pytest.approx(1 / 51)
    summary = res["holdout"]["summary"]
    for family in ("any_pc", "pc2", "top2_pc", "ridge_arousal"):
        assert summary[family]["heldout_r"]["min"] > 0.8, family
        assert summary[family]["heldout_significant"] == 3
    assert summary["pc2"]["modal_setting"]["layer"] == 1
    assert all(s["n_selection"] + s["n_heldout"] == E for s in res["holdout"]["splits"])
    assert res["ridge"]["default_layer"]["arousal"]["r"] > 0.8
    assert abs(res["ridge"]["layers"]["0"]["arousal"]["r"]) < 0.6
    assert [row["k"] for row in res["corpus_size"]["rows"]] == [2, 3, 4, 6]
    assert res["corpus_size"]["rows"][-1]["default"]["pc2"]["mean"] > 0.9
    assert abs(res["confounds"]["stories_kept"]["mean"] - K_STORIES) < 1e-9


def test_noise_has_no_arousal_after_holdout():
    stories, neutral, vectors, norms = synthetic(arousal_scale=0.0, valence_scale=0.0, seed=2)
    res = ar.arousal_analysis(stories, neutral, vectors, norms=norms, n_pcs=4, split_seeds=4, n_perm=50, seeds=1,
                              fractions=(0.0, 0.5), ks=[2], folds=5)
    assert res["same_data_max"]["any_pc"]["familywise_p"] > 0.05
    assert abs(res["holdout"]["summary"]["any_pc"]["heldout_r"]["mean"]) < 0.35


def test_split_halves_are_disjoint_reproducible_and_stratified():
    values = np.random.default_rng(0).uniform(1, 9, 61)
    a, b = ar.split_halves(values, seed=3)
    assert len(set(a) & set(b)) == 0 and sorted([*a, *b]) == list(range(61))
    assert abs(len(a) - len(b)) <= 3 and len(b) >= len(a)  # odd items go to the held-out half
    a2, b2 = ar.split_halves(values, seed=3)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    assert not np.array_equal(a, ar.split_halves(values, seed=4)[0])
    tertile = np.zeros(61, dtype=int)
    for t, part in enumerate(np.array_split(np.argsort(values, kind="stable"), 3)):
        tertile[part] = t
    for t in range(3):  # each tertile is halved
        assert abs(int((tertile[a] == t).sum()) - int((tertile[b] == t).sum())) <= 1
    ra, rb = ar.split_halves(values, seed=3, stratify=False)
    assert len(ra) == 30 and len(rb) == 31 and len(set(ra) & set(rb)) == 0


def test_select_family_masks_and_residualize():
    r = np.zeros((2, 2, 3, 3))
    r[0, 1, 2, 0] = -0.9  # PC3 vs arousal: only the any_pc family may take it
    r[1, 0, 1, 0] = 0.5
    r[1, 1, 0, 2] = 0.95  # valence
    assert ar.select(r, ar.family_mask(r.shape, "any_pc")) == ((0, 1, 2, 0), -0.9)
    assert ar.select(r, ar.family_mask(r.shape, "pc2")) == ((1, 0, 1, 0), 0.5)
    assert ar.select(r, ar.family_mask(r.shape, "top2_pc")) == ((1, 0, 1, 0), 0.5)
    assert ar.select(r, ar.family_mask(r.shape, "valence_control")) == ((1, 1, 0, 2), 0.95)
    with pytest.raises(Exception, match="unknown selection family"):
        ar.family_mask(r.shape, "nope")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 50))
    res = ar.residualize(y + 2 * x, x)
    assert abs(np.corrcoef(res, x)[0, 1]) < 1e-9
    assert ar.pearson_rows(np.stack([x, -x, np.ones(50)]), x).tolist() == pytest.approx([1.0, -1.0, 0.0])
