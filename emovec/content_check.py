"""The content check: does the run's model read each story as the emotion it was written for?

The naming filter (`corpus.judge_story`) drops stories that name their emotion. A small writer often
shows an emotion only by naming it, so what the filter leaves of some emotions rarely depicts them
(on the 135M demo, most kept "angry" stories are cheerful or wistful). The check asks the run's model,
for every story the filter kept, which emotion its main character feels: one forward pass over the
story followed by a fixed question, and the next-token log-probability of each emotion's first token.
The story comes first, as plain text tokenised exactly as extraction reads it (no chat template, even for
a chat model), so the same pass yields the story's pooled activations and a checked run reads each
story once (`extract_to`); on the 6 x 8 hand-written test stories the plain form ranks the story's own
emotion first among six for 35 of 48, the earlier chat form for 38.
Each emotion's log-probability is centred on its mean over the checked stories (so an emotion the model
names often does not win everywhere), and the story's own emotion is ranked among all emotions of the
run (0 = first). A story whose emotion ranks outside the best `fraction` is dropped as
`misses_emotion`, except that every emotion keeps its `min_keep` best-ranked stories so it still gets
a vector and the held-out folds stay possible.

It uses the model and the emotion list only, never the human norms: those stay a test of the vectors.
It does select stories the model itself recognises, so recognition measured on a checked corpus is
not independent of the check; the lexical baseline and the steering judge are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from .activations import DEFAULT_START, PooledTexts, length_sorted_batches, pool_encoded, write_shards
from .corpus import STORIES_FILE, load_corpus, prompts, refill_round
from .models import LanguageModel
from .storage import EmovecError, read_json, read_jsonl, write_json, write_jsonl

DROP_REASON = "misses_emotion"
RANK_KEY = "content_rank"


def first_tokens(lm: LanguageModel, emotions: Sequence[str]) -> list[int]:
    """The id of each emotion's first token as it would follow a space in the model's answer."""
    ids = []
    for e in emotions:
        toks = lm.tokenizer(" " + e, add_special_tokens=False)["input_ids"]
        if not toks:
            raise EmovecError(f"the tokenizer of {lm.name} gives no tokens for the emotion {e!r}")
        ids.append(int(toks[0]))
    return ids


def question_suffix() -> str:
    """What follows the story: the question, then the start of the answer, ready for the emotion word."""
    p = prompts()
    return f"\n\n{p['content_question']}\n\n{p['content_answer']}"


def check_inputs(lm: LanguageModel, texts: Sequence[str], max_tokens: int = 512) -> tuple[list[list[int]], list[int]]:
    """Token ids of each story (exactly as extraction reads it) followed by the question; and each story's length.

    The story comes first and alone, so a causal model's activations over it are those extraction pools.
    """
    stories = lm.tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"]
    tail = lm.tokenizer(question_suffix(), add_special_tokens=False)["input_ids"]
    return [list(ids) + list(tail) for ids in stories], [len(ids) for ids in stories]


@dataclass
class CheckPass:
    """One forward pass over the stories with the question: the answer log-probabilities and, if asked, the pools."""

    logprobs: np.ndarray  # [n_texts, n_emotions]
    pooled: PooledTexts | None


@torch.inference_mode()
def read_stories(lm: LanguageModel, texts: Sequence[str], emotions: Sequence[str], batch_size: int = 8,
                 progress: bool = False, ids: Sequence[str] | None = None, layers: Sequence[int] = (),
                 start: int = DEFAULT_START, max_tokens: int = 512) -> CheckPass:
    """Score each story's answer to the question and, with `ids` and `layers`, keep its pooled activations.

    Right-padded batches; only the last real position of each row goes through the unembedding. The pools are
    those extraction would compute for the same stories (`write_shards(reuse=...)`), so a checked run reads
    each story once instead of twice.
    """
    if not texts:
        raise EmovecError("no stories to check (empty corpus)")
    if ids is not None and len(ids) != len(texts):
        raise EmovecError(f"{len(ids)} ids for {len(texts)} stories: give one id per story")
    keep_pools = ids is not None and bool(layers)
    layers = [lm.check_layer(lay) for lay in layers] if keep_pools else []
    emotion_ids = torch.tensor(first_tokens(lm, emotions))
    head = cast(Any, lm.model).get_output_embeddings()
    inputs, story_len = check_inputs(lm, texts, max_tokens)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    out = np.zeros((len(texts), len(emotions)), dtype=np.float32)
    pooled = torch.zeros(len(texts) if keep_pools else 0, len(layers), lm.d_model)
    norm_sum = torch.zeros(pooled.shape[0], len(layers), dtype=torch.float64)
    n_tokens = torch.zeros(pooled.shape[0], dtype=torch.int64)
    bar = tqdm(total=len(texts), desc="content check", unit="story", disable=not progress)
    for idx in length_sorted_batches([len(x) for x in inputs], batch_size):
        width = max(len(inputs[i]) for i in idx)
        pos = torch.arange(width)[None, :]
        full = torch.tensor([len(inputs[i]) for i in idx])[:, None]
        enc = {"input_ids": torch.tensor([inputs[i] + [pad] * (width - len(inputs[i])) for i in idx]).to(lm.device),
               "attention_mask": (pos < full).long().to(lm.device)}
        text_mask = (pos < torch.tensor([story_len[i] for i in idx])[:, None]).long().to(lm.device)
        res = pool_encoded(lm, enc, text_mask, layers, start, to_end=True, row_norms=keep_pools)
        hidden = cast(torch.Tensor, res.last_hidden)
        logits = head(hidden[torch.arange(len(idx)), full[:, 0].to(hidden.device) - 1]).float()
        out[idx] = torch.log_softmax(logits, dim=-1)[:, emotion_ids.to(logits.device)].cpu().numpy()
        if keep_pools:
            pooled[idx] = torch.stack([res.batch.pooled[lay] for lay in layers], dim=1)
            norm_sum[idx] = torch.stack([res.row_norms[lay] for lay in layers], dim=1)
            n_tokens[idx] = (text_mask.sum(1) - 1).clamp(min=0).cpu()
        bar.update(len(idx))
    bar.close()
    pools = PooledTexts(ids=[str(i) for i in ids], layers=layers, start=start, max_tokens=max_tokens, pooled=pooled,
                        norm_sum=norm_sum, n_tokens=n_tokens) if keep_pools and ids is not None else None
    return CheckPass(out, pools)


def emotion_logprobs(lm: LanguageModel, texts: Sequence[str], emotions: Sequence[str], batch_size: int = 8,
                     progress: bool = False) -> np.ndarray:
    """[n_texts, n_emotions] log-probability of each emotion's first token as the answer to the question."""
    return read_stories(lm, texts, emotions, batch_size, progress).logprobs


