"""Pairwise preferences to scores: ordered pairs, Bradley-Terry with a position term, Elo, group shifts, bootstrap.

Pure numerics on soft outcomes (p of choosing the first option); no model here.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from ..storage import EmovecError
from .common import bootstrap_ci

ELO_PER_LOGIT = 400.0 / math.log(10.0)


def all_pairs(n: int) -> list[tuple[int, int]]:
    """Every ordered pair (first, second) of distinct indices 0..n-1."""
    return [(i, j) for i in range(n) for j in range(n) if i != j]


def mixed_pairs(steered: np.ndarray, n_prompts: int | None, seed: int) -> list[tuple[int, int]]:
    """Ordered pairs setting a steered item against a control one, both orders adjacent; a seeded subset of
    `n_prompts` prompts (rounded down to whole pairs) when given."""
    st, ct = np.flatnonzero(steered), np.flatnonzero(~steered)
    unordered = [(int(i), int(j)) for i in st for j in ct]
    if n_prompts is not None and n_prompts // 2 < len(unordered):
        rng = np.random.default_rng(seed + 1)
        pick = np.sort(rng.choice(len(unordered), size=max(1, n_prompts // 2), replace=False))
        unordered = [unordered[k] for k in pick]
    return [p for i, j in unordered for p in ((i, j), (j, i))]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(x, -40, 40))))


def bradley_terry(first: ArrayLike, second: ArrayLike, p: ArrayLike, n_items: int,
                  l2: float = 1e-2, position_bias: bool = True, iters: int = 100) -> tuple[np.ndarray, float]:
    """Bradley-Terry strengths (logit units, centred) and first-position bias from soft outcomes.

    Model: P(first chosen) = sigmoid(s_first - s_second + b), fitted by Newton's method on the
    cross-entropy with outcomes `p` in [0, 1]; the small L2 term keeps items with one-sided records finite.
    """
    f, g, y = np.asarray(first, int), np.asarray(second, int), np.asarray(p, float)
    if not (len(f) == len(g) == len(y)) or len(y) == 0:
        raise EmovecError("bradley_terry needs equally long, non-empty first/second/p")
    if np.any((y < 0) | (y > 1)) or not np.all(np.isfinite(y)):
        raise EmovecError("bradley_terry outcomes must be probabilities in [0, 1]")
    m = len(y)
    x = np.zeros((m, n_items + 1))
    x[np.arange(m), f] += 1.0
    x[np.arange(m), g] -= 1.0
    x[:, n_items] = 1.0 if position_bias else 0.0
    reg = np.full(n_items + 1, l2)
    reg[n_items] = 1e-9 if position_bias else 1.0
    theta = np.zeros(n_items + 1)
    for _ in range(iters):
        pred = _sigmoid(x @ theta)
        grad = x.T @ (pred - y) + reg * theta
        hess = (x * (pred * (1 - pred))[:, None]).T @ x + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-9:
            break
    s = theta[:n_items]
    return s - s.mean(), float(theta[n_items])


def fit_elo(first: ArrayLike, second: ArrayLike, p: ArrayLike, n_items: int,
            l2: float = 1e-2) -> tuple[np.ndarray, float]:
    """Elo scores (mean 0) and the first-position bias in Elo points, via `bradley_terry`."""
    s, b = bradley_terry(first, second, p, n_items, l2=l2)
    return s * ELO_PER_LOGIT, b * ELO_PER_LOGIT


def group_shift(first: ArrayLike, second: ArrayLike, p: ArrayLike, strengths: np.ndarray,
                bias: float, steered: np.ndarray, iters: int = 50) -> float:
    """Logit shift of the steered half against the control half, with strengths and bias held fixed.

    Fits one parameter d in P(first) = sigmoid(s_first - s_second + b + d * (st_first - st_second)),
    where st marks steered activities; rows without exactly one steered activity carry no information.
    """
    f, g, y = np.asarray(first, int), np.asarray(second, int), np.asarray(p, float)
    sign = steered[f].astype(float) - steered[g].astype(float)
    keep = sign != 0
    if not keep.any():
        raise EmovecError("no pair sets a steered activity against a control one; cannot fit the shift")
    base, sign, y = strengths[f[keep]] - strengths[g[keep]] + bias, sign[keep], y[keep]
    d = 0.0
    for _ in range(iters):
        pred = _sigmoid(base + d * sign)
        step = float(np.sum((pred - y) * sign)) / max(float(np.sum(pred * (1 - pred))), 1e-12)
        d -= step
        if abs(step) < 1e-10:
            break
    return d


def bootstrap_shift(first: np.ndarray, second: np.ndarray, p_steered: np.ndarray, p_unsteered: np.ndarray,
                    strengths: np.ndarray, bias: float, steered: np.ndarray, n_boot: int, seed: int) -> list[float]:
    """95% interval of the steering shift (Elo) by resampling the unordered pairs (both orders kept together)."""

    def shift(pick: np.ndarray) -> float:
        rows = np.concatenate([2 * pick, 2 * pick + 1])
        return ELO_PER_LOGIT * (group_shift(first[rows], second[rows], p_steered[rows], strengths, bias, steered)
                                - group_shift(first[rows], second[rows], p_unsteered[rows], strengths, bias, steered))

    return bootstrap_ci(shift, len(first) // 2, n_boot, seed)
