"""Lexical baseline: the recognition and the geometry that the stories' words alone give, with no model.

Emotion vectors are read from stories the model wrote, so whatever separates the stories
in their wording separates any representation of them. This analysis represents each kept
story by its words (scikit-learn TF-IDF: sublinear term frequency, the `max_features` most
frequent words that occur in 2+ stories, rows scaled to unit length) and runs on that the
same measures as on the model's activations: held-out recognition with the same folds (no
neutral denoising, there is no neutral text in word space) and PC1/PC2 of the per-emotion
means against the human valence/arousal norms. What the model's vectors show beyond these
figures is what the model adds to the words of its own stories.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..recognition import class_means, heldout_ranks, heldout_split, top1_p, unit_rows
from ..storage import EmovecError
from ..topics import group_index, remove_group_means
from .analyses import load_norms, pca_against_norms

METHOD = ("scikit-learn TfidfVectorizer (sublinear tf, words in 2+ stories, most frequent max_features), unit rows; "
          "held-out recognition as for the model (class means of the training folds minus their grand mean, unit "
          "length, a story's top score; same folds, no denoising); PCA of the unit per-emotion means against the norms")


def lexical_baseline(texts: Sequence[str], labels: Sequence[str], folds: int = 5, seed: int = 0,
                     max_features: int = 5000, norms: pd.DataFrame | None = None,
                     topics: Sequence[str] | None = None) -> dict[str, Any]:
    """Held-out recognition and PC1/PC2-vs-norms of a bag-of-words representation of labelled stories.

    Emotions with fewer than 2 stories are left out, folds are capped by the smallest
    emotion and dealt as in `heldout_recognition` (both use `heldout_split`), so a run's model
    and its words are scored on the same splits. `norms` defaults to
    `load_norms()`. With `topics` (one per story) the word vectors are topic-adjusted as the
    model's are (`remove_group_means`), so the two stay the same measure. The word matrix is
    dense float32 (stories x `max_features`): 4 GB at
    200,000 stories, a few hundred MB at the sizes a CPU makes.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(texts) != len(labels):
        raise EmovecError(f"lexical baseline: {len(texts)} texts but {len(labels)} labels")
    if topics is not None and len(topics) != len(texts):
        raise EmovecError(f"lexical baseline: {len(texts)} texts but {len(topics)} topics")
    names, keep, y, folds, assign = heldout_split(labels, list(dict.fromkeys(labels)), folds, seed, "the lexical baseline")
    try:
        tfidf = TfidfVectorizer(min_df=2, max_features=max_features, sublinear_tf=True)
        x = torch.tensor(tfidf.fit_transform([texts[i] for i in keep]).toarray(), dtype=torch.float32)
    except ValueError as exc:  # no word occurs in two stories
        raise EmovecError(f"the lexical baseline found no shared vocabulary in the stories ({exc})") from exc
    groups = np.array(group_index([topics[i] for i in keep])) if topics is not None else None
    ranks, _ = heldout_ranks(x, y, len(names), torch.zeros(0, x.shape[1], dtype=x.dtype), assign, groups)
    n = len(names)
    means = class_means(x if groups is None else remove_group_means(x, groups), y, n)
    geo = pca_against_norms(unit_rows(means - means.mean(0)).double().numpy(), names, load_norms() if norms is None else norms)
    corr = geo["correlations"]
    return {
        "n_emotions": n, "n_stories": len(keep), "folds": folds, "n_features": int(x.shape[1]),
        "top1": float(np.mean(ranks == 0)), "top5": float(np.mean(ranks < 5)), "mean_rank": float(np.mean(ranks) + 1),
        "chance_top1": 1 / n, "chance_top5": min(5, n) / n,
        "p_top1": top1_p(ranks, n),
        "explained_variance": geo["explained_variance"], "n_matched": len(geo["matched"]),
        "pc1_valence": corr.get("pc1_valence"), "pc2_arousal": corr.get("pc2_arousal"),
        "topic_adjusted": topics is not None, "method": METHOD,
    }
