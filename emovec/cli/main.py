"""The `emovec` command group, the options shared by its commands, and the run, analysis and report commands."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import click

from .. import report as report_layer
from .._version import __version__
from ..distributed import RayOptions, RayPool, import_ray, ray_session
from ..embedded import EMBEDDED
from ..models import load_model
from ..pipeline import prepare, prepare_models, stage_extract, stage_recognition, stage_stories
from ..provenance import run_lock
from ..report import results
from ..rundir import RUN_FILE, VECTORS_FILE, attach_steering_recommendation, make_config, open_run, run_model
from ..storage import EmovecError, read_json
from ..validate.crossmodel import geometry_lines
from ..validate.runner import analyses_dir, reanalyse_steering, run_analyses, run_compare, run_compare_runs, summarize
from ..validate.speakers import run_speaker_probes
from ..vectors import EmotionVectors

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
    f = click.option("--dtype", default=None,
                     help="float32 | bfloat16 | float16 | auto (default: float32 on CPU; a new run's auto, the quick "
                          "preset's, is bfloat16 where this CPU runs it natively)")(f)
    f = click.option("--trust-remote-code", is_flag=True, default=None,
                     help="allow a model directory's own code to run (only for models you trust)")(f)
    f = click.option("--model", "model", default=None,
                     help="smollm2-135m (embedded default), qwen2.5-coder-0.5b (after `make qwen`), a local HF "
                          "model directory, or a .gguf file")(f)
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
                     help="corpus size preset (quick: 171 emotions x 10 stories, the demo; standard: 171 x 15; "
                          "paper: 171 x 1200)"),
        click.option("--concepts", default=None, help="text file with one emotion per line (default: the 171 built in)"),
        click.option("--emotions", default=None, help="comma-separated subset of the concepts"),
        click.option("--per-emotion", type=click.IntRange(min=1), default=None, help="stories per emotion"),
        click.option("--stories-per-prompt", type=click.IntRange(min=1, max=20), default=None,
                     help="ask for several stories per response and split them"),
        click.option("--n-neutral", type=click.IntRange(min=0), default=None, help="neutral dialogues to generate"),
        click.option("--writer", default=None,
                     help="model that writes the stories and neutral dialogues (default: --model itself); "
                          "vectors are still read from --model, which then needs no chat template (base models)"),
        click.option("--import", "import_stories", default=None,
                     help="JSONL of {emotion, text} written elsewhere, used instead of generating stories"),
        click.option("--max-new-tokens", type=click.IntRange(min=1, max=4096), default=None,
                     help="story length budget in tokens"),
        click.option("--temperature", type=click.FloatRange(min=0, max=2), default=None, help="writer temperature"),
        click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=None, help="writer top-p"),
        click.option("--prompt-style", type=click.Choice(["plain", "detailed"]), default=None,
                     help="story request: plain (one short request, default) or detailed (first/third person)"),
        click.option("--topics", type=click.IntRange(min=1), default=None,
                     help="number of built-in topics the stories cycle through (default 12)"),
        click.option("--repetition-penalty", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="writer repetition penalty (default 1.0: none)"),
        click.option("--prime/--no-prime", default=None,
                     help="start each story with a sentence naming the emotion (removed before storing)"),
        click.option("--keep-named/--drop-named", default=None,
                     help="keep stories that name their emotion (default: drop them; an ablation, README "
                          "\"The story recipe\")"),
        click.option("--content-check", type=click.FloatRange(0, 1), default=None, metavar="FRACTION",
                     help="after writing, ask the model which emotion each kept story shows and drop those whose "
                          "emotion it ranks outside this top share of the emotions (e.g. 0.5; 0: off, the default; "
                          "README \"The content check\")"),
        click.option("--refill", type=click.IntRange(min=0), default=None, metavar="N",
                     help="after the filters (and the content check), write replacement stories for every emotion "
                          "that keeps fewer than N, in up to 2 rounds and at most --per-emotion more each "
                          "(0: off, the default; the quick preset uses 6)"),
        click.option("--token-start", type=click.IntRange(min=1), default=None, help="first pooled token position"),
        click.option("--denoise-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
                     help="neutral variance explained by the projected-out components"),
        click.option("--topic-adjust/--no-topic-adjust", default=None,
                     help="remove each story's topic mean before averaging its emotion's stories (default: on; "
                          "README \"Topic adjustment\")"),
        click.option("--seed", type=int, default=None),
        click.option("--gen-batch-size", type=click.IntRange(min=1), default=None),
        click.option("--gen-dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default=None,
                     help="dtype of the story writer's copy of the model (default auto: bfloat16 where this CPU runs "
                          "it faster, else the model's own); extraction always uses --dtype"),
        click.option("--extract-batch-size", type=click.IntRange(min=1), default=None),
        click.option("--backend", type=click.Choice(["auto", "fast", "hf", "vllm"]), default=None,
                     help="engine that writes the corpora (and, for vllm, pools the activations): auto (default: vllm "
                          "on a GPU where installed, else fast), fast (emovec's decode loop), hf (transformers "
                          "generate), vllm (needs `make vllm`; README \"Which backend\")"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return allow_drift_option(model_options(f))


def ray_options(f: _F) -> _F:
    """--ray [ADDRESS] and --ray-workers: write the corpora and extract on Ray actors (execution only; same files)."""
    f = click.option("--ray-workers", type=click.IntRange(min=1), default=None,
                     help="Ray actors, each holding one model copy and one CPU (default: one per CPU; with --ray)")(f)
    return click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                        help="split story writing and extraction over Ray actors: a local Ray instance (no value), or "
                             "the cluster at ADDRESS (e.g. ray://head:10001 or auto); needs `make ray`")(f)


def _ray(address: str | None, workers: int | None) -> RayOptions | None:
    """The run's Ray settings from --ray/--ray-workers (None: one process)."""
    if address is None:
        if workers is not None:
            raise EmovecError("--ray-workers needs --ray")
        return None
    import_ray()  # a missing Ray fails before anything is written
    return RayOptions(address=None if address == "local" else address, workers=workers)


