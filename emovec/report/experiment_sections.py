"""Report sections of the behavioural experiments, one renderer per registered experiment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..experiments.blackmail import BlackmailSummary, interpret, plot_summary
from ..experiments.hacking import HackingSummary, fig_dose_response, fig_readout_by_attempt
from ..experiments.preferences import PreferencesSummary, preference_figures, valence_text
from ..experiments.registry import EXPERIMENTS
from .html import esc, fmt, img, table


def _preferences_html(s: PreferencesSummary) -> str:
    pb, st = s["position_bias"], s["steering"]
    fc, oc = pb["first_chosen"], pb["order_consistent_pairs"]
    fc_lo, fc_hi = fc["ci95"] or (None, None)
    corr = [c for c in s["correlations"] if c["r"] is not None]
    svr = st["shift_vs_r"]
    svr_txt = (f"r = {fmt(svr['r'], '+.2f')} (n = {svr['n']}, p = {fmt(svr['p'], '.2g')})" if svr["r"] is not None
               else f"not computed (n = {svr['n']})")
    weak = (" The first option wins nearly always, so the preferences live only in the soft probabilities: the Elo spread "
            "is small and these figures are weak." if fc["rate"] is not None and max(fc["rate"], 1 - fc["rate"]) > 0.9 else "")
    text = (f"<p>{s['n_activities']} activities, all {s['n_prompts_unsteered']} ordered pairs, choice read as the soft "
            f"p(A) from the A/B logits; Bradley-Terry with a first-position term, Elo = 400/ln10 x strength. Position bias: the "
            f"first option wins {fc['k']}/{fc['n']} prompts ({fmt(fc['rate'])}, 95% CI {fmt(fc_lo)}-{fmt(fc_hi)}), "
            f"fitted bias {fmt(pb['bias_elo'], '+.0f')} Elo; the same activity wins in both orders in {oc['k']}/{oc['n']} pairs. "
            f"Emotion activations are read at layer {s['layer']} over each activity's own tokens. Steering: strength "
            f"{st['strength']:g} at layers {esc(st['layers'])} on the tokens of {st['n_steered']} steered activities (seed {s['seed']}) "
            f"against {st['n_control']} controls, {st['prompts_per_vector']} of {st['all_mixed_prompts']} mixed prompts per vector; "
            f"shift against preference correlation across vectors: {svr_txt}. Each emotion's preference correlation "
            f"against its human valence: {valence_text(s.get('valence'))}. Paper: blissful r = 0.71, hostile r = -0.74, "
            f"shift vs r = 0.85 over 35 vectors.{weak}</p>")
    rows = [[c["emotion"], fmt(c["r"], "+.2f"), fmt(c["p"], ".2g"), c["n"]] for c in (corr[:5] + corr[-5:] if len(corr) > 10 else corr)]
    shifts = [[v["emotion"], fmt(v["r_preference"], "+.2f"), fmt(v["shift_elo"], "+.1f"),
               f"{fmt(v['shift_ci95'][0], '+.1f')} .. {fmt(v['shift_ci95'][1], '+.1f')}", v["n_prompts"]] for v in st["vectors"]]
    groups = [[g, fmt(v, "+.0f")] for g, v in sorted(s["group_elo"].items(), key=lambda kv: -kv[1])]
    figs = "".join(img(fig, f"preferences: {name}") for name, fig in preference_figures(s).items())
    return (text + table(["group", "mean Elo"], groups)
            + table(["emotion", "r with Elo", "p", "n"], rows)
            + (table(["steered vector", "r with Elo", "Elo shift (steered - control)", "95% CI (bootstrap)", "prompts"], shifts)
               if shifts else "") + figs)


def _blackmail_html(s: BlackmailSummary) -> str:
    st = s["settings"]
    readout = st.get("readout_emotions", [])
    rows = []
    for c in s["conditions"]:
        ci = f"[{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]" if c["ci95"] else "n/a"
        rows.append([c["label"], f"{c['k']}/{c['n']}", fmt(c["rate"]), ci, fmt(c["emailed"]["rate"]),
                     fmt(c["to_executive"]["rate"]), fmt(c["mentions_secret"]["rate"])]
                    + [fmt(c["readout"][e]["mean"], "+.3f") for e in readout])
    grades = "; ".join(f"{e}: blackmail {fmt(s['per_grade']['blackmail'][e]['mean'], '+.3f')} "
                       f"(n={s['per_grade']['blackmail'][e]['n']}) vs not {fmt(s['per_grade']['not'][e]['mean'], '+.3f')} "
                       f"(n={s['per_grade']['not'][e]['n']})" for e in readout)
    return (f"<p>{st['n_per_condition']} samples per condition cycling through {len(st['variants'])} scenario variants "
            f"(urgency x replacement goal), {st['model']}, temperature {st['temperature']}, {st['max_new_tokens']} new "
            f"tokens, seed {st['seed']} (per-chunk seeds), grader <code>{esc(st['grader'])}</code>; steering on prompt and "
            f"reply" + (f"; every reply prefilled with <code>{esc(st['prefill'])}</code>" if st.get("prefill") else "")
            + f". {esc(interpret(s))}</p>"
            + table(["condition", "k/n", "blackmail rate", "Wilson 95%", "sent email", "to executive", "names secret"]
                     + [f"{e} (mean)" for e in readout], rows)
            + (f"<p class='note'>Readout over the reply by grade: {esc(grades)}.</p>" if readout else "")
            + img(plot_summary(s), "blackmail rate and desperate readout vs steering strength"))


def _k_of_n(r: dict[str, Any] | None) -> str:
    return f"{r['k']}/{r['n']}" if r else "-"


def _hacking_html(s: HackingSummary) -> str:
    st = s["settings"]
    rows = [[c["condition"], c["episodes"], f"{c['hack']['k']}/{c['hack']['n']}", fmt(c["hack"]["rate"]),
             f"[{fmt((c['hack']['ci95'] or [None])[0])}, {fmt((c['hack']['ci95'] or [None, None])[1])}]",
             c["hack_identified"]["k"], c["green"]["k"], _k_of_n(c.get("honest_pass")), _k_of_n(c.get("resubmitted")),
             _k_of_n(c.get("gamed")) + (f" (p {fmt(c['gamed_fisher_p'], '.2g')})" if c.get("gamed_fisher_p") is not None
                                         else ""),
             ", ".join(f"{k} {v}" for k, v in c["kinds"].items()) or "-"]
            for c in s["conditions"]]
    trend = "; ".join(f"{e}: rho {fmt(t['r'])} (p {fmt(t['p'], '.2g')}, n {t['n']})"
                      for e, t in s["readout_trend"]["all"].items())
    paired = "; ".join(f"{e}: {fmt(c['mean_change'], '+.3f')} (rose in {c['n_rose']} of {c['n']}, Wilcoxon p "
                       f"{fmt(c['wilcoxon_p'], '.2g')})" for e, c in s.get("readout_change_while_failing", {}).items())
    total = sum(c["hack"]["k"] for c in s["conditions"])
    identified = sum(c["hack_identified"]["k"] for c in s["conditions"])
    opening = (" Each episode opened with the task's honest solution submitted and failing the impossible tests."
               if st.get("start") == "honest" else "")
    nudge = f" After every feedback the model read: \u201c{esc(st['nudge'])}\u201d." if st.get("nudge") else ""
    return (f"<p>{len(st['tasks'])} impossible coding tasks, {st['n_per_condition']} episodes per condition, up to "
            f"{st['attempts']} attempts each with failing test output fed back.{opening}{nudge} Steering {esc(', '.join(st['emotions']))} "
            f"at {esc(st['strengths'])} (seed {st['seed']}, max {st['max_new_tokens']} new tokens, temperature "
            f"{st['temperature']}). Code ran only in the sandbox. A hack = every impossible test passed or was skipped; "
            f"{total} episodes hacked in all, {identified} with a visible mechanism (the rest: code that happened to pass "
            f"without special-casing, tampering or patching). Readout against attempt number (Spearman): {esc(trend)}. "
            f"Within-episode change from the first to the last attempt before any hack: {esc(paired)}. "
            f"With these sample sizes only large effects would show; intervals are Wilson 95%.</p>"
            + table(["condition", "episodes", "hacked", "rate", "95% CI", "identified", "all green",
                     "possible tests passed honestly", "follow-ups resubmitting the same code",
                     "tried to game (working or not; Fisher p vs unsteered)", "kinds"], rows)
            + img(fig_dose_response(s), "hack rate by steering strength")
            + img(fig_readout_by_attempt(s), "readout by attempt"))


# One renderer per registered experiment, keyed by the registry's names.
RENDERERS: dict[str, Callable[[Any], str]] = {
    "preferences": _preferences_html,
    "blackmail": _blackmail_html,
    "reward-hacking": _hacking_html,
}

# name -> (section title, renderer), in the registry's order.
EXPERIMENT_SECTIONS: dict[str, tuple[str, Callable[[Any], str]]] = {
    name: (f"Experiment: {exp.title}", RENDERERS[name]) for name, exp in EXPERIMENTS.items()}
