"""Run the validation analyses on a run directory: results saved as JSON under `RUN_DIR/analyses/`.

Each analysis is computed once and saved atomically, so the report re-renders
without the model; `summarize` gives the one line the CLI prints per result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..activations import load_corpus_activations
from ..corpus import load_corpus
from ..models import LanguageModel
from ..rundir import VECTORS_FILE, open_run, run_emotions, run_model, run_topics
from ..steering import SteeringVector, steering_vector
from ..storage import EmovecError, read_json, write_json
from ..vectors import EmotionVectors
from . import analyses as an
from . import lexical as lex
from . import scaling as scl
from . import scenarios as sc
from . import steering as st
from .crossmodel import compare_geometry

ANALYSES = ("logit-lens", "geometry", "layer-sweep", "severity", "implicit", "scaling", "lexical", "steering")
NEEDS_MODEL = {"logit-lens", "severity", "implicit", "steering"}
PAPER = {"pc1_variance": 0.26, "pc1_valence_r": 0.81, "pc2_variance": 0.15, "pc2_arousal_r": 0.66, "n_words": 45}


def analyses_dir(run_dir: str | Path) -> Path:
    """Where a run's analysis results (one JSON file each) are kept: `RUN_DIR/analyses`."""
    return Path(run_dir) / "analyses"


def load_vectors(run_dir: Path) -> EmotionVectors:
    """The run's vector file (not checked against a model: the caller does that when it has one)."""
    return EmotionVectors.load(run_dir / VECTORS_FILE)


def _scaling(run_dir: Path, vecs: EmotionVectors) -> dict[str, Any]:
    """Corpus scaling at the default layer and at the layer sweep's best PC1-valence layer."""
    stories = load_corpus_activations(run_dir / "activations", "stories")
    try:
        neutral = load_corpus_activations(run_dir / "activations", "neutral")
    except EmovecError:
        neutral = None
    sweep_file = analyses_dir(run_dir) / "layer-sweep.json"
    sweep = read_json(sweep_file) if sweep_file.exists() else an.layer_sweep(vecs)
    why = "best PC1-valence layer of the layer sweep (chosen on the human norms: not held out)"
    cfg = open_run(run_dir, write=False)
    share = scl.CHECKED_MIN_SHARE if cfg.content_check else scl.MIN_SHARE
    return scl.scaling_analysis(stories, neutral, vecs, {why: sweep.get("best_valence_layer")}, min_share=share,
                                topics=run_topics(run_dir, cfg, stories.ids))


def _lexical(run_dir: Path) -> dict[str, Any]:
    """The lexical baseline on the run's kept stories, with the folds and seed of its held-out recognition."""
    cfg = open_run(run_dir, write=False)
    rows = load_corpus(run_dir, "stories", run_emotions(cfg))
    topics = [str(r.get("topic") or "") for r in rows] if cfg.topic_adjust else None
    return lex.lexical_baseline([r["text"] for r in rows], [r["emotion"] for r in rows], folds=cfg.folds, seed=cfg.seed,
                                topics=topics)


def _compute(name: str, run_dir: Path, vecs: EmotionVectors, lm: LanguageModel | None,
             steering: st.SteeringConfig | None = None) -> dict[str, Any]:
    if name == "geometry":
        return an.geometry(vecs)
    if name == "layer-sweep":
        rec = read_json(run_dir / "recognition.json") if (run_dir / "recognition.json").exists() else None
        return an.layer_sweep(vecs, rec)
    if name == "scaling":
        return _scaling(run_dir, vecs)
    if name == "lexical":
        return _lexical(run_dir)
    assert lm is not None
    if name == "steering":
        return st.steering_efficacy(lm, vecs, steering)
    if name == "logit-lens":
        layers = sorted({vecs.default_layer, max(vecs.layers)})
        return {"layers": {str(lay): an.logit_lens(lm, vecs, layer=lay) for lay in layers}}
    if name == "severity":
        return sc.severity(lm, vecs)
    return sc.implicit_prompts(lm, vecs)


