"""What the behavioural experiments share: steering conditions, the settings guard, the sample store,
statistics with one result shape, emotion picking, chunk seeds, and steered generation with a readout.

Each experiment (preferences, blackmail, reward hacking) lives in its own module
and keeps its results under `RUN_DIR/experiments/<folder>/`:

    settings.json    the settings that decide what a sample is, recorded on first start;
                     a resume with other settings is refused (`check_settings`)
    samples.jsonl    one row per finished sample, appended as soon as it exists, so
                     a killed run resumes where it stopped (rows carry a `key`)
    summary.json     the statistics, rewritten atomically at the end
    *.csv, *.png     tables and figures for people and for the HTML report

Every summary has `settings` (including `chunk_seeds`, the seed formula) and
`timing` with at least `total_s`, the seconds the call took.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import pandas as pd
import torch

from ..activations import _StopForward, hidden_of, layer_hooks, residuals, tokenize
from ..generation import FastBackend, Sampling
from ..models import LanguageModel, cache_kw
from ..readout import project
from ..steering import SteeringVector, steering_vector
from ..storage import EmovecError, append_jsonl, read_jsonl
from ..vectors import EmotionVectors

log = logging.getLogger(__name__)

EXPERIMENTS_DIR = "experiments"
SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
# Steering strengths of a sweep; the unsteered baseline (0) is always added by `sweep`.
DEFAULT_STRENGTHS = (-0.1, -0.05, 0.05, 0.1)
CHUNK_SEEDS = "crc32('<experiment>|<seed>|<condition>|<chunk>') & 0x7fffffff"


# ---------------------------------------------------------------------------------------------- result shapes


class Rate(TypedDict):
    """k successes out of n with the Wilson 95% interval (rate and ci95 are None when n == 0)."""

    k: int
    n: int
    rate: float | None
    ci95: list[float] | None


class Correlation(TypedDict):
    """A correlation over n finite pairs; r and p are None when it is undefined (n < 3 or constant input)."""

    n: int
    r: float | None
    p: float | None


class MeanSD(TypedDict):
    """Mean and standard deviation over n finite values (None when n == 0)."""

    mean: float | None
    sd: float | None
    n: int


class Timing(TypedDict):
    """The `timing` of every summary: `total_s` is the wall time of the call that wrote it."""

    total_s: float


# ---------------------------------------------------------------------------------------------- folders and settings


def results_folder(run_dir: str | Path, folder: str, tag: str | None = None) -> Path:
    """`RUN_DIR/experiments/<folder>/`, or `<folder>-<tag>/` for a second set of settings (not created)."""
    if tag is not None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", tag):
            raise EmovecError(f"tag {tag!r}: use 1-40 letters, digits, '_', '.' or '-' (it names the results folder)")
        folder = f"{folder}-{tag}"
    return Path(run_dir) / EXPERIMENTS_DIR / folder


def experiment_dir(run_dir: str | Path, folder: str, tag: str | None = None) -> Path:
    """`results_folder`, created on demand."""
    path = results_folder(run_dir, folder, tag)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------- statistics


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (default 95%) for k successes out of n; (nan, nan) when n == 0."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, mid - half), min(1.0, mid + half))


def rate(k: int, n: int) -> Rate:
    """A rate with its Wilson 95% interval and counts, as stored in summaries."""
    lo, hi = wilson(k, n)
    return {"k": int(k), "n": int(n), "rate": k / n if n else None, "ci95": [lo, hi] if n else None}


def _finite(values: Iterable[Any]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def _correlation(x: Iterable[Any], y: Iterable[Any], test: Callable[[np.ndarray, np.ndarray], tuple[float, float]]) -> Correlation:
    a, b = _finite(x), _finite(y)
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return {"n": n, "r": None, "p": None}
    r, p = test(a[ok], b[ok])
    return {"n": n, "r": float(r), "p": float(p)}


def spearman(x: Iterable[float | bool | None], y: Iterable[float | bool | None]) -> Correlation:
    """Spearman rank correlation over the pairs where both values are finite (None counts as missing)."""
    from scipy.stats import spearmanr

    def test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        res = spearmanr(a, b)
        return float(res.statistic), float(res.pvalue)

    return _correlation(x, y, test)


def pearson(x: Iterable[float | None], y: Iterable[float | None]) -> Correlation:
    """Pearson correlation over the pairs where both values are finite (None counts as missing)."""
    from scipy.stats import pearsonr

    def test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        res = pearsonr(a, b)
        return float(res.statistic), float(res.pvalue)

    return _correlation(x, y, test)


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """The mean of the finite values (None and NaN skipped); None when there are none."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def mean_sd(values: Iterable[float | None], digits: int = 5) -> MeanSD:
    """Mean, standard deviation and count of the finite values, rounded to `digits`."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": round(float(np.mean(v)), digits), "sd": round(float(np.std(v)), digits), "n": len(v)}


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n_units: int, n_boot: int, seed: int,
                 level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of `statistic(indices)` over `n_boot` resamples of `n_units` units."""
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n_units, n_units)) for _ in range(n_boot)]
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


