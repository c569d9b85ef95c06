"""Run directories: the settings of a run (`run.json`), presets, and the file names every layer reads.

A run directory holds every stage's artefacts so any stage can be re-run or
resumed on its own:

    run.json                 the run's settings (model, writer, concepts, corpus sizes, seed...)
    stories.jsonl            model-written (or imported) stories, filtered rows marked
    neutral.jsonl            neutral Human/Assistant exchanges
    activations/             pooled activations, one atomically written shard per chunk
    vectors.safetensors      EmotionVectors (raw + denoised, mean norms, metadata)
    recognition.json         held-out recognition per kept layer
    summary.json             the numbers `emovec run` prints
    analyses/*.json          validation analyses (logit lens, geometry, layer sweep, severity, implicit)
    report.html              the self-contained HTML report of all of the above

The stories and neutral dialogues are written by the run's `writer` (by default the model
itself) and read by its `model`, so a base model without a chat template can be read while
an instruct model writes for it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch

from .concepts import load_concepts, resolve_emotions
from .corpus import STYLES, load_corpus
from .generation import FastBackend, GenerationBackend, HFBackend, Sampling, resolve_writer_dtype
from .models import DEFAULT_MODEL, LanguageModel, load_model
from .provenance import cpu_info, drift, file_fingerprint, library_versions
from .storage import EmovecError, read_json, write_json
from .vectors import EmotionVectors
from .vllm_engine import VLLMBackend, VLLMEngine, VLLMPooler

RUN_FILE = "run.json"
VECTORS_FILE = "vectors.safetensors"

QUICK_EMOTIONS = ["happy", "sad", "afraid", "angry", "calm", "desperate", "proud", "lonely", "disgusted", "surprised",
                  "nervous", "grateful", "excited", "bored", "ashamed", "hopeful", "jealous", "relieved", "tired",
                  "playful"]


@dataclass
class RunConfig:
    """Settings of one run; stored as `run.json` and checked when a run is resumed."""

    model: str = DEFAULT_MODEL
    writer: str | None = None  # the model that writes the corpora (None: `model`; a new run records the name)
    concepts: str | None = None
    emotions: list[str] | None = None
    per_emotion: int = 15
    stories_per_prompt: int = 1
    prompt_style: str = "plain"  # "plain": one short request; "detailed": first/third person with instructions
    topics: int | None = 12  # how many of the built-in topics stories cycle through (None: all 159)
    prime: bool = False
    keep_named: bool = False  # keep stories that name their emotion (the naming filter off: an ablation)
    content_check: float = 0.0  # > 0: drop stories whose emotion the model ranks outside this top share (content_check)
    refill: int = 0  # > 0: write replacement stories for emotions that keep fewer than this (corpus.refill_stories)
    n_neutral: int = 200
    max_new_tokens: int = 150
    temperature: float = 0.8
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0
    token_start: int = 50
    keep_layers: list[int] | Literal["all", "two-thirds"] | None = None
    denoise_fraction: float = 0.5
    topic_adjust: bool = True  # remove each story's topic mean before averaging (CorpusActivations.topic_adjusted)
    gen_batch_size: int = 256
    backend: str = "auto"
    gen_dtype: str | None = "auto"
    extract_batch_size: int = 16
    folds: int = 5
    device: str = "cpu"
    dtype: str | None = None
    trust_remote_code: bool = False
    import_stories: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Recorded at the run's first start (`resolve_run`): versions, CPU class, model files, the writer
    # dtype's reason. `allowed_drift` lists resumes that were allowed to differ from it (--allow-drift).
    provenance: dict[str, Any] = field(default_factory=dict)
    allowed_drift: list[dict[str, Any]] = field(default_factory=list)

    def writer_model(self) -> str:
        """The model that writes the stories and neutral dialogues: `writer`, or the run's model itself."""
        return self.writer or self.model

    def sampling(self) -> Sampling:
        """The story writer's sampling settings from this config."""
        return Sampling(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                        repetition_penalty=self.repetition_penalty)


