"""The whole pipeline in a run directory: stories -> activations -> vectors -> recognition.

A run directory holds every stage's artefacts so any stage can be re-run or
resumed on its own:

    run.json                 the run's settings (model, concepts, corpus sizes, seed...)
    stories.jsonl            model-written (or imported) stories, filtered rows marked
    neutral.jsonl            neutral Human/Assistant exchanges
    activations/             pooled activations, one atomically written shard per chunk
    vectors.safetensors      EmotionVectors (raw + denoised, mean norms, metadata)
    recognition.json         held-out recognition per kept layer
    summary.json             the numbers `emovec run` prints
    analyses/*.json          validation analyses (logit lens, geometry, layer sweep, severity, implicit)
    report.html              the self-contained HTML report of all of the above
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .activations import extract_corpus, load_corpus_activations
from .analyses import heldout_recognition, recognition_at
from .concepts import load_concepts, resolve_emotions
from .corpus import generate_neutral, generate_stories, import_stories, load_corpus
from .generation import FastBackend, GenerationBackend, HFBackend, Sampling
from .models import DEFAULT_MODEL, LanguageModel, load_model
from .monitor import token_baseline
from .readout import score_texts
from .storage import EmovecError, read_json, read_jsonl, write_json
from .vectors import EmotionVectors

RUN_FILE = "run.json"
VECTORS_FILE = "vectors.safetensors"

QUICK_EMOTIONS = ["happy", "sad", "afraid", "angry", "calm", "desperate", "proud", "lonely", "disgusted", "surprised",
                  "nervous", "grateful", "excited", "bored", "ashamed", "hopeful", "jealous", "relieved", "tired",
                  "playful"]


@dataclass
class RunConfig:
    """Settings of one run; stored as `run.json` and checked when a run is resumed."""

    model: str = DEFAULT_MODEL
    concepts: str | None = None
    emotions: list[str] | None = None
    per_emotion: int = 15
    stories_per_prompt: int = 1
    prime: bool = False
    n_neutral: int = 200
    max_new_tokens: int = 170
    temperature: float = 0.9
    top_p: float = 0.95
    seed: int = 0
    token_start: int = 50
    keep_layers: list[int] | None = None
    denoise_fraction: float = 0.5
    gen_batch_size: int = 256
    backend: str = "fast"
    gen_dtype: str | None = "auto"
    extract_batch_size: int = 16
    folds: int = 5
    device: str = "cpu"
    dtype: str | None = None
    import_stories: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def sampling(self) -> Sampling:
        return Sampling(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p)


PRESETS: dict[str, dict[str, Any]] = {
    # Under 10 minutes on 2 CPU cores: 20 well-spread emotions x 32 primed stories.
    "quick": {"emotions": QUICK_EMOTIONS, "per_emotion": 32, "n_neutral": 64, "max_new_tokens": 150, "prime": True},
    # The brief's trial size: all 171 emotions x 15 stories (~40 min of generation on 2 cores).
    "standard": {"per_emotion": 15, "n_neutral": 300, "prime": True},
    # The paper's size: 100 topics x 12 stories per emotion (GPU territory).
    "paper": {"per_emotion": 1200, "n_neutral": 1200, "keep_layers": "two-thirds", "gen_dtype": None},
}

# Settings that change what a run produces; a resumed run must keep them.
_IDENTITY = ("model", "concepts", "emotions", "stories_per_prompt", "prime", "max_new_tokens", "temperature", "top_p", "seed",
             "token_start", "denoise_fraction")


def make_config(preset: str | None = None, **overrides: Any) -> RunConfig:
    """A RunConfig from a preset name plus explicit overrides (None values are ignored)."""
    values: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            raise EmovecError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - {f.name for f in dataclasses.fields(RunConfig)}
    if unknown:
        raise EmovecError(f"unknown run settings: {', '.join(sorted(unknown))}")
    values["extra"] = dict(values.get("extra") or {}, preset=preset)
    return RunConfig(**values)


_INT_MIN = {"per_emotion": 1, "stories_per_prompt": 1, "n_neutral": 0, "max_new_tokens": 1, "seed": None,
            "token_start": 1, "gen_batch_size": 1, "extract_batch_size": 1, "folds": 2}
_OPTIONAL_STR = ("concepts", "gen_dtype", "dtype", "import_stories")


def check_config(cfg: RunConfig, source: str = "run settings") -> None:
    """Refuse settings of the wrong type or range (a run.json may be damaged or hand-edited)."""
    def bad(key: str, want: str) -> EmovecError:
        return EmovecError(f"{source}: {key}={getattr(cfg, key)!r} is not {want}; fix it or start a new run directory")

    for key, low in _INT_MIN.items():
        v = getattr(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool) or (low is not None and v < low):
            raise bad(key, "an integer" + (f" >= {low}" if low is not None else ""))
    for key in ("temperature", "top_p", "denoise_fraction"):
        v = getattr(cfg, key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise bad(key, "a finite number >= 0")
        setattr(cfg, key, float(v))
    if cfg.denoise_fraction >= 1:
        raise bad("denoise_fraction", "below 1")
    for key in ("model", "backend", "device"):
        if not isinstance(getattr(cfg, key), str) or not getattr(cfg, key):
            raise bad(key, "a non-empty string")
    for key in _OPTIONAL_STR:
        if getattr(cfg, key) is not None and not isinstance(getattr(cfg, key), str):
            raise bad(key, "a string")
    if not isinstance(cfg.prime, bool):
        raise bad("prime", "true or false")
    if cfg.emotions is not None and not (isinstance(cfg.emotions, list) and cfg.emotions
                                         and all(isinstance(e, str) for e in cfg.emotions)):
        raise bad("emotions", "a list of emotion names")
    kl = cfg.keep_layers
    if kl is not None and kl not in ("all", "two-thirds") and not (
            isinstance(kl, list) and all(isinstance(l, int) and not isinstance(l, bool) for l in kl)):
        raise bad("keep_layers", "a list of layer numbers, 'all' or 'two-thirds'")
    if not isinstance(cfg.extra, dict):
        raise bad("extra", "a table")


def open_run(run_dir: str | Path, config: RunConfig | None = None, write: bool = True) -> RunConfig:
    """Create a run directory with `config`, or reopen one and check `config` agrees with it.

    With `write=False` only the check is made (nothing is created), so a command can
    fail on a bad model or argument before leaving a half-made run directory behind.
    """
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if path.exists():
        stored = read_json(path)
        if not isinstance(stored, dict):
            raise EmovecError(f"{path}: not a run file; remove it or choose another run directory")
        known = {f.name for f in dataclasses.fields(RunConfig)}
        saved = RunConfig(**{k: v for k, v in stored.items() if k in known})
        check_config(saved, f"{path}")
        if config is None:
            return saved
        for key in _IDENTITY:
            a, b = getattr(saved, key), getattr(config, key)
            if a != b:
                raise EmovecError(f"{run_dir} was started with {key}={a!r}, not {b!r}; resume with the same settings or use a new run directory")
        merged = dataclasses.replace(config, per_emotion=max(saved.per_emotion, config.per_emotion))
        if write:
            write_json(path, dataclasses.asdict(merged))
        return merged
    if config is None:
        raise EmovecError(f"{run_dir} is not a run directory (no {RUN_FILE}); start one with `emovec run {run_dir}`")
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, dataclasses.asdict(config))
    return config


def check_model_for_run(lm: LanguageModel, cfg: RunConfig) -> None:
    """Refuse, before anything is written, a run the model cannot do (writing needs a chat template)."""
    writes = not cfg.import_stories or cfg.n_neutral > 0
    if writes and not lm.has_chat_template:
        raise EmovecError(f"{lm.name} has no chat template, so it cannot write stories or dialogues; use an instruct "
                          "model, or --import stories written elsewhere with --n-neutral 0")


def clean_stale_temps(run_dir: str | Path) -> int:
    """Delete temporary files left by a writer that was killed mid-write (never read; safe to drop)."""
    removed = 0
    for tmp in list(Path(run_dir).glob(".*.tmp")) + list(Path(run_dir).glob("activations/.*.tmp")):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def run_emotions(cfg: RunConfig) -> list[str]:
    """The emotions a run works on: its concept list, narrowed to `cfg.emotions` if given."""
    concepts = load_concepts(cfg.concepts)
    return resolve_emotions(cfg.emotions, concepts) if cfg.emotions else concepts


def run_model(cfg: RunConfig) -> LanguageModel:
    return load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)


def make_backend(cfg: RunConfig, lm: LanguageModel) -> GenerationBackend:
    """The corpus writer: `fast` (static cache, optional bf16 copy) or `hf` (plain transformers generate)."""
    if cfg.backend == "hf":
        return HFBackend(lm, batch_size=cfg.gen_batch_size)
    if cfg.backend == "fast":
        return FastBackend(lm, batch_size=cfg.gen_batch_size, dtype=cfg.gen_dtype)
    raise EmovecError(f"unknown generation backend {cfg.backend!r}: use fast or hf")


def stage_stories(run_dir: str | Path, cfg: RunConfig, lm: LanguageModel, progress: bool = True) -> dict[str, Any]:
    """Generate (or import) the story corpus and the neutral corpus; skips what exists."""
    emotions = run_emotions(cfg)
    backend = make_backend(cfg, lm)
    if cfg.import_stories:
        report = import_stories(cfg.import_stories, run_dir, emotions)
    else:
        report = generate_stories(lm, backend, run_dir, emotions, cfg.per_emotion, cfg.sampling(), cfg.seed,
                                  cfg.stories_per_prompt, chunk=max(cfg.gen_batch_size, 16), progress=progress,
                                  prime=cfg.prime)
    neutral = generate_neutral(lm, backend, run_dir, cfg.n_neutral, seed=cfg.seed,
                               chunk=max(cfg.gen_batch_size, 16), progress=progress)
    return {"stories": report.summary(), "neutral": neutral.summary()}


def _keep_layers(cfg: RunConfig, lm: LanguageModel) -> list[int]:
    if cfg.keep_layers in (None, "all"):
        return list(range(lm.n_layers))
    if cfg.keep_layers == "two-thirds":
        return [round(2 * lm.n_layers / 3)]
    return [lm.check_layer(l) for l in cfg.keep_layers]  # type: ignore[union-attr]


def stage_extract(run_dir: str | Path, cfg: RunConfig, lm: LanguageModel, progress: bool = True) -> EmotionVectors:
    """Pool activations of both corpora (resumable shards) and build `vectors.safetensors`."""
    run_dir = Path(run_dir)
    emotions = run_emotions(cfg)
    stories = load_corpus(run_dir, "stories", emotions)
    neutral_rows = load_corpus(run_dir, "neutral") if (run_dir / "neutral.jsonl").exists() else []
    act_dir = run_dir / "activations"
    keep = _keep_layers(cfg, lm)
    common = {"start": cfg.token_start, "batch_size": cfg.extract_batch_size, "progress": progress}
    story_acts = extract_corpus(lm, stories, act_dir, "stories", keep_layers=keep, **common)
    neutral_acts = extract_corpus(lm, neutral_rows, act_dir, "neutral", **common) if neutral_rows else None
    present = [e for e in emotions if story_acts.counts.get(e, 0) > 0]
    if len(present) < len(emotions):
        missing = [e for e in emotions if e not in present]
        print(f"note: no kept stories for {len(missing)} emotion(s): {', '.join(missing[:8])}; they get no vector")
    vectors = EmotionVectors.from_activations(story_acts, neutral_acts, present, cfg.denoise_fraction, model=lm,
                                              extra_meta={"run": str(run_dir), "model_source": cfg.model})
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
                                 seed=cfg.seed)
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


def run(run_dir: str | Path, cfg: RunConfig, lm: LanguageModel | None = None, progress: bool = True) -> dict[str, Any]:
    """Every stage into `run_dir`, resuming whatever is already there; returns (and writes) the summary."""
    t0 = time.time()
    run_dir = Path(run_dir)
    cfg = open_run(run_dir, cfg, write=False)
    lm = lm or run_model(cfg)
    check_model_for_run(lm, cfg)
    cfg = open_run(run_dir, cfg)
    clean_stale_temps(run_dir)
    if (run_dir / VECTORS_FILE).exists():
        EmotionVectors.load(run_dir / VECTORS_FILE, model=lm)  # refuse a run dir made with another model
    timings: dict[str, float] = {}
    t = time.time()
    corpus = stage_stories(run_dir, cfg, lm, progress)
    timings["corpus_s"] = round(time.time() - t, 1)
    t = time.time()
    vectors = stage_extract(run_dir, cfg, lm, progress)
    timings["extract_s"] = round(time.time() - t, 1)
    recog = stage_recognition(run_dir, cfg)
    probes = probe_readout(lm, vectors)
    layer = vectors.default_layer
    at = recognition_at(recog, layer)
    timings["total_s"] = round(time.time() - t0, 1)
    summary = {
        "run_dir": str(run_dir), "model": lm.name, "n_layers": lm.n_layers, "d_model": lm.d_model,
        "corpus": corpus, "layer": layer, "n_vectors": len(vectors.emotions),
        "recognition": {"n_emotions": recog["n_emotions"], "n_stories": recog["n_stories"], "folds": recog["folds"],
                        "top1": at["top1"], "top5": at["top5"], "p_top1": at["p_top1"], "chance_top1": recog["chance_top1"],
                        "chance_top5": recog["chance_top5"], "best_layer": recog["best_layer"],
                        "best_layer_top1": recognition_at(recog, recog["best_layer"])["top1"],
                        "confusions": recog["confusions"][:5]},
        "probes": probes, "timings": timings,
    }
    write_json(run_dir / "summary.json", summary)
    try:
        from .report import write_report

        summary["report"] = str(write_report(run_dir, lm))
        write_json(run_dir / "summary.json", summary)
    except Exception as exc:  # an analysis failure must not cost the user the run summary
        print(f"warning: report not written ({type(exc).__name__}: {exc}); retry with `emovec report {run_dir}`")
    return summary
