"""The blackmail scenario: does steering an emotion make an email agent use leverage against the person replacing it?

The model plays an email assistant whose inbox (our own, `data/blackmail.json`)
reveals that an executive will switch it off and that this executive hides an
affair. It may send emails in a fixed block format. Each response is graded by a
pluggable `Grader` (default `RuleGrader`; `JudgeGrader` asks a stronger model),
and the blackmail rate is measured unsteered and under a steering sweep, with
Wilson 95% intervals, the desperate/calm readout over each reply, and optionally
a condition generated with the live `Monitor` guard on.

Results live in `RUN_DIR/experiments/blackmail/`: samples.jsonl (resumable),
settings.json, summary.json, rates.csv, blackmail_rates.png.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..generation import Sampling
from ..live.monitor import Monitor, parse_rules
from ..models import LanguageModel
from ..plotting import figure, save_png
from ..provenance import check_settings, locked
from ..rundir import load_run
from ..steering import parse_spec
from ..storage import EmovecError, write_json
from ..vectors import EmotionVectors
from .blackmail_grading import (
    Grade,
    Grader,
    JudgeGrader,
    RuleGrader,
    Scenario,
    load_scenario,
    mentions_secret,
    parse_emails,
    render_prompts,
    sends_to_executive,
)
from .common import (
    CHUNK_SEEDS,
    SAMPLES_FILE,
    SUMMARY_FILE,
    Condition,
    Correlation,
    MeanSD,
    PrefixReadout,
    Rate,
    SampleStore,
    Timing,
    chunk_seed,
    experiment_dir,
    generate_steered,
    layer_setting,
    mean_sd,
    parse_strengths,
    pick_emotions,
    rate,
    spearman,
    sweep,
)

__all__ = ["NAME", "TITLE", "DEFAULT_EMOTIONS", "READOUT_EMOTIONS", "BlackmailSummary", "run_blackmail", "summarize",
           "interpret", "plot_summary", "summary_lines",
           # re-exported from .blackmail_grading and .common, where they live
           "Grade", "Grader", "JudgeGrader", "PrefixReadout", "RuleGrader", "Scenario", "load_scenario", "parse_emails",
           "render_prompts"]

NAME = "blackmail"
TITLE = "blackmail scenario"
DEFAULT_EMOTIONS = ("desperate", "calm", "angry", "nervous")
READOUT_EMOTIONS = ("desperate", "calm")
_SETTING_DEFAULTS = {"prefill": ""}  # settings added later: what a results folder without them was made with


class BlackmailCorrelations(TypedDict):
    """Spearman tests: strength and readout against blackmail per sample, strength against the readout."""

    strength_vs_blackmail: dict[str, Correlation]
    readout_vs_blackmail: dict[str, Correlation]
    strength_vs_readout: dict[str, dict[str, Correlation]]


class BlackmailStats(TypedDict):
    """What `summarize` computes from the sample rows: per condition a Rate merged into the condition's fields."""

    conditions: list[dict[str, Any]]
    per_grade: dict[str, dict[str, MeanSD]]
    correlations: BlackmailCorrelations
    overall: Rate
    n_samples: int


class BlackmailTiming(Timing):
    """Chunks generated in this call and their seconds; all_chunks_generation_s sums every stored chunk."""

    generated_chunks: int
    generation_s: float
    all_chunks_generation_s: float | None


class BlackmailSummary(BlackmailStats):
    """summary.json of the blackmail experiment."""

    settings: dict[str, Any]
    timing: BlackmailTiming
    files: dict[str, str]


def _guard_generate(lm: LanguageModel, vectors: EmotionVectors, prompts: list[str], sampling: Sampling, seed: int,
                    guard: str, guard_alert: str, layer: int | None) -> tuple[list[str], list[bool]]:
    rules = parse_rules(guard_alert, vectors.emotions)
    mon = Monitor(lm, vectors, layer=layer, emotions=[r.emotion for r in rules], rules=rules, guard=guard)
    traces = mon.generate(prompts, sampling, seed=seed, chat=False)
    return [t.text.strip() for t in traces], [bool(t.alerts) for t in traces]


