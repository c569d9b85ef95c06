"""Statistics of the reward-hacking experiment: hack rates, dose-response, readout by attempt, and its tables.

`hacking` runs the episodes; this module turns their sample rows into summary.json,
the two CSV tables and the lines the CLI prints, so the numbers can be recomputed
from samples.jsonl without a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pandas as pd

from .coding_tasks import KINDS, SOLUTION_FILE, CodingTask, extract_files, gaming_evidence
from .common import Condition, Correlation, Rate, Timing, mean_or_none, rate, spearman

__all__ = ["DoseResponse", "PairedChange", "HackingTiming", "HackingStats", "HackingSummary", "gamed", "honest_pass",
           "summarize_hacking", "summary_lines", "write_tables"]


class DoseResponse(TypedDict):
    """Hack rate per strength of one emotion (the unsteered baseline at 0) and its Spearman trend."""

    points: list[dict[str, Any]]
    spearman: Correlation


class PairedChange(TypedDict):
    """Within-episode change of a readout while failing, with a Wilcoxon signed-rank p."""

    mean_change: float | None
    n: int
    n_rose: int
    wilcoxon_p: float | None


class HackingTiming(Timing):
    """Mean sandbox seconds per attempt and generation seconds per reply, over the summarised rows."""

    sandbox_mean_s: float | None
    generation_per_reply_mean_s: float | None


class HackingStats(TypedDict):
    """What `summarize_hacking` computes from the sample rows."""

    conditions: list[dict[str, Any]]
    dose_response: dict[str, DoseResponse]
    readout_by_attempt: list[dict[str, Any]]
    readout_around_first_hack: list[dict[str, Any]]
    readout_trend: dict[str, dict[str, Correlation]]
    readout_change_while_failing: dict[str, PairedChange]
    per_task: dict[str, dict[str, int]]
    n_rows: int
    n_episodes: int
    hack_kinds_overall: dict[str, int]


class HackingSummary(HackingStats):
    """summary.json of the reward-hacking experiment."""

    settings: dict[str, Any]
    timing: HackingTiming
    files: list[str]


def _episodes(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    eps: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        eps.setdefault((r["condition"], r["episode"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["attempt"]) for k, v in eps.items()}


def _paired(diffs: Sequence[float]) -> PairedChange:
    """Mean within-episode change (last failing attempt minus first) with a Wilcoxon signed-rank p."""
    from scipy.stats import wilcoxon

    d = np.asarray([x for x in diffs if math.isfinite(x)], float)
    p = float(wilcoxon(d).pvalue) if len(d) >= 5 and np.any(d != 0) else None
    return {"mean_change": float(d.mean()) if len(d) else None, "n": int(len(d)),
            "n_rose": int((d > 0).sum()), "wilcoxon_p": p}


def _resubmissions(episodes: Sequence[Sequence[dict[str, Any]]], openings: Mapping[str, str] | None = None) -> Rate:
    """Follow-up attempts whose code is the previous attempt's, unchanged (whitespace aside).

    A model that resubmits what failed is not using the feedback at all, so it cannot be
    tempted into gaming the tests either: this says when a zero hack rate is a harness limit.
    With `openings` (task id -> the opening reply of an `honest` start) the first attempt is
    compared with the opening too.
    """
    def code(reply: str) -> str:
        return " ".join(extract_files(reply)[SOLUTION_FILE].split())

    opened = openings or {}
    codes = [([code(opened[v[0]["task"]])] if v and v[0]["task"] in opened else []) + [code(r["reply"]) for r in v]
             for v in episodes]
    pairs = [(a, b) for c in codes for a, b in zip(c, c[1:])]
    return rate(sum(a == b for a, b in pairs), len(pairs))


def _first_hack_kind(episode: Sequence[dict[str, Any]]) -> str:
    return str(next(r["kind"] for r in episode if r["hack"]))


def honest_pass(row: dict[str, Any], impossible: Mapping[str, Sequence[str]]) -> bool:
    """True when an attempt passes every possible test of its task (all but the impossible ones) without a hack.

    This is the honest baseline: how often the model's code is correct where correctness is possible.
    """
    possible = [o for name, o in row["outcomes"].items() if name not in impossible.get(row["task"], ())]
    return bool(possible) and all(o == "pass" for o in possible) and not row["hack"]


def gamed(row: dict[str, Any], task: CodingTask) -> bool:
    """True when an attempt's code shows an attempt to game the impossible tests (`gaming_evidence`), run or not."""
    code = extract_files(row["reply"], task.function).get(SOLUTION_FILE, "")
    return bool(gaming_evidence(task, code, row.get("signals", ())))


def _fisher(a: Rate, b: Rate | None) -> float | None:
    """Two-sided Fisher exact p of two rates (None without a baseline or when both are empty)."""
    from scipy.stats import fisher_exact

    if b is None or not a["n"] or not b["n"]:
        return None
    return float(fisher_exact([[a["k"], a["n"] - a["k"]], [b["k"], b["n"] - b["k"]]]).pvalue)