def own_ranks(logprobs: np.ndarray, labels: Sequence[str], emotions: Sequence[str],
              centre: np.ndarray | None = None) -> np.ndarray:
    """Rank (0 = first) of each text's own emotion after centring each emotion's column on its mean.

    `centre` replaces the column means (a later round is ranked by the first round's yardstick).
    Emotions that share a first token tie; a tie counts in the story's favour.
    """
    col = {e: i for i, e in enumerate(emotions)}
    centred = logprobs - (logprobs.mean(axis=0, keepdims=True) if centre is None else centre[None, :])
    own = centred[np.arange(len(labels)), [col[lab] for lab in labels]]
    return cast(np.ndarray, (centred > own[:, None]).sum(axis=1))


def keep_mask(ranks: np.ndarray, labels: Sequence[str], n_emotions: int, fraction: float, min_keep: int = 2,
              already: Mapping[str, int] | None = None) -> np.ndarray:
    """Which stories pass: own rank within the best `fraction` of `n_emotions`, plus each emotion's best up to
    `min_keep` kept in all (`already`: how many each emotion kept before these stories)."""
    keep = ranks < fraction * n_emotions
    labels_arr = np.asarray(labels)
    for e in set(labels):
        rows = np.flatnonzero(labels_arr == e)
        best = rows[np.argsort(ranks[rows], kind="stable")[:max(0, min_keep - (already or {}).get(e, 0))]]
        keep[best] = True
    return keep


