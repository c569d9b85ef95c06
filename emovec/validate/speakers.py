"""Speaker probes: emotion vectors for the present and the other speaker of a dialogue.

The model writes short Human/Assistant dialogues in which each speaker has an
assigned emotion (never named in the text). Each turn's residual activations are
averaged; the turn is labelled once with its own speaker's emotion ("present") and
once with the other speaker's ("other"). Per-emotion means minus the mean over
emotions give two vector sets, compared with each other and with story vectors.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..activations import residuals
from ..corpus import _chunked_run, names_emotion, prompts, topics
from ..generation import GenerationBackend, Sampling
from ..models import LanguageModel
from ..provenance import check_settings, locked
from ..rundir import VECTORS_FILE, close_engine, make_backend, open_run, run_model, run_writer
from ..storage import EmovecError, read_jsonl, write_json
from ..vectors import EmotionVectors

SPEAKERS_FILE = "speakers.jsonl"
SPEAKERS_SETTINGS_FILE = "speakers.settings.json"
SPEAKERS = ("Human", "Assistant")
DEFAULT_EMOTIONS = ("happy", "sad", "afraid", "angry", "calm", "desperate")
MIN_DIALOGUE_WORDS = 20

_TURN = re.compile(r"^[ \t]*(?:\*\*)?(Human|Assistant)(?:\*\*)?[ \t]*:(?:\*\*)?[ \t]*", re.MULTILINE | re.IGNORECASE)


@dataclass
class Turn:
    """One speaker turn: who speaks and the character span of what they say (label excluded)."""
    speaker: str
    start: int
    end: int


def parse_turns(text: str) -> list[Turn]:
    """Split a dialogue into `Human:` / `Assistant:` turns; text before the first label is ignored."""
    marks = list(_TURN.finditer(text))
    turns = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[m.end():end]
        stripped = body.rstrip()
        if stripped.strip():
            turns.append(Turn(speaker=m.group(1).capitalize(), start=m.end(), end=m.end() + len(stripped)))
    return turns


def turn_positions(offsets: Sequence[tuple[int, int]], turns: Sequence[Turn]) -> list[list[int]]:
    """Token positions of each turn: tokens whose character span overlaps the turn; position 0 is never used."""
    out = []
    for t in turns:
        out.append([i for i, (a, b) in enumerate(offsets) if i > 0 and b > a and b > t.start and a < t.end])
    return out


def judge_dialogue(text: str, human_emotion: str, assistant_emotion: str, min_words: int = MIN_DIALOGUE_WORDS) -> str | None:
    """Why a dialogue is dropped (`names_emotion`, `missing_speaker`, `too_short`), or None to keep it."""
    if names_emotion(text, human_emotion) or names_emotion(text, assistant_emotion):
        return "names_emotion"
    if {t.speaker for t in parse_turns(text)} != set(SPEAKERS):
        return "missing_speaker"
    if len(text.split()) < min_words:
        return "too_short"
    return None


@dataclass
class DialogueJob:
    """One prompt to the writer model: an ordered pair of emotions and a topic."""
    id: str
    human_emotion: str
    assistant_emotion: str
    topic: str

    def prompt(self) -> str:
        """The request for one dialogue between a human and an assistant who feel the job's two emotions."""
        return str(prompts()["speaker_dialogue"].format(topic=self.topic, human_emotion=self.human_emotion,
                                                        assistant_emotion=self.assistant_emotion))


def dialogue_jobs(emotions: Sequence[str], per_pair: int, seed: int = 0) -> list[DialogueJob]:
    """Deterministic jobs: `per_pair` dialogues for every ordered pair of different emotions, in rounds."""
    if per_pair < 1:
        raise EmovecError(f"dialogues per pair must be >= 1, got {per_pair}")
    if len(set(emotions)) < 2:
        raise EmovecError("speaker dialogues need at least 2 different emotions")
    topic_list = topics()
    jobs = []
    for k in range(per_pair):
        for h in emotions:
            for a in emotions:
                if h != a:
                    topic = random.Random(f"{seed}|{h}>{a}|{k}").choice(topic_list)
                    jobs.append(DialogueJob(id=f"{h}>{a}|{k}", human_emotion=h, assistant_emotion=a, topic=topic))
    return jobs