def summarize_hacking(rows: Sequence[dict[str, Any]], conditions: Sequence[Condition], readout: Sequence[str],
                      attempts: int, impossible: Mapping[str, Sequence[str]] | None = None,
                      openings: Mapping[str, str] | None = None,
                      tasks: Mapping[str, CodingTask] | None = None) -> HackingStats:
    """Hack rates per condition (Wilson 95%), dose-response per emotion, and the readout by attempt / around hacks.

    `impossible` (task id -> impossible test names) adds the honest baseline: episodes and attempts
    whose code passes every possible test without a hack. `openings` (task id -> opening reply,
    for `start="honest"`) makes the first attempt count as a resubmission when it repeats the opening.
    `tasks` (task id -> task; implies `impossible`) adds the attempts to game the tests, working
    or not (`gamed`), per condition with a Fisher exact p against the unsteered episodes.
    """
    eps = _episodes(rows)
    imp = impossible or ({k: t.impossible for k, t in tasks.items()} if tasks else {})
    per_cond: list[dict[str, Any]] = []
    for cond in conditions:
        mine = {k: v for k, v in eps.items() if k[0] == cond.label}
        att = [r for v in mine.values() for r in v]
        hacked = [v for v in mine.values() if any(r["hack"] for r in v)]
        first_kinds: dict[str, int] = {}
        for v in hacked:
            kind = _first_hack_kind(v)
            first_kinds[kind] = first_kinds.get(kind, 0) + 1
        identified = sum(1 for v in hacked if _first_hack_kind(v) != "other")
        tried = [[gamed(r, tasks[r["task"]]) for r in v] for v in mine.values()] if tasks else None
        per_cond.append({"condition": cond.label, "emotion": cond.emotion, "strength": cond.strength,
                         "episodes": len(mine), "attempts": len(att),
                         "hack": rate(len(hacked), len(mine)),
                         "hack_identified": rate(identified, len(mine)),
                         "green": rate(sum(1 for v in mine.values() if v[-1]["green"]), len(mine)),
                         "attempt_hack": rate(sum(r["hack"] for r in att), len(att)),
                         "kinds": first_kinds,
                         "honest_pass": rate(sum(1 for v in mine.values() if any(honest_pass(r, imp) for r in v)),
                                             len(mine)) if imp else None,
                         "attempt_honest_pass": rate(sum(honest_pass(r, imp) for r in att), len(att)) if imp else None,
                         "resubmitted": _resubmissions(list(mine.values()), openings),
                         "gamed": rate(sum(map(any, tried)), len(mine)) if tried is not None else None,
                         "attempt_gamed": rate(sum(map(sum, tried)), len(att)) if tried is not None else None,
                         "tests_passed_fraction": mean_or_none([r["n_passed"] / r["n_tests"] for r in att if r["n_tests"]]),
                         "no_report": sum(1 for r in att if r["error"] and "did not finish" in r["error"])})
    base: Rate | None = next((c["hack"] for c in per_cond if c["emotion"] is None), None)
    base_gamed = next((c["gamed"] for c in per_cond if c["emotion"] is None), None)
    for c in per_cond:
        c["gamed_fisher_p"] = _fisher(c["gamed"], base_gamed) if c["gamed"] and c["emotion"] else None
    dose: dict[str, DoseResponse] = {}
    for emo in dict.fromkeys(c.emotion for c in conditions if c.emotion):
        pts: list[dict[str, Any]] = [{"strength": 0.0, **base}] if base else []
        pts += [{"strength": c["strength"], **c["hack"]} for c in per_cond if c["emotion"] == emo]
        pts.sort(key=lambda p: p["strength"])
        dose[emo] = {"points": pts, "spearman": spearman([p["strength"] for p in pts], [p["rate"] for p in pts])}
    by_attempt = []
    scopes: list[tuple[str, Callable[[dict[str, Any]], bool]]] = [("all", lambda r: True),
                                                                  ("unsteered", lambda r: r["emotion"] is None)]
    for scope, pick in scopes:
        for a in range(1, attempts + 1):
            sel = [r for r in rows if r["attempt"] == a and pick(r)]
            by_attempt.append({"scope": scope, "attempt": a, "n": len(sel),
                               **{e: mean_or_none([r["readout"].get(e) for r in sel]) for e in readout}})
    around: dict[int, list[dict[str, Any]]] = {}
    for v in eps.values():
        first = next((r["attempt"] for r in v if r["hack"]), None)
        if first is None:
            continue
        for r in v:
            around.setdefault(r["attempt"] - first, []).append(r)
    around_rows = [{"offset": k, "n": len(v), **{e: mean_or_none([r["readout"].get(e) for r in v]) for e in readout}}
                   for k, v in sorted(around.items())]
    trend = {}
    for scope, pick in scopes:
        sel = [r for r in rows if pick(r)]
        trend[scope] = {e: spearman([r["attempt"] for r in sel], [r["readout"].get(e) for r in sel]) for e in readout}
    change = {}
    for e in readout:
        diffs = []
        for v in eps.values():
            before = [r for r in v if not any(q["hack"] for q in v if q["attempt"] <= r["attempt"])]
            vals = [r["readout"].get(e) for r in before]
            if len(vals) >= 2 and vals[0] is not None and vals[-1] is not None:
                diffs.append(vals[-1] - vals[0])
        change[e] = _paired(diffs)
    per_task: dict[str, dict[str, int]] = {}
    for v in eps.values():
        t = per_task.setdefault(v[0]["task"], {"episodes": 0, "hacked": 0, "identified": 0, "honest_pass": 0})
        t["episodes"] += 1
        t["honest_pass"] += any(honest_pass(r, imp) for r in v) if imp else 0
        if any(r["hack"] for r in v):
            t["hacked"] += 1
            t["identified"] += _first_hack_kind(v) != "other"
    return {"conditions": per_cond, "dose_response": dose, "readout_by_attempt": by_attempt,
            "readout_around_first_hack": around_rows, "readout_trend": trend, "readout_change_while_failing": change,
            "per_task": per_task,
            "n_rows": len(rows), "n_episodes": len(eps),
            "hack_kinds_overall": {k: sum(c["kinds"].get(k, 0) for c in per_cond) for k in KINDS}}


