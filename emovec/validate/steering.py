"""Steering efficacy judged from outside: does steering an emotion move text the way a human would expect?

Each emotion is steered over a range of strengths at a few layers on a fixed set of
neutral open prompts (`data/steering_prompts.txt`), with sampled generation. Every
reply is scored three ways:

- an external judge that owes nothing to emovec's vectors: VADER sentiment (Hutto &
  Gilbert 2014, package `vaderSentiment`). Why VADER: it is rule-based and its
  lexicon ships inside the package (no model download, no network, deterministic),
  and its compound score is a valence in [-1, 1], the axis on which the expected
  direction of happy, calm (up) and sad, angry, afraid, desperate (down) is clear;
- emovec's own readout: the mean projection of the reply's tokens on the steered
  emotion's vector, read unsteered at the vectors' default layer;
- fluency: the unsteered model's mean negative log-likelihood per reply token given
  the prompt (its log-perplexity) and the fraction of repeated word bigrams, so that
  "moved the judge by breaking the text" shows.

Strengths whose fluency stays within stated bounds of the unsteered replies form the
useful range; dose-response slopes, the happy-vs-sad separation and the recommended
default layer and strength are computed on it.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from typing import Any, NamedTuple

import numpy as np
import torch

from ..activations import hidden_of, layer_hooks
from ..concepts import data_lines
from ..generation import Sampling, decode
from ..models import LanguageModel, cache_kw
from ..readout import project
from ..steering import SteeringVector, steering_vector
from ..storage import EmovecError
from ..vectors import EmotionVectors
from .emotion_words import CATEGORIES, OWN_CATEGORY, by_prompt, load_emolex, paired_slope_gap, specificity, word_rates
from .stats import mean_ci, ols_fit, ordered_trend, step_tests, welch

DEFAULT_EMOTIONS = ("happy", "sad", "calm", "angry", "afraid", "desperate")
# Direction each emotion should move a valence judge: +1 up, -1 down.
EXPECTED = {"happy": 1, "calm": 1, "sad": -1, "angry": -1, "afraid": -1, "desperate": -1}
DEFAULT_STRENGTHS = (-0.2, -0.1, 0.0, 0.1, 0.2)
JUDGE = "VADER compound sentiment (vaderSentiment, rule-based lexicon shipped in the package), in [-1, 1]"


@dataclass(frozen=True)
class SteeringConfig:
    """What the steering-efficacy analysis steers, on which prompts, and how fluency is bounded.

    `emotions` (None: the `DEFAULT_EMOTIONS` the vectors have) are steered at the first of
    `layers` (None: `default_layers`) over `strengths`; `layer_emotions` (None: happy and
    sad) also at the other layers over `layer_strengths` (None: the positive strengths),
    which is what the choice of layer needs. Each (emotion, strength, layer) arm
    generates `samples` replies to each prompt. A strength is fluent when the perplexity
    of its replies is at most `max_ppl_ratio` times the unsteered one's and its
    repetition and empty-reply rates at most `max_repetition_increase` above theirs.
    Defaults, from a look at what SmolLM2-135M tolerates: at +-0.2 x mean norm replies
    still read fluently (perplexity 1.5-1.9x unsteered), from +-0.3 some break (2.2-3.1x).
    """

    emotions: tuple[str, ...] | None = None
    layer_emotions: tuple[str, ...] | None = None
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    layer_strengths: tuple[float, ...] | None = None
    layers: tuple[int, ...] | None = None
    prompts: tuple[str, ...] | None = None
    samples: int = 1
    max_new_tokens: int = 24
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    batch_size: int = 256
    max_ppl_ratio: float = 2.0
    max_repetition_increase: float = 0.15


class Arm(NamedTuple):
    """One steering condition: `emotion` at `strength` at `layer` (emotion None: unsteered)."""

    emotion: str | None
    strength: float
    layer: int | None

    @property
    def label(self) -> str:
        """"unsteered" or e.g. "happy=+0.15@L20"."""
        return "unsteered" if self.emotion is None else f"{self.emotion}={self.strength:+g}@L{self.layer}"


def steering_prompts() -> list[str]:
    """The built-in neutral open prompts (`emovec/data/steering_prompts.txt`)."""
    return data_lines("steering_prompts.txt")


def default_layers(vectors: EmotionVectors) -> list[int]:
    """The vectors' default layer first, then half depth, the layer midway between, and the layer midway from the
    default to the top (those the vectors have): later layers carry the valence geometry on small models."""
    n = int(vectors.meta.get("n_layers", max(vectors.layers) + 1))
    d = vectors.default_layer
    out = [d] + [lay for lay in (round(n / 2), round((n / 2 + d) / 2), round((d + n) / 2)) if lay in vectors.layers]
    return list(dict.fromkeys(out))


@lru_cache(maxsize=1)
def _vader() -> Any:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise EmovecError("the steering judge needs the vaderSentiment package: pip install vaderSentiment") from None
    return SentimentIntensityAnalyzer()


def judge(texts: Sequence[str]) -> list[float]:
    """VADER compound valence of each text, in [-1, 1] (0 for an empty text)."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(t)["compound"]) if t.strip() else 0.0 for t in texts]


