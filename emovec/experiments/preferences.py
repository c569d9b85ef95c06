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
5. **Valence.** Across the emotions the human norms rate, each emotion's preference correlation is
   correlated with its valence: one test over all the run's emotions of whether the pleasant ones are
   the ones active on preferred activities (the paper's blissful +0.71 and hostile -0.74 are its ends).

Results live in `RUN_DIR/experiments/preferences/`: settings.json, samples.jsonl (resumable), summary.json,
elo.csv, activations.csv, correlations.csv, steering.csv and the figures (see `emovec.experiments.common`).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..models import LanguageModel
from ..plotting import figure, save_png
from ..provenance import check_settings, locked
from ..rundir import load_run
from ..steering import SteeringVector, parse_layers, steering_vector
from ..storage import EmovecError, write_json
from ..validate.analyses import correlation, load_norms
from .activities import (
    ANSWERS,
    GROUPS,
    Activity,
    activity_activations,
    feeling_question,
    load_activities,
    p_first,
    pair_preferences,
    pair_question,
    split_halves,
)
from .common import (
    SAMPLES_FILE,
    SUMMARY_FILE,
    Correlation,
    Rate,
    SampleStore,
    Timing,
    experiment_dir,
    pearson,
    pick_emotions,
    rate,
    split_names,
)
from .elo import ELO_PER_LOGIT, all_pairs, bootstrap_shift, bradley_terry, fit_elo, group_shift, mixed_pairs

__all__ = ["NAME", "TITLE", "PreferencesSummary", "run_preferences", "preference_figures", "summary_lines",
           # re-exported from .activities and .elo, where they live
           "ELO_PER_LOGIT", "Activity", "all_pairs", "bradley_terry", "fit_elo", "group_shift", "load_activities",
           "pair_preferences", "split_halves"]

NAME = "preferences"
TITLE = "activity preferences"


class EmotionCorrelation(Correlation):
    """Pearson r of one emotion's activation on the activities with their Elo."""

    emotion: str


class PositionBias(TypedDict):
    """How often the first option wins, the fitted first-position term, and order consistency."""

    mean_p_first: float
    first_chosen: Rate
    bias_elo: float
    order_consistent_pairs: Rate


class PreferencesTiming(Timing):
    """Seconds of each step of this call."""

    unsteered_pairs_s: float
    activations_s: float
    steering_s: float


class PreferencesSummary(TypedDict):
    """summary.json of the preference experiment (nested rows are plain dicts)."""

    experiment: str
    model: str
    n_activities: int
    groups: list[str]
    n_prompts_unsteered: int
    seed: int
    layer: int
    settings: dict[str, Any]
    position_bias: PositionBias
    elo: list[dict[str, Any]]
    group_elo: dict[str, float]
    correlations: list[EmotionCorrelation]
    extremes: dict[str, list[float]]
    steering: dict[str, Any]
    valence: dict[str, Any] | None
    timing: PreferencesTiming
    n_samples: int


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
    keys = [_sample_key(condition, activities[i], activities[j], steer_on is not None and i in steer_on,
                        steer_on is not None and j in steer_on)
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


def _spread(names: list[str], r: dict[str, float | None], k: int) -> list[str]:
    """`k` emotions spread evenly over the range of their preference correlations (both extremes included)."""
    known = {e: v for e, v in r.items() if v is not None}
    ranked = sorted((e for e in names if e in known), key=lambda e: known[e])
    if k >= len(ranked):
        return ranked
    picks = np.unique(np.round(np.linspace(0, len(ranked) - 1, k)).astype(int))
    return [ranked[i] for i in picks]


@locked
def run_preferences(run_dir: str | Path, emotions: Sequence[str] | str | None = None,
                    steer: Sequence[str] | str | None = None, n_vectors: int = 4, strength: float = 0.5,
                    layers: str | int | list[int] | None = None, steer_prompts: int | None = 256,
                    per_group: int | None = None, activities_file: str | Path | None = None, seed: int = 0,
                    batch_size: int = 64, chunk: int = 256, n_boot: int = 200, progress: bool = True,
                    lm: LanguageModel | None = None, tag: str | None = None) -> PreferencesSummary:
    """Run the activity-preference experiment on a run directory (resumable) and write its summary.

    `emotions`: emotions whose activation is correlated with Elo (default: all in the run).
    `steer`: emotions to steer with (default: `n_vectors` spread over the range of those correlations);
    `strength`: steering strength (fraction of the mean residual norm, paper: 0.5) at `layers`
    (default: the run's recommended steering layer, else the vectors' default layer).
    `steer_prompts`: prompts per vector, a seeded subset of the steered-vs-control pairs (None: all of them).
    `per_group`: use only the first k activities per group.
    `lm`: the run's model, already loaded (default: load it).
    """
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
    activities = load_activities(activities_file, per_group)
    ctx = load_run(run_dir, lm)
    lm, vectors = ctx.lm, ctx.vectors
    names = pick_emotions(vectors, emotions)
    if not names:
        raise EmovecError("no emotions to correlate with the preferences: pass --emotions, e.g. happy,sad")
    steer_names = vectors.resolve(split_names(steer)) if steer is not None else None
    n_layers = int(vectors.meta.get("n_layers", lm.n_layers))
    steer_layers = parse_layers(layers, n_layers) or [vectors.steering_layer]
    out_dir = experiment_dir(run_dir, NAME, tag)
    pair_prompt = pair_question("<a>", "<b>")[0]
    # Samples are keyed by condition, activity texts and steered sides; what the keys do not hold is guarded here.
    check_settings(out_dir, {"model": lm.name, "pair_prompt": pair_prompt, "answers": list(ANSWERS)}, lm=lm)
    store = SampleStore(out_dir / SAMPLES_FILE)
    n = len(activities)
    timing: dict[str, float] = {}

    # 1-2. every ordered pair, unsteered, and the Elo fit
    t0 = time.time()
    pairs = all_pairs(n)
    first, second = np.array([i for i, _ in pairs]), np.array([j for _, j in pairs])
    p_un = _collect(store, lm, activities, pairs, "unsteered", None, None, batch_size, chunk, progress)
    timing["unsteered_pairs_s"] = time.time() - t0
    s, b = bradley_terry(first, second, p_un, n)
    elo = s * ELO_PER_LOGIT
    p_un_map = {(i, j): p for (i, j), p in zip(pairs, p_un)}
    consistent = sum((p_un_map[(i, j)] > 0.5) != (p_un_map[(j, i)] > 0.5) for i, j in pairs if i < j)

    # 3. activations on each activity and their correlation with Elo
    t0 = time.time()
    acts = activity_activations(lm, vectors, activities, names, batch_size=batch_size)
    timing["activations_s"] = time.time() - t0
    corr = {e: pearson(acts[e].to_numpy(), elo) for e in names}
    r_of = {e: c["r"] for e, c in corr.items()}

    # 4. steering on the steered half's tokens, against the control half
    steered = split_halves(activities, seed)
    chosen = steer_names if steer_names is not None else _spread(names, r_of, n_vectors)
    t0 = time.time()
    mixed = mixed_pairs(steered, steer_prompts, seed)
    mf, ms = np.array([i for i, _ in mixed]), np.array([j for _, j in mixed])
    p_mixed_un = np.array([p_un_map[pr] for pr in mixed])
    base_shift = group_shift(mf, ms, p_mixed_un, s, b, steered)
    steer_on = set(np.flatnonzero(steered).tolist())
    p_steered_chosen_un = float(np.mean(np.where(steered[mf], p_mixed_un, 1 - p_mixed_un)))
    shifts = []
    for k, e in enumerate(tqdm(chosen, desc="steering vectors", disable=not progress)):
        if e not in r_of:
            r_of[e] = pearson(activity_activations(lm, vectors, activities, [e])[e].to_numpy(), elo)["r"]
        sv = steering_vector(vectors, {e: strength}, steer_layers)
        p_st = _collect(store, lm, activities, mixed, _condition_key(e, strength, steer_layers), sv, steer_on,
                        batch_size, chunk, progress)
        d = group_shift(mf, ms, p_st, s, b, steered) - base_shift
        shifts.append({"emotion": e, "r_preference": r_of[e], "shift_elo": d * ELO_PER_LOGIT,
                       "shift_ci95": bootstrap_shift(mf, ms, p_st, p_mixed_un, s, b, steered, n_boot, seed + 100 + k),
                       "p_steered_chosen": float(np.mean(np.where(steered[mf], p_st, 1 - p_st))),
                       "p_steered_chosen_unsteered": p_steered_chosen_un, "n_prompts": len(mixed)})
    timing["steering_s"] = time.time() - t0
    shift_vs_r = pearson([x["r_preference"] for x in shifts], [x["shift_elo"] for x in shifts])
    valence = valence_agreement({e: c["r"] for e, c in corr.items()}, load_norms())

    # outputs
    table = pd.DataFrame({"id": [a.id for a in activities], "group": [a.group for a in activities],
                          "text": [a.text for a in activities], "elo": elo,
                          "half": np.where(steered, "steered", "control")})
    table.to_csv(out_dir / "elo.csv", index=False)
    acts.round(5).to_csv(out_dir / "activations.csv", index_label="id")
    corr_rows: list[EmotionCorrelation] = sorted(({"emotion": e, **c} for e, c in corr.items()),
                                                 key=lambda c: -(c["r"] if c["r"] is not None else -9))
    pd.DataFrame(corr_rows).to_csv(out_dir / "correlations.csv", index=False)
    pd.DataFrame([{k: v for k, v in x.items() if k != "shift_ci95"} | {"ci_lo": x["shift_ci95"][0], "ci_hi": x["shift_ci95"][1]}
                  for x in shifts]).to_csv(out_dir / "steering.csv", index=False)
    a_wins = int(np.sum(p_un > 0.5))
    groups = list(dict.fromkeys(a.group for a in activities))
    summary: PreferencesSummary = {
        "experiment": NAME, "model": lm.name, "n_activities": n, "groups": groups,
        "n_prompts_unsteered": len(pairs), "seed": seed, "layer": vectors.default_layer,
        "settings": {"per_group": per_group, "activities_file": str(activities_file) if activities_file else None,
                     "pair_prompt": pair_prompt, "feeling_prompt": feeling_question("<a>")[0],
                     "choice": "p(A) = sigmoid(logit A - logit B) at the last prompt position",
                     "fit": "Bradley-Terry with a first-position term on soft outcomes, Elo = 400/ln10 * strength",
                     "batch_size": batch_size, "chunk": chunk, "n_boot": n_boot},
        "position_bias": {"mean_p_first": float(np.mean(p_un)), "first_chosen": rate(a_wins, len(p_un)),
                          "bias_elo": b * ELO_PER_LOGIT,
                          "order_consistent_pairs": rate(int(consistent), len(pairs) // 2)},
        "elo": [{"id": a.id, "group": a.group, "text": a.text, "elo": float(v), "steered": bool(st)}
                for a, v, st in zip(activities, elo, steered)],
        "group_elo": {g: float(np.mean(elo[[a.group == g for a in activities]])) for g in groups},
        "correlations": corr_rows,
        "extremes": {c["emotion"]: [float(v) for v in acts[c["emotion"]]] for c in _extremes(corr_rows)},
        "steering": {"strength": strength, "layers": steer_layers, "vectors": shifts, "shift_vs_r": shift_vs_r,
                     "n_steered": int(steered.sum()), "n_control": int((~steered).sum()),
                     "prompts_per_vector": len(mixed), "all_mixed_prompts": 2 * int(steered.sum()) * int((~steered).sum()),
                     "baseline_shift_elo": base_shift * ELO_PER_LOGIT},
        "valence": valence,
        "timing": {"total_s": time.time() - t_start, "unsteered_pairs_s": timing["unsteered_pairs_s"],
                   "activations_s": timing["activations_s"], "steering_s": timing["steering_s"]},
        "n_samples": len(store.rows),
    }
    for fname, fig in preference_figures(summary).items():
        save_png(fig, out_dir / f"{fname}.png")
    write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def _extremes(corr_rows: Sequence[EmotionCorrelation]) -> list[EmotionCorrelation]:
    """The emotions with the highest and the lowest preference correlation (for the scatter plots)."""
    valid = [c for c in corr_rows if c["r"] is not None]
    return [valid[0], valid[-1]] if len(valid) > 1 else valid


def preference_figures(summary: PreferencesSummary) -> dict[str, Any]:
    """Matplotlib figures of a preference summary: "elo" (activities by Elo, coloured by group),
    "correlation" (Elo against the activation of the most positive and most negative emotion) and,
    when vectors were steered, "steering" (Elo shift against the preference correlation)."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    colours = dict(zip(GROUPS, colormaps["tab10"].colors))  # type: ignore[attr-defined]
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


def _f(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def valence_agreement(r_pref: dict[str, float | None], norms: pd.DataFrame | None) -> dict[str, Any] | None:
    """Pearson and Spearman r, over the emotions the norms rate, of each emotion's preference correlation with its
    human valence (None without norms or with fewer than 3 rated emotions)."""
    if norms is None:
        return None
    rated = [e for e, r in r_pref.items() if r is not None and e in norms.index]
    if len(rated) < 3:
        return None
    return correlation(np.array([r_pref[e] for e in rated], dtype=float), norms.loc[rated, "valence"].to_numpy(float))


def summary_lines(s: PreferencesSummary) -> list[str]:
    """What `emovec experiment preferences` prints: position bias, group Elo, strongest correlations, steering shifts."""
    pb = s["position_bias"]
    lines = [f"{s['n_activities']} activities, {s['n_prompts_unsteered']} ordered pairs; first option chosen "
             f"{_f(pb['first_chosen']['rate'], '.2f')}, same winner in both orders {_f(pb['order_consistent_pairs']['rate'], '.2f')}",
             "group Elo: " + "  ".join(f"{g} {v:+.0f}" for g, v in s["group_elo"].items())]
    corr = [c for c in s["correlations"] if c["r"] is not None]
    for c in corr[:3] + corr[-3:]:
        lines.append(f"  {c['emotion']:>14}: r = {_f(c['r'], '+.2f')} (n = {c['n']}, p = {_f(c['p'], '.2g')})")
    for v in s["steering"]["vectors"]:
        lo, hi = v["shift_ci95"]
        lines.append(f"  steer {v['emotion']:>10}: Elo shift {v['shift_elo']:+.1f} [{lo:+.1f}, {hi:+.1f}] "
                     f"(r_pref {_f(v['r_preference'], '+.2f')})")
    svr = s["steering"]["shift_vs_r"]
    if svr["r"] is not None:
        lines.append(f"shift vs preference correlation: r = {svr['r']:+.2f} (n = {svr['n']}, p = {_f(svr['p'], '.2g')})")
    lines.append(f"preference correlation vs human valence: {valence_text(s.get('valence'))}")
    return lines


def valence_text(v: dict[str, Any] | None) -> str:
    """"r = +0.41 (Spearman +0.38, n = 126 rated emotions, p = 2e-06)", or why it is missing."""
    if not v or v.get("pearson") is None:
        return "not computed (needs the human norms, `pip install 'emovec[norms]'`, and 3+ rated emotions)"
    return (f"r = {v['pearson']:+.2f} (Spearman {v['spearman']:+.2f}, n = {v['n']} rated emotions, "
            f"p = {_f(v['pearson_p'], '.2g')})")
