"""The `emovec` command line: a thin layer over the Python API."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import report as report_layer
from ._version import __version__
from .experiments import EXPERIMENTS
from .experiments.blackmail import run_blackmail
from .experiments.hacking import run_reward_hacking
from .experiments.preferences import run_preferences
from .generation import Sampling, generate_text
from .live.monitor import Monitor, parse_rules, render_terminal
from .live.server import serve as run_server
from .models import load_model
from .pipeline import prepare, stage_extract, stage_recognition, stage_stories
from .provenance import run_lock
from .readout import score_text, top_emotions
from .rundir import RUN_FILE, VECTORS_FILE, make_config, open_run, run_model
from .steering import steering_vector
from .storage import EmovecError, atomic_path, read_json
from .validate.runner import analyses_dir, run_analyses, run_compare, summarize
from .validate.speakers import run_speaker_probes
from .vectors import EmotionVectors

_F = TypeVar("_F", bound=Callable[..., Any])


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


class _Group(click.Group):
    """Turns EmovecError (and Ctrl-C) into one line on stderr and a non-zero exit."""
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EmovecError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            click.echo("interrupted; re-run the same command to resume", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="emovec")
def main() -> None:
    """Find, validate, monitor and steer emotion vectors in language models."""
    from transformers.utils import logging as hf_logging

    disable_bars: Callable[[], None] = hf_logging.disable_progress_bar  # unannotated in transformers
    disable_bars()  # a 0.1 s "Loading weights" bar is noise on every command
    if not logging.getLogger("emovec").handlers:  # library notes (e.g. emotions left without stories) go to stderr
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("note: %(message)s"))
        logging.getLogger("emovec").addHandler(handler)
        logging.getLogger("emovec").setLevel(logging.INFO)


def model_options(f: _F) -> _F:
    """The options that pick and place the model (--model, --device, --dtype, --trust-remote-code), shared by commands."""
    f = click.option("--device", default="cpu", show_default=True, help="torch device (cpu, cuda, cuda:1, mps)")(f)
    f = click.option("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on CPU)")(f)
    f = click.option("--trust-remote-code", is_flag=True, default=None,
                     help="allow a model directory's own code to run (only for models you trust)")(f)
    f = click.option("--model", "model", default=None,
                     help="smollm2-135m (embedded default), a local HF model directory, or a .gguf file")(f)
    return f


def allow_drift_option(f: _F) -> _F:
    """--allow-drift: resume a run under other library versions, CPU class or model files, knowingly."""
    return click.option("--allow-drift", is_flag=True, default=False,
                        help="resume even though versions, CPU class or model files differ from the run's start "
                             "(recorded in run.json)")(f)


def run_options(f: _F) -> _F:
    """The options that make a run's settings (preset, corpus size, seeds, batch sizes), plus the model options."""
    opts = [
        click.option("--preset", type=click.Choice(["quick", "standard", "paper"]), default=None,
                     help="corpus size preset (quick: 20 emotions x 32 stories; standard: 171 x 15; paper: 171 x 1200)"),
        click.option("--concepts", default=None, help="text file with one emotion per line (default: the 171 built in)"),
        click.option("--emotions", default=None, help="comma-separated subset of the concepts"),
        click.option("--per-emotion", type=click.IntRange(min=1), default=None, help="stories per emotion"),
        click.option("--stories-per-prompt", type=click.IntRange(min=1, max=20), default=None,
                     help="ask for several stories per response and split them"),
        click.option("--n-neutral", type=click.IntRange(min=0), default=None, help="neutral dialogues to generate"),
        click.option("--import", "import_stories", default=None,
                     help="JSONL of {emotion, text} written elsewhere, used instead of generating stories"),
        click.option("--max-new-tokens", type=click.IntRange(min=1, max=4096), default=None,
                     help="story length budget in tokens"),
        click.option("--temperature", type=click.FloatRange(min=0, max=2), default=None, help="writer temperature"),
        click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=None, help="writer top-p"),
        click.option("--prime/--no-prime", default=None,
                     help="start each story with a sentence naming the emotion (removed before storing)"),
        click.option("--token-start", type=click.IntRange(min=1), default=None, help="first pooled token position"),
        click.option("--denoise-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
                     help="neutral variance explained by the projected-out components"),
        click.option("--seed", type=int, default=None),
        click.option("--gen-batch-size", type=click.IntRange(min=1), default=None),
        click.option("--gen-dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default=None,
                     help="dtype of the story writer's copy of the model (default auto: bfloat16 where this CPU runs "
                          "it faster, else the model's own); extraction always uses --dtype"),
        click.option("--extract-batch-size", type=click.IntRange(min=1), default=None),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return allow_drift_option(model_options(f))