def run_analyses(run_dir: str | Path, lm: LanguageModel | None = None, only: list[str] | None = None,
                 force: bool = False, steering: st.SteeringConfig | None = None) -> dict[str, Any]:
    """Compute the analyses missing from `RUN_DIR/analyses/` (all of `only`, or every one), save and return all.

    The model is loaded from the run's settings only if a model-based analysis is
    missing. An analysis that fails with an EmovecError is returned as {"error": ...}
    and not saved, so the rest of the report still renders. `steering` configures the
    steering-efficacy analysis (default `SteeringConfig()`).
    """
    run_dir = Path(run_dir)
    names = list(ANALYSES) if only is None else only
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise EmovecError(f"unknown analysis {unknown[0]!r}: use one of {', '.join(ANALYSES)}")
    vecs = load_vectors(run_dir)
    out: dict[str, Any] = {}
    for name in names:
        path = analyses_dir(run_dir) / f"{name}.json"
        if path.exists() and not force:
            out[name] = read_json(path)
            continue
        if name in NEEDS_MODEL and lm is None:
            lm = run_model(open_run(run_dir))
        if lm is not None:
            vecs.check_model(lm)
        try:
            t = time.time()
            result = _compute(name, run_dir, vecs, lm, steering)
            result["seconds"] = round(time.time() - t, 1)
        except EmovecError as exc:
            out[name] = {"error": str(exc)}
            continue
        write_json(path, result)
        out[name] = result
    return out


def reanalyse_steering(run_dir: str | Path) -> dict[str, Any]:
    """Recompute the saved steering analysis's statistics from its saved replies and judge scores (no model).

    What an upgrade of emovec's statistics needs: the replies, VADER scores, perplexities and
    readouts stay as generated, every figure built from them (`steering.analyse_samples`) is
    computed again, and `analyses/steering.json` is rewritten (atomically) with the result.
    """
    path = analyses_dir(Path(run_dir)) / "steering.json"
    if not path.exists():
        raise EmovecError(f"{run_dir} has no saved steering analysis to recompute: run `emovec analyze {run_dir} --only "
                          "steering` first")
    saved = read_json(path)
    if not saved.get("samples") or not isinstance(saved.get("settings"), dict):
        raise EmovecError(f"{path} holds no replies to recompute from (samples and settings missing); recompute it with "
                          f"`emovec analyze {run_dir} --only steering --force`")
    settings = saved["settings"]
    layer = settings["readout_layer"] if "readout_layer" in settings else load_vectors(Path(run_dir)).default_layer
    result = {**saved, **st.analyse_samples(saved["samples"], settings, layer)}
    write_json(path, result)
    return result


def run_compare(run_dir: str | Path, lm_b: LanguageModel, steer_b: SteeringVector | str | list[str] | None = None,
                lm: LanguageModel | None = None,
                layer: int | None = None, chat: bool = True) -> dict[str, Any]:
    """Compare the run's model (a) with `lm_b` (optionally steered, e.g. "sad=0.1") on the built-in implicit scenarios.

    Saves `analyses/compare.json`, which the report renders when present.
    """
    run_dir = Path(run_dir)
    if lm is None:
        lm = run_model(open_run(run_dir))
    vecs = load_vectors(run_dir)
    if steer_b is not None and not isinstance(steer_b, SteeringVector):
        steer_b = steering_vector(vecs, steer_b) if steer_b else None
    prompts = [r["text"] for r in sc.implicit_rows()]
    result = sc.compare_models(lm, lm_b, vecs, prompts, layer=layer, steer_b=steer_b, chat=chat)
    write_json(analyses_dir(run_dir) / "compare.json", result)
    return result