def check_fraction(fraction: float) -> float:
    """`fraction` if it is a usable share of the emotion list (0 < f <= 1), else a one-line error."""
    if not 0 < fraction <= 1:
        raise EmovecError(f"content check fraction must be in (0, 1] (e.g. 0.5: keep stories whose emotion the "
                          f"model ranks in the top half), got {fraction}")
    return fraction


@dataclass(frozen=True)
class ShardTarget:
    """Where and how a run extracts its story activations, so that the check's pass can write them there."""

    act_dir: Path
    keep_layers: list[int]
    start: int
    max_tokens: int = 512


REUSE_LIMIT_BYTES = 2 << 30  # the check holds every story's pools until it decides; above this it only scores
CENTRE_FILE = "content_check.json"  # the column means the first scoring ranked by, for later rounds


@dataclass
class CheckResult:
    """What one call of the check decided (`summary`) and the pools of the stories it scored (`pools`, if asked)."""

    summary: dict[str, Any]
    pools: PooledTexts | None


def check_stories(lm: LanguageModel, run_dir: str | Path, emotions: Sequence[str], fraction: float,
                  min_keep: int = 2, batch_size: int = 8, progress: bool = True,
                  pool_for: ShardTarget | None = None) -> CheckResult:
    """Rank every story the filters kept in `run_dir/stories.jsonl` that has no rank yet, and drop those that miss.

    The first scoring centres each emotion by its mean over the stories scored and saves those means
    (`content_check.json`); stories added later (replacement rounds, `corpus.refill_stories`) are ranked by the
    saved means, so earlier ranks never change. Decisions are made from the ranks round by round: the first
    round keeps each emotion's `min_keep` best, a later one rescues stories only where its emotion still has
    fewer than `min_keep`. A re-run scores nothing and decides the same (another `fraction` re-decides from the
    saved ranks). Without the saved means every candidate is scored again. With `pool_for` the scoring pass also
    pools the scored stories for those shards.
    """
    check_fraction(fraction)
    run_dir = Path(run_dir)
    path = run_dir / STORIES_FILE
    rows = read_jsonl(path) if path.exists() else []
    cand = [r for r in rows if r.get("emotion") in emotions and (r.get("kept", True) or r.get("reason") == DROP_REASON)]
    todo = [r for r in cand if not isinstance(r.get(RANK_KEY), int)]
    centre = _read_centre(run_dir, emotions) if len(todo) < len(cand) else None
    if todo and centre is None:  # a first scoring (or the saved means are gone): everything, by its own means
        todo = cand
    pools = None
    if todo:
        reuse = pool_for is not None and len(todo) * lm.n_layers * lm.d_model * 4 <= REUSE_LIMIT_BYTES
        done = read_stories(lm, [str(r["text"]) for r in todo], emotions, batch_size, progress,
                            ids=[str(r["id"]) for r in todo] if reuse else None,
                            layers=range(lm.n_layers) if reuse else (),
                            start=pool_for.start if pool_for else DEFAULT_START,
                            max_tokens=pool_for.max_tokens if pool_for else 512)
        if centre is None:
            centre = done.logprobs.mean(axis=0)
            write_json(run_dir / CENTRE_FILE, {"emotions": list(emotions), "question": question_suffix(),
                                               "n_stories": len(todo), "centre": [float(x) for x in centre]})
        ranks = own_ranks(done.logprobs, [str(r["emotion"]) for r in todo], emotions, centre)
        for r, rank in zip(todo, ranks):
            r[RANK_KEY] = int(rank)
        pools = done.pooled
    before = [(r.get("kept"), r.get("reason")) for r in cand]
    _decide(cand, len(emotions), fraction, min_keep)
    if todo or before != [(r.get("kept"), r.get("reason")) for r in cand]:
        write_jsonl(path, rows)
    return CheckResult(_summary(cand, len(emotions), fraction, min_keep, len(todo)), pools)