PRESETS: dict[str, dict[str, Any]] = {
    # `make demo`: all 171 emotions x 10 stories of 150 tokens (the default plain recipe; shorter stories lost
    # the signal in the ablation), pooled from token 20, and 64 neutral dialogues. Sized by the corpus-scaling
    # curve of a standard run: PC1 only finds valence once the emotions keep 6+ stories each (r 0.10 at k = 4,
    # 0.72 at k = 6 at layer 26), and of 10 written 90% of emotions keep 6+ after the filter (median 9).
    # The model runs in bf16 where this CPU does bf16 natively (dtype auto, the writer's probe): vectors from the
    # whole demo in bf16 agreed with float32 ones at cosine >= 0.9997 (171 x 30) with the same headline figures,
    # and extraction and the steering analysis took 0.6x the time (AMD EPYC, AVX512-BF16).
    # The content check keeps stories whose emotion the model itself ranks in the top 35% of the 171: the largest
    # share measured (0.25, 0.35, 0.5, 1 on one demo corpus) at which all six steering emotions moved VADER the
    # expected way (README "The content check"); the human norms played no part in the choice.
    # The check leaves about half the emotions under 6 stories (89 of 171 keep 6+ on the AVX2 corpus), below the
    # scaling curve's threshold, so every emotion under 6 gets replacement stories, judged the same way (README
    # "Replacement stories"); 6 is that threshold, not a figure tuned on the results.
    "quick": {"per_emotion": 10, "n_neutral": 64, "token_start": 20, "dtype": "auto", "content_check": 0.35,
              "refill": 6},
    # The brief's trial size: all 171 emotions x 15 stories of 150 tokens.
    "standard": {"per_emotion": 15, "n_neutral": 300},
    # The paper's size: 100 topics x 12 stories per emotion (GPU territory).
    # Keeps per-story activations at one layer, so no topic adjustment (at 1,200 stories topics average out).
    "paper": {"per_emotion": 1200, "n_neutral": 1200, "keep_layers": "two-thirds", "gen_dtype": None,
              "topic_adjust": False},
}

# Settings that change what a run produces; a resumed run must keep them. Batch sizes, dtypes and the
# device are among them: they change the numbers (padding, kernels) and so the sampled stories.
_IDENTITY = ("model", "writer", "concepts", "emotions", "stories_per_prompt", "prompt_style", "topics", "repetition_penalty",
             "prime", "keep_named", "content_check", "refill", "max_new_tokens", "temperature", "top_p", "seed",
             "token_start", "denoise_fraction", "topic_adjust", "gen_batch_size", "extract_batch_size", "gen_dtype", "backend", "dtype")
# What a run.json written before the recipe settings existed was made with (the old default recipe).
_BEFORE_RECIPES = {"prompt_style": "detailed", "topics": None, "repetition_penalty": 1.1}
# What a run.json written before a later setting existed was made with.
_BEFORE_SETTING = {"topic_adjust": False}
# Provenance entries compared on resume (the thread count is recorded for information only).
_DRIFT_KEYS = ("versions", "cpu", "model_files", "model_config", "writer_files", "writer_config")


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


_INT_MIN = {"per_emotion": 1, "stories_per_prompt": 1, "n_neutral": 0, "refill": 0, "max_new_tokens": 1, "seed": None,
            "token_start": 1, "gen_batch_size": 1, "extract_batch_size": 1, "folds": 2}
_OPTIONAL_STR = ("writer", "concepts", "gen_dtype", "dtype", "import_stories")