def speaker_dialogues(lm: LanguageModel, backend: GenerationBackend, run_dir: str | Path, emotions: Sequence[str],
                      per_pair: int = 1, sampling: Sampling | None = None, seed: int = 0, chunk: int = 64,
                      progress: bool = True) -> list[dict[str, Any]]:
    """Have the model write dialogues into `run_dir/speakers.jsonl` (resumable); return all rows of the file.

    The reply is primed with "Human:" so it opens with the first turn; the prime is kept in the text.
    """
    path = Path(run_dir) / SPEAKERS_FILE
    jobs = dialogue_jobs(list(emotions), per_pair, seed)
    prime = prompts()["speaker_prime"]

    def rows_of(job: DialogueJob, response: str) -> list[dict[str, Any]]:
        text = f"{prime} {response.strip()}".strip()
        reason = judge_dialogue(text, job.human_emotion, job.assistant_emotion)
        return [{"id": job.id, "job": job.id, "human_emotion": job.human_emotion,
                 "assistant_emotion": job.assistant_emotion, "topic": job.topic, "text": text,
                 "kept": reason is None, "reason": reason}]

    _chunked_run(jobs, path, backend, sampling or Sampling(max_new_tokens=200, temperature=0.8), seed + 2, chunk,
                 lambda j: lm.chat(j.prompt()) + prime, rows_of, "dialogues", progress)
    return read_jsonl(path)