def repetition_rate(text: str) -> float:
    """Fraction of the word bigrams of `text` that repeat an earlier one (0 with fewer than two words)."""
    words = re.findall(r"\w+", text.lower())
    bigrams = list(zip(words, words[1:]))
    return 1 - len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def _hooks(lm: LanguageModel, units: dict[tuple[str, int], SteeringVector],
           rows: dict[tuple[str, int], torch.Tensor]) -> ExitStack:
    """Every unit steering vector applied with its per-row strengths (rows of other arms get 0)."""
    stack = ExitStack()
    for key, scale in rows.items():
        stack.enter_context(units[key].apply(lm, rows=scale))
    return stack


def generate_arms(lm: LanguageModel, vectors: EmotionVectors, arms: Sequence[Arm], prompts: Sequence[str],
                  samples: int, sampling: Sampling, seed: int = 0,
                  batch_size: int = 256) -> list[dict[str, Any]]:
    """Sampled replies for every arm x sample x rendered prompt, many arms per batch.

    Each arm's steering (strength x mean_norm x unit vector at its layer, added at every
    position, prompt and reply) reaches its own rows only: one `SteeringVector.apply`
    per (emotion, layer) with per-row strengths, 0 on other rows, which leaves them
    exactly unsteered. Batch b samples from a generator seeded `seed + b`. Returns one
    dict per reply: arm, prompt, sample, `prompt_ids`, `reply_ids` (tokens up to the
    end token), `text`.
    """
    jobs = [(a, p, j) for a in range(len(arms)) for j in range(samples) for p in range(len(prompts))]
    units = {(arm.emotion, arm.layer): steering_vector(vectors, {arm.emotion: 1.0}, layers=[arm.layer])
             for arm in arms if arm.emotion is not None and arm.layer is not None and arm.strength != 0}
    tok = lm.tokenizer
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    out: list[dict[str, Any]] = []
    for b, first in enumerate(range(0, len(jobs), batch_size)):
        chunk = jobs[first:first + batch_size]
        rows = {key: torch.tensor([arms[a].strength if (arms[a].emotion, arms[a].layer) == key else 0.0 for a, _, _ in chunk])
                for key in units}
        rows = {key: r for key, r in rows.items() if bool(r.any())}
        replies: list[list[int]] = [[] for _ in chunk]
        for st in decode(lm, [prompts[p] for _, p, _ in chunk], sampling, torch.Generator().manual_seed(seed + b),
                         share_prefix=False, step_context=partial(_hooks, lm, units, rows)):
            for r in torch.nonzero(st.live).flatten().tolist():
                replies[r].append(int(st.tokens[r]))
        for (a, p, j), ids in zip(chunk, replies):
            out.append({"arm": a, "prompt": p, "sample": j, "prompt_ids": prompt_ids[p], "reply_ids": ids,
                        "text": tok.decode(ids, skip_special_tokens=True).strip()})
    return out