def check_config(cfg: RunConfig, source: str = "run settings") -> None:
    """Refuse settings of the wrong type or range (a run.json may be damaged or hand-edited)."""
    def bad(key: str, want: str) -> EmovecError:
        return EmovecError(f"{source}: {key}={getattr(cfg, key)!r} is not {want}; fix it or start a new run directory")

    for key, low in _INT_MIN.items():
        v = getattr(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool) or (low is not None and v < low):
            raise bad(key, "an integer" + (f" >= {low}" if low is not None else ""))
    if cfg.prompt_style not in STYLES:
        raise bad("prompt_style", "plain or detailed")
    if cfg.topics is not None and (not isinstance(cfg.topics, int) or isinstance(cfg.topics, bool) or cfg.topics < 1):
        raise bad("topics", "a number of topics >= 1, or null for all")
    if not isinstance(cfg.repetition_penalty, (int, float)) or isinstance(cfg.repetition_penalty, bool) \
            or not math.isfinite(cfg.repetition_penalty) or cfg.repetition_penalty <= 0:
        raise bad("repetition_penalty", "a finite number > 0")
    cfg.repetition_penalty = float(cfg.repetition_penalty)
    for key in ("temperature", "top_p", "denoise_fraction"):
        v = getattr(cfg, key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise bad(key, "a finite number >= 0")
        setattr(cfg, key, float(v))
    if cfg.denoise_fraction >= 1:
        raise bad("denoise_fraction", "below 1")
    cc = cfg.content_check
    if not isinstance(cc, (int, float)) or isinstance(cc, bool) or not 0 <= cc <= 1:
        raise bad("content_check", "a share of the emotions in [0, 1] (0: no content check)")
    cfg.content_check = float(cc)
    for key in ("model", "backend", "device"):
        if not isinstance(getattr(cfg, key), str) or not getattr(cfg, key):
            raise bad(key, "a non-empty string")
    if cfg.backend not in BACKENDS:
        raise bad("backend", " or ".join(BACKENDS))
    for key in _OPTIONAL_STR:
        if getattr(cfg, key) is not None and not isinstance(getattr(cfg, key), str):
            raise bad(key, "a string")
    for key in ("prime", "trust_remote_code", "topic_adjust"):
        if not isinstance(getattr(cfg, key), bool):
            raise bad(key, "true or false")
    if cfg.emotions is not None and not (isinstance(cfg.emotions, list) and cfg.emotions
                                         and all(isinstance(e, str) for e in cfg.emotions)):
        raise bad("emotions", "a list of emotion names")
    kl = cfg.keep_layers
    if kl is not None and kl not in ("all", "two-thirds") and not (
            isinstance(kl, list) and all(isinstance(lay, int) and not isinstance(lay, bool) for lay in kl)):
        raise bad("keep_layers", "a list of layer numbers, 'all' or 'two-thirds'")
    if cfg.topic_adjust and kl not in (None, "all"):
        raise EmovecError(f"{source}: topic adjustment needs the per-story activations at every layer, but keep_layers "
                          f"is {kl!r}; keep all layers or turn it off (--no-topic-adjust)")
    for key in ("extra", "provenance"):
        if not isinstance(getattr(cfg, key), dict):
            raise bad(key, "a table")
    if not isinstance(cfg.allowed_drift, list):
        raise bad("allowed_drift", "a list")


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
        stored = {**_BEFORE_RECIPES, **stored} if "prompt_style" not in stored else stored
        stored = {**_BEFORE_SETTING, **stored}
        saved = RunConfig(**{k: v for k, v in stored.items() if k in known})
        check_config(saved, f"{path}")
        if config is None:
            return saved
        for key in ("gen_dtype", "backend", "dtype"):  # "auto" means: what this run decided
            if getattr(config, key) == "auto" and getattr(saved, key) != "auto":
                config = dataclasses.replace(config, **{key: getattr(saved, key)})
        for key in _IDENTITY:
            a, b = _identity_value(saved, key), _identity_value(config, key)
            if a != b:
                raise EmovecError(f"{run_dir} was started with {key}={a!r}, not {b!r}; resume with the same settings "
                                  "or use a new run directory")
        merged = dataclasses.replace(config, per_emotion=max(saved.per_emotion, config.per_emotion),
                                     writer=config.writer or saved.writer, provenance=saved.provenance,
                                     allowed_drift=saved.allowed_drift)
        if write:
            write_json(path, dataclasses.asdict(merged))
        return merged
    if config is None:
        raise EmovecError(f"{run_dir} is not a run directory (no {RUN_FILE}); start one with `emovec run {run_dir}`")
    check_config(config)
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, dataclasses.asdict(config))
    return config


def _identity_value(cfg: RunConfig, key: str) -> Any:
    """A setting as compared on resume (the writer as the model that writes: no writer is the model itself)."""
    return cfg.writer_model() if key == "writer" else getattr(cfg, key)


def _files_of(lm: LanguageModel) -> str | None:
    return file_fingerprint(lm.source) if lm.source is not None and lm.source.exists() else None


def current_provenance(lm: LanguageModel, writer: LanguageModel | None = None) -> dict[str, Any]:
    """What this process would write a run with: library versions, CPU class, model files and config, threads,
    and the writer's files and config when another model writes the corpora."""
    prov = {"versions": library_versions(), "cpu": cpu_info(), "model_files": _files_of(lm),
            "model_config": lm.fingerprint, "torch_threads": torch.get_num_threads()}
    if writer is not None and writer is not lm:
        prov.update(writer_files=_files_of(writer), writer_config=writer.fingerprint)
    return prov


