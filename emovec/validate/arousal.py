"""Arousal, investigated (issue 11): does any direction of the emotion vectors track human arousal?

The paper's PC2 tracks arousal (r = 0.66). From a run's stored per-story activations (no
model), this module rebuilds the vectors at every kept layer and several denoising
fractions, takes their principal components, and correlates them with Warriner arousal
over the emotions the norms rate. Choosing the best of many settings on the same ratings
inflates r, so the headline is a **hold-out protocol**: the rated emotions are split into
two halves (seeded), a setting is chosen on one half and its r is reported on the other.
Alongside: a permutation null for the grid maximum, cross-validated ridge regression from
the vectors to arousal (a ceiling on how linearly decodable arousal is), non-norm
confounds (story length, stories kept, vector norm), and a corpus-size curve.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..activations import CorpusActivations, load_corpus_activations
from ..corpus import load_corpus
from ..recognition import class_means
from ..rundir import open_run, run_topics
from ..storage import EmovecError
from ..vectors import EmotionVectors, denoise_components, project_out
from .analyses import correlation, load_norms, pca_against_norms, split_halves
from .scaling import denoised_units, null_abs_r, sizes_and_emotions, summary_stats

DEFAULT_FRACTIONS = (0.0, 0.5, 0.7, 0.9, 0.95)
TARGETS = ("arousal", "arousal_given_valence", "valence")
FAMILIES = {
    "any_pc": "PC1..K vs arousal or arousal | valence, any layer and denoise fraction",
    "pc2": "PC2 vs arousal, any layer and denoise fraction",
    "top2_pc": "PC1 or PC2 vs arousal, any layer and denoise fraction",
    "valence_control": "PC1..K vs valence, any layer and denoise fraction (a positive control)",
}
ALPHAS = np.logspace(-3, 3, 13)
METRICS = ("pc1", "pc2", "best_pc", "ridge", "ridge_valence", "valence_pc1")


@dataclass
class VectorGrid:
    """PC scores of emotion vectors rebuilt at each (layer, denoise fraction).

    `scores` [L, F, K, E]: scores of PCs 1..K of the centred unit vectors, each PC signed so
    that its largest-|score| emotion is positive (never by the norms, so nothing leaks from
    held-out ratings); `variance` [L, F, K] the share of variance each PC explains; `units`
    {layer: [E, D]} the unit vectors at `ridge_fraction`, the ridge decoder's input.
    """

    layers: list[int]
    fractions: list[float]
    emotions: list[str]
    scores: np.ndarray
    variance: np.ndarray
    units: dict[int, np.ndarray]
    ridge_fraction: float

    def setting(self, index: tuple[int, ...]) -> dict[str, Any]:
        """The (layer, fraction, PC[, target]) that a grid index [li, fi, ki(, ti)] names."""
        out: dict[str, Any] = {"layer": self.layers[index[0]], "fraction": self.fractions[index[1]], "pc": index[2] + 1}
        if len(index) > 3:
            out["target"] = TARGETS[index[3]]
        return out


def neutral_components(neutral: CorpusActivations | None, layer: int, fraction: float, width: int) -> torch.Tensor:
    """The denoising components [k, width] (float64) at `layer`: none for fraction 0 or without a neutral corpus."""
    if neutral is None or fraction == 0:
        return torch.zeros(0, width, dtype=torch.float64)
    if layer not in neutral.keep_layers:
        raise EmovecError(f"neutral activations were not kept at layer {layer} (kept: {neutral.keep_layers})")
    return denoise_components(neutral.pooled[:, neutral.keep_layers.index(layer)], fraction)[0].to(torch.float64)


def _story_index(stories: CorpusActivations, emotions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the stories of `emotions` and each row's class index into `emotions`."""
    pos = {e: i for i, e in enumerate(emotions)}
    rows = np.array([i for i, lab in enumerate(stories.labels) if lab in pos], dtype=int)
    return rows, np.array([pos[stories.labels[i]] for i in rows], dtype=int)


