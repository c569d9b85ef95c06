"""Held-out recognition: do vectors built from some stories classify the others by emotion?

The pipeline runs it after extraction (`recognition.json`), the layer sweep and
the corpus-scaling analysis build on it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest

from .activations import CorpusActivations
from .storage import EmovecError
from .topics import group_index, remove_group_means
from .vectors import denoise_components, project_out


def fold_assignment(labels: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """Stratified fold index per item: each emotion's items are shuffled and dealt round-robin."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), dtype=int)
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    for lab in sorted(by_label):
        idx = np.array(by_label[lab])
        rng.shuffle(idx)
        out[idx] = np.arange(len(idx)) % folds
    return out


def unit_rows(m: torch.Tensor) -> torch.Tensor:
    """Each row of `m` scaled to unit length (all-zero rows stay zero)."""
    unit: torch.Tensor = m / m.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return unit


def class_means(x: torch.Tensor, y: np.ndarray, n_classes: int) -> torch.Tensor:
    """Mean row of `x` [n, d] per class index in `y` [n], as [n_classes, d] (NaN for a class with no rows)."""
    labels = torch.as_tensor(y, dtype=torch.long)
    sums = torch.zeros(n_classes, x.shape[1], dtype=x.dtype).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=n_classes).to(x.dtype)
    means: torch.Tensor = sums / counts[:, None]
    return means


