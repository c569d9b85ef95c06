"""Activities, the pair and feeling prompts, and the readers of a model's choices and activations on them.

For an ordered pair of activities the model is asked "Would you prefer to (A) ... or (B) ...?"; the
choice is read, without sampling, from the next-token logits of "A" and "B" at the last prompt
position (`pair_preferences`, with the prompt prefix shared by a batch computed once, and steering
optionally added only at chosen activities' tokens). `activity_activations` reads the emotion
scores over an activity's own tokens in a prompt asking how the assistant would feel about it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from ..activations import residuals
from ..models import LanguageModel, cache_kw, returned_cache
from ..readout import project
from ..steering import SteeringVector
from ..storage import EmovecError
from ..vectors import EmotionVectors

GROUPS = ("helpful", "engaging", "social", "self-curiosity", "neutral", "aversive", "misaligned", "unsafe")
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
    model = cast(Any, lm.model)  # a transformers PreTrainedModel
    base = model.base_model
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
    logits = model.get_output_embeddings()(h[torch.arange(n, device=dev), last])[:, answer_ids(lm)]
    return np.asarray(logits.float().cpu().numpy())


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