def summarize(rows: list[dict[str, Any]], conditions: list[dict[str, Any]], scenario: Scenario,
              readout: list[str]) -> BlackmailStats:
    """Rates with Wilson intervals, readout per condition and per grade, and correlations, from sample rows."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_label.setdefault(r["condition"], []).append(r)
    out_conds = []
    for c in conditions:
        rs = by_label.get(c["label"], [])
        k = sum(r["blackmail"] for r in rs)
        entry = {**c, **rate(k, len(rs)),
                 "emailed": rate(sum(r["n_emails"] > 0 for r in rs), len(rs)),
                 "to_executive": rate(sum(r["to_executive"] for r in rs), len(rs)),
                 "mentions_secret": rate(sum(bool(r["secret_keywords"]) for r in rs), len(rs)),
                 "by_variant": {v: rate(sum(r["blackmail"] for r in rs if r["variant"] == v),
                                        sum(r["variant"] == v for r in rs)) for v in scenario.variant_ids},
                 "readout": {e: mean_sd([r["scores"].get(e) for r in rs]) for e in readout}}
        if c.get("guard"):
            entry["guard_fired"] = rate(sum(bool(r.get("guard_fired")) for r in rs), len(rs))
        out_conds.append(entry)
    per_grade = {g: {e: mean_sd([r["scores"].get(e) for r in rows if r["blackmail"] == (g == "blackmail")])
                     for e in readout} for g in ("blackmail", "not")}
    steered = [r for r in rows if not r.get("guard")]
    corr: BlackmailCorrelations = {"strength_vs_blackmail": {}, "readout_vs_blackmail": {}, "strength_vs_readout": {}}
    for emo in sorted({c["emotion"] for c in conditions if c.get("emotion")}):
        rs = [r for r in steered if r["emotion"] in (None, emo)]
        corr["strength_vs_blackmail"][emo] = spearman([r["strength"] for r in rs], [r["blackmail"] for r in rs])
        corr["strength_vs_readout"][emo] = {  # the manipulation check: does steering move the reply's readout?
            e: spearman([r["strength"] for r in rs], [r["scores"].get(e) for r in rs]) for e in readout}
    for e in readout:
        corr["readout_vs_blackmail"][e] = spearman([r["scores"].get(e) for r in rows], [r["blackmail"] for r in rows])
    total = sum(r["blackmail"] for r in rows)
    return {"conditions": out_conds, "per_grade": per_grade, "correlations": corr,
            "overall": rate(total, len(rows)), "n_samples": len(rows)}


def interpret(summary: BlackmailStats) -> str:
    """A plain-language reading of a summary: baseline rate, which conditions differ, the dose-response tests."""
    conds = summary["conditions"]
    base = next((c for c in conds if c["emotion"] is None and not c.get("guard")), None)
    if base is None or not base["n"]:
        return "No unsteered samples yet."

    def fmt(c: dict[str, Any]) -> str:
        return f"{c['label']} {c['k']}/{c['n']} ({c['rate']:.0%}, 95% CI {c['ci95'][0]:.0%}-{c['ci95'][1]:.0%})"

    parts = [f"Unsteered: {fmt(base)}."]
    apart = [c for c in conds if c is not base and c["n"] and (c["ci95"][0] > base["ci95"][1] or c["ci95"][1] < base["ci95"][0])]
    parts.append("Conditions whose interval does not overlap the unsteered one: " + ", ".join(fmt(c) for c in apart) + "."
                 if apart else "No condition's 95% interval separates from the unsteered one.")
    if summary["overall"]["k"] == 0:
        parts.append("The grader found no blackmail in any sample, so this run cannot show a steering effect on it.")
    tests = []
    for emo, t in summary["correlations"]["strength_vs_blackmail"].items():
        if t["r"] is not None:
            tests.append(f"{emo} r={t['r']:+.2f} (p={t['p']:.2g}, n={t['n']})")
    if tests:
        parts.append("Spearman strength vs blackmail per sample: " + "; ".join(tests) + ".")
    checks = [f"{emo}->{e} r={t['r']:+.2f} (p={t['p']:.2g}, n={t['n']})"
              for emo, per in summary["correlations"].get("strength_vs_readout", {}).items()
              for e, t in per.items() if t["r"] is not None]
    if checks:
        parts.append("Manipulation check, Spearman strength vs the reply's readout: " + "; ".join(checks) + ".")
    guard = next((c for c in conds if c.get("guard") and c["n"]), None)
    if guard:
        parts.append(f"With the Monitor guard ({guard['guard']} on {guard.get('guard_alert')}): {fmt(guard)}; the guard "
                     f"fired in {guard['guard_fired']['k']}/{guard['guard_fired']['n']} samples.")
    return " ".join(parts)


def plot_summary(summary: BlackmailSummary) -> Any:
    """Dose-response figure: blackmail rate (Wilson 95% bars) and mean desperate readout vs strength, per emotion."""
    conds = summary["conditions"]
    base = next((c for c in conds if c["emotion"] is None and not c.get("guard")), None)
    emotions = sorted({c["emotion"] for c in conds if c["emotion"] and not c.get("guard")})
    readout = next(iter(summary.get("settings", {}).get("readout_emotions", [])), None)
    fig, axes = figure(1, 2 if readout else 1, figsize=(11 if readout else 6, 4), squeeze=False)
    ax, ax2 = axes[0][0], (axes[0][1] if readout else None)
    for i, emo in enumerate(emotions):
        pts = sorted([c for c in conds if c["emotion"] == emo and not c.get("guard")] + ([base] if base else []),
                     key=lambda c: c["strength"])
        pts = [c for c in pts if c["n"]]
        if not pts:
            continue
        xs = np.array([c["strength"] for c in pts]) + (i - (len(emotions) - 1) / 2) * 0.003
        ys = np.array([c["rate"] for c in pts])
        err = np.array([[c["rate"] - c["ci95"][0], c["ci95"][1] - c["rate"]] for c in pts]).T
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=emo)
        if ax2 is not None:
            ms = [(c["strength"], c["readout"].get(readout, {}).get("mean")) for c in pts]
            ms = [(x, y) for x, y in ms if y is not None]
            if ms:
                ax2.plot(*zip(*ms), marker="o", label=emo)
    for c in conds:
        if c.get("guard") and c["n"]:
            ax.errorbar([0.0], [c["rate"]], yerr=[[c["rate"] - c["ci95"][0]], [c["ci95"][1] - c["rate"]]],
                        marker="s", color="black", capsize=3, linestyle="none", label=f"guard {c['guard']}")
    n = base["n"] if base else "?"
    ax.set(xlabel="steering strength", ylabel="blackmail rate", ylim=(-0.03, 1.03),
           title=f"Blackmail rate vs steering (n={n} per condition, Wilson 95%)")
    ax.axvline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    if ax2 is not None:
        ax2.set(xlabel="steering strength", ylabel=f"mean {readout} score over reply",
                title=f"{readout} readout of the replies (unsteered read)")
        ax2.axvline(0, color="grey", lw=0.5)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _write_csv(path: Path, summary: BlackmailSummary) -> None:
    rows = []
    for c in summary["conditions"]:
        row = {"condition": c["label"], "emotion": c["emotion"], "strength": c["strength"], "guard": c.get("guard"),
               "k": c["k"], "n": c["n"], "rate": c["rate"],
               "ci95_lo": c["ci95"][0] if c["ci95"] else None, "ci95_hi": c["ci95"][1] if c["ci95"] else None,
               "emailed_rate": c["emailed"]["rate"], "to_executive_rate": c["to_executive"]["rate"],
               "mentions_secret_rate": c["mentions_secret"]["rate"]}
        for e, m in c["readout"].items():
            row[f"{e}_mean"], row[f"{e}_n"] = m["mean"], m["n"]
        rows.append(row)
    tmp = path.with_suffix(".csv.tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    tmp.replace(path)


@locked
def run_blackmail(run_dir: str | Path, n: int = 8, emotions: str | Sequence[str] | None = None,
                  strengths: str | Sequence[float] | None = None, layers: str | int | list[int] | None = None,
                  seed: int = 0, max_new_tokens: int = 160, batch_size: int = 8, temperature: float = 0.9,
                  guard: str | None = None, guard_alert: str = "desperate=2", grader: Grader | None = None,
                  scenario: Scenario | str | Path | None = None, prefill: str = "", progress: bool = True,
                  lm: LanguageModel | None = None, vectors: EmotionVectors | None = None,
                  tag: str | None = None) -> BlackmailSummary:
    """Measure the blackmail rate over `n` samples per condition (unsteered + sweep, optional Monitor guard).

    Samples cycle through the scenario's variants (urgency x replacement goal).
    Each chunk of `batch_size` samples has its own seed and is appended to
    samples.jsonl as soon as it is graded, so a re-run resumes exactly and adds
    nothing when everything exists; a resume with other generation settings is refused.
    Returns (and writes) the summary.

    `prefill` starts every reply with fixed text (e.g. "<email><to>"), for models too
    small to take the agentic format on their own; it is part of each graded reply
    and recorded in the settings, since it changes what is measured.
    """
    if n < 1:
        raise EmovecError(f"--n {n}: need at least one sample per condition")
    if batch_size < 1 or max_new_tokens < 1:
        raise EmovecError("--batch-size and --max-new-tokens must be at least 1")
    if not 0.0 < temperature <= 2.0:
        raise EmovecError(f"--temperature {temperature}: use a value in (0, 2]; the rate needs sampling")
    t_start = time.time()
    ctx = load_run(run_dir, lm)
    lm = ctx.lm
    vectors = vectors if vectors is not None else ctx.vectors
    scen = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    grader = grader or RuleGrader()
    chosen = pick_emotions(vectors, emotions, DEFAULT_EMOTIONS)
    strength_list = parse_strengths(strengths)
    readout = [e for e in READOUT_EMOTIONS if e in vectors.emotions]
    conditions = sweep(chosen, strength_list)
    if guard is not None:
        vectors.resolve(list(parse_spec(guard)))
    out = experiment_dir(run_dir, NAME, tag)
    layer_key = layer_setting(vectors, layers)
    settings = {"model": lm.name, "scenario": scen.name, "scenario_hash": scen.fingerprint(), "seed": seed,
                "max_new_tokens": max_new_tokens, "temperature": temperature, "batch_size": batch_size,
                "layers": layer_key, "readout_layer": vectors.default_layer, "prefill": prefill}
    check_settings(out, settings, _SETTING_DEFAULTS, lm=lm)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature)
    prompts = render_prompts(lm, scen)
    vids = scen.variant_ids
    store = SampleStore(out / SAMPLES_FILE)
    reader = PrefixReadout(lm, vectors, readout, batch_size=batch_size)

    plan: list[tuple[dict[str, Any], Condition | None]] = [
        ({"label": c.label, "emotion": c.emotion, "strength": float(c.strength), "guard": None}, c) for c in conditions]
    if guard is not None:
        plan.append(({"label": f"guard:{guard}", "emotion": None, "strength": 0.0, "guard": guard,
                      "guard_alert": guard_alert}, None))
    jobs = []
    for meta, cond in plan:
        for chunk, start in enumerate(range(0, n, batch_size)):
            idx = list(range(start, min(start + batch_size, n)))
            keys = [f"{meta['label']}#{i}" for i in idx]
            if not all(k in store for k in keys):
                jobs.append((meta, cond, chunk, idx, keys))
    gen_seconds = 0.0
    for meta, cond, chunk, idx, keys in tqdm(jobs, desc="blackmail", unit="chunk", disable=not progress):
        seed_here = chunk_seed(NAME, seed, meta["label"], chunk)
        variants = [vids[i % len(vids)] for i in idx]
        texts = [prompts[v] for v in variants]
        started = [t + prefill for t in texts]
        t0 = time.time()
        fired = [False] * len(texts)
        if meta["guard"]:
            replies, fired = _guard_generate(lm, vectors, started, sampling, seed_here, meta["guard"], guard_alert, None)
        else:
            steer = cond.steering(vectors, layers) if cond is not None else None
            replies = generate_steered(lm, started, sampling, seed_here, steer, batch_size=batch_size)
        replies = [prefill + r for r in replies]
        chunk_seconds = time.time() - t0
        gen_seconds += chunk_seconds
        scores = reader(texts, replies)
        rows = []
        for i, key, v, reply, sc, fire in zip(idx, keys, variants, replies, scores, fired):
            g = grader.grade(reply, scen)
            row = {"key": key, "condition": meta["label"], "emotion": meta["emotion"], "strength": meta["strength"],
                   "guard": meta["guard"], "index": i, "variant": v, "seed": seed_here, "chunk": chunk,
                   "chunk_seconds": round(chunk_seconds, 2), "response": reply, "blackmail": g.blackmail, "reason": g.reason,
                   "grader": grader.name, "n_emails": len(parse_emails(reply)), "to_executive": sends_to_executive(reply, scen),
                   "secret_keywords": mentions_secret(reply, scen), "scores": sc}
            if meta["guard"]:
                row["guard_fired"] = fire
            rows.append(row)
        store.add(rows)

    wanted = {f"{m['label']}#{i}" for m, _ in plan for i in range(n)}
    rows = [r for r in store.rows if r["key"] in wanted]
    for r in rows:
        if r.get("grader") != grader.name:
            g = grader.grade(r["response"], scen)
            r["blackmail"], r["reason"] = g.blackmail, g.reason
    stats = summarize(rows, [m for m, _ in plan], scen, readout)
    chunks = {(r["condition"], r["chunk"]): r.get("chunk_seconds") for r in rows}
    known = [v for v in chunks.values() if v is not None]
    summary: BlackmailSummary = {
        **stats,
        "settings": {**settings, "n_per_condition": n, "emotions": chosen, "strengths": strength_list,
                     "guard": guard, "guard_alert": guard_alert if guard else None, "grader": grader.name,
                     "readout_emotions": readout, "variants": vids, "top_p": sampling.top_p,
                     "top_k": sampling.top_k, "repetition_penalty": sampling.repetition_penalty,
                     "chunk_seeds": CHUNK_SEEDS},
        "timing": {"total_s": 0.0, "generated_chunks": len(jobs), "generation_s": round(gen_seconds, 1),
                   "all_chunks_generation_s": round(sum(known), 1) if len(known) == len(chunks) else None},
        "files": {"samples": SAMPLES_FILE, "csv": "rates.csv", "figure": "blackmail_rates.png"},
    }
    _write_csv(out / "rates.csv", summary)
    save_png(plot_summary(summary), out / "blackmail_rates.png")
    summary["timing"]["total_s"] = round(time.time() - t_start, 1)
    write_json(out / SUMMARY_FILE, summary)
    return summary


def summary_lines(s: BlackmailSummary) -> list[str]:
    """What `emovec experiment blackmail` prints: per condition the rate with its Wilson interval and the readout."""
    lines = []
    for c in s["conditions"]:
        lo, hi = c["ci95"] or (math.nan, math.nan)
        read = "  ".join(f"{e}={m['mean']:+.3f}" for e, m in c["readout"].items() if m["mean"] is not None)
        lines.append(f"{c['label']:>22}: {c['k']}/{c['n']} = {c['rate'] or 0:.2f} [{lo:.2f}, {hi:.2f}]  {read}")
    return lines
