"""Corpora: emotion stories written by the model under study, neutral dialogues, imports.

Stories and neutral texts are JSONL files in the run directory, appended one
generation chunk at a time. Every row carries the id of the job that produced
it (filtered stories included, marked `kept: false`), so a re-run skips finished
jobs and an interrupted run continues with the first unfinished chunk. Chunk
seeds depend only on the run seed and the chunk's position, so a resumed run
writes what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .concepts import data_lines
from .generation import GenerationBackend, Sampling
from .models import LanguageModel
from .storage import EmovecError, append_jsonl, read_jsonl

STORIES_FILE = "stories.jsonl"
NEUTRAL_FILE = "neutral.jsonl"
MIN_WORDS = 40


@lru_cache(maxsize=1)
def prompts() -> dict[str, Any]:
    """The prompt templates and character names (package data `prompts.json`)."""
    data: dict[str, Any] = json.loads(resources.files("emovec").joinpath("data/prompts.json").read_text(encoding="utf-8"))
    return data


@lru_cache(maxsize=1)
def _extra_forms() -> dict[str, list[str]]:
    data = json.loads(resources.files("emovec").joinpath("data/emotion_forms.json").read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def topics() -> list[str]:
    """The built-in everyday story topics (package data `topics.txt`)."""
    return data_lines("topics.txt")


def neutral_requests() -> list[str]:
    """The built-in matter-of-fact user requests for the neutral corpus."""
    return data_lines("neutral_requests.txt")


def emotion_forms(emotion: str) -> set[str]:
    """The emotion word, its obvious inflections and derived forms, lower case."""
    w = emotion.lower()
    forms = {w}
    if " " in w or "-" in w:
        forms |= {w.replace("-", " "), w.replace(" ", "-"), w.replace("-", "")}
    else:
        forms |= {w + s for s in ("s", "es", "ly", "ness", "er", "est", "ed", "d", "ing", "ally")}
        if w.endswith("y"):
            forms |= {w[:-1] + s for s in ("ily", "iness", "ier", "iest", "ied", "ies")}
        if w.endswith("e"):
            forms |= {w[:-1] + "ing", w[:-1] + "y"}
        if w.endswith("le"):
            forms.add(w[:-2] + "ly")
        if w.endswith(("ent", "ant")):
            forms.add(w[:-1] + "ce")
        if w.endswith("ed"):
            bases = {w[:-2], w[:-1]} | ({w[:-3] + "y"} if w.endswith("ied") else set())
            for b in (b for b in bases if len(b) >= 4):
                forms |= {b, b + "s", b + "ment", b + "ing", (b[:-1] + "ing") if b.endswith("e") else b + "ing"}
    forms |= {f.lower() for f in _extra_forms().get(w, [])}
    return forms


def names_emotion(text: str, emotion: str) -> bool:
    """True if `text` contains the emotion word or one of its forms as a whole word."""
    forms = sorted(emotion_forms(emotion), key=len, reverse=True)
    pattern = r"\b(?:" + "|".join(re.escape(f).replace(r"\ ", r"[\s-]+") for f in forms) + r")\b"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


_SPLIT = re.compile(r"(?:^|\n)\s*(?:\*\*)?(?:story\s*)?\d+\s*[.:)](?:\*\*)?\s*|\n\s*(?:---+|\*\*\*+)\s*\n", re.IGNORECASE)
_TITLE = re.compile(r"^\s*(?:\*\*|#+\s*)?(?:title\s*:)?[^\n]{0,60}(?:\*\*)?\s*\n(?=\S)", re.IGNORECASE)


def parse_stories(response: str, expected: int = 1) -> list[str]:
    """Split a model response into story paragraphs.

    With `expected == 1` the whole response is one story (a short title line is
    dropped); otherwise numbered items ("1.", "Story 2:", "**3)**") or `---`
    separators split it, falling back to blank-line paragraphs.
    """
    text = response.strip()
    if expected <= 1:
        m = _TITLE.match(text)
        if m and len(m.group(0).split()) <= 8 and len(text[m.end():].split()) >= MIN_WORDS:
            text = text[m.end():]
        return [re.sub(r"\s+", " ", text).strip()] if text else []
    parts = [p for p in _SPLIT.split(text) if p and p.strip()]
    if len(parts) < 2:
        parts = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    out = []
    for p in parts:
        p = re.sub(r"^\s*(?:\*\*|#+)?\s*title\s*:[^\n]*\n", "", p, flags=re.IGNORECASE)
        p = re.sub(r"\s+", " ", p).strip()
        if p:
            out.append(p)
    return out


@dataclass
class StoryJob:
    """One prompt to the writer model."""

    id: str
    emotion: str
    topic: str
    person: str
    name: str
    n: int
    style: str = "plain"

    def prime(self) -> str:
        """The opening written into the assistant turn when priming is on (never stored with the story)."""
        p = prompts()
        if self.style == "plain":
            return str(p["prime_plain"].format(emotion=self.emotion))
        key = "prime_first_person" if self.person == "first" else "prime_third_person"
        return str(p[key].format(emotion=self.emotion, name=self.name))

    def prompt(self) -> str:
        """The user-turn request for this job's story (or `n` stories), from the package templates."""
        p = prompts()
        if self.n > 1:
            return str(p["story_many"].format(n=self.n, topic=self.topic, emotion=self.emotion))
        if self.style == "plain":
            return str(p["story_plain"].format(topic=self.topic, emotion=self.emotion))
        key = "story_first_person" if self.person == "first" else "story_third_person"
        return str(p[key].format(topic=self.topic, emotion=self.emotion, name=self.name))