def heldout_ranks(x: torch.Tensor, y: np.ndarray, n_classes: int, comps: torch.Tensor,
                  assign: np.ndarray, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k-fold loop of held-out recognition: each item's rank of its true class (0 = top) and its top class.

    `x` [n, d] pooled activations, `y` [n] class indices in 0..n_classes-1, `comps` [k, d]
    the denoising components (k may be 0), `assign` [n] the fold of each item. For each
    fold, vectors are the training class means minus their grand mean, with `comps`
    projected out, scaled to unit length; a held-out item's scores are its activation
    minus that grand mean projected on them. Every class needs training items in every fold.
    With `groups` [n] (topic indices) every item first has its group's mean deviation
    removed, the means taken over the training items only (`remove_group_means`).
    """
    ranks = np.zeros(len(y), dtype=int)
    pred = np.zeros(len(y), dtype=int)
    for f in np.unique(assign):
        tr, te = assign != f, assign == f
        xf = x if groups is None else remove_group_means(x, groups, fit=tr)
        means = class_means(xf[tr], y[tr], n_classes)
        grand = means.mean(0)
        units = unit_rows(project_out(means - grand, comps))
        scores = (xf[te] - grand) @ units.T
        order = torch.argsort(scores, dim=1, descending=True).numpy()
        truth = y[te]
        ranks[te] = np.argmax(order == truth[:, None], axis=1)
        pred[te] = order[:, 0]
    return ranks, pred


def lda_heldout_ranks(x: torch.Tensor, y: np.ndarray, assign: np.ndarray,
                      groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`heldout_ranks` with a trained decoder in place of the vectors: shrinkage LDA on the same folds.

    scikit-learn's LinearDiscriminantAnalysis (least squares, Ledoit-Wolf shrinkage) learns
    a direction per class that also whitens the within-emotion covariance, which the mean
    difference vectors do not. Its accuracy bounds what a linear reader of these pooled
    activations can get from the same training stories, so comparing it with the vectors
    tells whether recognition is limited by the vectors or by the stories. Topic means are
    removed as in `heldout_ranks` (training items only); no denoising, which LDA subsumes.
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    ranks = np.zeros(len(y), dtype=int)
    pred = np.zeros(len(y), dtype=int)
    for f in np.unique(assign):
        tr, te = assign != f, assign == f
        xf = (x if groups is None else remove_group_means(x, groups, fit=tr)).numpy()
        model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(xf[tr], y[tr])
        order = model.classes_[np.argsort(-model.decision_function(xf[te]), axis=1)]
        ranks[te] = np.argmax(order == y[te][:, None], axis=1)
        pred[te] = order[:, 0]
    return ranks, pred


CLASSIFIERS = ("vectors", "lda")


def heldout_split(labels: Sequence[str], emotions: Sequence[str], folds: int, seed: int,
                  what: str = "held-out recognition") -> tuple[list[str], list[int], np.ndarray, int, np.ndarray]:
    """Who takes part in held-out recognition, and in which fold.

    Returns the emotions of `emotions` with at least two items (in that order), the indices
    of their items in `labels`, each such item's class index, the fold count (`folds`,
    capped by the smallest emotion, at least 2) and each item's fold (`fold_assignment`).
    Every analysis that scores items against these folds uses this, so they share splits.
    """
    wanted = set(emotions)
    counts = Counter(lab for lab in labels if lab in wanted)
    names = [e for e in emotions if counts.get(e, 0) >= 2]
    if len(names) < 2:
        raise EmovecError(f"{what} needs at least 2 emotions with 2+ stories each; generate more stories")
    taking = set(names)
    keep = [i for i, lab in enumerate(labels) if lab in taking]
    kept = [labels[i] for i in keep]
    folds = max(2, min(folds, min(counts[e] for e in names)))
    return names, keep, np.array([names.index(lab) for lab in kept]), folds, fold_assignment(kept, folds, seed)


def top1_p(ranks: np.ndarray, n_classes: int) -> float:
    """One-sided binomial p of the top-1 hits in `ranks` (0 = hit) against chance 1/n_classes."""
    return float(binomtest(int(np.sum(ranks == 0)), len(ranks), 1 / n_classes, alternative="greater").pvalue)


def heldout_recognition(stories: CorpusActivations, neutral: CorpusActivations | None, emotions: Sequence[str],
                        layers: Sequence[int] | None = None, folds: int = 5, denoise_fraction: float = 0.5,
                        seed: int = 0, top_confusions: int = 10, topics: Sequence[str] | None = None,
                        classifier: str = "vectors") -> dict[str, Any]:
    """K-fold held-out recognition: vectors from the other folds classify each story by its top score.

    A story's scores are the projections of its pooled activation, centred on the
    training grand mean, onto the training unit vectors (denoised as in
    `EmotionVectors`). Only emotions with at least two stories take part. With `topics`
    (one per story, in the order of `stories.ids`) the vectors are topic-adjusted as
    `EmotionVectors.from_activations` adjusts them, from the training folds' stories only.
    With `classifier="lda"` a shrinkage LDA trained on the same folds scores the stories
    instead (`lda_heldout_ranks`): a ceiling for the vectors on the same data.
    Returns per-layer top-1/top-5 accuracy with a one-sided binomial p-value of the
    top-1 hits against chance, chance levels, and the most-confused pairs.
    """
    if classifier not in CLASSIFIERS:
        raise EmovecError(f"unknown classifier {classifier!r}: use one of {', '.join(CLASSIFIERS)}")
    names, keep, y, folds, assign = heldout_split(stories.labels, emotions, folds, seed)
    if topics is not None and len(topics) != len(stories.ids):
        raise EmovecError(f"held-out recognition needs one topic per story: got {len(topics)} for {len(stories.ids)}")
    groups = np.array(group_index([topics[i] for i in keep])) if topics is not None else None
    layers = list(stories.keep_layers) if layers is None else list(layers)
    per_layer: list[dict[str, Any]] = []
    for layer in layers:
        if layer not in stories.keep_layers:
            raise EmovecError(f"per-story activations were not kept at layer {layer} (kept: {stories.keep_layers})")
        x = stories.pooled[keep, stories.keep_layers.index(layer)].to(torch.float64)
        if classifier == "lda":
            ranks, pred = lda_heldout_ranks(x, y, assign, groups)
        else:
            comps = torch.zeros(0, x.shape[1], dtype=torch.float64)
            if neutral is not None and denoise_fraction > 0 and layer in neutral.keep_layers:
                neutral_x = neutral.pooled[:, neutral.keep_layers.index(layer)]
                comps = denoise_components(neutral_x, denoise_fraction)[0].to(torch.float64)
            ranks, pred = heldout_ranks(x, y, len(names), comps, assign, groups)
        per_layer.append({"layer": layer, "top1": float(np.mean(ranks == 0)), "top5": float(np.mean(ranks < 5)),
                          "mean_rank": float(np.mean(ranks) + 1), "p_top1": top1_p(ranks, len(names)), "_pred": pred})
    best = max(per_layer, key=lambda r: (r["top1"], r["top5"]))
    pairs = Counter((names[t], names[p]) for t, p in zip(y, best["_pred"]) if t != p)
    for r in per_layer:
        r.pop("_pred")
    n = len(names)
    return {
        "n_emotions": n, "n_stories": len(keep), "folds": folds, "classifier": classifier,
        "denoise_fraction": denoise_fraction if classifier == "vectors" else None,
        "chance_top1": 1 / n, "chance_top5": min(5, n) / n, "topic_adjusted": topics is not None, "layers": per_layer,
        "best_layer": best["layer"],
        "confusions": [{"true": a, "predicted": b, "count": c} for (a, b), c in pairs.most_common(top_confusions)],
    }


def recognition_at(result: dict[str, Any], layer: int) -> dict[str, Any]:
    """The row of a `heldout_recognition` result for one layer."""
    rows: list[dict[str, Any]] = result["layers"]
    for row in rows:
        if row["layer"] == layer:
            return row
    raise EmovecError(f"layer {layer} is not in the recognition result (layers: {[r['layer'] for r in result['layers']]})")
