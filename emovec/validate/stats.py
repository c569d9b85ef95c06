"""The statistics of the steering analysis: means with t intervals, Welch's test, OLS slopes, and the
paired trend tests that read monotonicity over strengths (Page's L test, paired t-tests per step)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean with its t-based 95% interval and n, over the finite values."""
    from scipy.stats import t as t_dist

    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return {"mean": None, "ci95": None, "n": 0}
    if len(v) < 2:
        return {"mean": float(v.mean()), "ci95": None, "n": 1}
    half = float(t_dist.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return {"mean": float(v.mean()), "ci95": [float(v.mean()) - half, float(v.mean()) + half], "n": int(len(v))}


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """mean(a) - mean(b) with Welch's t-test: difference, 95% interval, t, two-sided p, sizes."""
    from scipy.stats import t as t_dist
    from scipy.stats import ttest_ind

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out: dict[str, Any] = {"diff": None, "ci95": None, "t": None, "p": None, "n_a": int(len(x)), "n_b": int(len(y))}
    if len(x) < 2 or len(y) < 2:
        return out
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    diff = float(x.mean() - y.mean())
    out["diff"] = diff
    if va + vb == 0:
        return out
    df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    half = float(t_dist.ppf(0.975, df) * math.sqrt(va + vb))
    res = ttest_ind(x, y, equal_var=False)
    out.update(ci95=[diff - half, diff + half], t=float(res.statistic), p=float(res.pvalue))
    return out


def ols_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """OLS slope of y on x (per sample) with its 95% interval and p, and Spearman's rho with its p."""
    from scipy.stats import linregress, spearmanr
    from scipy.stats import t as t_dist

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    out: dict[str, Any] = {"slope": None, "ci95": None, "p": None, "rho": None, "rho_p": None, "n": int(len(xs))}
    if len(xs) < 3 or len(set(xs.tolist())) < 2:
        return out
    if np.std(ys) == 0:  # nothing moves: an exact zero slope, and no test
        return {**out, "slope": 0.0, "ci95": [0.0, 0.0], "se": 0.0}
    fit = linregress(xs, ys)
    half = float(t_dist.ppf(0.975, len(xs) - 2) * fit.stderr)
    out.update(slope=float(fit.slope), ci95=[float(fit.slope) - half, float(fit.slope) + half], p=float(fit.pvalue),
               se=float(fit.stderr))
    rho = spearmanr(xs, ys)  # ys varies: the constant case returned above
    out.update(rho=float(rho[0]), rho_p=float(rho[1]))
    return out


def ordered_trend(table: np.ndarray) -> dict[str, Any]:
    """Is there a trend up the columns of `table` [blocks, levels] (levels in their predicted order)?

    Each row is one prompt's replies across the levels, so the test is paired by prompt:
    Page's L test for 3+ levels (ranks within each prompt, one-sided for the predicted
    order), the one-sided Wilcoxon signed-rank test for 2. p is None where it cannot be computed.
    """
    from scipy.stats import page_trend_test, wilcoxon

    m, n = table.shape if table.ndim == 2 else (0, 0)
    out: dict[str, Any] = {"test": "page" if n >= 3 else "wilcoxon", "statistic": None, "p": None,
                           "n_prompts": int(m), "n_levels": int(n)}
    if m < 2 or n < 2 or not np.any(table != table[:, :1]):
        return out
    if n >= 3:
        res = page_trend_test(table)
    else:
        res = wilcoxon(table[:, 1] - table[:, 0], alternative="greater")
    out.update(statistic=float(res.statistic), p=float(res.pvalue))
    return out


def step_tests(table: np.ndarray, levels: Sequence[float]) -> list[dict[str, Any]]:
    """Each adjacent step of `table` [blocks, levels]: paired mean change along the predicted order, paired t p."""
    from scipy.stats import ttest_rel

    out = []
    for j in range(table.shape[1] - 1):
        a, b = table[:, j], table[:, j + 1]
        p = float(ttest_rel(b, a).pvalue) if len(a) >= 2 and np.std(b - a) > 1e-12 else None  # no spread: no test
        out.append({"from": float(levels[j]), "to": float(levels[j + 1]), "change": float(np.mean(b - a)),
                    "p": p, "n": int(len(a))})
    return out
