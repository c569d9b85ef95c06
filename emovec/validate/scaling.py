"""Corpus scaling: how the evidence grows with the number of stories per emotion.

From one run's stored per-story activations, draw k stories per emotion (k from 2
up to all, several seeds) and measure at each k, with nothing recomputed by the
model: held-out recognition (k-fold inside the draw), the agreement of vectors
from two disjoint draws of k stories (split-half cosine, a measure that needs no
human ratings), and PC1/PC2/PC3 of the vectors against human valence and arousal.
It answers "how many stories does my model need?".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..activations import CorpusActivations
from ..recognition import class_means, fold_assignment, heldout_ranks, unit_rows
from ..storage import EmovecError
from ..topics import group_index, remove_group_means
from ..vectors import EmotionVectors, denoise_components, project_out
from .analyses import load_norms, pca_against_norms

METRICS = ("top1", "top5", "split_half", "valence_r", "arousal_r_pc2", "arousal_r_best", "pc1_variance")
_STEPS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def default_ks(max_k: int) -> list[int]:
    """The sizes to measure: 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, ... below `max_k`, then `max_k` itself."""
    return [k for k in _STEPS if k < max_k] + ([max_k] if max_k >= 2 else [])


# The share of emotions that must reach the largest k drawn (one starved emotion must not cap the whole curve).
MIN_SHARE = 0.9


def common_k(counts: Sequence[int], min_share: float = MIN_SHARE) -> int:
    """The largest k that at least `min_share` of the emotions reach (stories per emotion).

    One emotion the filter starved (e.g. 2 stories left) would otherwise cap the whole
    curve; emotions below the chosen k are left out of every point, and reported.
    """
    if not counts:
        return 0
    ordered = sorted(counts, reverse=True)
    return int(ordered[max(0, math.ceil(min_share * len(ordered)) - 1)])


# The share of emotions a run with a content check must reach at the largest k: the check keeps some emotions at
# their 2 best stories on purpose, so 90% would cap its curve at k = 2 (on the AVX2 demo 101 of 171 emotions keep 6+).
CHECKED_MIN_SHARE = 0.5


def null_abs_r(n: int) -> float | None:
    """Expected |Pearson r| of n pairs with no relation (normal data): the chance line of a sign-free correlation.

    The PCA flips PC1 so that r(PC1, valence) >= 0, so its r must be read against this, not 0.
    """
    if n < 3:
        return None
    return float(math.exp(math.lgamma((n - 1) / 2) - math.lgamma(n / 2)) / math.sqrt(math.pi))


def summary_stats(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sd (n-1), min, max and count of the finite values (all None when there are none)."""
    v = [float(x) for x in values if x is not None and np.isfinite(x)]
    if not v:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "min": float(np.min(v)), "max": float(np.max(v)), "n": len(v)}


def denoised_units(x: torch.Tensor, y: np.ndarray, n: int, comps: torch.Tensor,
                   groups: np.ndarray | None = None) -> torch.Tensor:
    """Unit denoised vectors of n classes from pooled rows `x` [m, d] with class indices `y` [m].

    Built as `EmotionVectors` builds them: with `groups` (topic indices) each row's group mean
    removed first, class means minus their mean, `comps` [k, d] projected out.
    """
    means = class_means(x if groups is None else remove_group_means(x, groups), y, n)
    return unit_rows(project_out(means - means.mean(0), comps))


def _norm_metrics(units: np.ndarray, names: list[str], norms: pd.DataFrame | None) -> dict[str, float | None]:
    pca = pca_against_norms(units, names, norms, n_pcs=3)
    c = pca["correlations"]
    out: dict[str, float | None] = {"pc1_variance": pca["explained_variance"][0], "valence_r": None,
                                    "arousal_r_pc2": None, "arousal_r_best": None}
    if c:
        out["valence_r"] = c["pc1_valence"]["pearson"]
        out["arousal_r_pc2"] = c["pc2_arousal"]["pearson"]
        aro = [abs(c[f"pc{j}_arousal"]["pearson"]) for j in (1, 2, 3) if c[f"pc{j}_arousal"]["pearson"] is not None]
        out["arousal_r_best"] = max(aro) if aro else None
    return out