def _pcs(units: np.ndarray, names: list[str], n_pcs: int) -> tuple[np.ndarray, np.ndarray]:
    """Norm-free PCA (via `pca_against_norms` without norms): scores [E, K] and variance shares [K]."""
    pca = pca_against_norms(units, names, None, n_pcs=n_pcs)
    total = float(((units - units.mean(0)) ** 2).sum())
    return pca["scores"], (pca["scores"] ** 2).sum(0) / max(total, 1e-30)


def build_grid(stories: CorpusActivations, neutral: CorpusActivations | None, emotions: Sequence[str],
               layers: Sequence[int] | None = None, fractions: Sequence[float] = DEFAULT_FRACTIONS, n_pcs: int = 10,
               ridge_fraction: float = 0.5, rows: np.ndarray | None = None) -> VectorGrid:
    """Rebuild the vectors (as `EmotionVectors` does) at each layer x fraction and take their first `n_pcs` PCs.

    `layers` defaults to every layer kept per story (and per neutral text); `rows` restricts
    the stories used (a subsample). Without a neutral corpus only fraction 0 (raw) is built.
    """
    names = list(emotions)
    kept = [lay for lay in stories.keep_layers if neutral is None or lay in neutral.keep_layers]
    layers = kept if layers is None else [int(lay) for lay in layers]
    if missing := [lay for lay in layers if lay not in kept]:
        raise EmovecError(f"layers {missing} were not kept per story and per neutral text (kept: {kept})")
    fracs = [0.0] if neutral is None else sorted({float(f) for f in fractions} | {float(ridge_fraction)})
    ridge_fraction = ridge_fraction if neutral is not None else 0.0
    idx, y = _story_index(stories, names)
    if rows is not None:
        keep = np.isin(idx, rows)
        idx, y = idx[keep], y[keep]
    if len(set(y.tolist())) < len(names):
        raise EmovecError("every emotion needs at least one story in the grid")
    k = min(n_pcs, len(names))
    scores = np.zeros((len(layers), len(fracs), k, len(names)))
    variance = np.zeros((len(layers), len(fracs), k))
    units: dict[int, np.ndarray] = {}
    for li, layer in enumerate(layers):
        x = stories.pooled[idx, stories.keep_layers.index(layer)].to(torch.float64)
        for fi, frac in enumerate(fracs):
            u = denoised_units(x, y, len(names), neutral_components(neutral, layer, frac, x.shape[1])).numpy()
            s, v = _pcs(u, names, k)
            scores[li, fi], variance[li, fi] = s.T, v
            if frac == ridge_fraction:
                units[layer] = u
    return VectorGrid(list(layers), fracs, names, scores, variance, units, ridge_fraction)


# --- correlations ---------------------------------------------------------------------------------