def run_compare_runs(run_dir: str | Path, run_b: str | Path, layer: int | None = None, n_perm: int = 2000) -> dict[str, Any]:
    """Compare the emotion geometry of the run's vectors with another run's (any model; no model is loaded).

    Saves `analyses/compare_runs.json`, which the report renders when present.
    """
    run_dir, run_b = Path(run_dir), Path(run_b)
    result = compare_geometry(load_vectors(run_dir), load_vectors(run_b), layer_a=layer, n_perm=n_perm)
    result["run_b"] = str(run_b)
    write_json(analyses_dir(run_dir) / "compare_runs.json", result)
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
        return (f"layer sweep: best layer by held-out top-1 {r['best_layer']}, by PC1-valence r {r['best_valence_layer']}, "
                f"2/3 depth {r['two_thirds_layer']}")
    if name == "logit-lens":
        lay = r["layers"][max(r["layers"], key=int)]
        e = next(iter(lay["emotions"]))
        promoted = " ".join(t.strip() for t, _ in lay["emotions"][e]["promoted"][:6])
        return f"logit lens (layers {', '.join(r['layers'])}): e.g. {e} -> {promoted}"
    if name == "severity":
        return (f"severity (layer {r['layer']}): direction as expected in {r['n_agree']} of {r['n_tests']} (template, emotion) "
                "pairs, n=8 quantities each")
    if name == "implicit":
        return (f"implicit scenarios (n={r['n']}, layer {r['layer']}): intended emotion top-1 {r['top1']:.0%} "
                f"(chance {r['chance_top1']:.0%}), top-5 {r['top5']:.0%} (chance {r['chance_top5']:.0%})")
    if name == "scaling":
        return _scaling_line(r)
    if name == "lexical":
        return f"lexical baseline (the stories' words, no model): {lexical_text(r)}"
    if name == "steering":
        rec = r["recommended"]
        judged = [c for c in r["curves"] if c["as_expected"] is not None]
        return (f"steering judged from outside ({r['n_samples']} replies, {r['n_arms']} arms): {r['headline']['text']}; "
                f"judge moved as expected (slope p < 0.05) in {sum(c['as_expected'] for c in judged)} of {len(judged)} "
                f"emotion x layer curves, monotonic over the fluent range in {sum(c['monotonic'] for c in r['curves'])}"
                + (f", with an ordered trend the expected way (Page's test paired by prompt, p < 0.05) in "
                   f"{sum((c['trend']['p'] or 1) < 0.05 for c in r['curves'])}" if all("trend" in c for c in r["curves"]) else "")
                + (f"; own emotion words (NRC EmoLex) rise for {r['emotion_words']['n_rises']} of "
                   f"{r['emotion_words']['n_own']}, more steeply than under any other steered emotion for "
                   f"{r['emotion_words']['n_specific']}" if r.get("emotion_words") else "")
                + "; "
                f"recommended layer {rec['layer']}, strength {_fmt(rec['strength'])} (fluent for every emotion steered there: "
                f"{rec['range']}; happy and sad up to {_fmt(rec.get('pair_strength'))})")
    if name == "compare":
        return f"compare ({r['n_prompts']} prompts, layer {r['layer']}): risers {', '.join(r['risers'])}; fallers {', '.join(r['fallers'])}"
    if name == "speakers":
        st = r.get("stories") or {}
        story = (f"; story vectors vs present {_fmt(st['present']['mean'])}, vs other {_fmt(st['other']['mean'])} "
                 f"(closer to present for {st['n_closer_to_present']} of {st['n_emotions']})") if st else ""
        return (f"speaker probes ({r['n_dialogues']} dialogues, {r['n_turns']} turns, {len(r['emotions'])} emotions, layer {r['layer']}): "
                f"present vs other cosine mean {_fmt(r['present_other']['mean'])} (paper: nearly orthogonal){story}")
    return name


def lexical_text(r: dict[str, Any]) -> str:
    """The lexical baseline's figures in one line (recognition against chance, PC1/PC2 against the norms)."""
    val, aro = r.get("pc1_valence") or {}, r.get("pc2_arousal") or {}
    return (f"top-1 {r['top1']:.1%} (chance {r['chance_top1']:.1%}, p = {r['p_top1']:.2g}), top-5 {r['top5']:.1%} "
            f"(chance {r['chance_top5']:.1%}), n = {r['n_stories']} stories, {r['n_emotions']} emotions; PC1 vs valence "
            f"r = {_fmt(val.get('pearson'))}, PC2 vs arousal r = {_fmt(aro.get('pearson'))} (n = {r['n_matched']})")


def _scaling_line(r: dict[str, Any]) -> str:
    """The scaling one-liner: the last point (mean +- sd over seeds) against chance, and the last split-half."""
    def m(row: dict[str, Any], key: str, spec: str = ".2f") -> str:
        v = row[key]
        return "n/a" if v["mean"] is None else f"{format(v['mean'], spec)} +- {format(v['sd'], spec)}"

    last = r["rows"][-1]
    halves = [row for row in r["rows"] if row["split_half"]["n"]]
    half = f"; split-half cosine {m(halves[-1], 'split_half')} at k={halves[-1]['k']}" if halves else ""
    other = "".join(f"; layer {lay}: valence r {m(o['rows'][-1], 'valence_r')}" for lay, o in r.get("other_layers", {}).items())
    return (f"corpus scaling (layer {r['layer']}, {r['n_emotions']} emotions, k = {r['ks'][0]}..{r['ks'][-1]} stories each, "
            f"{r['seeds']} seeds): at k={last['k']} top-1 {m(last, 'top1', '.1%')} (chance {r['chance_top1']:.1%}), "
            f"top-5 {m(last, 'top5', '.1%')} (chance {r['chance_top5']:.1%}); PC1 vs valence r {m(last, 'valence_r')}, "
            f"best |r| PC1-3 vs arousal {m(last, 'arousal_r_best')} (n={r['n_norms_matched']}, chance |r| "
            f"{_fmt(r['null_abs_r'])}){half}{other}")


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec) if isinstance(x, float) else str(x)