def resolve_run(cfg: RunConfig, lm: LanguageModel, now: dict[str, Any],
                writer: LanguageModel | None = None) -> tuple[RunConfig, list[str]]:
    """Decide, once, what a new run leaves open: the writer's name and dtype ("auto" becomes a name), and its provenance.

    `now` is this process's `current_provenance`; `writer` is the model that writes the corpora
    (default `lm`), whose dtype is decided. A run that has its provenance already is returned
    unchanged (a resume never re-decides). Returns the resolved settings and notes for the user
    (which writer and dtype, and why).
    """
    if cfg.provenance:
        return cfg, []
    notes = []
    prov = dict(now)
    writes = not cfg.import_stories or cfg.n_neutral > 0
    cfg = dataclasses.replace(cfg, writer=cfg.writer_model())
    if cfg.backend == "auto":
        cfg = dataclasses.replace(cfg, backend=chosen_backend(cfg))
        if writes:
            notes.append(f"engine: {cfg.backend}")
    if writes and writer is not None and writer is not lm:
        notes.append(f"story writer: {cfg.writer} ({writer.name}); {cfg.model} reads")
    if cfg.dtype == "auto":
        name, why = resolve_writer_dtype(lm, "auto")  # the writer's probe: bf16 where it is native, else float32
        cfg = dataclasses.replace(cfg, dtype=name)
        prov["model_dtype_reason"] = why
        notes.append(f"model dtype: {name} ({why})")
    if cfg.backend in ("fast", "vllm") and cfg.gen_dtype is not None:
        name, why = resolve_writer_dtype(writer or lm, cfg.gen_dtype)
        cfg = dataclasses.replace(cfg, gen_dtype=name)
        prov["writer_dtype_reason"] = why
        if writes:
            notes.append(f"story writer dtype: {name} ({why})")
    return dataclasses.replace(cfg, provenance=prov), notes


def check_drift(run_dir: str | Path, cfg: RunConfig, now: dict[str, Any], allow_drift: bool = False) -> RunConfig:
    """Refuse to resume a run under other library versions, another CPU class or other model files.

    `now` is this process's `current_provenance`. With `allow_drift` the resume goes on and the
    differences are appended to `allowed_drift` (the caller saves the settings), so the run
    says it was continued under other conditions.
    """
    diff = drift({k: cfg.provenance.get(k) for k in _DRIFT_KEYS}, {k: now.get(k) for k in _DRIFT_KEYS})
    if not diff:
        return cfg
    said = "; ".join(f"{k}: {_short(a)} then, {_short(b)} now" for k, (a, b) in diff.items())
    if not allow_drift:
        raise EmovecError(f"{run_dir} was written under other conditions ({said}); resume it where it was made, or "
                          "pass --allow-drift to continue knowingly (recorded in run.json)")
    record = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "differences": {k: {"recorded": a, "now": b} for k, (a, b) in diff.items()}}
    return dataclasses.replace(cfg, allowed_drift=[*cfg.allowed_drift, record])


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "+".join(str(v) for v in value) or "-"
    return str(value)


def save_run(run_dir: str | Path, cfg: RunConfig) -> None:
    """Write the run's settings (atomically)."""
    write_json(Path(run_dir) / RUN_FILE, dataclasses.asdict(cfg))


def check_model_for_run(lm: LanguageModel, cfg: RunConfig, writer: LanguageModel | None = None) -> None:
    """Refuse, before anything is written, a run its writer cannot do (writing needs a chat template).

    `writer` is the model that writes the corpora (default `lm`); the model that only reads needs none.
    """
    writes = not cfg.import_stories or cfg.n_neutral > 0
    if not writes or (writer or lm).has_chat_template:
        return
    if writer is not None and writer is not lm:
        raise EmovecError(f"the writer {writer.name} has no chat template, so it cannot write stories or dialogues; "
                          "pass an instruct model as --writer")
    raise EmovecError(f"{lm.name} has no chat template, so it cannot write stories or dialogues; let an instruct "
                      f"model write them for it (--writer {DEFAULT_MODEL}), or --import stories written elsewhere "
                      "with --n-neutral 0")


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
    """Load the model a run was configured with, on its device and dtype."""
    return load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)


def run_writer(cfg: RunConfig, lm: LanguageModel) -> LanguageModel:
    """The model that writes a run's corpora: `lm` (the run's model) itself, or the `writer` loaded like it."""
    if cfg.writer_model() == cfg.model:
        return lm
    return load_model(cfg.writer_model(), device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)


BACKENDS = ("auto", "fast", "hf", "vllm")


def chosen_backend(cfg: RunConfig) -> str:
    """The run's backend with `auto` decided: vLLM on a GPU where it is installed; on a CPU emovec's own loop
    (vLLM's CPU engine measured only 1.1-1.2x faster on 2 cores, not worth two engine starts per run; README
    "Which backend")."""
    if cfg.backend != "auto":
        return cfg.backend
    return "vllm" if cfg.device.startswith("cuda") and importlib.util.find_spec("vllm") is not None else "fast"


