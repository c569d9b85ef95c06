"""The stages of a run, in its run directory: stories -> activations -> vectors -> recognition.

Each stage reads and writes the run directory's files (laid out in `rundir`), skips
what exists and resumes what a killed run left, so any stage can be re-run on its own.
The corpora are written by the run's writer model (by default the model itself) and
read by the run's model.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from .activations import PooledTexts, extract_corpus, load_corpus_activations
from .content_check import CheckResult, ShardTarget, check_stories, write_checked_shards
from .corpus import (
    REFILL_ROUNDS,
    STORIES_FILE,
    CorpusReport,
    corpus_report,
    generate_neutral,
    generate_stories,
    import_stories,
    load_corpus,
    refill_stories,
    refill_summary,
    topics,
)
from .distributed import RayOptions, RayPool, ray_session
from .models import DTYPES, LanguageModel
from .provenance import run_lock
from .readout import score_texts, token_baseline
from .recognition import heldout_recognition, recognition_at
from .rundir import (
    VECTORS_FILE,
    RunConfig,
    check_drift,
    check_model_for_run,
    chosen_backend,
    clean_stale_temps,
    close_engine,
    current_provenance,
    keep_layers,
    make_backend,
    make_pooler,
    open_run,
    resolve_run,
    run_emotions,
    run_model,
    run_topics,
    run_writer,
    save_run,
)
from .storage import EmovecError, read_jsonl, write_json
from .vectors import EmotionVectors
from .vllm_engine import import_vllm

log = logging.getLogger(__name__)


def stage_stories(run_dir: str | Path, cfg: RunConfig, lm: LanguageModel, progress: bool = True,
                  writer: LanguageModel | None = None, pool: RayPool | None = None) -> dict[str, Any]:
    """Generate (or import) the story corpus and the neutral corpus, then the content check if the run has one,
    then replacement rounds for the emotions left short (`cfg.refill`); skips what exists.

    They are written by `writer`: by default the run's writer (`run_writer`: `lm` itself unless
    the run names another model, which is then loaded). With a Ray `pool` the chunks are written
    by its actors (same chunks, seeds and backend) and appended here. The check's passes also pool the
    stories they read, and the kept stories' shards are written from those pools at the end.
    """
    run_dir = Path(run_dir)
    emotions = run_emotions(cfg)
    writer = writer or run_writer(cfg, lm)
    backend = pool.backend() if pool is not None else make_backend(cfg, writer)
    # read by the run's model after the writer; vLLM extracts in its own engine, so its pools would not match
    target = ShardTarget(run_dir / "activations", keep_layers(cfg, lm), cfg.token_start) \
        if cfg.content_check and chosen_backend(cfg) != "vllm" else None
    recipe: dict[str, Any] = {"sampling": cfg.sampling(), "seed": cfg.seed, "stories_per_prompt": cfg.stories_per_prompt,
                              "topic_list": topics()[:cfg.topics] if cfg.topics else None,
                              "chunk": max(cfg.gen_batch_size, 16), "progress": progress, "prime": cfg.prime,
                              "style": cfg.prompt_style, "keep_named": cfg.keep_named}
    checks: list[CheckResult] = []
    refills: list[dict[str, Any]] = []
    try:
        if cfg.import_stories:
            import_stories(cfg.import_stories, run_dir, emotions, keep_named=cfg.keep_named)
        else:
            generate_stories(writer, backend, run_dir, emotions, cfg.per_emotion, **recipe)
        neutral = generate_neutral(writer, backend, run_dir, cfg.n_neutral, seed=cfg.seed,
                                   chunk=max(cfg.gen_batch_size, 16), progress=progress)
        if cfg.content_check:
            checks.append(_check(lm, run_dir, emotions, cfg, progress, target))
        for rnd in range(1, REFILL_ROUNDS + 1) if cfg.refill and not cfg.import_stories else ():
            jobs = refill_stories(writer, backend, run_dir, emotions, cfg.refill, rnd, cfg.per_emotion, **recipe)
            if not jobs:
                break
            refills.append({"round": rnd, "emotions": len({j.emotion for j in jobs}), "requests": len(jobs)})
            if cfg.content_check:
                checks.append(_check(lm, run_dir, emotions, cfg, progress, target))
    finally:
        close_engine(backend)
    report = corpus_report(run_dir / STORIES_FILE, emotions)
    out: dict[str, Any] = {"stories": report.summary(), "neutral": neutral.summary()}
    if checks:
        out["content_check"] = {**checks[-1].summary, "scored": sum(c.summary["scored"] for c in checks),
                                "rescored": any(c.summary["rescored"] for c in checks)}
        pools = [c.pools for c in checks if c.pools is not None]
        if pools and target is not None:
            out["content_check"]["shards_written"] = write_checked_shards(lm, run_dir, emotions, PooledTexts.concat(pools),
                                                                           target, cfg.extract_batch_size)
    if cfg.refill and not cfg.import_stories:
        out["refill"] = _refill_summary(run_dir, emotions, cfg.refill, refills, report)
    return out


def _check(lm: LanguageModel, run_dir: Path, emotions: list[str], cfg: RunConfig, progress: bool,
           target: ShardTarget | None) -> CheckResult:
    return check_stories(lm, run_dir, emotions, cfg.content_check, batch_size=cfg.extract_batch_size,
                         progress=progress, pool_for=target)


def _refill_summary(run_dir: Path, emotions: list[str], target: int, requests: list[dict[str, Any]],
                    report: CorpusReport) -> dict[str, Any]:
    """What the replacement rounds asked for, wrote and kept, and how many emotions stay short of the target."""
    rows = [r for r in read_jsonl(run_dir / STORIES_FILE) if r.get("emotion") in emotions]
    out = refill_summary(rows)
    asked = {r["round"]: r for r in requests}
    out["rounds"] = [{**asked.get(r["round"], {}), **r} for r in out["rounds"]]
    return {"target": target, **out, "short_emotions": sum(n < target for n in report.per_emotion.values())}


def stage_extract(run_dir: str | Path, cfg: RunConfig, lm: LanguageModel, progress: bool = True,
                  pool: RayPool | None = None) -> EmotionVectors:
    """Pool activations of both corpora (resumable shards) and build `vectors.safetensors`.

    With a Ray `pool` the shards' chunks are pooled by its actors, with the `vllm` backend by a
    vLLM engine; the shards are written here either way.
    """
    run_dir = Path(run_dir)
    emotions = run_emotions(cfg)
    stories = load_corpus(run_dir, "stories", emotions)
    neutral_rows = load_corpus(run_dir, "neutral") if (run_dir / "neutral.jsonl").exists() else []
    act_dir = run_dir / "activations"
    keep = keep_layers(cfg, lm)
    pooler = pool.pooler() if pool is not None else make_pooler(cfg, lm)
    common: dict[str, Any] = {"start": cfg.token_start, "batch_size": cfg.extract_batch_size, "progress": progress,
                              "pooler": pooler}
    try:
        story_acts = extract_corpus(lm, stories, act_dir, "stories", keep_layers=keep, **common)
        neutral_acts = extract_corpus(lm, neutral_rows, act_dir, "neutral", **common) if neutral_rows else None
    finally:
        close_engine(pooler)
    present = [e for e in emotions if story_acts.counts.get(e, 0) > 0]
    if len(present) < len(emotions):
        missing = [e for e in emotions if e not in present]
        log.warning("no kept stories for %d emotion(s): %s; they get no vector", len(missing), ", ".join(missing[:8]))
    vectors = EmotionVectors.from_activations(story_acts, neutral_acts, present, cfg.denoise_fraction, model=lm,
                                              extra_meta={"run": str(run_dir), "model_source": cfg.model,
                                                          "writer": cfg.writer_model()},
                                              topics=run_topics(run_dir, cfg, story_acts.ids))
    if neutral_rows:  # per-token readout on neutral text: the monitor's z-score baseline
        base = token_baseline(lm, vectors, [r["text"] for r in neutral_rows])
        vectors.meta["token_baseline"] = {str(base["layer"]): base}
    vectors.save(run_dir / VECTORS_FILE)
    for stale in (run_dir / "analyses").glob("*.json"):  # results of the previous vectors would mislead the report
        stale.unlink()
    return vectors


def stage_recognition(run_dir: str | Path, cfg: RunConfig) -> dict[str, Any]:
    """Held-out recognition over every kept layer, written to `recognition.json`."""
    act_dir = Path(run_dir) / "activations"
    stories = load_corpus_activations(act_dir, "stories")
    try:
        neutral = load_corpus_activations(act_dir, "neutral")
    except EmovecError:
        neutral = None
    emotions = [e for e in run_emotions(cfg) if e in stories.counts]
    result = heldout_recognition(stories, neutral, emotions, folds=cfg.folds, denoise_fraction=cfg.denoise_fraction,
                                 seed=cfg.seed, topics=run_topics(run_dir, cfg, stories.ids))
    write_json(Path(run_dir) / "recognition.json", result)
    return result


def probe_readout(lm: LanguageModel, vectors: EmotionVectors, k: int = 3) -> list[dict[str, Any]]:
    """Top emotions of the built-in held-out probe sentences (not used for training).

    Short sentences share a large offset from the story-trained centre (they are
    pooled from position 1, stories from the token start), which lifts the same few
    emotions everywhere; scores are therefore centred per emotion over the probe
    set, i.e. each sentence is read relative to the other probe sentences.
    """
    from importlib import resources

    path = resources.files("emovec").joinpath("data/probe_sentences.jsonl")
    rows = read_jsonl(Path(str(path)))
    df = score_texts(lm, vectors, [r["text"] for r in rows]).drop(columns="text")
    df = df - df.mean(axis=0)
    out = []
    for r, (_, row) in zip(rows, df.iterrows()):
        ranked = row.sort_values(ascending=False)
        rank = int(list(ranked.index).index(r["emotion"])) + 1 if r["emotion"] in ranked.index else None
        out.append({"text": r["text"], "intended": r["emotion"], "rank_of_intended": rank,
                    "top": [(e, round(float(v), 3)) for e, v in ranked.head(k).items()]})
    return out


def prepare(run_dir: str | Path, cfg: RunConfig, lm: LanguageModel | None = None,
            allow_drift: bool = False) -> tuple[RunConfig, LanguageModel]:
    """`prepare_models` for callers that do not write (the writer is still loaded and checked); returns (cfg, lm)."""
    cfg, lm, _ = prepare_models(run_dir, cfg, lm, allow_drift)
    return cfg, lm


def prepare_models(run_dir: str | Path, cfg: RunConfig, lm: LanguageModel | None = None, allow_drift: bool = False,
                   writer: LanguageModel | None = None) -> tuple[RunConfig, LanguageModel, LanguageModel]:
    """Open (or create) a run for writing: check the settings, load the model and the writer (the model itself unless
    the run names another), decide what a new run leaves open (the writer's name and dtype, recorded with versions,
    machine and both models' files), refuse a resume under other conditions unless `allow_drift`, and save the
    settings. `lm` and `writer`, if given, must be the run's model and writer (a writer named like the model is
    the model). Returns (settings, model, writer). Call it while holding `run_lock(run_dir)`."""
    cfg = open_run(run_dir, cfg, write=False)
    if cfg.backend == "vllm":
        import_vllm()  # a missing engine fails before anything is loaded or written
    lm = lm or run_model(cfg)
    writer = run_writer(cfg, lm) if writer is None or cfg.writer_model() == cfg.model else writer
    check_model_for_run(lm, cfg, writer)
    now = current_provenance(lm, writer)  # versions, CPU class, model files: computed once for both checks
    cfg, notes = resolve_run(cfg, lm, now, writer)
    if DTYPES.get(cfg.dtype or "") not in (None, lm.dtype):  # `--dtype auto` chose another dtype than loaded
        lm = run_model(cfg)
        writer = run_writer(cfg, lm)
    for note in notes:
        log.info(note)
    cfg = check_drift(run_dir, cfg, now, allow_drift)
    save_run(run_dir, cfg)  # `cfg` is already merged with what the run had (open_run above)
    clean_stale_temps(run_dir)
    if (Path(run_dir) / VECTORS_FILE).exists():
        EmotionVectors.load(Path(run_dir) / VECTORS_FILE, model=lm)  # refuse a run dir made with another model
    return cfg, lm, writer


def run(run_dir: str | Path, cfg: RunConfig, lm: LanguageModel | None = None, progress: bool = True,
        allow_drift: bool = False, writer: LanguageModel | None = None, ray: RayOptions | None = None) -> dict[str, Any]:
    """Every stage into `run_dir`, resuming whatever is already there; returns (and writes) the summary.

    Holds the run directory's lock throughout, so a second process on the same run is refused.
    With `ray`, story writing and extraction run on a pool of Ray actors (`emovec.distributed`);
    the files are the same. The report is not part of the pipeline: `emovec.run` (`emovec.report.run`) adds it.
    """
    with ray_session(ray) if ray is not None else nullcontext(), run_lock(run_dir):  # Ray first: fails before writing
        return _run(Path(run_dir), cfg, lm, progress, allow_drift, writer, ray)


def _run(run_dir: Path, cfg: RunConfig, lm: LanguageModel | None, progress: bool, allow_drift: bool,
         writer: LanguageModel | None, ray: RayOptions | None = None) -> dict[str, Any]:
    t0 = time.time()
    cfg, lm, writer = prepare_models(run_dir, cfg, lm, allow_drift, writer)
    timings: dict[str, float] = {}
    t = time.time()
    pool = RayPool(cfg, ray, allow_drift) if ray is not None else None
    try:
        if pool is not None:
            timings["ray_start_s"] = round(time.time() - t, 1)
        t = time.time()
        corpus = stage_stories(run_dir, cfg, lm, progress, writer, pool)
        timings["corpus_s"] = round(time.time() - t, 1)
        t = time.time()
        vectors = stage_extract(run_dir, cfg, lm, progress, pool)
        timings["extract_s"] = round(time.time() - t, 1)
    finally:
        if pool is not None:
            pool.close()
    recog = stage_recognition(run_dir, cfg)
    probes = probe_readout(lm, vectors)
    layer = vectors.default_layer
    at = recognition_at(recog, layer)
    timings["total_s"] = round(time.time() - t0, 1)
    summary = {
        "run_dir": str(run_dir), "model": lm.name, "writer": writer.name, "n_layers": lm.n_layers, "d_model": lm.d_model,
        "corpus": corpus, "layer": layer, "n_vectors": len(vectors.emotions),
        "topic_adjustment": vectors.info()["topic_adjustment"],
        "recognition": {"n_emotions": recog["n_emotions"], "n_stories": recog["n_stories"], "folds": recog["folds"],
                        "top1": at["top1"], "top5": at["top5"], "p_top1": at["p_top1"], "chance_top1": recog["chance_top1"],
                        "chance_top5": recog["chance_top5"], "best_layer": recog["best_layer"],
                        "best_layer_top1": recognition_at(recog, recog["best_layer"])["top1"],
                        "confusions": recog["confusions"][:5]},
        "probes": probes, "timings": timings,
    }
    if pool is not None:
        summary["ray"] = {"workers": len(pool.infos), "cpus_per_worker": pool.options.cpus_per_worker,
                          "address": pool.options.address or "local"}
    write_json(run_dir / "summary.json", summary)
    return summary
