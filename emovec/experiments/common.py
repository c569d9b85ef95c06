"""What the behavioural experiments share: steering conditions, rates with Wilson
intervals, steered generation with a readout of the reply, and resumable results.

Each experiment (preferences, blackmail, reward hacking) lives in its own module
and keeps its results under `RUN_DIR/experiments/<name>/`:

    samples.jsonl    one row per finished sample, appended as soon as it exists, so
                     a killed run resumes where it stopped (rows carry a `key`)
    summary.json     the statistics, rewritten atomically at the end
    *.csv, *.png     tables and figures for people and for the HTML report
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..activations import residuals, tokenize
from ..generation import FastBackend, Sampling
from ..models import LanguageModel
from ..readout import project
from ..steering import SteeringVector, steering_vector
from ..storage import EmovecError, append_jsonl, read_jsonl
from ..vectors import EmotionVectors

EXPERIMENTS = ("preferences", "blackmail", "reward-hacking")
DEFAULT_STRENGTHS = (-0.1, -0.05, 0.0, 0.05, 0.1)


def experiment_dir(run_dir: str | Path, name: str) -> Path:
    """`RUN_DIR/experiments/<name>/` (created on demand)."""
    if name not in EXPERIMENTS:
        raise EmovecError(f"unknown experiment {name!r}: use one of {', '.join(EXPERIMENTS)}")
    path = Path(run_dir) / "experiments" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (default 95%) for k successes out of n; (nan, nan) when n == 0."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, mid - half), min(1.0, mid + half))


def rate(k: int, n: int) -> dict[str, Any]:
    """A rate with its Wilson 95% interval and counts, as stored in summaries."""
    lo, hi = wilson(k, n)
    return {"k": int(k), "n": int(n), "rate": k / n if n else None, "ci95": [lo, hi] if n else None}


@dataclass(frozen=True)
class Condition:
    """One steering condition: `emotion` at `strength` (both None/0 for the unsteered baseline)."""

    emotion: str | None = None
    strength: float = 0.0

    @property
    def label(self) -> str:
        return "unsteered" if self.emotion is None or self.strength == 0 else f"{self.emotion}={self.strength:+g}"

    def steering(self, vectors: EmotionVectors, layers: str | int | list[int] | None = None) -> SteeringVector | None:
        """The steering vector of this condition (None when unsteered)."""
        if self.emotion is None or self.strength == 0:
            return None
        return steering_vector(vectors, {self.emotion: self.strength}, layers)


def sweep(emotions: Sequence[str], strengths: Sequence[float] = DEFAULT_STRENGTHS) -> list[Condition]:
    """The unsteered baseline once, then every emotion at every non-zero strength."""
    out = [Condition()]
    for e in emotions:
        out += [Condition(e, float(s)) for s in strengths if float(s) != 0.0]
    return out


def parse_strengths(spec: str | Sequence[float] | None) -> list[float]:
    """Parse "-0.1,-0.05,0.05,0.1" into floats (None: the default sweep)."""
    if spec is None:
        return list(DEFAULT_STRENGTHS)
    if not isinstance(spec, str):
        return [float(s) for s in spec]
    try:
        out = [float(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise EmovecError(f"strengths {spec!r}: use comma-separated numbers, e.g. -0.1,-0.05,0.05,0.1") from None
    if not out or not all(math.isfinite(s) for s in out):
        raise EmovecError(f"strengths {spec!r}: give at least one finite number, e.g. -0.1,0.1")
    return out


def generate_steered(lm: LanguageModel, prompts: Sequence[str], sampling: Sampling, seed: int,
                     steering: SteeringVector | None = None, batch_size: int = 16) -> list[str]:
    """Complete rendered prompts with `steering` added at every position (prompt and reply)."""
    backend = FastBackend(lm, batch_size=batch_size)
    with ExitStack() as stack:
        if steering is not None:
            stack.enter_context(steering.apply(lm))
        return backend.generate(list(prompts), sampling, seed)


def reply_scores(lm: LanguageModel, vectors: EmotionVectors, prompts: Sequence[str], replies: Sequence[str],
                 emotions: Sequence[str], layer: int | None = None, batch_size: int = 8,
                 max_tokens: int = 2048) -> pd.DataFrame:
    """Mean emotion scores over each reply's tokens, read unsteered in the context of its rendered prompt.

    Returns a DataFrame [n_replies x emotions]; an empty reply gets NaN scores.
    """
    if len(prompts) != len(replies):
        raise EmovecError(f"{len(prompts)} prompts but {len(replies)} replies")
    layer = vectors.default_layer if layer is None else lm.check_layer(layer)
    names = vectors.resolve(list(emotions))
    starts = [len(ids) for ids in lm.tokenizer(list(prompts), truncation=True, max_length=max_tokens)["input_ids"]]
    rows = np.full((len(prompts), len(names)), np.nan)
    for b in range(0, len(prompts), batch_size):
        idx = [i for i in range(b, min(b + batch_size, len(prompts))) if replies[i].strip()]
        if not idx:
            continue
        enc = tokenize(lm, [prompts[i] + replies[i] for i in idx], max_tokens)
        h = residuals(lm, enc, layer)
        pos = torch.arange(h.shape[1])[None, :]
        mask = (pos >= torch.tensor([starts[i] for i in idx])[:, None]) & enc["attention_mask"].cpu().bool()
        mean = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        rows[idx] = project(mean, vectors, layer, names).numpy()
    return pd.DataFrame(rows, columns=names)


class SampleStore:
    """Append-only JSONL of finished samples keyed by `key`; the basis of resuming."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = read_jsonl(self.path) if self.path.exists() else []
        self.keys = {r.get("key") for r in self.rows}

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = [r for r in rows if r["key"] not in self.keys]
        if rows:
            append_jsonl(self.path, rows)
            self.rows += rows
            self.keys |= {r["key"] for r in rows}