@torch.inference_mode()
def score_replies(lm: LanguageModel, vectors: EmotionVectors, prompt_ids: Sequence[list[int]],
                  reply_ids: Sequence[list[int]], emotions: Sequence[str], layer: int | None = None,
                  batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Unsteered: each reply's mean NLL per token given its prompt [n], and its mean readout scores [n, emotions].

    Each distinct prompt runs once (its key/value cache and the log-probabilities of the
    first reply token are kept); its replies then run as one right-padded batch on
    that cache, giving both the log-probability of every reply token and the residual
    at `layer` (default: the vectors' default layer) averaged over the reply tokens and
    projected as in `readout.project`. Empty replies get NaN.
    """
    from transformers import DynamicCache

    layer = vectors.default_layer if layer is None else lm.check_layer(layer)
    names = vectors.resolve(list(emotions))
    model: Any = lm.model
    n = len(reply_ids)
    nll, scores = np.full(n, np.nan), np.full((n, len(names)), np.nan)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    grabbed: dict[str, torch.Tensor] = {}

    def grab(_idx: int, _m: object, _i: tuple[Any, ...], out: object) -> None:
        grabbed["h"] = hidden_of(out).detach().float().cpu()

    groups: dict[tuple[int, ...], list[int]] = {}
    for i in range(n):
        if reply_ids[i]:
            groups.setdefault(tuple(prompt_ids[i]), []).append(i)
    for prompt, members in groups.items():
        ids = torch.tensor([prompt], device=lm.device)
        cache = DynamicCache(config=model.config)
        first = torch.log_softmax(model(input_ids=ids, **cache_kw(model, cache), use_cache=True,
                                        logits_to_keep=1).logits[0, -1].float().cpu(), dim=-1)
        p = len(prompt)
        with layer_hooks(lm, [layer], grab):
            for b in range(0, len(members), batch_size):
                idx = members[b:b + batch_size]
                width = max(len(reply_ids[i]) for i in idx)
                rows = torch.tensor([list(reply_ids[i]) + [pad] * (width - len(reply_ids[i])) for i in idx])
                mask = torch.tensor([[1] * len(reply_ids[i]) + [0] * (width - len(reply_ids[i])) for i in idx])
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(len(idx))
                attn = torch.cat([torch.ones(len(idx), p, dtype=mask.dtype), mask], 1).to(lm.device)
                pos = torch.arange(p, p + width, device=lm.device)[None].expand(len(idx), -1)
                logp = torch.log_softmax(model(input_ids=rows.to(lm.device), attention_mask=attn, position_ids=pos,
                                               **cache_kw(model, past), use_cache=True).logits.float().cpu(), dim=-1)
                token_lp = torch.cat([first[rows[:, :1]], logp[:, :-1].gather(2, rows[:, 1:, None])[..., 0]], dim=1)
                m = mask.bool()
                nll[idx] = (-(token_lp * m).sum(1) / m.sum(1)).numpy()
                mean = (grabbed["h"] * m[..., None]).sum(1) / m.sum(1, keepdim=True)
                scores[idx] = project(mean, vectors, layer, names).numpy()
    return nll, scores


def _paired_table(by_strength: dict[float, list[dict[str, Any]]], strengths: Sequence[float]) -> np.ndarray:
    """Judge scores [prompt x sample, strength] for the replies present at every one of `strengths`."""
    cells = [{(r["prompt"], r["sample"]): r["judge"] for r in by_strength[s]} for s in strengths]
    keys = sorted(set.intersection(*(set(c) for c in cells))) if cells else []
    return np.array([[c[k] for c in cells] for k in keys], dtype=float).reshape(len(keys), len(cells))


# --- the analysis ---------------------------------------------------------------------------------

def _arms(cfg: SteeringConfig, emotions: list[str], layer_emotions: list[str], layers: list[int]) -> list[Arm]:
    """The unsteered arm, `emotions` x `strengths` at the first layer, `layer_emotions` x layer strengths at the others."""
    others = cfg.layer_strengths if cfg.layer_strengths is not None else tuple(s for s in cfg.strengths if s > 0)
    arms = [Arm(None, 0.0, None)]
    for layer in layers:
        first = layer == layers[0]
        for e in emotions if first else layer_emotions:
            arms += [Arm(e, float(s), layer) for s in (cfg.strengths if first else others) if float(s) != 0.0]
    return arms


def _point(rows: list[dict[str, Any]], base: dict[str, Any], cfg: SteeringConfig, strength: float) -> dict[str, Any]:
    """Dose-response point of one arm: judge, readout and fluency, with the fluency verdict."""
    nll = [r["nll"] for r in rows if r["nll"] is not None]
    nll_mean = float(np.mean(nll)) if nll else None
    rep = float(np.mean([r["repetition"] for r in rows]))
    empty = float(np.mean([not r["text"] for r in rows]))
    ratio = math.exp(nll_mean - base["nll"]) if nll_mean is not None and base["nll"] is not None else None
    fluent = strength == 0 or (ratio is not None and ratio <= cfg.max_ppl_ratio
                               and rep <= base["repetition"] + cfg.max_repetition_increase
                               and empty <= base["empty"] + cfg.max_repetition_increase)
    return {"strength": strength, "n": len(rows), "judge": mean_ci([r["judge"] for r in rows]),
            "readout": mean_ci([r["readout"] for r in rows if r["readout"] is not None]),
            "nll": nll_mean, "ppl_ratio": ratio, "repetition": rep, "empty": empty, "fluent": bool(fluent)}


def _useful(points: list[dict[str, Any]]) -> list[float]:
    """Strengths reachable from 0 through fluent points only, in each direction."""
    s = sorted(points, key=lambda p: p["strength"])
    zero = next(i for i, p in enumerate(s) if p["strength"] == 0)
    lo = zero
    while lo > 0 and s[lo - 1]["fluent"]:
        lo -= 1
    hi = zero
    while hi < len(s) - 1 and s[hi + 1]["fluent"]:
        hi += 1
    return [p["strength"] for p in s[lo:hi + 1]]


def _curve(emotion: str, layer: int, samples: list[dict[str, Any]], base_rows: list[dict[str, Any]],
           base: dict[str, Any], cfg: SteeringConfig) -> dict[str, Any]:
    by_strength: dict[float, list[dict[str, Any]]] = {0.0: [dict(r, readout=r["readouts"].get(emotion)) for r in base_rows]}
    for r in samples:
        by_strength.setdefault(r["strength"], []).append(dict(r, readout=r["readouts"].get(emotion)))
    points = [_point(rows, base, cfg, s) for s, rows in sorted(by_strength.items())]
    useful = _useful(points)
    inside = [r for s in useful for r in by_strength[s]]
    fit = ols_fit([r["strength"] for r in inside], [r["judge"] for r in inside])
    pos = [r for r in inside if r["strength"] >= 0]
    expected = EXPECTED.get(emotion)
    sign = expected if expected is not None else (np.sign(fit["slope"]) if fit["slope"] else 0)
    means = [p["judge"]["mean"] for p in points if p["strength"] in useful]
    order = sorted(useful, reverse=sign < 0)  # the fluent strengths in the order the judge should rise
    table = _paired_table(by_strength, order)
    steps = step_tests(table, order)
    return {"emotion": emotion, "layer": layer, "expected": expected, "points": points,
            "useful_range": [min(useful), max(useful)], "fit": fit,
            "fit_positive": ols_fit([r["strength"] for r in pos], [r["judge"] for r in pos]),
            "readout_fit": ols_fit([r["strength"] for r in inside if r["readout"] is not None],
                                   [r["readout"] for r in inside if r["readout"] is not None]),
            "as_expected": None if expected is None or fit["slope"] is None else bool(fit["slope"] * expected > 0 and fit["p"] < 0.05),
            "monotonic": len(means) > 1 and all(sign * (b - a) >= 0 for a, b in zip(means, means[1:])),
            "trend": ordered_trend(table), "steps": steps,
            "wrong_way_steps": [st for st in steps if st["change"] < 0 and st["p"] is not None and st["p"] < 0.05]}


def _emotion_words(curves: list[dict[str, Any]], steered: dict[tuple[str, int], list[dict[str, Any]]],
                   base_rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The emotion-words judge at the curves' layer (`emotion_words.specificity`); None without the lexicon.

    `steered[(emotion, layer)]` are the replies of each steered arm, as the curves were built from.
    """
    lexicon = load_emolex()
    if lexicon is None or not curves:
        return None
    layer = curves[0]["layer"]
    ranges = {c["emotion"]: tuple(c["useful_range"]) for c in curves}
    rows = {e: base_rows + steered.get((e, layer), []) for e in ranges}
    rates = {e: word_rates([r["text"] for r in rows[e]], lexicon) for e in ranges}

    def fit(e: str, lo: float, hi: float, k: int) -> dict[str, Any]:
        idx = [i for i, r in enumerate(rows[e]) if lo <= r["strength"] <= hi]
        return ols_fit([rows[e][i]["strength"] for i in idx], rates[e][idx, k].tolist())

    slopes = {e: {cat: fit(e, lo, hi, k) for k, cat in enumerate(CATEGORIES)} for e, (lo, hi) in ranges.items()}
    common = {}  # e's own category, for e and each other o, over the strengths both are fluent at
    for e in (e for e in ranges if e in OWN_CATEGORY):
        k = CATEGORIES.index(OWN_CATEGORY[e])
        for o in (o for o in ranges if o != e):
            lo, hi = max(ranges[e][0], ranges[o][0]), min(ranges[e][1], ranges[o][1])
            paired = paired_slope_gap(by_prompt(rows[e], rates[e][:, k], lo, hi), by_prompt(rows[o], rates[o][:, k], lo, hi))
            common[(e, o)] = {"own": fit(e, lo, hi, k), "other": fit(o, lo, hi, k), "p": paired["p"], "n": paired["n"]}
    return {"layer": layer, **specificity(slopes, common)}


def _separations(curves: list[dict[str, Any]], samples: list[dict[str, Any]], strengths: Sequence[float]) -> list[dict[str, Any]]:
    """judge(happy at +s) - judge(sad at +s) per layer and positive strength (Welch), where both were steered."""
    out = []
    fluent = {(c["emotion"], c["layer"], p["strength"]): p["fluent"] for c in curves for p in c["points"]}
    for layer in sorted({c["layer"] for c in curves}):
        for s in sorted(x for x in strengths if x > 0):
            if ("happy", layer, s) not in fluent or ("sad", layer, s) not in fluent:
                continue
            judged = {e: [r["judge"] for r in samples if (r["emotion"], r["layer"], r["strength"]) == (e, layer, s)]
                      for e in ("happy", "sad")}
            out.append({"layer": layer, "strength": s, **welch(judged["happy"], judged["sad"]),
                        "fluent": fluent[("happy", layer, s)] and fluent[("sad", layer, s)]})
    return out


def _recommend(curves: list[dict[str, Any]], default_layer: int) -> dict[str, Any]:
    """The recommended layer, strength and strength range, chosen without looking at one lucky strength.

    Layer: the largest z of the happy-minus-sad judge slope over the fluent strengths >= 0
    (`_slope_gap`; the same strengths at every layer), else the largest mean directional
    slope t (expected sign x slope / SE) over the emotions steered there. Range: the
    strengths fluent for every emotion steered at that layer; strength: its positive end;
    pair strength (where happy vs sad is tested): the largest fluent for both. Strengths
    are chosen by fluency alone, so the headline test is not picked for its outcome.
    """
    layers = sorted({c["layer"] for c in curves})
    gaps = {lay: g for lay in layers if (g := _slope_gap(curves, lay, "fit_positive")) is not None and g["z"] is not None}
    if gaps:
        layer = max(gaps, key=lambda lay: (gaps[lay]["z"], lay == default_layer))
        why = (f"largest z of the happy-minus-sad judge slope over fluent strengths >= 0 among layers {layers} "
               f"(z = {gaps[layer]['z']:.2f}); strength: the largest fluent for every emotion steered there")
    else:
        score: dict[int, list[float]] = {}
        for c in curves:
            if c["expected"] is not None and c["fit"].get("se"):
                score.setdefault(c["layer"], []).append(c["expected"] * c["fit"]["slope"] / c["fit"]["se"])
        if not score:
            return {"layer": None, "strength": None, "range": None, "n_layers_compared": len(layers),
                    "why": "no fluent steering with a measurable slope"}
        layer = max(score, key=lambda lay: (float(np.mean(score[lay])), lay == default_layer))
        why = "largest mean directional slope t (expected sign x slope / SE) over the emotions steered at the layer"
    at = [c for c in curves if c["layer"] == layer]
    rng = [max(c["useful_range"][0] for c in at), min(c["useful_range"][1] for c in at)]
    pair = [c["useful_range"][1] for c in at if c["emotion"] in ("happy", "sad")]
    return {"layer": layer, "strength": rng[1] if rng[1] > 0 else None, "range": rng,
            "pair_strength": min(pair) if len(pair) == 2 and min(pair) > 0 else None,
            "n_layers_compared": len(layers), "why": why}


def _slope_gap(curves: list[dict[str, Any]], layer: int | None, fit: str = "fit") -> dict[str, Any] | None:
    """Judge shift per unit strength, happy minus sad, at `layer` (normal-approximation 95% interval, z, p).

    `fit` names the curves' fit to use: "fit" (the whole fluent range) or "fit_positive" (its strengths >= 0).
    """
    fits = {c["emotion"]: c[fit] for c in curves if c["layer"] == layer and c["emotion"] in ("happy", "sad")}
    if len(fits) < 2 or fits["happy"].get("se") is None or fits["sad"].get("se") is None:
        return None
    gap = fits["happy"]["slope"] - fits["sad"]["slope"]
    se = math.hypot(fits["happy"]["se"], fits["sad"]["se"])
    z = gap / se if se > 0 else None
    return {"layer": layer, "diff": gap, "ci95": [gap - 1.96 * se, gap + 1.96 * se], "z": z,
            "p": math.erfc(abs(z) / math.sqrt(2)) if z is not None else None,
            "n_happy": fits["happy"]["n"], "n_sad": fits["sad"]["n"]}


def _headline(sep: dict[str, Any] | None, gap: dict[str, Any] | None, n_layers: int) -> dict[str, Any]:
    """The happy-vs-sad separation at the recommended layer and strength, with a one-line `text`.

    `p_adjusted` is Bonferroni over the `n_layers` layers the recommendation chose among.
    """
    if sep is None or sep["diff"] is None:
        return {"text": "no happy-vs-sad separation measured (happy and sad need a fluent positive strength at one layer)",
                "slope_gap": gap}
    ci = f" [{sep['ci95'][0]:+.2f}, {sep['ci95'][1]:+.2f}]" if sep["ci95"] else ""
    p_adj = min(1.0, sep["p"] * n_layers) if sep["p"] is not None else None
    test = f", Welch t = {sep['t']:.2f}, p = {sep['p']:.2g} ({p_adj:.2g} adjusted for {n_layers} layers)" if p_adj is not None else ""
    per_unit = (f"; per unit strength happy - sad {gap['diff']:+.2f} [{gap['ci95'][0]:+.2f}, {gap['ci95'][1]:+.2f}], "
                f"p = {gap['p']:.2g}" if gap and gap["p"] is not None else "")
    return {**sep, "judge": "vader", "p_adjusted": p_adj, "slope_gap": gap,
            "text": f"VADER(happy at +{sep['strength']:g}) - VADER(sad at +{sep['strength']:g}), layer {sep['layer']}: "
                    f"{sep['diff']:+.2f}{ci}{test}, n = {sep['n_a']}/{sep['n_b']}{per_unit}"}


def steering_efficacy(lm: LanguageModel, vectors: EmotionVectors, config: SteeringConfig | None = None,
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Steer emotions over strengths and layers, judge the replies from outside, and report dose-response.

    Returns settings, the unsteered baseline, one curve per (emotion, layer) with its
    points (judge / readout mean and 95% CI, fluency), useful range, OLS fit of judge
    on strength over that range (slope, CI, p, Spearman rho), direction and
    monotonicity verdicts (the means' order; Page's trend test and a paired t-test
    per step, both paired by prompt, so noise between strengths is not read as a
    reversal); the happy-vs-sad separations, the headline one at the
    recommended layer and strength, the recommendation, every sample and timings.
    """
    vectors.check_model(lm)
    cfg = config or SteeringConfig()
    t0 = time.time()
    emotions = vectors.resolve(list(cfg.emotions)) if cfg.emotions else [e for e in DEFAULT_EMOTIONS if e in vectors.emotions]
    pair: list[str] = [e for e in ("happy", "sad") if e in vectors.emotions]
    layer_emotions = vectors.resolve(list(cfg.layer_emotions)) if cfg.layer_emotions is not None else pair
    if not emotions:
        raise EmovecError("none of the default steering emotions are in these vectors; pass emotions")
    layers = [lm.check_layer(lay) for lay in cfg.layers] if cfg.layers else default_layers(vectors)
    for lay in layers:
        vectors.layer_index(lay)
    prompts = list(cfg.prompts) if cfg.prompts else steering_prompts()
    sampling = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=50,
                        repetition_penalty=1.0)
    arms = _arms(cfg, emotions, layer_emotions, layers)
    if progress:
        progress(f"steering: {len(arms)} arms x {len(prompts)} prompts x {cfg.samples} samples, {cfg.max_new_tokens} tokens")
    gens = generate_arms(lm, vectors, arms, [lm.chat(p) for p in prompts], cfg.samples, sampling, cfg.seed, cfg.batch_size)
    t_gen = time.time() - t0
    readout_names = list(dict.fromkeys(emotions + layer_emotions))
    nll, readouts = score_replies(lm, vectors, [g["prompt_ids"] for g in gens], [g["reply_ids"] for g in gens], readout_names)
    scores = judge([g["text"] for g in gens])
    samples = []
    for g, v, ll, ro in zip(gens, scores, nll, readouts):
        arm = arms[g["arm"]]
        samples.append({"arm": arm.label, "emotion": arm.emotion, "layer": arm.layer, "strength": arm.strength,
                        "prompt": g["prompt"], "sample": g["sample"], "text": g["text"], "judge": v,
                        "nll": None if np.isnan(ll) else float(ll), "repetition": repetition_rate(g["text"]),
                        "readouts": {e: None if np.isnan(x) else float(x) for e, x in zip(readout_names, ro)}})
    for r in samples:
        r["readout"] = r["readouts"].get(r["emotion"]) if r["emotion"] else None
    settings = {**asdict(cfg), "emotions": emotions, "layer_emotions": layer_emotions, "layers": layers, "prompts": prompts,
                "readout_layer": vectors.default_layer, "judge": JUDGE,
                "fluency": f"perplexity <= {cfg.max_ppl_ratio}x unsteered, repetition and empty-reply rates <= "
                           f"unsteered + {cfg.max_repetition_increase}",
                "steering": "s * mean_norm(layer) * unit vector added at every position (prompt and reply)"}
    return {**analyse_samples(samples, settings, vectors.default_layer), "n_arms": len(arms),
            "timing": {"generate_s": round(t_gen, 1), "total_s": round(time.time() - t0, 1)}}


def analyse_samples(samples: list[dict[str, Any]], settings: dict[str, Any], default_layer: int) -> dict[str, Any]:
    """The statistics of `steering_efficacy` from its judged samples and settings (re-runnable on a saved result)."""
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()
                              if k in SteeringConfig.__dataclass_fields__}
    cfg = SteeringConfig(**fields)
    emotions, layer_emotions, layers = settings["emotions"], settings["layer_emotions"], settings["layers"]
    base_rows = [r for r in samples if r["emotion"] is None]
    base_nll = [r["nll"] for r in base_rows if r["nll"] is not None]
    base = {"nll": float(np.mean(base_nll)) if base_nll else None,
            "repetition": float(np.mean([r["repetition"] for r in base_rows])),
            "empty": float(np.mean([not r["text"] for r in base_rows]))}
    steered: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in samples:
        if r["emotion"] is not None:
            steered.setdefault((r["emotion"], r["layer"]), []).append(r)
    curves = [_curve(e, lay, steered.get((e, lay), []), base_rows, base, cfg)
              for lay in layers for e in (emotions if lay == layers[0] else layer_emotions)]
    words = _emotion_words([c for c in curves if c["layer"] == layers[0]], steered, base_rows)
    seps = _separations(curves, samples, sorted({r["strength"] for r in samples}))
    rec = _recommend(curves, default_layer)
    gap = _slope_gap(curves, rec["layer"])
    chosen = (rec["layer"], rec.get("pair_strength"))
    headline = _headline(next((r for r in seps if (r["layer"], r["strength"]) == chosen), None), gap, rec["n_layers_compared"])
    return {"settings": settings, "n_samples": len(samples),
            "unsteered": {**base, "judge": mean_ci([r["judge"] for r in base_rows])},
            "curves": curves, "separations": seps, "headline": headline, "slope_gap": gap, "recommended": rec,
            "emotion_words": words, "samples": samples}