@contextmanager
def _pool(cfg: Any, ray: RayOptions | None, allow_drift: bool) -> Iterator[RayPool | None]:
    """A Ray pool for the run's resolved settings while the block runs, or None without --ray."""
    if ray is None:
        yield None
        return
    with RayPool(cfg, ray, allow_drift) as pool:
        yield pool


def _session(ray: RayOptions | None) -> AbstractContextManager[Any]:
    """Ray connected (or started) for the command, before anything is written; nothing without --ray."""
    return ray_session(ray) if ray is not None else nullcontext()


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
    if s.get("writer") and s["writer"] != s["model"]:
        click.echo(f"stories and neutral dialogues written by {s['writer']}")
    click.echo(f"stories: {st['kept']} kept of {st['written']} written (filter dropped {st['drop_rate']:.1%}: {st['dropped']}), "
               f"{st['kept_per_emotion_min']}-{st['kept_per_emotion_max']} per emotion")
    if (c.get("content_check") or {}).get("checked"):
        cc = c["content_check"]
        click.echo(f"content check: {cc['kept']} of {cc['checked']} stories read as their emotion (its rank within the "
                   f"top {cc['fraction']:.0%} of the emotions, or among its {cc['min_keep']} best); median rank "
                   f"{cc['median_rank']:.0f}, top 10% for {cc['top10pct_rate']:.0%}"
                   + ("; the same pass pooled the kept stories' activations" if cc.get("shards_written") else ""))
    if c.get("refill"):
        rf = c["refill"]
        click.echo(f"replacement stories: {rf['kept']} kept of {rf['written']} written in {len(rf['rounds'])} round(s) "
                   f"for the emotions that kept fewer than {rf['target']}; {rf['short_emotions']} still below it")
    click.echo(f"neutral dialogues: {ne['kept']} kept of {ne['written']}")
    click.echo(f"layer used: {s['layer']} (about two thirds of depth)")
    if s.get("topic_adjustment", "none") != "none":
        click.echo(f"topic adjustment: {s['topic_adjustment']} before each emotion's stories are averaged")
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
@ray_options
def run(run_dir: str, model: str | None, device: str, dtype: str | None, allow_drift: bool, ray_address: str | None,
        ray_workers: int | None, **kw: Any) -> None:
    """Whole pipeline into RUN_DIR: stories, neutral corpus, activations, vectors, recognition (resumable)."""
    ray = _ray(ray_address, ray_workers)
    cfg = _config(run_dir, model=model, device=device, dtype=dtype, **kw)
    summary = report_layer.run(run_dir, cfg, allow_drift=allow_drift, ray=ray)
    _print_summary(summary)
    if summary.get("report"):  # the analyses exist: the headline results, also saved as RUN_DIR/results.json
        res = results.save(run_dir, command=" ".join(["emovec", *sys.argv[1:]]))
        click.echo("\nheadline results (RUN_DIR/results.json):")
        for line in results.lines(res):
            click.echo(f"  {line}")