def residualize(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Residual of y after an OLS fit on x with intercept (y itself, centred, when x is constant)."""
    xc, yc = x - x.mean(), y - y.mean()
    denom = float(xc @ xc)
    return np.asarray(yc - (float(xc @ yc) / denom) * xc if denom > 0 else yc)


def targets(arousal: np.ndarray, valence: np.ndarray) -> np.ndarray:
    """The targets [3, n] in `TARGETS` order: arousal, arousal residualised on valence (within these n), valence."""
    return np.stack([arousal, residualize(arousal, valence), valence])


def pearson_rows(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Pearson r of every row of `s` [..., n] with `t` [n] (0 where either is constant), vectorised over the grid."""
    sc, tc = s - s.mean(-1, keepdims=True), t - t.mean()
    den = np.asarray(np.sqrt((sc**2).sum(-1) * float(tc @ tc)))
    return np.asarray(np.divide(sc @ tc, den, out=np.zeros(den.shape), where=den > 0))


def grid_r(scores: np.ndarray, target_rows: np.ndarray) -> np.ndarray:
    """r of every grid PC score [L, F, K, n] with each target row [T, n], as [L, F, K, T]."""
    return np.stack([pearson_rows(scores, t) for t in target_rows], axis=-1)


def family_mask(shape: tuple[int, ...], family: str) -> np.ndarray:
    """Which [L, F, K, T] settings a selection family may choose from (see `FAMILIES`)."""
    mask = np.zeros(shape, dtype=bool)
    if family == "any_pc":
        mask[..., :2] = True
    elif family == "pc2":
        mask[:, :, 1, 0] = True
    elif family == "top2_pc":
        mask[:, :, :2, 0] = True
    elif family == "valence_control":
        mask[..., 2] = True
    else:
        raise EmovecError(f"unknown selection family {family!r}; known: {', '.join(FAMILIES)}")
    return mask


def select(r: np.ndarray, mask: np.ndarray) -> tuple[tuple[int, ...], float]:
    """The allowed setting with the largest |r|, and that r (its sign fixes the direction used on held-out data)."""
    flat = int(np.argmax(np.where(mask, np.abs(r), -1.0)))
    index = tuple(int(i) for i in np.unravel_index(flat, r.shape))
    return index, float(r[index])


def max_r_null(scores: np.ndarray, arousal: np.ndarray, valence: np.ndarray, n_perm: int = 1000,
               seed: int = 0, family: str = "any_pc") -> np.ndarray:
    """Null distribution of the family's largest |r| when the ratings are shuffled across emotions.

    Arousal and valence move together (one permutation), so their relation is kept and
    only their link to the vectors is broken.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros(n_perm)
    mask = family_mask((*scores.shape[:3], len(TARGETS)), family)
    for i in range(n_perm):
        perm = rng.permutation(len(arousal))
        r = grid_r(scores, targets(arousal[perm], valence[perm]))
        out[i] = float(np.abs(r[mask]).max())
    return out


# --- ridge decoding -------------------------------------------------------------------------------

def ridge_oof(x: np.ndarray, y: np.ndarray, folds: int = 10, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of y from x by ridge regression (alpha by leave-one-out inside each training fold)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold

    pred = np.zeros(len(y))
    for tr, te in KFold(n_splits=min(folds, len(y)), shuffle=True, random_state=seed).split(x):
        pred[te] = RidgeCV(alphas=ALPHAS).fit(x[tr], y[tr]).predict(x[te])
    return pred


def ridge_holdout(units: dict[int, np.ndarray], y: np.ndarray, sel: np.ndarray, held: np.ndarray,
                  folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Choose the layer by inner k-fold r on the selection half, fit there, and correlate predictions on held-out.

    `units` {layer: [n, D]} rows aligned with `y` [n].
    """
    from sklearn.linear_model import RidgeCV

    inner = {lay: float(pearson_rows(ridge_oof(u[sel], y[sel], folds, seed), y[sel])) for lay, u in units.items()}
    layer = max(inner, key=lambda lay: inner[lay])
    pred = RidgeCV(alphas=ALPHAS).fit(units[layer][sel], y[sel]).predict(units[layer][held])
    return {"layer": layer, "selection_r": inner[layer], **_short(correlation(pred, y[held]))}


# --- the analysis ---------------------------------------------------------------------------------

def _short(c: dict[str, Any], sign: float = 1.0) -> dict[str, Any]:
    """Pearson r (times `sign`), its two-sided p and n from a `correlation` result."""
    r = c["pearson"]
    return {"r": None if r is None else sign * float(r), "p": c["pearson_p"], "n": c["n"]}


def holdout_protocol(grid: VectorGrid, matched: np.ndarray, aro: np.ndarray, val: np.ndarray, seeds: int = 20,
                     stratify: bool = True, ridge_folds: int = 5) -> dict[str, Any]:
    """Select on one half of the rated emotions, report r on the other, for each split seed and family.

    `matched` indexes the rated emotions in `grid.emotions`; `aro`/`val` are their ratings.
    The held-out r is signed by the direction chosen on the selection half (so a flip
    counts against it); arousal | valence is residualised within each half separately.
    """
    scores = grid.scores[..., matched]
    splits = []
    for seed in range(seeds):
        sel, held = split_halves(aro, seed, stratify)
        r_sel = grid_r(scores[..., sel], targets(aro[sel], val[sel]))
        row: dict[str, Any] = {"seed": seed, "n_selection": len(sel), "n_heldout": len(held)}
        for family in FAMILIES:
            index, r = select(r_sel, family_mask(r_sel.shape, family))
            t_held = targets(aro[held], val[held])[index[3]]
            c = correlation(scores[index[:3]][held], t_held)
            row[family] = {**grid.setting(index), "selection_r": abs(r), **_short(c, float(np.sign(r)) or 1.0)}
        units = {lay: u[matched] for lay, u in grid.units.items()}
        row["ridge_arousal"] = ridge_holdout(units, aro, sel, held, ridge_folds, seed)
        row["ridge_valence"] = ridge_holdout(units, val, sel, held, ridge_folds, seed)
        splits.append(row)
    summary = {}
    for key in (*FAMILIES, "ridge_arousal", "ridge_valence"):
        picks = [s[key] for s in splits]
        modal = Counter((p["layer"], p.get("fraction"), p.get("pc"), p.get("target")) for p in picks).most_common(1)[0]
        summary[key] = {"heldout_r": summary_stats([p["r"] for p in picks]),
                        "selection_r": summary_stats([p["selection_r"] for p in picks]),
                        "heldout_significant": sum(p["r"] is not None and p["r"] > 0 and p["p"] < 0.05 for p in picks),
                        "modal_setting": {"layer": modal[0][0], "fraction": modal[0][1], "pc": modal[0][2],
                                          "target": modal[0][3], "times": modal[1]}}
    return {"seeds": seeds, "stratified": stratify, "ridge_fraction": grid.ridge_fraction,
            "null_abs_r_heldout": null_abs_r(splits[0]["n_heldout"]) if splits else None,
            "families": {**FAMILIES, "ridge_arousal": f"ridge from unit vectors (fraction {grid.ridge_fraction}) to arousal, "
                         "layer by inner CV on the selection half", "ridge_valence": "the same for valence (a positive control)"},
            "summary": summary, "splits": splits}


def _grid_table(grid: VectorGrid, r: np.ndarray, default_fi: int, default_layer: int) -> list[dict[str, Any]]:
    """Per (layer, fraction): PC2 r with arousal, the best PC for arousal, PC1 r with valence, variance shares."""
    rows = []
    for li, layer in enumerate(grid.layers):
        for fi, frac in enumerate(grid.fractions):
            a = r[li, fi, :, 0]
            best = int(np.argmax(np.abs(a)))
            rows.append({"layer": layer, "fraction": frac, "default": layer == default_layer and fi == default_fi,
                         "pc2_arousal_abs_r": abs(float(a[1])) if len(a) > 1 else None,
                         "best_pc": best + 1, "best_pc_arousal_abs_r": abs(float(a[best])),
                         "pc2_arousal_given_valence_abs_r": abs(float(r[li, fi, 1, 1])) if len(a) > 1 else None,
                         "pc1_valence_abs_r": abs(float(r[li, fi, 0, 2])),
                         "variance": [round(float(v), 4) for v in grid.variance[li, fi]]})
    return rows


def confounds(stories: CorpusActivations, emotions: Sequence[str], matched: np.ndarray, aro: np.ndarray,
              val: np.ndarray, layer: int, comps: torch.Tensor, pcs: dict[str, np.ndarray],
              lengths: dict[str, float] | None = None) -> dict[str, Any]:
    """Per-emotion nuisance quantities correlated with arousal, valence and PC scores (`pcs` {name: [n rated]}).

    Quantities: mean story length in words (from the corpus text: a proxy for tokens),
    stories kept after the filter, and the norm of the raw and the denoised (non-unit)
    vector at `layer` (a mean of fewer stories is noisier, so its norm is larger). Also the
    partial r of each PC score with arousal, the quantity regressed out of both.
    """
    idx, y = _story_index(stories, emotions)
    x = stories.pooled[idx, stories.keep_layers.index(layer)].to(torch.float64)
    means = class_means(x, y, len(emotions))
    raw = means - means.mean(0)
    per: dict[str, np.ndarray] = {
        "stories_kept": np.bincount(y, minlength=len(emotions)).astype(float),
        "raw_norm": raw.norm(dim=1).numpy(), "denoised_norm": project_out(raw, comps).norm(dim=1).numpy()}
    if lengths:
        words = np.array([lengths.get(stories.ids[i], np.nan) for i in idx])
        per["mean_words"] = np.array([np.nanmean(words[y == j]) if np.isfinite(words[y == j]).any() else np.nan
                                      for j in range(len(emotions))])
    out: dict[str, Any] = {"layer": layer}
    for name, v in per.items():
        vm = v[matched]
        ok = np.isfinite(vm)
        out[name] = {"mean": float(np.nanmean(vm)), "sd": float(np.nanstd(vm, ddof=1)),
                     "arousal": _short(correlation(vm[ok], aro[ok])), "valence": _short(correlation(vm[ok], val[ok])),
                     **{f"{k}_score": _short(correlation(vm[ok], sc[ok])) for k, sc in pcs.items()},
                     **{f"{k}_arousal_partial": _short(correlation(residualize(sc[ok], vm[ok]), residualize(aro[ok], vm[ok])))
                        for k, sc in pcs.items()}}
    return out


def subsample_curve(stories: CorpusActivations, neutral: CorpusActivations | None, emotions: Sequence[str],
                    norms: pd.DataFrame, settings: dict[str, tuple[int, float]], ks: Sequence[int] | None = None,
                    seeds: int = 5, n_pcs: int = 10, min_share: float = 0.8, folds: int = 10) -> dict[str, Any]:
    """Arousal figures against k stories per emotion at the named (layer, fraction) settings.

    As `corpus_scaling` does, only emotions with at least max(k) stories take part and each
    (k, seed) draws k stories per emotion. Per draw and setting: |r| of PC1 and PC2 with arousal, the
    largest |r| of PC1..K (chosen on the same data), the 10-fold ridge r for arousal and, as
    a control, for valence, and PC1's |r| with valence; summarised over seeds. By default
    the largest k is the one `min_share` of the emotions reach (`common_k`).
    """
    labels = np.array(stories.labels)
    want, names, _ = sizes_and_emotions(stories.labels, emotions, ks, min_share, "the corpus-size curve")
    matched = np.array([i for i, e in enumerate(names) if e in norms.index], dtype=int)
    if len(matched) < 10:
        raise EmovecError(f"only {len(matched)} rated emotions have {max(want)} stories; lower the largest k")
    aro = norms.loc[[names[i] for i in matched], "arousal"].to_numpy()
    val = norms.loc[[names[i] for i in matched], "valence"].to_numpy()
    index = {e: np.flatnonzero(labels == e) for e in names}
    x_at = {lay: stories.pooled[:, stories.keep_layers.index(lay)].to(torch.float64) for lay, _ in settings.values()}
    comps = {s: neutral_components(neutral, lay, f, stories.pooled.shape[-1]) for s, (lay, f) in settings.items()}
    rows = []
    for k in want:
        per: dict[str, dict[str, list[float | None]]] = {s: {m: [] for m in METRICS}
                                                         for s in settings}
        for seed in range(seeds):
            rng = np.random.default_rng([seed, k])
            draw = np.concatenate([rng.permutation(index[e])[:k] for e in names])
            y = np.repeat(np.arange(len(names)), k)
            for s, (lay, _) in settings.items():
                u = denoised_units(x_at[lay][draw], y, len(names), comps[s]).numpy()
                sc = _pcs(u, names, n_pcs)[0][matched].T
                r = grid_r(sc, targets(aro, val))
                per[s]["pc1"].append(abs(float(r[0, 0])))
                per[s]["pc2"].append(abs(float(r[1, 0])))
                per[s]["best_pc"].append(float(np.abs(r[:, 0]).max()))
                per[s]["ridge"].append(float(pearson_rows(ridge_oof(u[matched], aro, folds, seed), aro)))
                per[s]["ridge_valence"].append(float(pearson_rows(ridge_oof(u[matched], val, folds, seed), val)))
                per[s]["valence_pc1"].append(abs(float(r[0, 2])))
        rows.append({"k": k, "n_stories": k * len(names),
                     **{s: {m: summary_stats(v) for m, v in d.items()} for s, d in per.items()}})
    return {"ks": want, "seeds": seeds, "n_emotions": len(names), "n_matched": int(len(matched)),
            "null_abs_r": null_abs_r(len(matched)), "settings": {s: {"layer": lay, "fraction": f} for s, (lay, f) in settings.items()},
            "rows": rows}


def arousal_analysis(stories: CorpusActivations, neutral: CorpusActivations | None, vectors: EmotionVectors,
                     norms: pd.DataFrame | None = None, lengths: dict[str, float] | None = None,
                     fractions: Sequence[float] = DEFAULT_FRACTIONS, n_pcs: int = 10, split_seeds: int = 20,
                     stratify: bool = True, n_perm: int = 1000, ks: Sequence[int] | None = None, seeds: int = 5,
                     folds: int = 10) -> dict[str, Any]:
    """The whole investigation on one run's activations: grid, hold-out protocol, null, ridge, confounds, corpus size.

    `vectors` give the emotions, the default layer and the run's denoise fraction (its
    `denoised` tensor is checked against the rebuilt default setting). Figures selected on
    the same ratings they are reported on are labelled so.
    """
    norms = load_norms() if norms is None else norms
    if norms is None:
        raise EmovecError("the arousal analysis needs the human norms: pip install 'emovec[norms]'")
    emotions = [e for e in vectors.emotions if stories.counts.get(e, 0) > 0]
    default_layer = vectors.default_layer
    default_fraction = float(vectors.meta.get("denoise_fraction", 0.5)) if neutral is not None else 0.0
    grid = build_grid(stories, neutral, emotions, fractions=fractions, n_pcs=n_pcs, ridge_fraction=default_fraction)
    if default_layer not in grid.layers:
        raise EmovecError(f"the default layer {default_layer} was not kept per story; re-extract with it kept")
    matched = np.array([i for i, e in enumerate(emotions) if e in norms.index], dtype=int)
    if len(matched) < 10:
        raise EmovecError(f"only {len(matched)} emotions are rated by the norms; the analysis needs 10 or more")
    rated = [emotions[i] for i in matched]
    aro, val = norms.loc[rated, "arousal"].to_numpy(), norms.loc[rated, "valence"].to_numpy()
    df_ = grid.fractions.index(default_fraction)

    # the default setting, as the report computes it (PC2 signed to r >= 0 with arousal on these data)
    rebuilt = grid.units[default_layer]
    stored = vectors.matrix(default_layer, emotions).to(torch.float64).numpy()
    pca = pca_against_norms(rebuilt, emotions, norms, n_pcs=3)
    default = {"layer": default_layer, "fraction": default_fraction, "n_matched": len(matched),
               "explained_variance": pca["explained_variance"][:3],
               "rebuilt_vs_stored_min_cosine": float((rebuilt * stored).sum(1).min()),
               **{key: _short(pca["correlations"][key]) for key in ("pc1_valence", "pc2_arousal", "pc3_arousal")}}

    r_all = grid_r(grid.scores[..., matched], targets(aro, val))
    same_data = {}
    for family in FAMILIES:
        index, r = select(r_all, family_mask(r_all.shape, family))
        null = max_r_null(grid.scores[..., matched], aro, val, n_perm=n_perm, family=family) if n_perm else np.zeros(0)
        same_data[family] = {**grid.setting(index), "abs_r": abs(r), "nominal_p": correlation(
            grid.scores[index[:3]][matched], targets(aro, val)[index[3]])["pearson_p"],
            "n_settings": int(family_mask(r_all.shape, family).sum()), "n_perm": len(null),
            "familywise_p": float((1 + (null >= abs(r)).sum()) / (1 + len(null))) if len(null) else None,
            "null_max_abs_r_95": float(np.quantile(null, 0.95)) if len(null) else None}

    ridge_layers = {}
    for layer, u in grid.units.items():
        ridge_layers[layer] = {t: _short(correlation(ridge_oof(u[matched], v, folds), v)) for t, v in (("arousal", aro), ("valence", val))}
    best_ridge = max(ridge_layers, key=lambda lay: ridge_layers[lay]["arousal"]["r"] or -1.0)
    ridge = {"fraction": default_fraction, "folds": folds, "alphas": [float(a) for a in ALPHAS],
             "default_layer": {"layer": default_layer, **ridge_layers[default_layer]},
             "best_layer_same_data": {"layer": best_ridge, **ridge_layers[best_ridge]},
             "layers": {str(lay): v for lay, v in ridge_layers.items()}}

    holdout = holdout_protocol(grid, matched, aro, val, seeds=split_seeds, stratify=stratify)
    scores_default = {f"pc{j + 1}": grid.scores[grid.layers.index(default_layer), df_, j, matched] for j in range(min(2, n_pcs))}
    default["norm_free_sign"] = {f"{pc}_{t}": _short(correlation(sc, v)) for pc, sc in scores_default.items()
                                 for t, v in (("arousal", aro), ("valence", val))}
    conf = confounds(stories, emotions, matched, aro, val, default_layer,
                     neutral_components(neutral, default_layer, default_fraction, stories.pooled.shape[-1]),
                     scores_default, lengths)
    modal = holdout["summary"]["top2_pc"]["modal_setting"]
    settings = {"default": (default_layer, default_fraction), "modal_selected": (int(modal["layer"]), float(modal["fraction"]))}
    try:
        curve: dict[str, Any] = subsample_curve(stories, neutral, emotions, norms, settings, ks=ks, seeds=seeds, n_pcs=n_pcs)
    except EmovecError as exc:
        curve = {"skipped": str(exc)}
    return {"n_emotions": len(emotions), "n_matched": len(matched), "n_stories": int(sum(stories.counts[e] for e in emotions)),
            "layers": grid.layers, "fractions": grid.fractions, "n_pcs": int(grid.scores.shape[2]),
            "null_abs_r": null_abs_r(len(matched)), "arousal_valence_r": _short(correlation(aro, val)),
            "default": default, "grid": _grid_table(grid, r_all, df_, default_layer),
            "same_data_max": same_data, "ridge": ridge, "holdout": holdout, "confounds": conf, "corpus_size": curve,
            "method": "vectors rebuilt from per-story activations (class means minus their mean, top neutral PCs "
                      "projected out, unit length); norm-free PCA; Pearson r with Warriner ratings; arousal | valence "
                      "= arousal residualised on valence by OLS within the emotions correlated"}


def story_lengths(run_dir: str | Path) -> dict[str, float]:
    """Words per kept story, by story id, from the run's corpus (empty when the corpus file is missing)."""
    try:
        return {str(r["id"]): float(len(str(r["text"]).split())) for r in load_corpus(run_dir, "stories")}
    except EmovecError:
        return {}


def analyze_run(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """`arousal_analysis` on a run directory's stored activations and vectors (no model is loaded)."""
    run_dir = Path(run_dir)
    stories = load_corpus_activations(run_dir / "activations", "stories")
    try:
        neutral: CorpusActivations | None = load_corpus_activations(run_dir / "activations", "neutral")
    except EmovecError:
        neutral = None
    vectors = EmotionVectors.load(run_dir / "vectors.safetensors")
    if vectors.meta.get("topic_adjusted"):  # rebuild the vectors as the run built them
        topics = run_topics(run_dir, open_run(run_dir, write=False), stories.ids)
        stories = stories.topic_adjusted(topics) if topics is not None else stories
    out = arousal_analysis(stories, neutral, vectors, lengths=story_lengths(run_dir), **kwargs)
    return {"run_dir": str(run_dir), "model": vectors.meta.get("model"), **out}