def sizes_and_emotions(labels: Sequence[str], emotions: Sequence[str], ks: Sequence[int] | None, min_share: float,
                       what: str) -> tuple[list[int], list[str], dict[str, int]]:
    """The corpus sizes k to draw (>= 2; default: up to what `min_share` of the emotions reach), the
    emotions that have the largest k, and the stories per emotion; a one-line error naming `what`
    when there is nothing to draw."""
    lab = np.asarray(labels)
    counts = {e: int((lab == e).sum()) for e in emotions}
    want = sorted({int(k) for k in (ks or default_ks(common_k(list(counts.values()), min_share))) if int(k) >= 2})
    if not want:
        raise EmovecError(f"{what} needs at least 2 stories per emotion")
    return want, [e for e in emotions if counts[e] >= max(want)], counts


def corpus_scaling(stories: CorpusActivations, neutral: CorpusActivations | None, emotions: Sequence[str],
                   layer: int, ks: Sequence[int] | None = None, seeds: int = 5, folds: int = 5,
                   denoise_fraction: float = 0.5, norms: pd.DataFrame | None = None,
                   min_share: float = MIN_SHARE, topics: Sequence[str] | None = None) -> dict[str, Any]:
    """Recognition, split-half agreement and valence/arousal correlations against k stories per emotion.

    Only emotions with at least `max(ks)` stories take part (by default the largest k
    that `min_share` of the emotions reach, see `common_k`), so every k uses the same
    emotions. Each (k, seed) draws k stories per emotion at random; recognition is
    k-fold inside the draw (min(folds, k) folds); split-half draws a second, disjoint
    set of k where 2k stories exist and takes the mean cosine between the two sets'
    unit vectors (0 when the vectors carry no emotion signal). Denoising uses the
    whole neutral corpus at every k. Norm correlations use `pca_against_norms` (PC1
    flipped to r >= 0 with valence, PC2 with arousal, so read them against
    `null_abs_r`); "arousal best" is the largest |r| of PC1..PC3 with arousal.
    Each metric is summarised over seeds as mean, sd, min and max. With `topics` (one per story)
    every draw is topic-adjusted on its own stories (recognition: its training folds'), as the
    run's vectors are.
    """
    if layer not in stories.keep_layers:
        raise EmovecError(f"per-story activations were not kept at layer {layer} (kept: {stories.keep_layers})")
    labels = np.array(stories.labels)
    want, names, counts = sizes_and_emotions(stories.labels, emotions, ks, min_share, "corpus scaling")
    if len(names) < 3:
        raise EmovecError(f"corpus scaling needs 3+ emotions with {max(want)} stories each; lower the largest k")
    x_all = stories.pooled[:, stories.keep_layers.index(layer)].to(torch.float64)
    comps = torch.zeros(0, x_all.shape[1], dtype=torch.float64)
    if neutral is not None and denoise_fraction > 0 and layer in neutral.keep_layers:
        comps = denoise_components(neutral.pooled[:, neutral.keep_layers.index(layer)], denoise_fraction)[0].to(torch.float64)
    if topics is not None and len(topics) != len(stories.ids):
        raise EmovecError(f"corpus scaling needs one topic per story: got {len(topics)} for {len(stories.ids)}")
    topic_of = np.array(group_index(topics)) if topics is not None else None
    index = {e: np.flatnonzero(labels == e) for e in names}
    n = len(names)
    rows = []
    for k in want:
        per: dict[str, list[float | None]] = {key: [] for key in METRICS}
        for seed in range(seeds):
            rng = np.random.default_rng([seed, k])
            draws = {e: rng.permutation(index[e]) for e in names}
            y = np.repeat(np.arange(n), k)
            rows_k = np.concatenate([draws[e][:k] for e in names])
            x, groups = x_all[rows_k], None if topic_of is None else topic_of[rows_k]
            assign = fold_assignment([names[i] for i in y], max(2, min(folds, k)), seed)
            ranks, _ = heldout_ranks(x, y, n, comps, assign, groups)
            per["top1"].append(float(np.mean(ranks == 0)))
            per["top5"].append(float(np.mean(ranks < 5)))
            units = denoised_units(x, y, n, comps, groups)
            if all(len(draws[e]) >= 2 * k for e in names):
                rows_o = np.concatenate([draws[e][k:2 * k] for e in names])
                other = denoised_units(x_all[rows_o], y, n, comps, None if topic_of is None else topic_of[rows_o])
                per["split_half"].append(float((units * other).sum(1).mean()))
            for key, value in _norm_metrics(units.numpy(), names, norms).items():
                per[key].append(value)
        rows.append({"k": k, "n_stories": k * n, **{key: summary_stats(v) for key, v in per.items()}})
    n_matched = sum(e in norms.index for e in names) if norms is not None else 0
    return {"layer": layer, "n_emotions": n, "emotions_left_out": [e for e in emotions if e not in names],
            "stories_per_emotion": {"min": min(counts.values()), "max": max(counts.values())},
            "seeds": seeds, "folds": folds, "denoise_fraction": denoise_fraction, "ks": want,
            "chance_top1": 1 / n, "chance_top5": min(5, n) / n, "n_norms_matched": n_matched,
            "null_abs_r": null_abs_r(n_matched), "topic_adjusted": topics is not None, "rows": rows,
            "method": "k stories per emotion drawn per seed; k-fold recognition inside the draw; split-half = mean "
                      "cosine of unit vectors from two disjoint draws of k; PCA of centred unit denoised vectors "
                      "(PC1 signed to r >= 0 with valence, PC2 with arousal)"}


