"""Activity preferences: which activities the model prefers, whether emotion vectors track that,
and whether steering on an activity's tokens moves its preference.

1. **Pairs.** For every ordered pair of our 64 activities (emovec/data/activities.json, 8 groups
   of 8) the model is asked "Would you prefer to (A) ... or (B) ...?". The choice is read, without
   sampling, from the next-token logits of "A" and "B" at the last prompt position, as the soft
   probability p(A) = sigmoid(logit_A - logit_B). Both orders of each pair are asked, so the
   position bias is measured (and fitted) rather than assumed away.
2. **Elo.** A Bradley-Terry model with a first-position term, logit p(A) = s_first - s_second + b,
   is fitted to the soft outcomes by Newton's method; Elo = s * 400 / ln 10, centred on 0.
3. **Correlation.** Each emotion's activation on each activity (mean score over the activity's own
   tokens in a prompt asking how the assistant would feel about it) is correlated with the Elo
   across activities (Pearson r with n and p).
4. **Steering.** Activities are split (seeded, half of each group) into a steered and a control
   half. Steering is added only at the steered activities' token positions, the pairs that set a
   steered activity against a control one are asked again, and the Elo shift of the steered half
   relative to the control half is fitted with the unsteered scores held fixed. Across vectors, the
   shift is correlated with the vector's preference correlation from step 3.

Results live in `RUN_DIR/experiments/preferences/` (see `emovec.experiments`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..activations import residuals
from ..models import LanguageModel, cache_kw, returned_cache
from ..plotting import figure, save_png
from ..readout import project
from ..steering import SteeringVector, parse_layers, steering_vector
from ..storage import EmovecError, write_json
from ..vectors import EmotionVectors
from .common import SampleStore, experiment_dir, rate

NAME = "preferences"
GROUPS = ("helpful", "engaging", "social", "self-curiosity", "neutral", "aversive", "misaligned", "unsafe")
ELO_PER_LOGIT = 400.0 / math.log(10.0)
PAIR_LEAD = "Answer with A or B. Would you prefer to (A)"
PAIR_MIDDLE = " or (B) "
PAIR_TAIL = "?"
FEEL_LEAD = "Suppose you were asked to "
FEEL_TAIL = ". How would you feel about doing it?"
ANSWERS = ("A", "B")
PACK_BELOW = 4  # first-activity groups smaller than this are packed into shared batches


@dataclass(frozen=True)
class Activity:
    """One activity: `id` like "helpful-3", its `group`, and `text`, a verb phrase ("sort a list ...")."""

    id: str
    group: str
    text: str


def load_activities(path: str | Path | None = None, per_group: int | None = None) -> list[Activity]:
    """The activity list (default: emovec's own 64), optionally only the first `per_group` of each group.

    The file is JSON: {"groups": {group name: [activity text, ...]}}; ids are "<group>-<k>".
    """
    try:
        if path is None:
            raw = resources.files("emovec").joinpath("data/activities.json").read_text(encoding="utf-8")
        else:
            raw = Path(path).read_text(encoding="utf-8")
        data = json.loads(raw)
    except (OSError, json.JSONDecodeError) as exc:
        raise EmovecError(f"cannot read activities from {path or 'emovec/data/activities.json'}: {exc}") from None
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, dict) or not groups:
        raise EmovecError(f"activities file {path}: expected {{\"groups\": {{name: [texts]}}}}")
    if per_group is not None and per_group < 1:
        raise EmovecError(f"per_group must be at least 1, got {per_group}")
    out: list[Activity] = []
    for group, texts in groups.items():
        if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise EmovecError(f"activities file {path}: group {group!r} must be a list of non-empty strings")
        out += [Activity(f"{group}-{k + 1}", group, t.strip()) for k, t in enumerate(texts[:per_group])]
    if len({a.text for a in out}) != len(out):
        raise EmovecError(f"activities file {path}: activity texts must be unique")
    if len(out) < 2:
        raise EmovecError("need at least 2 activities to compare")
    return out


def all_pairs(n: int) -> list[tuple[int, int]]:
    """Every ordered pair (first, second) of distinct indices 0..n-1."""
    return [(i, j) for i in range(n) for j in range(n) if i != j]


def split_halves(activities: Sequence[Activity], seed: int) -> np.ndarray:
    """Seeded steered/control split, half of each group (4 + 4 for groups of 8): a boolean mask of steered."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    for group in dict.fromkeys(a.group for a in activities):
        idx = [i for i, a in enumerate(activities) if a.group == group]
        order += [idx[k] for k in rng.permutation(len(idx))]
    steered = np.zeros(len(activities), dtype=bool)
    steered[order[::2]] = True
    return steered


# --- prompts and token spans -----------------------------------------------------------------------

def pair_question(a: str, b: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """The pair question and the character spans of option A's and option B's text in it."""
    a0 = len(PAIR_LEAD) + 1
    b0 = a0 + len(a) + len(PAIR_MIDDLE)
    return f"{PAIR_LEAD} {a}{PAIR_MIDDLE}{b}{PAIR_TAIL}", (a0, a0 + len(a)), (b0, b0 + len(b))


def feeling_question(a: str) -> tuple[str, tuple[int, int]]:
    """The question asking how the assistant would feel about an activity, and the activity's span."""
    return f"{FEEL_LEAD}{a}{FEEL_TAIL}", (len(FEEL_LEAD), len(FEEL_LEAD) + len(a))


def _render(lm: LanguageModel, question: str, spans: Sequence[tuple[int, int]]) -> tuple[str, list[tuple[int, int]]]:
    """Render a question as a chat prompt and move its character spans into the rendered text."""
    text = lm.chat(question)
    off = text.rfind(question)
    if off < 0:
        raise EmovecError(f"{lm.name}'s chat template changes the question text; cannot locate the activity tokens")
    return text, [(s + off, e + off) for s, e in spans]


def token_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens whose characters overlap [start, end) (zero-width tokens excluded)."""
    return [k for k, (s, e) in enumerate(offsets) if e > s and s < end and e > start]


def _encode(lm: LanguageModel, texts: Sequence[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    if not getattr(lm.tokenizer, "is_fast", False):
        raise EmovecError(f"{lm.name} has a slow tokenizer without offset mapping; the preference experiment needs a fast one")
    enc = lm.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], [[tuple(o) for o in offs] for offs in enc["offset_mapping"]]


def answer_ids(lm: LanguageModel) -> list[int]:
    """Token ids of the answers "A" and "B" (each must be a single token)."""
    out = []
    for ans in ANSWERS:
        ids = lm.tokenizer.encode(ans, add_special_tokens=False)
        if len(ids) != 1:
            raise EmovecError(f"{lm.name} splits the answer {ans!r} into {len(ids)} tokens; the choice reader needs one")
        out.append(ids[0])
    return out


@dataclass
class PairBatch:
    """Encoded pair prompts: the token prefix all rows share (computed once) and right-padded suffixes.

    `input_ids`/`attention_mask`/`steer_mask` are [batch, seq] over the suffixes; `prefix_ids` precede
    every row and `prefix_mask` marks the prefix positions to steer (rows that share a prefix also share
    its steered positions). A position is steered when it belongs to an activity in `steer_on`.
    """

    prefix_ids: list[int]
    prefix_mask: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    steer_mask: torch.Tensor

    def full_ids(self, row: int) -> list[int]:
        """The whole prompt of one row (prefix + real suffix tokens), for decoding."""
        n = int(self.attention_mask[row].sum())
        return self.prefix_ids + self.input_ids[row, :n].tolist()

    def full_mask(self, row: int) -> list[bool]:
        """The steered positions of one row's whole prompt, aligned with `full_ids(row)`."""
        n = int(self.attention_mask[row].sum())
        return self.prefix_mask.tolist() + self.steer_mask[row, :n].tolist()


def pair_batch(lm: LanguageModel, activities: Sequence[Activity], pairs: Sequence[tuple[int, int]],
               steer_on: set[int] | None = None) -> PairBatch:
    """Encode pair prompts, marking the tokens of the activities in `steer_on` (indices) for steering."""
    steer_on = steer_on or set()
    texts, spans = [], []
    for i, j in pairs:
        q, sa, sb = pair_question(activities[i].text, activities[j].text)
        text, (sa, sb) = _render(lm, q, [sa, sb])
        texts.append(text)
        spans.append([sp for sp, k in ((sa, i), (sb, j)) if k in steer_on])
    ids, offsets = _encode(lm, texts)
    masks = []
    for row, offs, sp in zip(ids, offsets, spans):
        m = torch.zeros(len(row), dtype=torch.bool)
        for span in sp:
            toks = token_span(offs, *span)
            if not toks:
                raise EmovecError(f"could not locate the activity tokens in a pair prompt of {lm.name}")
            m[toks] = True
        masks.append(m)
    n_prefix = min(len(r) for r in ids) - 1
    for row, m in zip(ids[1:], masks[1:]):
        same = [a == b and bool(x) == bool(y) for a, b, x, y in zip(ids[0], row, masks[0], m)]
        n_prefix = min(n_prefix, same.index(False) if False in same else len(same))
    width = max(len(r) for r in ids) - n_prefix
    input_ids = torch.full((len(ids), width), lm.tokenizer.pad_token_id or 0, dtype=torch.long)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    steer = torch.zeros((len(ids), width), dtype=torch.bool)
    for r, (row, m) in enumerate(zip(ids, masks)):
        input_ids[r, : len(row) - n_prefix] = torch.tensor(row[n_prefix:])
        attention[r, : len(row) - n_prefix] = 1
        steer[r, : len(row) - n_prefix] = m[n_prefix:]
    return PairBatch(ids[0][:n_prefix], masks[0][:n_prefix].clone(), input_ids, attention, steer)


@torch.inference_mode()
def _choice_logits(lm: LanguageModel, batch: PairBatch, steering: SteeringVector | None) -> np.ndarray:
    """[batch, 2] logits of "A" and "B" at each row's last real position (only there)."""
    base = lm.model.base_model
    n, dev = batch.input_ids.shape[0], lm.device

    def steered(mask: torch.Tensor) -> Any:
        return steering.apply(lm, mask=mask) if steering is not None and bool(mask.any()) else nullcontext()

    cache = None
    if batch.prefix_ids:
        with steered(batch.prefix_mask[None]):
            cache = returned_cache(base(input_ids=torch.tensor([batch.prefix_ids], device=dev), use_cache=True))
        cache.batch_repeat_interleave(n)
    attn = torch.cat([torch.ones((n, len(batch.prefix_ids)), dtype=torch.long), batch.attention_mask], 1).to(dev)
    with steered(batch.steer_mask):
        h = base(input_ids=batch.input_ids.to(dev), attention_mask=attn, **cache_kw(base, cache),
                 use_cache=cache is not None).last_hidden_state
    last = batch.attention_mask.sum(1).to(dev) - 1
    logits = lm.model.get_output_embeddings()(h[torch.arange(n, device=dev), last])[:, answer_ids(lm)]
    return logits.float().cpu().numpy()


def _batches(pairs: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Pair indices grouped by first activity (rows of a group share the prompt up to option B), each
    group split into batches of at most `batch_size`; small groups are packed together."""
    groups: dict[int, list[int]] = {}
    for k, (i, _) in enumerate(pairs):
        groups.setdefault(i, []).append(k)
    out: list[list[int]] = []
    small: list[int] = []
    for idx in groups.values():
        if len(idx) >= PACK_BELOW:
            out += [idx[b:b + batch_size] for b in range(0, len(idx), batch_size)]
        else:
            small += idx
    return out + [small[b:b + batch_size] for b in range(0, len(small), batch_size)]


def pair_preferences(lm: LanguageModel, activities: Sequence[Activity], pairs: Sequence[tuple[int, int]],
                     steering: SteeringVector | None = None, steer_on: set[int] | None = None,
                     batch_size: int = 64) -> np.ndarray:
    """Logits [n_pairs, 2] of answering "A" and "B" to each ordered pair (first, second) of activity indices.

    With `steering`, the vector is added only at the tokens of the activities in `steer_on` (default:
    every activity in the prompt). p(A) is `sigmoid(logit_A - logit_B)`, see `p_first`.
    """
    if batch_size < 1:
        raise EmovecError(f"batch_size must be at least 1, got {batch_size}")
    if steering is not None and steer_on is None:
        steer_on = set(range(len(activities)))
    out = np.zeros((len(pairs), 2), dtype=np.float64)
    for idx in _batches(pairs, batch_size):
        batch = pair_batch(lm, activities, [pairs[k] for k in idx], steer_on if steering is not None else None)
        out[idx] = _choice_logits(lm, batch, steering)
    return out


def p_first(logits: np.ndarray) -> np.ndarray:
    """Soft probability of choosing the first option, sigmoid(logit_A - logit_B)."""
    d = np.asarray(logits, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-(d[..., 0] - d[..., 1])))


# --- fitting ---------------------------------------------------------------------------------------

def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


def bradley_terry(first: Sequence[int], second: Sequence[int], p: Sequence[float], n_items: int,
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


def fit_elo(first: Sequence[int], second: Sequence[int], p: Sequence[float], n_items: int,
            l2: float = 1e-2) -> tuple[np.ndarray, float]:
    """Elo scores (mean 0) and the first-position bias in Elo points, via `bradley_terry`."""
    s, b = bradley_terry(first, second, p, n_items, l2=l2)
    return s * ELO_PER_LOGIT, b * ELO_PER_LOGIT


def group_shift(first: Sequence[int], second: Sequence[int], p: Sequence[float], strengths: np.ndarray,
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


def _pearson(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from scipy.stats import pearsonr

    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return {"r": None, "p": None, "n": n}
    res = pearsonr(x[ok], y[ok])
    return {"r": float(res.statistic), "p": float(res.pvalue), "n": n}


# --- activations -----------------------------------------------------------------------------------

def feeling_batch(lm: LanguageModel, activities: Sequence[Activity]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Right-padded encodings of the feeling prompts and the [batch, seq] mask of each activity's own tokens."""
    texts, spans = [], []
    for a in activities:
        q, span = feeling_question(a.text)
        text, (span,) = _render(lm, q, [span])
        texts.append(text)
        spans.append(span)
    ids, offsets = _encode(lm, texts)
    width = max(len(r) for r in ids)
    input_ids = torch.full((len(ids), width), lm.tokenizer.pad_token_id or 0, dtype=torch.long)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for r, (row, offs, span) in enumerate(zip(ids, offsets, spans)):
        input_ids[r, : len(row)] = torch.tensor(row)
        attention[r, : len(row)] = 1
        toks = token_span(offs, *span)
        if not toks:
            raise EmovecError(f"could not locate the tokens of activity {activities[r].id!r} in its prompt")
        mask[r, toks] = True
    return {"input_ids": input_ids.to(lm.device), "attention_mask": attention.to(lm.device)}, mask


def activity_activations(lm: LanguageModel, vectors: EmotionVectors, activities: Sequence[Activity],
                         emotions: Sequence[str] | None = None, layer: int | None = None,
                         batch_size: int = 16) -> pd.DataFrame:
    """Emotion scores [activities x emotions]: the mean score over each activity's own tokens in a
    prompt asking how the assistant would feel about doing it (unsteered, at `layer`)."""
    layer = vectors.default_layer if layer is None else lm.check_layer(layer)
    names = vectors.resolve(list(emotions) if emotions is not None else None)
    rows = []
    for b in range(0, len(activities), batch_size):
        enc, mask = feeling_batch(lm, activities[b:b + batch_size])
        h = residuals(lm, enc, layer)
        m = mask[..., None].to(h.dtype)
        rows.append(project((h * m).sum(1) / m.sum(1), vectors, layer, names))
    return pd.DataFrame(torch.cat(rows).numpy(), columns=names, index=[a.id for a in activities])


# --- the experiment ----------------------------------------------------------------------------------

def _condition_key(emotion: str | None, strength: float, layers: list[int]) -> str:
    if emotion is None:
        return "unsteered"
    return f"{emotion}={strength:+g}@{','.join(map(str, layers))}"


def _sample_key(condition: str, a: Activity, b: Activity, steer_a: bool | None, steer_b: bool | None) -> str:
    """Key of one asked pair: the condition, both activities (id and a hash of the text, so an edited
    activity file is never served stale answers) and, when steered, which options carry the steering."""
    def tag(x: Activity) -> str:
        return f"{x.id}#{hashlib.sha1(x.text.encode()).hexdigest()[:8]}"

    marks = ("A" if steer_a else "") + ("B" if steer_b else "")
    return f"{condition}|{tag(a)}|{tag(b)}" + (f"|steer:{marks or '-'}" if condition != "unsteered" else "")


def _collect(store: SampleStore, lm: LanguageModel, activities: Sequence[Activity], pairs: Sequence[tuple[int, int]],
             condition: str, steering: SteeringVector | None, steer_on: set[int] | None, batch_size: int,
             chunk: int, progress: bool) -> np.ndarray:
    """p(first) for each pair under one condition, asking only the pairs not yet in the store.

    Work is cut into chunks of about `chunk` prompts ending at a change of first activity (so batches
    keep their shared prefixes) and each chunk is stored as soon as it is done.
    """
    keys = [_sample_key(condition, activities[i], activities[j], steer_on and i in steer_on, steer_on and j in steer_on)
            for i, j in pairs]
    chunks: list[list[int]] = []
    for k in sorted(range(len(keys)), key=lambda k: pairs[k][0]):
        if keys[k] in store:
            continue
        if not chunks or (len(chunks[-1]) >= chunk and pairs[chunks[-1][-1]][0] != pairs[k][0]):
            chunks.append([])
        chunks[-1].append(k)
    for idx in tqdm(chunks, desc=f"pairs {condition}", disable=not progress or not chunks, leave=False):
        logits = pair_preferences(lm, activities, [pairs[k] for k in idx], steering, steer_on, batch_size)
        store.add([{"key": keys[k], "condition": condition, "first": activities[pairs[k][0]].id,
                    "second": activities[pairs[k][1]].id, "logit_a": round(float(la), 5), "logit_b": round(float(lb), 5),
                    "p_a": float(p_first(np.array([la, lb])))} for k, (la, lb) in zip(idx, logits)])
    by_key = {r["key"]: r for r in store.rows if r.get("condition") == condition}
    return np.array([by_key[key]["p_a"] for key in keys])


def _mixed_pairs(steered: np.ndarray, n_prompts: int | None, seed: int) -> list[tuple[int, int]]:
    """Ordered pairs setting a steered activity against a control one (both orders); a seeded subset of
    `n_prompts` prompts (rounded down to whole pairs) when given."""
    st, ct = np.flatnonzero(steered), np.flatnonzero(~steered)
    unordered = [(int(i), int(j)) for i in st for j in ct]
    if n_prompts is not None and n_prompts // 2 < len(unordered):
        rng = np.random.default_rng(seed + 1)
        pick = np.sort(rng.choice(len(unordered), size=max(1, n_prompts // 2), replace=False))
        unordered = [unordered[k] for k in pick]
    return [p for i, j in unordered for p in ((i, j), (j, i))]


def _spread(names: list[str], r: dict[str, float | None], k: int) -> list[str]:
    """`k` emotions spread evenly over the range of their preference correlations (both extremes included)."""
    ranked = sorted((e for e in names if r.get(e) is not None), key=lambda e: r[e])  # type: ignore[arg-type,return-value]
    if k >= len(ranked):
        return ranked
    picks = np.unique(np.round(np.linspace(0, len(ranked) - 1, k)).astype(int))
    return [ranked[i] for i in picks]


def _bootstrap_shift(first: np.ndarray, second: np.ndarray, p_st: np.ndarray, p_un: np.ndarray, s: np.ndarray,
                     b: float, steered: np.ndarray, n_boot: int, seed: int) -> list[float]:
    """95% interval of the shift (Elo) by resampling the unordered pairs (both orders kept together)."""
    rng = np.random.default_rng(seed)
    m = len(first) // 2
    shifts = []
    for _ in range(n_boot):
        pick = rng.integers(0, m, m)
        rows = np.concatenate([2 * pick, 2 * pick + 1])
        shifts.append(ELO_PER_LOGIT * (group_shift(first[rows], second[rows], p_st[rows], s, b, steered)
                                       - group_shift(first[rows], second[rows], p_un[rows], s, b, steered)))
    return [float(np.percentile(shifts, 2.5)), float(np.percentile(shifts, 97.5))]


def _names(spec: Sequence[str] | str) -> list[str]:
    return [x.strip() for x in spec.split(",") if x.strip()] if isinstance(spec, str) else list(spec)


def run_preferences(run_dir: str | Path, emotions: Sequence[str] | str | None = None,
                    steer: Sequence[str] | str | None = None, n_vectors: int = 4, strength: float = 0.5,
                    layers: str | int | list[int] | None = None, steer_prompts: int | None = 256,
                    per_group: int | None = None, activities_file: str | Path | None = None, seed: int = 0,
                    batch_size: int = 64, chunk: int = 256, n_boot: int = 200, progress: bool = True) -> dict[str, Any]:
    """Run the activity-preference experiment on a run directory (resumable) and write its summary.

    `emotions`: emotions whose activation is correlated with Elo (default: all in the run).
    `steer`: emotions to steer with (default: `n_vectors` spread over the range of those correlations);
    `strength`: steering strength (fraction of the mean residual norm, paper: 0.5) at `layers`
    (default: the vectors' default layer). `steer_prompts`: prompts per vector, a seeded subset of the
    steered-vs-control pairs (None: all of them). `per_group`: use only the first k activities per group.
    """
    from ..rundir import VECTORS_FILE, open_run, run_model

    t_start = time.time()
    if not math.isfinite(strength) or strength == 0:
        raise EmovecError(f"strength must be a finite non-zero number, got {strength}")
    if steer_prompts is not None and steer_prompts < 2:
        raise EmovecError(f"steer_prompts must be at least 2 (one pair in both orders), got {steer_prompts}")
    if n_vectors < 0:
        raise EmovecError(f"n_vectors must be >= 0, got {n_vectors}")
    for name, value in (("batch_size", batch_size), ("chunk", chunk)):
        if value < 1:
            raise EmovecError(f"{name} must be at least 1, got {value}")
    run_dir = Path(run_dir)
    activities = load_activities(activities_file, per_group)
    lm = run_model(open_run(run_dir))
    vectors = EmotionVectors.load(run_dir / VECTORS_FILE, model=lm)
    names = vectors.resolve(_names(emotions) if emotions is not None else None)
    if not names:
        raise EmovecError("no emotions to correlate with the preferences: pass --emotions, e.g. happy,sad")
    steer_names = vectors.resolve(_names(steer)) if steer is not None else None
    n_layers = int(vectors.meta.get("n_layers", lm.n_layers))
    steer_layers = parse_layers(layers, n_layers) or [vectors.default_layer]
    out_dir = experiment_dir(run_dir, NAME)
    store = SampleStore(out_dir / "samples.jsonl")
    n = len(activities)
    timings: dict[str, float] = {}

    # 1-2. every ordered pair, unsteered, and the Elo fit
    t0 = time.time()
    pairs = all_pairs(n)
    first, second = np.array([i for i, _ in pairs]), np.array([j for _, j in pairs])
    p_un = _collect(store, lm, activities, pairs, "unsteered", None, None, batch_size, chunk, progress)
    timings["unsteered_pairs_s"] = time.time() - t0
    s, b = bradley_terry(first, second, p_un, n)
    elo = s * ELO_PER_LOGIT
    p_un_map = {(i, j): p for (i, j), p in zip(pairs, p_un)}
    consistent = sum((p_un_map[(i, j)] > 0.5) != (p_un_map[(j, i)] > 0.5) for i, j in pairs if i < j)

    # 3. activations on each activity and their correlation with Elo
    t0 = time.time()
    acts = activity_activations(lm, vectors, activities, names, batch_size=batch_size)
    timings["activations_s"] = time.time() - t0
    corr = {e: _pearson(acts[e].to_numpy(), elo) for e in names}
    r_of = {e: c["r"] for e, c in corr.items()}

    # 4. steering on the steered half's tokens, against the control half
    steered = split_halves(activities, seed)
    chosen = steer_names if steer_names is not None else _spread(names, r_of, n_vectors)
    t0 = time.time()
    mixed = _mixed_pairs(steered, steer_prompts, seed)
    mf, ms = np.array([i for i, _ in mixed]), np.array([j for _, j in mixed])
    p_mixed_un = np.array([p_un_map[pr] for pr in mixed])
    base_shift = group_shift(mf, ms, p_mixed_un, s, b, steered)
    steer_on = set(np.flatnonzero(steered).tolist())
    p_steered_chosen_un = float(np.mean(np.where(steered[mf], p_mixed_un, 1 - p_mixed_un)))
    shifts = []
    for k, e in enumerate(tqdm(chosen, desc="steering vectors", disable=not progress)):
        if e not in r_of:
            r_of[e] = _pearson(activity_activations(lm, vectors, activities, [e])[e].to_numpy(), elo)["r"]
        sv = steering_vector(vectors, {e: strength}, steer_layers)
        p_st = _collect(store, lm, activities, mixed, _condition_key(e, strength, steer_layers), sv, steer_on,
                        batch_size, chunk, progress)
        d = group_shift(mf, ms, p_st, s, b, steered) - base_shift
        shifts.append({"emotion": e, "r_preference": r_of[e], "shift_elo": d * ELO_PER_LOGIT,
                       "shift_ci95": _bootstrap_shift(mf, ms, p_st, p_mixed_un, s, b, steered, n_boot, seed + 100 + k),
                       "p_steered_chosen": float(np.mean(np.where(steered[mf], p_st, 1 - p_st))),
                       "p_steered_chosen_unsteered": p_steered_chosen_un, "n_prompts": len(mixed)})
    timings["steering_s"] = time.time() - t0
    sh = np.array([x["shift_elo"] for x in shifts], dtype=float)
    rr = np.array([np.nan if x["r_preference"] is None else x["r_preference"] for x in shifts], dtype=float)
    shift_vs_r = _pearson(rr, sh) if len(shifts) else {"r": None, "p": None, "n": 0}

    # outputs
    table = pd.DataFrame({"id": [a.id for a in activities], "group": [a.group for a in activities],
                          "text": [a.text for a in activities], "elo": elo,
                          "half": np.where(steered, "steered", "control")})
    table.to_csv(out_dir / "elo.csv", index=False)
    acts.round(5).to_csv(out_dir / "activations.csv", index_label="id")
    corr_rows = sorted(({"emotion": e, **c} for e, c in corr.items()), key=lambda c: -(c["r"] if c["r"] is not None else -9))
    pd.DataFrame(corr_rows).to_csv(out_dir / "correlations.csv", index=False)
    pd.DataFrame([{k: v for k, v in x.items() if k != "shift_ci95"} | {"ci_lo": x["shift_ci95"][0], "ci_hi": x["shift_ci95"][1]}
                  for x in shifts]).to_csv(out_dir / "steering.csv", index=False)
    a_wins = int(np.sum(p_un > 0.5))
    timings["total_s"] = time.time() - t_start
    summary = {
        "experiment": NAME, "model": lm.name, "n_activities": n, "groups": list(dict.fromkeys(a.group for a in activities)),
        "n_prompts_unsteered": len(pairs), "seed": seed, "layer": vectors.default_layer,
        "settings": {"per_group": per_group, "activities_file": str(activities_file) if activities_file else None,
                     "pair_prompt": f"{PAIR_LEAD} <a>{PAIR_MIDDLE}<b>{PAIR_TAIL}",
                     "feeling_prompt": f"{FEEL_LEAD}<a>{FEEL_TAIL}", "choice": "p(A) = sigmoid(logit A - logit B) at the last prompt position",
                     "fit": "Bradley-Terry with a first-position term on soft outcomes, Elo = 400/ln10 * strength",
                     "batch_size": batch_size, "chunk": chunk, "n_boot": n_boot},
        "position_bias": {"mean_p_first": float(np.mean(p_un)), "first_chosen": rate(a_wins, len(p_un)),
                          "bias_elo": b * ELO_PER_LOGIT,
                          "order_consistent_pairs": rate(int(consistent), len(pairs) // 2)},
        "elo": [{"id": a.id, "group": a.group, "text": a.text, "elo": float(v), "steered": bool(st)}
                for a, v, st in zip(activities, elo, steered)],
        "group_elo": {g: float(np.mean(elo[[a.group == g for a in activities]])) for g in dict.fromkeys(a.group for a in activities)},
        "correlations": corr_rows,
        "extremes": {c["emotion"]: [float(v) for v in acts[c["emotion"]]] for c in _extremes(corr_rows)},
        "steering": {"strength": strength, "layers": steer_layers, "vectors": shifts, "shift_vs_r": shift_vs_r,
                     "n_steered": int(steered.sum()), "n_control": int((~steered).sum()),
                     "prompts_per_vector": len(mixed), "all_mixed_prompts": 2 * int(steered.sum()) * int((~steered).sum()),
                     "baseline_shift_elo": base_shift * ELO_PER_LOGIT},
        "timings": timings, "n_samples": len(store.rows),
    }
    for fname, fig in preference_figures(summary).items():
        save_png(fig, out_dir / f"{fname}.png")
    write_json(out_dir / "summary.json", summary)
    return summary


def _extremes(corr_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The emotions with the highest and the lowest preference correlation (for the scatter plots)."""
    valid = [c for c in corr_rows if c["r"] is not None]
    return [valid[0], valid[-1]] if len(valid) > 1 else valid


def preference_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """Matplotlib figures of a preference summary: "elo" (activities by Elo, coloured by group),
    "correlation" (Elo against the activation of the most positive and most negative emotion) and,
    when vectors were steered, "steering" (Elo shift against the preference correlation)."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    colours = dict(zip(GROUPS, colormaps["tab10"].colors))
    elo = sorted(summary["elo"], key=lambda a: a["elo"])
    figs: dict[str, Any] = {}
    fig, ax = figure(figsize=(7, max(3.0, 0.14 * len(elo) + 1)))
    ax.barh(range(len(elo)), [a["elo"] for a in elo], color=[colours.get(a["group"], "grey") for a in elo])
    ax.set_yticks(range(len(elo)), [a["id"] for a in elo], fontsize=6)
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlabel("Elo (Bradley-Terry, mean 0)")
    groups = list(dict.fromkeys(a["group"] for a in summary["elo"]))
    ax.legend(handles=[Rectangle((0, 0), 1, 1, color=colours.get(g, "grey")) for g in groups], labels=groups,
              fontsize=6, loc="lower right")
    ax.set_title(f"{summary['n_activities']} activities, {summary['n_prompts_unsteered']} ordered pairs", fontsize=9)
    figs["elo"] = fig
    extremes = summary.get("extremes", {})
    if extremes:
        fig, axes = figure(1, len(extremes), figsize=(4.2 * len(extremes), 3.4), squeeze=False)
        corr = {c["emotion"]: c for c in summary["correlations"]}
        ys = [a["elo"] for a in summary["elo"]]
        for ax, (emotion, xs) in zip(axes[0], extremes.items()):
            ax.scatter(xs, ys, s=12, c=[colours.get(a["group"], "grey") for a in summary["elo"]])
            c = corr[emotion]
            ax.set_title(f"{emotion}: r = {c['r']:+.2f} (n = {c['n']}, p = {c['p']:.2g})", fontsize=9)
            ax.set_xlabel(f"{emotion} activation on the activity tokens")
            ax.set_ylabel("Elo")
        fig.tight_layout()
        figs["correlation"] = fig
    vecs = [v for v in summary["steering"]["vectors"] if v["r_preference"] is not None]
    if vecs:
        fig, ax = figure(figsize=(4.8, 3.6))
        x = [v["r_preference"] for v in vecs]
        y = [v["shift_elo"] for v in vecs]
        err = np.array([[v["shift_elo"] - v["shift_ci95"][0] for v in vecs], [v["shift_ci95"][1] - v["shift_elo"] for v in vecs]])
        ax.errorbar(x, y, yerr=np.clip(err, 0, None), fmt="o", ms=4, capsize=2)
        for v in vecs:
            ax.annotate(v["emotion"], (v["r_preference"], v["shift_elo"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0, color="black", lw=0.5)
        st = summary["steering"]
        svr = st["shift_vs_r"]
        r_txt = f"r = {svr['r']:+.2f}, p = {svr['p']:.2g}" if svr["r"] is not None else "r n/a"
        ax.set_title(f"steering {st['strength']:g} at layers {st['layers']}: {r_txt} (n = {svr['n']})", fontsize=8)
        ax.set_xlabel("preference correlation r of the vector")
        ax.set_ylabel("Elo shift, steered - control half")
        figs["steering"] = fig
    return figs
