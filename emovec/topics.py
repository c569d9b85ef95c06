"""Topic adjustment: remove each story's topic mean before averaging an emotion's stories.

Stories are written on a fixed set of shared topics (12 in the default recipe), and with a few
stories per emotion an emotion's mean carries the topics its stories happened to be about. In an
additive model (activation = topic effect + emotion effect + noise) removing each topic's mean is
the estimate of the emotion effect; `CorpusActivations.topic_adjusted`, held-out recognition, the
scaling analysis and the lexical baseline all use these two helpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def remove_group_means(x: torch.Tensor, groups: Sequence[int] | Any, fit: Any = None) -> torch.Tensor:
    """Rows of `x` [n, d] with their group's mean deviation removed: x - mean(group) + mean(all).

    `groups` [n] are integer group indices (e.g. each story's topic); the means are taken over
    the rows selected by the boolean mask `fit` (all rows by default), so a held-out row can be
    adjusted with means it did not contribute to. A row whose group has no fitted rows is left as
    it is.
    """
    g = torch.as_tensor(groups, dtype=torch.long)
    mask = torch.ones(len(g), dtype=torch.bool) if fit is None else torch.as_tensor(fit, dtype=torch.bool)
    n_groups = int(g.max()) + 1 if len(g) else 0
    sums = torch.zeros(n_groups, *x.shape[1:], dtype=x.dtype).index_add_(0, g[mask], x[mask])
    counts = torch.bincount(g[mask], minlength=n_groups).to(x.dtype)
    centre = x[mask].mean(0)
    shift = sums / counts.clamp(min=1).reshape(-1, *([1] * (x.dim() - 1))) - centre
    shift[counts == 0] = 0
    adjusted: torch.Tensor = x - shift[g]
    return adjusted


def group_index(names: Sequence[str]) -> list[int]:
    """Each name's index among the distinct names in first-seen order (e.g. story topics as groups)."""
    seen: dict[str, int] = {}
    return [seen.setdefault(n, len(seen)) for n in names]