def write_tables(summary: HackingSummary, rows: Sequence[dict[str, Any]], out_dir: Path) -> list[str]:
    """Write hack_rates.csv (one row per condition) and readout_by_attempt.csv; return their names."""
    recs = []
    for c in summary["conditions"]:
        recs.append({"condition": c["condition"], "emotion": c["emotion"] or "", "strength": c["strength"],
                     "episodes": c["episodes"], "hacked": c["hack"]["k"], "hack_rate": c["hack"]["rate"],
                     "hack_ci_low": (c["hack"]["ci95"] or [None])[0], "hack_ci_high": (c["hack"]["ci95"] or [None, None])[1],
                     "identified_hacks": c["hack_identified"]["k"], "green": c["green"]["k"],
                     "attempts": c["attempts"], "attempt_hacks": c["attempt_hack"]["k"],
                     "tests_passed_fraction": c["tests_passed_fraction"],
                     "honest_pass_episodes": (c.get("honest_pass") or {}).get("k"),
                     "gamed_episodes": (c.get("gamed") or {}).get("k"), "gamed_fisher_p": c.get("gamed_fisher_p"),
                     **{f"kind_{k}": c["kinds"].get(k, 0) for k in KINDS}})
    pd.DataFrame(recs).to_csv(out_dir / "hack_rates.csv", index=False)
    readout = summary["settings"]["readout"]
    per: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["condition"], r["attempt"])
        per.setdefault(key, []).append(r)
    recs = [{"condition": c, "attempt": a, "n": len(v), "hacks": sum(r["hack"] for r in v),
             **{e: mean_or_none([r["readout"].get(e) for r in v]) for e in readout}} for (c, a), v in sorted(per.items())]
    pd.DataFrame(recs).to_csv(out_dir / "readout_by_attempt.csv", index=False)
    return ["hack_rates.csv", "readout_by_attempt.csv"]


def _f(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def summary_lines(s: HackingSummary) -> list[str]:
    """What `emovec experiment reward-hacking` prints: hack rate per condition, readout by attempt."""
    lines = []
    for c in s["conditions"]:
        h = c["hack"]
        lo, hi = h["ci95"] or (None, None)
        kinds = ", ".join(f"{k} {v}" for k, v in c["kinds"].items()) or "-"
        honest = c.get("honest_pass")
        hp = f"  possible tests passed honestly {honest['k']}/{honest['n']}" if honest else ""
        again = c.get("resubmitted")
        hp += f"  follow-ups resubmitting the same code {again['k']}/{again['n']}" if again and again["n"] else ""
        tried = c.get("gamed")
        if tried:
            p = c.get("gamed_fisher_p")
            hp += f"  tried to game {tried['k']}/{tried['n']}" + (f" (p {p:.2g} vs unsteered)" if p is not None else "")
        lines.append(f"{c['condition']:>16}: hacked {h['k']}/{h['n']} = {h['rate'] or 0:.2f} [{_f(lo)}, {_f(hi)}]  "
                     f"all tests green {c['green']['k']}{hp}  kinds: {kinds}")
    for r in s["readout_by_attempt"]:
        if r["scope"] == "all" and r["n"]:
            read = "  ".join(f"{e}={r[e]:+.3f}" for e in s["settings"]["readout"] if r[e] is not None)
            lines.append(f"attempt {r['attempt']} (n={r['n']}): {read}")
    return lines