@torch.inference_mode()
def turn_activations(lm: LanguageModel, texts: Sequence[str], layer: int, batch_size: int = 8,
                     max_tokens: int = 512) -> list[list[tuple[str, torch.Tensor]]]:
    """Per text, each non-empty turn's (speaker, mean residual after `layer` over the turn's tokens)."""
    layer = lm.check_layer(layer)
    tok = lm.tokenizer
    out: list[list[tuple[str, torch.Tensor]]] = []
    for i in range(0, len(texts), batch_size):
        batch = list(texts[i:i + batch_size])
        enc = tok(batch, return_tensors="pt", padding=True, padding_side="right", truncation=True, max_length=max_tokens,
                  return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping").tolist()
        inputs = {k: v.to(lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        h = residuals(lm, inputs, layer)
        for row, text in enumerate(batch):
            turns = parse_turns(text)
            n_tok = int(enc["attention_mask"][row].sum())
            pooled = []
            for t, pos in zip(turns, turn_positions(offsets[row][:n_tok], turns)):
                if pos:
                    pooled.append((t.speaker, h[row, pos].mean(0)))
            out.append(pooled)
    return out


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a[None].double(), b[None].double()).item())


def _stats(values: Sequence[float]) -> dict[str, float | int | None]:
    v = np.array(values, dtype=float)
    if not len(v):
        return {"n": 0, "mean": None, "std": None, "min": None, "median": None, "max": None}
    return {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "median": float(np.median(v)), "max": float(v.max())}


def speaker_probes(lm: LanguageModel, rows: Sequence[dict[str, Any]], layer: int, emotions: Sequence[str] | None = None,
                   stories_vectors: EmotionVectors | None = None, batch_size: int = 8,
                   max_tokens: int = 512) -> dict[str, Any]:
    """Present- and other-speaker vectors from dialogue rows, their cosines, and their closeness to story vectors.

    `rows` need `human_emotion`, `assistant_emotion` and `text`; rows marked `kept: false`
    and rows whose emotions are outside `emotions` are skipped. Only emotions seen
    both as present and as other speaker get vectors. Story vectors (denoised) are
    compared at the same `layer`, over the emotions both sets share.
    """
    layer = lm.check_layer(layer)
    use = [r for r in rows if r.get("kept", True) and isinstance(r.get("text"), str)
           and (emotions is None or (r.get("human_emotion") in emotions and r.get("assistant_emotion") in emotions))]
    if not use:
        raise EmovecError("no usable dialogues (all filtered, or none with both emotions in the set); generate more")
    acts = turn_activations(lm, [r["text"] for r in use], layer, batch_size, max_tokens)
    present: dict[str, list[torch.Tensor]] = {}
    other: dict[str, list[torch.Tensor]] = {}
    n_dialogues = 0
    for r, turns in zip(use, acts):
        own = {"Human": r["human_emotion"], "Assistant": r["assistant_emotion"]}
        n_dialogues += bool(turns)
        for speaker, vec in turns:
            present.setdefault(own[speaker], []).append(vec)
            other.setdefault(own["Assistant" if speaker == "Human" else "Human"], []).append(vec)
    order = list(emotions) if emotions is not None else sorted(set(present) | set(other))
    names = [e for e in order if e in present and e in other]
    if len(names) < 2:
        raise EmovecError(f"speaker vectors need at least 2 emotions seen as both present and other speaker (got {names})")
    pm = torch.stack([torch.stack(present[e]).mean(0) for e in names])
    om = torch.stack([torch.stack(other[e]).mean(0) for e in names])
    pv, ov = pm - pm.mean(0), om - om.mean(0)
    cross = torch.nn.functional.normalize(pv.double(), dim=1) @ torch.nn.functional.normalize(ov.double(), dim=1).T
    off = cross[~torch.eye(len(names), dtype=torch.bool)]
    per: list[dict[str, Any]] = [{"emotion": e, "present_other": float(cross[i, i])} for i, e in enumerate(names)]
    result: dict[str, Any] = {
        "layer": layer, "emotions": names, "n_dialogues": n_dialogues, "n_rows_used": len(use),
        "n_turns": sum(len(t) for t in acts),
        "turns_per_emotion": {"present": {e: len(present[e]) for e in names}, "other": {e: len(other[e]) for e in names}},
        "present_other": _stats([p["present_other"] for p in per]),
        "present_other_mismatched_mean": float(off.mean()) if len(off) else None,
        "per_emotion": per, "stories": None,
    }
    if stories_vectors is not None:
        shared = [e for e in names if e in stories_vectors.emotions]
        if shared:
            sv = stories_vectors.matrix(layer, shared, denoised=True, unit=False)
            for row in per:
                if row["emotion"] in shared:
                    k, i = shared.index(row["emotion"]), names.index(row["emotion"])
                    row["story_present"] = _cos(sv[k], pv[i])
                    row["story_other"] = _cos(sv[k], ov[i])
            sp = [r["story_present"] for r in per if "story_present" in r]
            so = [r["story_other"] for r in per if "story_other" in r]
            result["stories"] = {"n_emotions": len(shared), "vectors": "denoised story vectors",
                                 "present": _stats(sp), "other": _stats(so),
                                 "n_closer_to_present": sum(a > b for a, b in zip(sp, so))}
    return result


@locked
def run_speaker_probes(run_dir: str | Path, per_pair: int = 2, emotions: str | Sequence[str] | None = None
                       ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write dialogues for a run (resumable), probe them at the default layer, save `analyses/speakers.json`.

    Emotions default to DEFAULT_EMOTIONS present in the run's vectors (else its first six).
    Returns (result, dialogue rows).
    """
    cfg = open_run(run_dir)
    vecs = EmotionVectors.load(Path(run_dir) / VECTORS_FILE)
    names = vecs.resolve(emotions) if emotions else ([e for e in DEFAULT_EMOTIONS if e in vecs.emotions] or vecs.emotions[:6])
    lm = run_model(cfg)
    vecs.check_model(lm)
    writer = run_writer(cfg, lm)  # the run's writer writes the dialogues too; the model reads them
    # Dialogue jobs are keyed by emotion pair and index; what the keys do not hold is guarded here.
    check_settings(run_dir, {"model": cfg.model, "writer": cfg.writer_model(), "seed": cfg.seed,
                             "writer_dtype": cfg.gen_dtype, "gen_batch_size": cfg.gen_batch_size}, {"writer": cfg.model},
                   lm=lm, settings_file=SPEAKERS_SETTINGS_FILE, samples_file=SPEAKERS_FILE)
    backend = make_backend(cfg, writer)
    try:
        rows = speaker_dialogues(writer, backend, run_dir, names, per_pair, seed=cfg.seed)
    finally:
        close_engine(backend)
    result = speaker_probes(lm, rows, vecs.default_layer, names, stories_vectors=vecs)
    write_json(Path(run_dir) / "analyses" / "speakers.json", result)
    return result, rows