def make_backend(cfg: RunConfig, lm: LanguageModel) -> GenerationBackend:
    """The corpus writer: `fast` (static cache, optional bf16 copy), `hf` (plain transformers generate) or
    `vllm` (a vLLM engine in the writer dtype; shut it down with `close_engine` after the stage)."""
    backend = chosen_backend(cfg)
    if backend == "hf":
        return HFBackend(lm, batch_size=cfg.gen_batch_size)
    if backend == "fast":
        return FastBackend(lm, batch_size=cfg.gen_batch_size, dtype=cfg.gen_dtype)
    if backend == "vllm":
        return VLLMBackend(VLLMEngine(lm, dtype=cfg.gen_dtype))
    raise EmovecError(f"unknown generation backend {cfg.backend!r}: use {', '.join(BACKENDS)}")


def make_pooler(cfg: RunConfig, lm: LanguageModel) -> VLLMPooler | None:
    """Where extraction pools: in this process (None), or a vLLM engine in the model's own dtype with `vllm`."""
    return VLLMPooler(VLLMEngine(lm)) if chosen_backend(cfg) == "vllm" else None


def close_engine(worker: object) -> None:
    """Shut down the engine behind a backend or pooler, if it has one (vLLM's run in processes of their own)."""
    if isinstance(worker, (VLLMBackend, VLLMPooler)):
        worker.close()


def run_topics(run_dir: str | Path, cfg: RunConfig, ids: list[str]) -> list[str] | None:
    """Each story's topic, for the stories `ids`, when the run adjusts for topics (`topic_adjust`); else None.

    Stories without a topic (imported ones) share the topic "", so a corpus without topics is left as it is.
    """
    if not cfg.topic_adjust:
        return None
    topic = {str(r["id"]): str(r.get("topic") or "") for r in load_corpus(run_dir, "stories")}
    missing = [i for i in ids if i not in topic]
    if missing:
        raise EmovecError(f"{run_dir}: {len(missing)} stories with activations are not kept in stories.jsonl (e.g. "
                          f"{missing[0]}); delete {Path(run_dir) / 'activations'} and resume to re-extract")
    return [topic[i] for i in ids]


def keep_layers(cfg: RunConfig, lm: LanguageModel) -> list[int]:
    """The layers whose per-story activations are kept: all, the one two-thirds deep (paper), or a list."""
    if cfg.keep_layers in (None, "all"):
        return list(range(lm.n_layers))
    if cfg.keep_layers == "two-thirds":
        return [round(2 * lm.n_layers / 3)]
    return [lm.check_layer(lay) for lay in cast("list[int]", cfg.keep_layers)]  # the strings were handled above




STEERING_ANALYSIS = Path("analyses") / "steering.json"


def attach_steering_recommendation(vectors: EmotionVectors, run_dir: str | Path) -> EmotionVectors:
    """Attach the steering layer and strength the run's steering-efficacy analysis recommends.

    Steering then defaults to them (`EmotionVectors.steering_layer`/`steering_strength`) in
    `generate`, `export`, the experiments and the library, instead of the vectors' readout
    layer. Runs without the analysis (or with no fluent recommendation) are left as they are.
    """
    path = Path(run_dir) / STEERING_ANALYSIS
    if not path.exists():
        return vectors
    data = read_json(path)
    rec = data.get("recommended") if isinstance(data, dict) else None
    if not isinstance(rec, dict):
        raise EmovecError(f"{path} has no steering recommendation: re-run `emovec analyze {run_dir} --only steering`")
    layer = rec.get("layer")
    if not isinstance(layer, int) or layer not in vectors.layers:
        return vectors
    vectors.meta["steering_recommendation"] = {"layer": layer, "strength": rec.get("strength"),
                                               "range": rec.get("range"), "source": str(STEERING_ANALYSIS)}
    return vectors


@dataclass
class RunContext:
    """A finished run opened for use: its settings, its model and its vectors (checked against each other)."""

    run_dir: Path
    config: RunConfig
    lm: LanguageModel
    vectors: EmotionVectors


def load_run(run_dir: str | Path, lm: LanguageModel | None = None) -> RunContext:
    """Open a run directory that has vectors: settings from `run.json`, the run's model (or `lm`), checked vectors."""
    run_dir = Path(run_dir)
    path = run_dir / VECTORS_FILE
    if not path.exists():
        raise EmovecError(f"{run_dir} has no {VECTORS_FILE}: build the vectors first (emovec run {run_dir})")
    cfg = open_run(run_dir)
    lm = lm or run_model(cfg)
    return RunContext(run_dir, cfg, lm, attach_steering_recommendation(EmotionVectors.load(path, model=lm), run_dir))