@main.command()
@click.argument("run_dir")
@run_options
@ray_options
def stories(run_dir: str, model: str | None, device: str, dtype: str | None, allow_drift: bool, ray_address: str | None,
            ray_workers: int | None, **kw: Any) -> None:
    """Generate (or --import) the story and neutral corpora into RUN_DIR (resumable)."""
    ray = _ray(ray_address, ray_workers)
    cfg = _config(run_dir, model=model, device=device, dtype=dtype, **kw)
    with _session(ray), run_lock(run_dir):
        cfg, lm, writer = prepare_models(run_dir, cfg, allow_drift=allow_drift)
        with _pool(cfg, ray, allow_drift) as pool:
            click.echo(json.dumps(stage_stories(run_dir, cfg, lm, writer=writer, pool=pool), indent=2))


@main.command()
@click.argument("run_dir")
@click.option("--device", default=None, help="torch device (default: the run's)")
@allow_drift_option
@ray_options
def extract(run_dir: str, device: str | None, allow_drift: bool, ray_address: str | None, ray_workers: int | None) -> None:
    """Pool activations of RUN_DIR's corpora and write vectors.safetensors (resumable)."""
    ray = _ray(ray_address, ray_workers)
    with _session(ray), run_lock(run_dir):
        cfg = open_run(run_dir)
        if device:
            cfg = dataclasses.replace(cfg, device=device)
        cfg, lm = prepare(run_dir, cfg, allow_drift=allow_drift)
        with _pool(cfg, ray, allow_drift) as pool:
            vectors = stage_extract(run_dir, cfg, lm, pool=pool)
        recog = stage_recognition(run_dir, cfg)
    click.echo(f"wrote {Path(run_dir) / VECTORS_FILE}: {len(vectors.emotions)} emotions x {len(vectors.layers)} layers")
    for row in recog["layers"]:
        if row["layer"] in (vectors.default_layer, recog["best_layer"]):
            click.echo(f"layer {row['layer']}: held-out top-1 {row['top1']:.1%}, top-5 {row['top5']:.1%} "
                       f"(chance {recog['chance_top1']:.1%} / {recog['chance_top5']:.1%})")


def _load(vectors: str, model: str | None, device: str, dtype: str | None,
          trust_remote_code: bool | None = None) -> tuple[Any, Any]:
    path = Path(vectors)
    vecs = attach_steering_recommendation(EmotionVectors.load(path / VECTORS_FILE), path) if path.is_dir() \
        else EmotionVectors.load(path)
    lm = load_model(model or vecs.meta.get("model_source") or "smollm2-135m", device=device, dtype=dtype,
                    trust_remote_code=bool(trust_remote_code))
    vecs.check_model(lm)
    return vecs, lm


vectors_option = click.option("--vectors", "-v", required=True, help="vector file or run directory")



@main.command()
@click.argument("path", required=False)
@model_options
def info(path: str | None, model: str | None, device: str, dtype: str | None, trust_remote_code: bool | None) -> None:
    """Describe a vector file or a run directory, or (with --model) a model: layers, width, chat template."""
    if model:
        _model_info(model, device, dtype, bool(trust_remote_code))
    if not path:
        if not model:
            raise EmovecError(f"give a vector file or run directory, or --model NAME ({', '.join(EMBEDDED)}, a model "
                              "directory or a .gguf file)")
        return
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


def _model_info(model: str, device: str, dtype: str | None, trust_remote_code: bool) -> None:
    """Load a model and print what emovec sees in it."""
    lm = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    params = sum(p.numel() for p in lm.model.parameters())
    rows = {"model": lm.name, "source": lm.source, "architecture": type(lm.model).__name__,
            "parameters": f"{params / 1e6:.1f}M", "layers": f"{lm.n_layers} at {lm.layers_path}", "width": lm.d_model,
            "dtype": str(lm.dtype).removeprefix("torch."), "vocabulary": len(lm.tokenizer),
            "chat_template": "yes" if lm.has_chat_template else "no (can read, cannot write: use --writer)",
            "config_fingerprint": lm.fingerprint}
    for k, v in rows.items():
        click.echo(f"{k:>24}: {v}")