def scaling_analysis(stories: CorpusActivations, neutral: CorpusActivations | None, vectors: EmotionVectors,
                     extra_layers: dict[str, int | None] | None = None, seeds: int = 5, folds: int = 5,
                     ks: Sequence[int] | None = None, norms: pd.DataFrame | None = None,
                     min_share: float = MIN_SHARE, topics: Sequence[str] | None = None) -> dict[str, Any]:
    """`corpus_scaling` at the vectors' default layer, and at each of `extra_layers` ({why: layer}) the stories kept.

    The vectors give the emotions and the denoising fraction; pass `topics` (one per story) for
    vectors built topic-adjusted. Returns the default layer's
    `corpus_scaling` result with `role`, plus `other_layers` {str(layer): result with its
    role} and `skipped_layers` (requested but not kept per story).
    """
    norms = load_norms() if norms is None else norms
    emotions = [e for e in vectors.emotions if e in set(stories.labels)]
    fraction = float(vectors.meta.get("denoise_fraction", 0.5)) if neutral is not None else 0.0
    if vectors.default_layer not in stories.keep_layers:
        raise EmovecError(f"per-story activations were not kept at the default layer {vectors.default_layer}; "
                          "re-extract with it kept")
    roles: dict[int, str] = {vectors.default_layer: "the vectors' default layer"}
    for why, layer in (extra_layers or {}).items():
        if layer is not None and int(layer) not in roles:
            roles[int(layer)] = why
    results = {layer: {"role": why, **corpus_scaling(stories, neutral, emotions, layer, ks=ks, seeds=seeds, folds=folds,
                                                     denoise_fraction=fraction, norms=norms, min_share=min_share,
                                                     topics=topics)}
               for layer, why in roles.items() if layer in stories.keep_layers}
    main = results.pop(vectors.default_layer)
    return {**main, "other_layers": {str(lay): r for lay, r in results.items()},
            "skipped_layers": [lay for lay in roles if lay not in stories.keep_layers]}