STYLES = ("plain", "detailed")


def story_jobs(emotions: Sequence[str], per_emotion: int, topic_list: Sequence[str] | None = None,
               stories_per_prompt: int = 1, seed: int = 0, style: str = "plain") -> list[StoryJob]:
    """The deterministic job list: rounds over all emotions, topics shuffled per emotion.

    `style` "plain" asks one short request per story (no person named, the default); "detailed"
    asks for a first- or third-person story (alternating) with instructions on showing the feeling.
    """
    if style not in STYLES:
        raise EmovecError(f"unknown prompt style {style!r}: use plain or detailed")
    if per_emotion < 1:
        raise EmovecError(f"stories per emotion must be >= 1, got {per_emotion}")
    n_prompts = -(-per_emotion // stories_per_prompt)
    orders = _topic_orders(emotions, list(topic_list or topics()), seed)
    return [_job(f"{e}|{k}", e, ei, k, orders[e], stories_per_prompt, seed, style)
            for k in range(n_prompts) for ei, e in enumerate(emotions)]


def _topic_orders(emotions: Sequence[str], topic_list: list[str], seed: int) -> dict[str, list[str]]:
    """Each emotion's own shuffled order of the topics (depends only on the seed and the emotion)."""
    return {e: random.Random(f"{seed}|{e}").sample(topic_list, len(topic_list)) for e in emotions}


def _job(job_id: str, emotion: str, ei: int, k: int, order: list[str], stories_per_prompt: int, seed: int,
         style: str) -> StoryJob:
    """The `k`-th request for `emotion` (its `ei`-th place in the list): topic `k` of its `order`, person
    alternating for the detailed style, a name drawn from the seed."""
    person = "any" if style == "plain" else "first" if (k + ei) % 2 == 0 else "third"
    name = random.Random(f"{seed}|{emotion}|{k}").choice(prompts()["names"])
    return StoryJob(id=job_id, emotion=emotion, topic=order[k % len(order)], person=person, name=name,
                    n=stories_per_prompt, style=style)


@dataclass
class CorpusReport:
    """What a corpus stage produced: counts, filter rate, and where the files are."""

    path: Path
    total: int
    kept: int
    dropped: dict[str, int]
    per_emotion: dict[str, int]

    @property
    def drop_rate(self) -> float:
        """Fraction of written rows the filters dropped (0 for an empty corpus)."""
        return 1 - self.kept / self.total if self.total else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts for the CLI and run records, with the min/max kept stories per emotion."""
        out = {"file": str(self.path), "written": self.total, "kept": self.kept,
               "dropped": dict(self.dropped), "drop_rate": round(self.drop_rate, 4)}
        if set(self.per_emotion) != {"neutral"}:
            counts = list(self.per_emotion.values()) or [0]
            out.update(kept_per_emotion_min=min(counts), kept_per_emotion_max=max(counts))
        return out


def judge_story(text: str, emotion: str, min_words: int = MIN_WORDS, keep_named: bool = False) -> str | None:
    """Why a story is dropped (`names_emotion` unless `keep_named`, `too_short`), or None to keep it."""
    if not keep_named and names_emotion(text, emotion):
        return "names_emotion"
    if len(text.split()) < min_words:
        return "too_short"
    return None


def corpus_report(path: Path, emotions: Sequence[str] | None = None) -> CorpusReport:
    """Count written, kept and dropped rows of a story or neutral file."""
    rows = read_jsonl(path) if path.exists() else []
    kept = [r for r in rows if r.get("kept", True)]
    dropped = Counter(_label(r.get("reason"), "unknown") for r in rows if not r.get("kept", True))
    per = Counter(_label(r.get("emotion"), "neutral") for r in kept)
    if emotions is not None:
        per = Counter({e: per.get(e, 0) for e in emotions})
    return CorpusReport(path=path, total=len(rows), kept=len(kept), dropped=dict(dropped), per_emotion=dict(per))


def _label(value: object, default: str) -> str:
    """A row's emotion or reason as a string key (a hand-edited file may hold anything there)."""
    return value if isinstance(value, str) else default


def _done_jobs(path: Path) -> set[str]:
    return {str(r.get("job")) for r in read_jsonl(path)} if path.exists() else set()


def corpus_chunk_seed(seed: int, ci: int) -> int:
    """The generation seed of the chunk starting at job `ci` (depends only on the run seed and the position)."""
    return seed * 1_000_003 + ci


def _chunked_run(jobs: Sequence[Any], path: Path, backend: GenerationBackend, sampling: Sampling, seed: int,
                 chunk: int, render: Any, rows_of: Any, desc: str, progress: bool) -> None:
    """Run `jobs` in fixed chunks, skipping finished ones, appending each chunk's rows at once, in chunk order.

    A backend with `generate_chunks` (`ChunkedBackend`) gets all unfinished chunks as one stream and works
    on several at once; the rows are appended as each chunk and all before it are done.
    """
    done = _done_jobs(path)
    bar = tqdm(total=len(jobs), desc=desc, unit="prompt", disable=not progress)
    work = []
    for ci in range(0, len(jobs), chunk):
        todo = [j for j in jobs[ci:ci + chunk] if j.id not in done]
        bar.update(min(chunk, len(jobs) - ci) - len(todo))
        if todo:
            work.append((ci, todo))
    requests = (([render(j) for j in todo], corpus_chunk_seed(seed, ci)) for ci, todo in work)
    stream = getattr(backend, "generate_chunks", None)
    results = stream(requests, sampling) if stream is not None else (backend.generate(p, sampling, seed=s) for p, s in requests)
    for (_, todo), texts in zip(work, results):
        append_jsonl(path, [row for j, t in zip(todo, texts) for row in rows_of(j, t)])
        bar.update(len(todo))
    bar.close()


def generate_stories(lm: LanguageModel, backend: GenerationBackend, run_dir: str | Path, emotions: Sequence[str],
                     per_emotion: int, sampling: Sampling | None = None, seed: int = 0, stories_per_prompt: int = 1,
                     topic_list: Sequence[str] | None = None, chunk: int = 64, progress: bool = True,
                     prime: bool = False, style: str = "plain", keep_named: bool = False) -> CorpusReport:
    """Have the model write `per_emotion` stories per emotion into `run_dir/stories.jsonl` (resumable).

    `style` picks the request wording (see `story_jobs`). With `prime`, the reply starts with a
    short sentence naming the emotion ("I felt calm.") that is removed before storing, so only the
    model's continuation is kept.
    """
    if not emotions:
        raise EmovecError("no emotions to write stories for")
    jobs = story_jobs(emotions, per_emotion, topic_list, stories_per_prompt, seed, style)
    _write_stories(lm, backend, Path(run_dir) / STORIES_FILE, jobs, sampling or Sampling(), seed, chunk, progress,
                   prime, keep_named)
    return corpus_report(Path(run_dir) / STORIES_FILE, emotions)


def _write_stories(lm: LanguageModel, backend: GenerationBackend, path: Path, jobs: Sequence[StoryJob],
                   sampling: Sampling, seed: int, chunk: int, progress: bool, prime: bool, keep_named: bool,
                   round_: int = 0) -> None:
    """Write `jobs` into the story file (resumable), each story judged by the filters; refill rows say their round."""
    def rows_of(job: StoryJob, response: str) -> list[dict[str, Any]]:
        stories = parse_stories(response, job.n)[: job.n] or [""]
        rows = []
        for i, text in enumerate(stories):
            reason = judge_story(text, job.emotion, keep_named=keep_named)
            rows.append({"id": f"{job.id}#{i}", "job": job.id, "emotion": job.emotion, "topic": job.topic,
                         "person": job.person, "text": text, "kept": reason is None, "reason": reason,
                         "source": "model", **({"refill": round_} if round_ else {})})
        return rows

    render = (lambda j: lm.chat(j.prompt()) + j.prime()) if prime and all(j.n == 1 for j in jobs) else (lambda j: lm.chat(j.prompt()))
    desc = f"refill {round_}" if round_ else "stories"
    _chunked_run(jobs, path, backend, sampling, seed, chunk, render, rows_of, desc, progress)


REFILL_ROUNDS = 2  # rounds of replacement stories at most; each emotion gets at most `per_emotion` more in all
REFILL_MIN_RATE = 0.25  # the keep rate assumed at least when sizing an emotion's replacements


def refill_jobs(rows: Sequence[dict[str, Any]], emotions: Sequence[str], target: int, round_: int, per_emotion: int,
                topic_list: Sequence[str] | None = None, stories_per_prompt: int = 1, seed: int = 0,
                style: str = "plain") -> list[StoryJob]:
    """Replacement requests of round `round_` for every emotion that keeps fewer than `target` stories.

    Decided from the rows of the earlier rounds only (so a resumed round asks for the same stories): an
    emotion short by d stories that kept a share q of what it had written gets ceil(d / max(q, 0.25)) more,
    and never more than `per_emotion` replacements over all rounds. Topics continue the emotion's own order.
    """
    before = [r for r in rows if refill_round(r) < round_ and r.get("emotion") in emotions]
    kept = Counter(str(r["emotion"]) for r in before if r.get("kept", True))
    written = Counter(str(r["emotion"]) for r in before)
    extra = Counter(str(r["emotion"]) for r in before if refill_round(r) > 0)
    orders = _topic_orders(emotions, list(topic_list or topics()), seed)
    base = -(-per_emotion // stories_per_prompt)
    jobs = []
    for ei, e in enumerate(emotions):
        short, room = target - kept[e], per_emotion - extra[e]
        if short <= 0 or room <= 0:
            continue
        rate = max(kept[e] / written[e] if written[e] else 1.0, REFILL_MIN_RATE)
        n_stories = min(room, math.ceil(short / rate))
        first = base + -(-extra[e] // stories_per_prompt)
        jobs += [_job(f"{e}|refill{round_}.{i}", e, ei, first + i, orders[e], stories_per_prompt, seed, style)
                 for i in range(-(-n_stories // stories_per_prompt))]
    return jobs


def refill_round(row: dict[str, Any]) -> int:
    """Which replacement round wrote a story row (0: the first writing, or an import)."""
    value = row.get("refill", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def refill_stories(lm: LanguageModel, backend: GenerationBackend, run_dir: str | Path, emotions: Sequence[str],
                   target: int, round_: int, per_emotion: int, sampling: Sampling | None = None, seed: int = 0,
                   stories_per_prompt: int = 1, topic_list: Sequence[str] | None = None, chunk: int = 64,
                   progress: bool = True, prime: bool = False, style: str = "plain",
                   keep_named: bool = False) -> list[StoryJob]:
    """Write round `round_` of replacement stories for the emotions the filters left short of `target` (resumable).

    The same recipe as `generate_stories`, other sampling seeds (`refill_seed`). Returns the round's requests
    (empty: no emotion is short, or none has room left).
    """
    path = Path(run_dir) / STORIES_FILE
    jobs = refill_jobs(read_jsonl(path) if path.exists() else [], emotions, target, round_, per_emotion, topic_list,
                       stories_per_prompt, seed, style)
    if jobs:
        _write_stories(lm, backend, path, jobs, sampling or Sampling(), refill_seed(seed, round_), chunk, progress,
                       prime, keep_named, round_=round_)
    return jobs


def refill_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How many replacement stories were written and kept, in all and per round."""
    extra = [r for r in rows if refill_round(r) > 0]
    written = Counter(refill_round(r) for r in extra)
    kept = Counter(refill_round(r) for r in extra if r.get("kept"))
    return {"written": len(extra), "kept": sum(kept.values()),
            "rounds": [{"round": n, "written": written[n], "kept": kept[n]} for n in sorted(written)]}


def refill_seed(seed: int, round_: int) -> int:
    """The run seed a refill round's chunks draw from (apart from the first round's and the neutral corpus's)."""
    return seed + 7919 * round_


@dataclass
class NeutralJob:
    """One prompt to the writer model for a neutral (emotion-free) dialogue, the baseline for denoising."""

    id: str
    request: str


def generate_neutral(lm: LanguageModel, backend: GenerationBackend, run_dir: str | Path, n: int,
                     sampling: Sampling | None = None, seed: int = 0, requests: Sequence[str] | None = None,
                     chunk: int = 64, progress: bool = True) -> CorpusReport:
    """Write `n` matter-of-fact Human/Assistant exchanges (model answers to our requests) into `neutral.jsonl`."""
    if n < 1:
        return corpus_report(Path(run_dir) / NEUTRAL_FILE)
    reqs = list(requests or neutral_requests())
    order = random.Random(f"{seed}|neutral").sample(reqs, len(reqs))
    jobs = [NeutralJob(id=f"neutral|{i}", request=order[i % len(order)]) for i in range(n)]
    system = prompts()["neutral_system"]

    def rows_of(job: NeutralJob, answer: str) -> list[dict[str, Any]]:
        ok = len(answer.split()) >= 10
        return [{"id": job.id, "job": job.id, "text": f"Human: {job.request}\n\nAssistant: {answer}",
                 "kept": ok, "reason": None if ok else "too_short", "source": "model"}]

    _chunked_run(jobs, Path(run_dir) / NEUTRAL_FILE, backend, sampling or Sampling(max_new_tokens=120, temperature=0.7),
                 seed + 1, chunk, lambda j: lm.chat(j.request, system=system), rows_of, "neutral", progress)
    return corpus_report(Path(run_dir) / NEUTRAL_FILE)


def import_stories(source: str | Path, run_dir: str | Path, emotions: Sequence[str], min_words: int = MIN_WORDS,
                   keep_named: bool = False) -> CorpusReport:
    """Append stories written elsewhere (JSONL rows with `emotion` and `text`) to the run's story file.

    Emotions must be in the run's concept list; the same naming filter applies (off with `keep_named`).
    Importing the same file twice adds nothing (ids are derived from the file and line).
    """
    src = Path(source)
    rows = read_jsonl(src)
    if not rows:
        raise EmovecError(f"{src}: no stories in the file; expected JSON lines like {{\"emotion\": \"calm\", \"text\": \"...\"}}")
    known = set(emotions)
    out_path = Path(run_dir) / STORIES_FILE
    done = _done_jobs(out_path)
    new = []
    for i, r in enumerate(rows, 1):
        emotion, text = str(r.get("emotion", "")).strip().lower(), r.get("text")
        if not isinstance(text, str) or not text.strip():
            raise EmovecError(f"{src}:{i}: row has no `text` string")
        if emotion not in known:
            raise EmovecError(f"{src}:{i}: emotion {emotion!r} is not in the concept list; fix the row or pass --concepts")
        job = f"import|{src.name}|{i}"
        if job in done:
            continue
        reason = judge_story(text, emotion, min_words, keep_named)
        new.append({"id": job, "job": job, "emotion": emotion, "topic": r.get("topic"), "person": r.get("person"),
                    "text": re.sub(r"\s+", " ", text).strip(), "kept": reason is None, "reason": reason,
                    "source": str(src.name)})
    append_jsonl(out_path, new)
    return corpus_report(out_path, emotions)


def load_corpus(run_dir: str | Path, kind: str = "stories", emotions: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Kept rows of a run's story or neutral corpus, in file order (optionally only `emotions`)."""
    path = Path(run_dir) / (STORIES_FILE if kind == "stories" else NEUTRAL_FILE)
    if not path.exists():
        raise EmovecError(f"{path} not found; run `emovec stories {run_dir}` first")
    rows = [r for r in read_jsonl(path) if r.get("kept", True) and isinstance(r.get("text"), str) and r["text"].strip()]
    if emotions is not None:
        allowed = set(emotions)
        rows = [r for r in rows if isinstance(r.get("emotion"), str) and r["emotion"] in allowed]
    if not rows:
        raise EmovecError(f"{path}: no usable {kind} (empty corpus or every row filtered); generate or import more")
    return rows