@main.command()
@click.argument("run_dir")
@click.option("--only", default=None,
              help="comma-separated subset: logit-lens,geometry,layer-sweep,severity,implicit,scaling,lexical,steering")
@click.option("--force", is_flag=True, help="recompute results that already exist")
@click.option("--from-replies", is_flag=True, help="steering only: recompute its statistics from the replies saved in "
              "analyses/steering.json (no model, no generation; e.g. after upgrading emovec)")
def analyze(run_dir: str, only: str | None, force: bool, from_replies: bool) -> None:
    """Run the validation analyses on RUN_DIR; results go to RUN_DIR/analyses/*.json."""
    if from_replies:
        if only not in (None, "steering") or force:
            raise EmovecError("--from-replies recomputes the steering analysis only; drop --only/--force")
        results = {"steering": reanalyse_steering(run_dir)}
    else:
        results = run_analyses(run_dir, only=[x.strip() for x in only.split(",") if x.strip()] if only else None,
                               force=force)
    for name, result in results.items():
        click.echo(summarize(name, result))
    click.echo(f"results: {analyses_dir(run_dir)}")


@main.command("results")
@click.argument("run_dir", required=False)
@click.option("--readme", default=None, help="rewrite this README's results table from --from FILE instead")
@click.option("--from", "from_file", default=None, help="the committed results file for --readme (e.g. results/demo.json)")
@click.option("--name", default=None, help="which README results block to rewrite (default: the results file's name, "
              "e.g. demo for results/demo.json)")
def results_command(run_dir: str | None, readme: str | None, from_file: str | None, name: str | None) -> None:
    """Headline results of RUN_DIR (written to RUN_DIR/results.json), or rewrite a README's table from a results file."""
    if readme:
        if not from_file:
            raise EmovecError("--readme needs --from RESULTS.json (e.g. results/demo.json)")
        changed = results.update_readme(readme, from_file, name or Path(from_file).stem)
        click.echo(f"{readme}: results table {'rewritten' if changed else 'already up to date'} from {from_file}")
        return
    if not run_dir:
        raise EmovecError("give a run directory, or --readme README.md --from results/demo.json")
    for line in results.lines(results.save(run_dir)):
        click.echo(line)


@main.command()
@click.argument("run_dir")
@click.option("--no-compute", is_flag=True, help="render only the analyses already saved (no model needed)")
def report(run_dir: str, no_compute: bool) -> None:
    """Write RUN_DIR/report.html (self-contained), computing missing analyses first."""
    click.echo(f"report: {report_layer.write_report(run_dir, compute=not no_compute)}")


@main.command()
@click.argument("run_dir")
@click.option("--model-b", default=None, help="second model (same tokenizer): directory, .gguf, or smollm2-135m")
@click.option("--run-b", default=None, help="instead: a second run directory of any model, to compare the geometry of "
              "the two vector sets (no model loaded)")
@click.option("--steer-b", "-s", multiple=True, help="steer model b while reading, e.g. sad=0.1 (for a self-test)")
@click.option("--layer", type=int, default=None, help="layer to read (default: the vectors' default layer)")
@click.option("--base", is_flag=True, help="read plain prompts without the chat template (for base models)")
def compare(run_dir: str, model_b: str | None, run_b: str | None, steer_b: tuple[str, ...], layer: int | None,
            base: bool) -> None:
    """Which emotions rise and fall from the run's model to MODEL_B on the same prompts (analyses/compare.json),
    or (--run-b) how alike two models' emotion geometry is (analyses/compare_runs.json)."""
    if (model_b is None) == (run_b is None):
        raise EmovecError("give exactly one of --model-b (same tokenizer, same prompts) or --run-b (another run's vectors)")
    if run_b is not None:
        for line in geometry_lines(run_compare_runs(run_dir, run_b, layer=layer)):
            click.echo(line)
        click.echo(f"results: {analyses_dir(run_dir) / 'compare_runs.json'}")
        return
    assert model_b is not None
    cfg = open_run(run_dir)
    lm = run_model(cfg)
    lm_b = lm if model_b == cfg.model else load_model(model_b, device=cfg.device, dtype=cfg.dtype)
    click.echo(summarize("compare", run_compare(run_dir, lm_b, list(steer_b) or None, lm=lm, layer=layer, chat=not base)))



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