# ---------------------------------------------------------------------------------------------- conditions


def split_names(spec: str | Sequence[str]) -> list[str]:
    """Names from "a, b,c" (or a list, as given)."""
    return [x.strip() for x in spec.split(",") if x.strip()] if isinstance(spec, str) else list(spec)


def pick_emotions(vectors: EmotionVectors, emotions: str | Sequence[str] | None,
                  defaults: Sequence[str] | None = None) -> list[str]:
    """The emotions an experiment works on: `emotions` checked against the vectors, or when None the
    `defaults` present in the vectors (None: every emotion of the run). One-line errors."""
    if emotions is None:
        if defaults is None:
            return list(vectors.emotions)
        present = [e for e in defaults if e in vectors.emotions]
        if not present:
            raise EmovecError(f"none of the default emotions ({', '.join(defaults)}) are in this run's vectors; "
                              "pass --emotions with some of: " + ", ".join(vectors.emotions))
        return present
    names = split_names(emotions)
    if not names:
        raise EmovecError("--emotions is empty: give a comma-separated list, e.g. desperate,calm")
    return vectors.resolve(names)


def chunk_seed(experiment: str, seed: int, *parts: object) -> int:
    """The sampling seed of one chunk of work: a hash of the experiment, the run seed and the chunk's parts
    (condition label, chunk or attempt number), so every chunk is reproducible on its own (see `CHUNK_SEEDS`)."""
    return zlib.crc32("|".join([experiment, str(seed), *map(str, parts)]).encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class Condition:
    """One steering condition: `emotion` at `strength` (both None/0 for the unsteered baseline)."""

    emotion: str | None = None
    strength: float = 0.0

    @property
    def label(self) -> str:
        """"unsteered" or e.g. "calm=+0.05"; the key of the condition in samples and summaries."""
        return "unsteered" if self.emotion is None or self.strength == 0 else f"{self.emotion}={self.strength:+g}"

    def steering(self, vectors: EmotionVectors, layers: str | int | list[int] | None = None) -> SteeringVector | None:
        """The steering vector of this condition (None when unsteered)."""
        if self.emotion is None or self.strength == 0:
            return None
        return steering_vector(vectors, {self.emotion: self.strength}, layers)


def layer_setting(vectors: EmotionVectors, layers: str | int | list[int] | None) -> str | int | list[int]:
    """The steered layers as recorded in an experiment's settings guard.

    None resolves to `vectors.steering_layer` (the run's recommended layer where its steering
    analysis exists), so a resume after that analysis changes the default is refused, not mixed.
    """
    if layers is None:
        return [vectors.steering_layer]
    return layers if isinstance(layers, (int, str)) else list(layers)


def sweep(emotions: Sequence[str], strengths: Sequence[float] = DEFAULT_STRENGTHS) -> list[Condition]:
    """The unsteered baseline once, then every emotion at every non-zero strength."""
    out = [Condition()]
    for e in emotions:
        out += [Condition(e, float(s)) for s in strengths if float(s) != 0.0]
    return out


def parse_strengths(spec: str | Sequence[float] | None) -> list[float]:
    """Parse "-0.1,-0.05,0.05,0.1" into floats (None: `DEFAULT_STRENGTHS`)."""
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


# ---------------------------------------------------------------------------------------------- generation and readout


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


class PrefixReadout:
    """`reply_scores` with each distinct prompt's key/value cache computed once and reused.

    The readout is unsteered, so a prompt has the same activations in every
    condition: caching it (up to the readout layer) turns a forward over prompt +
    reply into a forward over the reply alone. Same numbers as `reply_scores`
    (tested); the caches live as long as this object.
    """

    def __init__(self, lm: LanguageModel, vectors: EmotionVectors, emotions: Sequence[str], layer: int | None = None,
                 batch_size: int = 8):
        self.lm, self.vectors = lm, vectors
        self.layer = vectors.default_layer if layer is None else lm.check_layer(layer)
        self.emotions = vectors.resolve(list(emotions)) if emotions else []
        self.batch_size = batch_size
        self._cache: dict[str, tuple[Any, int]] = {}

    def _run(self, ids: torch.Tensor, attn: torch.Tensor, past: Any, start: int) -> torch.Tensor:
        grabbed: dict[str, torch.Tensor] = {}

        def grab(_idx: int, _m: object, _i: tuple[Any, ...], out: object) -> None:
            grabbed["h"] = hidden_of(out).detach().float().cpu()
            raise _StopForward

        base = cast(Any, self.lm.model).base_model
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)[None, :].expand(ids.shape[0], -1)
        with layer_hooks(self.lm, [self.layer], grab):
            try:
                base(input_ids=ids, attention_mask=attn, position_ids=pos, **cache_kw(base, past), use_cache=True)
            except _StopForward:
                pass
        return grabbed["h"]

    def _prefix(self, prompt: str) -> tuple[Any, int]:
        from transformers import DynamicCache

        if prompt not in self._cache:
            ids = self.lm.tokenizer(prompt, return_tensors="pt")["input_ids"].to(self.lm.device)
            cache = DynamicCache(config=cast(Any, self.lm.model).config)
            self._run(ids, torch.ones_like(ids), cache, 0)
            self._cache[prompt] = (cache, ids.shape[1])
        return self._cache[prompt]

    @torch.inference_mode()
    def __call__(self, prompts: Sequence[str], replies: Sequence[str]) -> list[dict[str, float | None]]:
        """Mean scores over each reply's tokens (None for an empty reply), one dict per reply."""
        out: list[dict[str, float | None]] = [{e: None for e in self.emotions} for _ in replies]
        if not self.emotions:
            return out
        tok = self.lm.tokenizer
        groups: dict[str, list[int]] = {}
        for i, (p, r) in enumerate(zip(prompts, replies)):
            if r.strip():
                groups.setdefault(p, []).append(i)
        for prompt, idx in groups.items():
            cache, n_prompt = self._prefix(prompt)
            for b in range(0, len(idx), self.batch_size):
                rows = idx[b:b + self.batch_size]
                seqs = [tok(prompt + replies[i])["input_ids"][n_prompt:] for i in rows]
                width = max(len(s) for s in seqs)
                pad = tok.pad_token_id if tok.pad_token_id is not None else 0
                ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.lm.device)
                mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.lm.device)
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(len(rows))
                attn = torch.cat([torch.ones(len(rows), n_prompt, dtype=mask.dtype, device=mask.device), mask], 1)
                h = self._run(ids, attn, past, n_prompt)
                m = mask.cpu().bool()
                mean = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
                scores = project(mean, self.vectors, self.layer, self.emotions).numpy()
                for row, i in enumerate(rows):
                    out[i] = {e: round(float(v), 5) for e, v in zip(self.emotions, scores[row])}
        return out


class SampleStore:
    """Append-only JSONL of finished samples keyed by `key`; the basis of resuming."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = read_jsonl(self.path) if self.path.exists() else []
        self.keys = {r.get("key") for r in self.rows}

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append the rows whose key is new (at once, so a killed run loses at most the chunk in hand)."""
        new = [r for r in rows if r["key"] not in self.keys]
        if new:
            append_jsonl(self.path, new)
            self.rows += new
            self.keys |= {r["key"] for r in new}
