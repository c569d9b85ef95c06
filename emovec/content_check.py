"""The content check: does the run's model read each story as the emotion it was written for?

The naming filter (`corpus.judge_story`) drops stories that name their emotion. A small writer often
shows an emotion only by naming it, so what the filter leaves of some emotions rarely depicts them
(on the 135M demo, most kept "angry" stories are cheerful or wistful). The check asks the run's model,
for every story the filter kept, which emotion its main character feels: one forward pass over the
story followed by a fixed question, and the next-token log-probability of each emotion's first token.
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

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from .activations import length_sorted_batches
from .corpus import STORIES_FILE, prompts
from .models import LanguageModel
from .storage import EmovecError, read_jsonl, write_jsonl

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


def question(lm: LanguageModel, story: str) -> str:
    """The prompt that asks which emotion the story's main character feels, ready for the answer word.

    A chat turn where the model has a chat template; plain text (question, then the answer's start) for a base model.
    """
    p = prompts()
    ask, answer = str(p["content_question"]).format(story=story), str(p["content_answer"])
    return lm.chat(ask) + answer if lm.has_chat_template else f"{ask}\n\n{answer}"


@torch.inference_mode()
def emotion_logprobs(lm: LanguageModel, texts: Sequence[str], emotions: Sequence[str], batch_size: int = 8,
                     progress: bool = False) -> np.ndarray:
    """[n_texts, n_emotions] log-probability of each emotion's first token as the answer to `question`.

    Right-padded batches; only the last real position of each row goes through the unembedding.
    """
    if not texts:
        raise EmovecError("no stories to check (empty corpus)")
    ids = torch.tensor(first_tokens(lm, emotions))
    model = cast(Any, lm.model)
    head = model.get_output_embeddings()
    prompts_ = [question(lm, t) for t in texts]
    lengths = [len(x) for x in lm.tokenizer(prompts_, add_special_tokens=False)["input_ids"]]
    out = np.zeros((len(texts), len(emotions)), dtype=np.float32)
    bar = tqdm(total=len(texts), desc="content check", unit="story", disable=not progress)
    for idx in length_sorted_batches(lengths, batch_size):
        enc = lm.tokenizer([prompts_[i] for i in idx], return_tensors="pt", padding=True, padding_side="right",
                           add_special_tokens=False)
        enc = {k: v.to(lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        hidden = model.base_model(**enc, use_cache=False).last_hidden_state
        last = enc["attention_mask"].sum(1) - 1
        logits = head(hidden[torch.arange(len(idx)), last]).float()
        out[idx] = torch.log_softmax(logits, dim=-1)[:, ids.to(logits.device)].cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return out


def own_ranks(logprobs: np.ndarray, labels: Sequence[str], emotions: Sequence[str]) -> np.ndarray:
    """Rank (0 = first) of each text's own emotion after centring each emotion's column on its mean.

    Emotions that share a first token tie; a tie counts in the story's favour.
    """
    col = {e: i for i, e in enumerate(emotions)}
    centred = logprobs - logprobs.mean(axis=0, keepdims=True)
    own = centred[np.arange(len(labels)), [col[lab] for lab in labels]]
    return cast(np.ndarray, (centred > own[:, None]).sum(axis=1))


def keep_mask(ranks: np.ndarray, labels: Sequence[str], n_emotions: int, fraction: float, min_keep: int = 2) -> np.ndarray:
    """Which stories pass: own rank within the best `fraction` of `n_emotions`, plus each emotion's `min_keep` best."""
    keep = ranks < fraction * n_emotions
    labels_arr = np.asarray(labels)
    for e in set(labels):
        rows = np.flatnonzero(labels_arr == e)
        best = rows[np.argsort(ranks[rows], kind="stable")[:min_keep]]
        keep[best] = True
    return keep


def check_fraction(fraction: float) -> float:
    """`fraction` if it is a usable share of the emotion list (0 < f <= 1), else a one-line error."""
    if not 0 < fraction <= 1:
        raise EmovecError(f"content check fraction must be in (0, 1] (e.g. 0.5: keep stories whose emotion the "
                          f"model ranks in the top half), got {fraction}")
    return fraction


def apply_content_check(lm: LanguageModel, run_dir: str | Path, emotions: Sequence[str], fraction: float,
                        min_keep: int = 2, batch_size: int = 8, progress: bool = True) -> dict[str, Any]:
    """Rank every story the filters kept in `run_dir/stories.jsonl` and drop those that miss their emotion.

    Rewrites the file atomically with `content_rank` on every checked row; a re-run on a file whose checked
    rows all carry a rank re-applies the same decision without scoring again. Returns a summary.
    """
    check_fraction(fraction)
    path = Path(run_dir) / STORIES_FILE
    rows = read_jsonl(path) if path.exists() else []
    cand = [r for r in rows if r.get("emotion") in emotions and (r.get("kept", True) or r.get("reason") == DROP_REASON)]
    if not cand:  # nothing passed the filters: the extraction says so with its empty-corpus message
        return {"checked": 0, "kept": 0, "dropped": 0, "fraction": fraction, "min_keep": min_keep,
                "median_rank": None, "top10pct_rate": None, "rescored": False}
    labels = [str(r["emotion"]) for r in cand]
    scored = all(isinstance(r.get(RANK_KEY), int) for r in cand)
    if scored:
        ranks = np.array([r[RANK_KEY] for r in cand])
    else:
        ranks = own_ranks(emotion_logprobs(lm, [str(r["text"]) for r in cand], emotions, batch_size, progress),
                          labels, emotions)
    keep = keep_mask(ranks, labels, len(emotions), fraction, min_keep)
    for r, rank, k in zip(cand, ranks, keep):
        r[RANK_KEY] = int(rank)
        r["kept"], r["reason"] = bool(k), None if k else DROP_REASON
    write_jsonl(path, rows)
    top = ranks < 0.1 * len(emotions)
    return {"checked": len(cand), "kept": int(keep.sum()), "dropped": int((~keep).sum()), "fraction": fraction,
            "min_keep": min_keep, "median_rank": float(np.median(ranks)), "top10pct_rate": round(float(top.mean()), 4),
            "rescored": not scored}