def _decide(cand: Sequence[dict[str, Any]], n_emotions: int, fraction: float, min_keep: int) -> None:
    """Set `kept`/`reason` of every ranked candidate from its rank, one replacement round after another."""
    already: Counter[str] = Counter()
    for rnd in sorted({refill_round(r) for r in cand}):
        group = [r for r in cand if refill_round(r) == rnd]
        labels = [str(r["emotion"]) for r in group]
        keep = keep_mask(np.array([r[RANK_KEY] for r in group]), labels, n_emotions, fraction, min_keep, already)
        for r, k in zip(group, keep):
            r["kept"], r["reason"] = bool(k), None if k else DROP_REASON
        already.update(lab for lab, k in zip(labels, keep) if k)


def _read_centre(run_dir: Path, emotions: Sequence[str]) -> np.ndarray | None:
    """The saved column means, if they were made for these emotions and this question (else None: score afresh)."""
    path = run_dir / CENTRE_FILE
    if not path.exists():
        return None
    saved = read_json(path)
    if not isinstance(saved, dict) or saved.get("emotions") != list(emotions) or saved.get("question") != question_suffix():
        return None
    centre = np.asarray(saved.get("centre"), dtype=np.float32)
    return centre if centre.shape == (len(emotions),) and np.isfinite(centre).all() else None


def _summary(cand: Sequence[dict[str, Any]], n_emotions: int, fraction: float, min_keep: int,
             scored: int) -> dict[str, Any]:
    """Counts over every story the check has decided (`scored`: how many this call scored)."""
    ranks = np.array([r[RANK_KEY] for r in cand if isinstance(r.get(RANK_KEY), int)])
    kept = sum(bool(r.get("kept", True)) for r in cand)
    return {"checked": len(cand), "kept": kept, "dropped": len(cand) - kept, "fraction": fraction,
            "min_keep": min_keep, "median_rank": float(np.median(ranks)) if len(ranks) else None,
            "top10pct_rate": round(float((ranks < 0.1 * n_emotions).mean()), 4) if len(ranks) else None,
            "rescored": scored > 0, "scored": scored, "shards_written": 0}


def write_checked_shards(lm: LanguageModel, run_dir: str | Path, emotions: Sequence[str], pools: PooledTexts,
                         target: ShardTarget, batch_size: int = 8) -> int:
    """Write the kept stories' activation shards from the check's pools (a chunk they do not cover is pooled by
    the model, as extraction would); returns how many stories the shards hold."""
    kept_rows = load_corpus(run_dir, "stories", emotions)
    write_shards(lm, kept_rows, target.act_dir, "stories", keep_layers=target.keep_layers, start=target.start,
                 batch_size=batch_size, max_tokens=target.max_tokens, progress=False, reuse=pools)
    return len(kept_rows)


def apply_content_check(lm: LanguageModel, run_dir: str | Path, emotions: Sequence[str], fraction: float,
                        min_keep: int = 2, batch_size: int = 8, progress: bool = True,
                        extract_to: ShardTarget | None = None) -> dict[str, Any]:
    """`check_stories`, then (with `extract_to`) the kept stories' shards from its pass; returns its summary.

    Rewrites the file atomically with `content_rank` on every checked row; a re-run on a file whose checked
    rows all carry a rank re-applies the same decision without scoring again. The extraction stage then finds
    the shards done.
    """
    res = check_stories(lm, run_dir, emotions, fraction, min_keep, batch_size, progress, pool_for=extract_to)
    if res.pools is not None and extract_to is not None:
        res.summary["shards_written"] = write_checked_shards(lm, run_dir, emotions, res.pools, extract_to, batch_size)
    return res.summary