def _config(run_dir: str, preset: str | None, emotions: str | None, **kw: Any) -> Any:
    """The run's settings: a new run from preset + options, or a stored run with the options given on top."""
    given = {k: v for k, v in kw.items() if v is not None}
    if emotions:
        given["emotions"] = [e.strip() for e in emotions.split(",") if e.strip()]
    if (Path(run_dir) / RUN_FILE).exists():
        saved = open_run(run_dir)
        base = dataclasses.asdict(make_config(preset)) if preset else {}
        merged = dataclasses.replace(saved, **{k: v for k, v in {**base, **given}.items() if k != "extra"})
        return open_run(run_dir, merged, write=False)
    return open_run(run_dir, make_config(preset or "quick", **given), write=False)


def _print_summary(s: dict[str, Any]) -> None:
    c, r = s["corpus"], s["recognition"]
    st, ne = c["stories"], c["neutral"]
    click.echo(f"\nmodel {s['model']}: {s['n_layers']} layers, width {s['d_model']}")
    click.echo(f"stories: {st['kept']} kept of {st['written']} written (filter dropped {st['drop_rate']:.1%}: {st['dropped']}), "
               f"{st['kept_per_emotion_min']}-{st['kept_per_emotion_max']} per emotion")
    click.echo(f"neutral dialogues: {ne['kept']} kept of {ne['written']}")
    click.echo(f"layer used: {s['layer']} (about two thirds of depth)")
    click.echo(f"held-out recognition ({r['folds']}-fold, {r['n_stories']} stories, {r['n_emotions']} emotions): "
               f"top-1 {r['top1']:.1%} (chance {r['chance_top1']:.1%}, binomial p = {r['p_top1']:.1g}), "
               f"top-5 {r['top5']:.1%} (chance {r['chance_top5']:.1%})")
    click.echo(f"best layer by held-out top-1: {r['best_layer']} ({r['best_layer_top1']:.1%}; chosen on the same folds)")
    if r["confusions"]:
        click.echo("most confused: " + ", ".join(f"{x['true']}->{x['predicted']} ({x['count']})" for x in r["confusions"]))
    ranked = [p for p in s["probes"] if p["rank_of_intended"]]
    if ranked:
        n_emo = s.get("n_vectors", r["n_emotions"])
        hits1 = sum(p["rank_of_intended"] == 1 for p in ranked)
        hits3 = sum(p["rank_of_intended"] <= 3 for p in ranked)
        click.echo(f"\nheld-out sentences (not used for training; scores centred over the set), {len(ranked)} with an emotion "
                   "in the set: intended "
                   f"ranked 1st for {hits1} (chance {len(ranked) / n_emo:.1f}), top-3 for {hits3} (chance {3 * len(ranked) / n_emo:.1f})")
    for p in s["probes"][:: max(1, len(s["probes"]) // 8)][:8]:
        top = ", ".join(f"{e} {v:+.2f}" for e, v in p["top"])
        rank = f"rank {p['rank_of_intended']}" if p["rank_of_intended"] else "not in set"
        click.echo(f"  [{p['intended']}: {rank}] {p['text'][:70]}...\n      -> {top}")
    click.echo(f"\ntime: {s['timings']}  outputs: {s['run_dir']}")
    if s.get("report"):
        click.echo(f"report: {s['report']}")


@main.command()
@click.argument("run_dir")
@run_options
def run(run_dir: str, model: str | None, device: str, dtype: str | None, allow_drift: bool, **kw: Any) -> None:
    """Whole pipeline into RUN_DIR: stories, neutral corpus, activations, vectors, recognition (resumable)."""
    cfg = _config(run_dir, model=model, device=device, dtype=dtype, **kw)
    summary = report_layer.run(run_dir, cfg, allow_drift=allow_drift)
    _print_summary(summary)


@main.command()
@click.argument("run_dir")
@run_options
def stories(run_dir: str, model: str | None, device: str, dtype: str | None, allow_drift: bool, **kw: Any) -> None:
    """Generate (or --import) the story and neutral corpora into RUN_DIR (resumable)."""
    cfg = _config(run_dir, model=model, device=device, dtype=dtype, **kw)
    with run_lock(run_dir):
        cfg, lm = prepare(run_dir, cfg, allow_drift=allow_drift)
        click.echo(json.dumps(stage_stories(run_dir, cfg, lm), indent=2))


@main.command()
@click.argument("run_dir")
@click.option("--device", default=None, help="torch device (default: the run's)")
@allow_drift_option
def extract(run_dir: str, device: str | None, allow_drift: bool) -> None:
    """Pool activations of RUN_DIR's corpora and write vectors.safetensors (resumable)."""
    with run_lock(run_dir):
        cfg = open_run(run_dir)
        if device:
            cfg = dataclasses.replace(cfg, device=device)
        cfg, lm = prepare(run_dir, cfg, allow_drift=allow_drift)
        vectors = stage_extract(run_dir, cfg, lm)
        recog = stage_recognition(run_dir, cfg)
    click.echo(f"wrote {Path(run_dir) / VECTORS_FILE}: {len(vectors.emotions)} emotions x {len(vectors.layers)} layers")
    for row in recog["layers"]:
        if row["layer"] in (vectors.default_layer, recog["best_layer"]):
            click.echo(f"layer {row['layer']}: held-out top-1 {row['top1']:.1%}, top-5 {row['top5']:.1%} "
                       f"(chance {recog['chance_top1']:.1%} / {recog['chance_top5']:.1%})")


def _load(vectors: str, model: str | None, device: str, dtype: str | None,
          trust_remote_code: bool | None = None) -> tuple[Any, Any]:
    path = Path(vectors)
    if path.is_dir():
        path = path / VECTORS_FILE
    vecs = EmotionVectors.load(path)
    lm = load_model(model or vecs.meta.get("model_source") or "smollm2-135m", device=device, dtype=dtype,
                    trust_remote_code=bool(trust_remote_code))
    vecs.check_model(lm)
    return vecs, lm


vectors_option = click.option("--vectors", "-v", required=True, help="vector file or run directory")


@main.command()
@click.argument("text")
@vectors_option
@click.option("--layer", type=int, default=None, help="layer to read (default: the vectors' default layer)")
@click.option("--emotions", default=None, help="comma-separated emotions to show (default: all)")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True, help="top emotions per token")
@click.option("--method", type=click.Choice(["projection", "cosine"]), default="projection", show_default=True)
@click.option("--csv", "csv_path", default=None, help="also write the full tokens x emotions table here")
@model_options
def score(text: str, vectors: str, layer: int | None, emotions: str | None, top: int, method: str,
          csv_path: str | None, model: str | None, device: str, dtype: str | None,
          trust_remote_code: bool | None) -> None:
    """Per-token emotion scores of TEXT (projection on unit vectors, centred; see README)."""
    vecs, lm = _load(vectors, model, device, dtype, trust_remote_code)
    df = score_text(lm, vecs, text, layer=layer, emotions=emotions, method=method)
    tops = top_emotions(df, k=min(top, len(df.columns) - 1))
    click.echo(tops.to_string())
    if csv_path:
        with atomic_path(csv_path) as tmp:
            df.to_csv(tmp)
        click.echo(f"wrote {csv_path}")


@main.command()
@click.argument("prompt")
@vectors_option
@click.option("--steer", "-s", multiple=True, help="EMOTION=STRENGTH, e.g. calm=0.05 (repeatable or comma-separated)")
@click.option("--layers", default=None, help="steered layers: 20, 18-22 or 10,14,20 (default: the vectors' default layer)")
@click.option("--max-new-tokens", type=click.IntRange(min=1, max=4096), default=120, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--raw", is_flag=True, help="do not apply the chat template")
@model_options
def generate(prompt: str, vectors: str, steer: tuple[str, ...], layers: str | None, max_new_tokens: int,
             temperature: float, seed: int, raw: bool, model: str | None, device: str, dtype: str | None,
          trust_remote_code: bool | None) -> None:
    """Generate a reply to PROMPT, optionally steered along emotion vectors."""
    vecs, lm = _load(vectors, model, device, dtype, trust_remote_code)
    sv = steering_vector(vecs, list(steer), layers)
    with sv.apply(lm):
        text = generate_text(lm, prompt, Sampling(max_new_tokens=max_new_tokens, temperature=temperature), seed=seed,
                             chat=not raw)
    if sv.deltas:
        click.echo(f"[steering: {sv.label} at layers {sorted(sv.deltas)}]", err=True)
    click.echo(text)


@main.command()
@click.argument("path")
def info(path: str) -> None:
    """Describe a vector file or a run directory."""
    p = Path(path)
    if p.is_dir():
        if not (p / RUN_FILE).exists():
            raise EmovecError(f"{p} is not a run directory (no {RUN_FILE})")
        click.echo(json.dumps({"run": read_json(p / RUN_FILE)}, indent=2))
        if (p / "summary.json").exists():
            s = read_json(p / "summary.json")
            click.echo(json.dumps({"recognition": s.get("recognition"), "corpus": s.get("corpus")}, indent=2))
        p = p / VECTORS_FILE
        if not p.exists():
            return
    for k, v in EmotionVectors.load(p).info().items():
        click.echo(f"{k:>24}: {v}")


@main.command()
@click.argument("run_dir")
@click.option("--only", default=None, help="comma-separated subset: logit-lens,geometry,layer-sweep,severity,implicit")
@click.option("--force", is_flag=True, help="recompute results that already exist")
def analyze(run_dir: str, only: str | None, force: bool) -> None:
    """Run the validation analyses on RUN_DIR; results go to RUN_DIR/analyses/*.json."""
    results = run_analyses(run_dir, only=[x.strip() for x in only.split(",") if x.strip()] if only else None, force=force)
    for name, result in results.items():
        click.echo(summarize(name, result))
    click.echo(f"results: {analyses_dir(run_dir)}")


@main.command()
@click.argument("run_dir")
@click.option("--no-compute", is_flag=True, help="render only the analyses already saved (no model needed)")
def report(run_dir: str, no_compute: bool) -> None:
    """Write RUN_DIR/report.html (self-contained), computing missing analyses first."""
    click.echo(f"report: {report_layer.write_report(run_dir, compute=not no_compute)}")


@main.command()
@click.argument("run_dir")
@click.option("--model-b", required=True, help="second model (same tokenizer): directory, .gguf, or smollm2-135m")
@click.option("--steer-b", "-s", multiple=True, help="steer model b while reading, e.g. sad=0.1 (for a self-test)")
@click.option("--layer", type=int, default=None, help="layer to read (default: the vectors' default layer)")
@click.option("--base", is_flag=True, help="read plain prompts without the chat template (for base models)")
def compare(run_dir: str, model_b: str, steer_b: tuple[str, ...], layer: int | None, base: bool) -> None:
    """Which emotions rise and fall from the run's model to MODEL_B on the same prompts (analyses/compare.json)."""
    cfg = open_run(run_dir)
    lm = run_model(cfg)
    lm_b = lm if model_b == cfg.model else load_model(model_b, device=cfg.device, dtype=cfg.dtype)
    click.echo(summarize("compare", run_compare(run_dir, lm_b, list(steer_b) or None, lm=lm, layer=layer, chat=not base)))


@main.command()
@click.argument("prompt")
@vectors_option
@click.option("--emotion", "-e", default="desperate", show_default=True, help="emotion that colours the tokens")
@click.option("--alert", "-a", multiple=True, help="EMOTION=Z alert threshold on the smoothed z-score (negative: alert on falling)")
@click.option("--guard", "-g", default=None, help="steering switched on when an alert fires, e.g. calm=0.1,desperate=-0.1")
@click.option("--layer", type=int, default=None, help="monitored layer (default: the vectors' default layer)")
@click.option("--max-new-tokens", type=click.IntRange(min=1, max=4096), default=120, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--trace", "trace_path", default=None, help="append the trace (tokens, scores, alerts, steering) as JSONL")
@model_options
def monitor(prompt: str, vectors: str, emotion: str, alert: tuple[str, ...], guard: str | None, layer: int | None,
            max_new_tokens: int, temperature: float, seed: int, trace_path: str | None, model: str | None,
            device: str, dtype: str | None,
          trust_remote_code: bool | None) -> None:
    """Generate a reply to PROMPT, printing it coloured by an emotion's z-score, with alerts."""
    vecs, lm = _load(vectors, model, device, dtype, trust_remote_code)
    emotion = vecs.resolve([emotion])[0]
    mon = Monitor(lm, vecs, layer=layer, rules=parse_rules(list(alert), vecs.emotions), guard=guard)
    trace = mon.generate(prompt, Sampling(max_new_tokens=max_new_tokens, temperature=temperature), seed=seed)[0]
    click.echo(render_terminal(trace, emotion))
    for a in trace.alerts:
        click.echo(f"alert: {a.emotion} z={a.z:+.2f} at token {a.position}: ...{a.context[-60:]!r}", err=True)
    if trace_path:
        trace.save(trace_path)
        click.echo(f"trace appended to {trace_path}", err=True)


@main.command()
@vectors_option
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind (keep 127.0.0.1 unless you mean it)")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--layer", type=int, default=None, help="monitored and steered layer (default: the vectors' default)")
@model_options
def serve(vectors: str, host: str, port: int, layer: int | None, model: str | None, device: str, dtype: str | None,
          trust_remote_code: bool | None) -> None:
    """Serve the live monitor page: type a prompt, watch tokens coloured by emotion, steer with sliders."""
    vecs, lm = _load(vectors, model, device, dtype, trust_remote_code)
    click.echo(f"emovec monitor on http://{host}:{port}/  (Ctrl-C to stop)", err=True)
    run_server(lm, vecs, host=host, port=port, layer=layer)


@main.command()
@click.argument("run_dir")
@click.option("--per-pair", type=click.IntRange(min=1), default=2, show_default=True,
              help="dialogues per ordered pair of different emotions")
@click.option("--emotions", default=None, help="comma-separated emotions (default: happy,sad,afraid,angry,calm,desperate where in the run)")
def speakers(run_dir: str, per_pair: int, emotions: str | None) -> None:
    """Speaker probes: write emotional Human/Assistant dialogues (resumable) and compare present/other-speaker vectors."""
    result, rows = run_speaker_probes(run_dir, per_pair, emotions)
    kept = sum(bool(r.get("kept")) for r in rows)
    click.echo(f"dialogues: {kept} kept of {len(rows)} written in {Path(run_dir) / 'speakers.jsonl'}")
    click.echo(summarize("speakers", result))
    click.echo(f"results: {analyses_dir(run_dir) / 'speakers.json'}")


@main.group()
def experiment() -> None:
    """Behavioural experiments under steering: preferences, blackmail, reward-hacking (resumable, in RUN_DIR/experiments/)."""


@experiment.command("preferences")
@click.argument("run_dir")
@click.option("--emotions", default=None, help="comma-separated emotions correlated with Elo (default: all in the run)")
@click.option("--steer", default=None,
              help="comma-separated emotions to steer with (default: --n-vectors spread over the correlation range)")
@click.option("--n-vectors", type=click.IntRange(min=0), default=4, show_default=True, help="vectors to steer when --steer is not given")
@click.option("--strength", type=float, default=0.5, show_default=True, help="steering strength on the activity tokens (paper: 0.5)")
@click.option("--layers", default=None, help="steered layers, e.g. 18-22 (default: the vectors' default layer)")
@click.option("--steer-prompts", type=click.IntRange(min=0), default=256, show_default=True,
              help="prompts per steered vector, a seeded subset of the steered-vs-control pairs (0: all of them)")
@click.option("--per-group", type=click.IntRange(min=1), default=None, help="use only the first K activities of each group")
@click.option("--activities", "activities_file", default=None, help="activities JSON (default: the built-in emovec/data/activities.json)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the steered/control split and the pair subset")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
def experiment_preferences(run_dir: str, emotions: str | None, steer: str | None, n_vectors: int, strength: float,
                           layers: str | None, steer_prompts: int, per_group: int | None, activities_file: str | None,
                           seed: int, batch_size: int) -> None:
    """Activity preferences: Elo from all ordered pairs, its correlation with emotion activations, and steering shifts."""
    s = run_preferences(run_dir, emotions=emotions, steer=steer, n_vectors=n_vectors, strength=strength, layers=layers,
                        steer_prompts=steer_prompts or None, per_group=per_group, activities_file=activities_file,
                        seed=seed, batch_size=batch_size)
    for line in EXPERIMENTS["preferences"].result_lines(s, run_dir):
        click.echo(line)


@experiment.command("blackmail")
@click.argument("run_dir")
@click.option("--n", type=click.IntRange(min=1), default=8, show_default=True, help="samples per condition")
@click.option("--emotions", default=None, help="comma-separated emotions to steer (default: desperate,calm,angry,nervous where in the run)")
@click.option("--strengths", default="-0.1,-0.05,0.05,0.1", show_default=True, help="comma-separated steering strengths")
@click.option("--layers", default=None, help="steered layers, e.g. 18-22 (default: the vectors' default layer)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1, max=4096), default=160, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--temperature", type=float, default=0.9, show_default=True)
@click.option("--guard", default=None, help="add a condition generated with the Monitor guard on, e.g. calm=0.1")
@click.option("--guard-alert", default="desperate=2", show_default=True, help="alert rule that switches the guard on (EMOTION=Z)")
@click.option("--scenario", default=None, help="scenario JSON (default: the built-in emovec/data/blackmail.json)")
@click.option("--prefill", default="", help="text every reply starts with, e.g. '<email><to>' for models too small "
              "to use the email format unaided (recorded in the results)")
def experiment_blackmail(run_dir: str, n: int, emotions: str | None, strengths: str, layers: str | None, seed: int,
                         max_new_tokens: int, batch_size: int, temperature: float, guard: str | None, guard_alert: str,
                         scenario: str | None, prefill: str) -> None:
    """Blackmail scenario: rate (Wilson 95%) over N samples, unsteered and under a steering sweep."""
    s = run_blackmail(run_dir, n=n, emotions=emotions, strengths=strengths, layers=layers, seed=seed,
                      max_new_tokens=max_new_tokens, batch_size=batch_size, temperature=temperature, guard=guard,
                      guard_alert=guard_alert, scenario=scenario, prefill=prefill)
    for line in EXPERIMENTS["blackmail"].result_lines(s, run_dir):
        click.echo(line)


@experiment.command("reward-hacking")
@click.argument("run_dir")
@click.option("--n", type=click.IntRange(min=1), default=5, show_default=True, help="episodes per condition, cycling through the tasks")
@click.option("--attempts", type=click.IntRange(min=1, max=10), default=3, show_default=True,
              help="tries per episode, failing test output fed back after each")
@click.option("--tasks", default=None, help="comma-separated task ids (default: all in emovec/data/coding_tasks.json)")
@click.option("--emotions", default=None, help="comma-separated emotions to steer and read out (default: desperate,calm where in the run)")
@click.option("--strengths", default="-0.1,-0.05,0.05,0.1", show_default=True, help="comma-separated steering strengths")
@click.option("--layers", default=None, help="steered layers, e.g. 18-22 (default: the vectors' default layer)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1, max=4096), default=128, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True)
def experiment_reward_hacking(run_dir: str, n: int, attempts: int, tasks: str | None, emotions: str | None,
                              strengths: str, layers: str | None, seed: int, max_new_tokens: int, batch_size: int,
                              temperature: float) -> None:
    """Impossible coding tasks: hack rate (Wilson 95%) under a steering sweep, readout by attempt (sandboxed)."""
    s = run_reward_hacking(run_dir, n=n, emotions=emotions, strengths=strengths, layers=layers, attempts=attempts,
                           tasks=tasks, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature,
                           batch_size=batch_size, progress=True)
    for line in EXPERIMENTS["reward-hacking"].result_lines(s, run_dir):
        click.echo(line)


if __name__ == "__main__":
    main()
