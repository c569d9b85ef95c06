"""Story corpus: naming filter, parsing, deterministic jobs, imports, resumable generation on the real model."""

from __future__ import annotations

import json

import pytest

from emovec import EmovecError, HFBackend, Sampling, generate_stories, import_stories, names_emotion, parse_stories
from emovec.concepts import load_concepts, resolve_emotions
from emovec.corpus import corpus_report, story_jobs, topics
from emovec.storage import append_jsonl, read_jsonl, repair_jsonl


@pytest.mark.parametrize("emotion,text", [
    ("happy", "She smiled happily at the bus."), ("happy", "Pure HAPPINESS filled the room."),
    ("sad", "The sadness of it all."), ("afraid", "He was afraid of the dark."), ("afraid", "Fear gripped him."),
    ("angry", "He spoke angrily."), ("angry", "Anger rose in her chest."), ("worried", "Stop worrying."),
    ("worn out", "I am worn-out today."), ("at ease", "She felt at  ease."), ("grief-stricken", "Grief stricken, he sat."),
    ("desperate", "In desperation she called again."), ("calm", "He calmly folded the map."),
    ("frustrated", "Such frustration!"), ("proud", "Her pride showed."), ("embarrassed", "How embarrassing."),
])
def test_filter_catches_the_word_and_its_forms(emotion, text):
    assert names_emotion(text, emotion)


@pytest.mark.parametrize("emotion,text", [
    ("angry", "The ranger walked the trail."), ("sad", "The saddle was old."), ("happy", "It happened on Monday."),
    ("calm", "A caliper measured it."), ("mad", "They made dinner."),
    ("hope", "He phoned the shop."), ("content", "She read the context."),
])
def test_filter_spares_other_words(emotion, text):
    assert not names_emotion(text, emotion)


def test_parse_several_stories():
    resp = "1. First story about a dog in the rain.\n\n2. Second story, at the market.\n3) Third one here."
    assert parse_stories(resp, 3) == ["First story about a dog in the rain.", "Second story, at the market.", "Third one here."]
    resp = "**Story 1:** A tale.\n\n**Story 2:** Another tale."
    assert parse_stories(resp, 2) == ["A tale.", "Another tale."]
    assert parse_stories("Para one.\n\nPara two.", 2) == ["Para one.", "Para two."]
    long = " ".join(["word"] * 60)
    assert parse_stories(f"The Lost Key\n{long}", 1) == [long]
    assert parse_stories("", 1) == []


def test_jobs_deterministic_and_balanced():
    a = story_jobs(["happy", "sad"], 6, seed=3)
    b = story_jobs(["happy", "sad"], 6, seed=3)
    assert [(j.id, j.topic, j.person, j.name) for j in a] == [(j.id, j.topic, j.person, j.name) for j in b]
    assert [j.emotion for j in a[:2]] == ["happy", "sad"]  # rounds over all emotions first
    assert {j.person for j in a} == {"any"} and "Do not use the word happy" in a[0].prompt()  # the plain default
    detailed = story_jobs(["happy", "sad"], 6, seed=3, style="detailed")
    persons = [j.person for j in detailed if j.emotion == "happy"]
    assert persons.count("first") == persons.count("third") == 3
    assert "first person" in detailed[0].prompt() or "third person" in detailed[0].prompt()
    assert len({j.topic for j in a if j.emotion == "happy"}) == 6
    with pytest.raises(EmovecError, match="prompt style"):
        story_jobs(["happy"], 1, style="fancy")
    assert len(topics()) >= 100
    prompt = a[0].prompt()
    assert "happy" in prompt and a[0].topic in prompt
    with pytest.raises(EmovecError):
        story_jobs(["happy"], 0)


def test_concepts_default_and_user_list(tmp_path):
    assert len(load_concepts()) == 171 and "desperate" in load_concepts() and "at ease" in load_concepts()
    f = tmp_path / "mine.txt"
    f.write_text("# my list\nCalm\nfrantic\n\n")
    assert load_concepts(f) == ["calm", "frantic"]
    for bad, msg in [("", "no concepts"), ("calm\ncalm\n", "listed twice"), ("calm\n<script>\n", "not a concept")]:
        f.write_text(bad)
        with pytest.raises(EmovecError, match=msg):
            load_concepts(f)
    f.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(EmovecError, match="UTF-8"):
        load_concepts(f)
    with pytest.raises(EmovecError, match="did you mean desperate"):
        resolve_emotions("desprate", load_concepts())


def test_import_filters_and_is_idempotent(tmp_path):
    src = tmp_path / "ext.jsonl"
    long = " ".join(["the", "bus", "came", "late"] * 12)
    rows = [{"emotion": "calm", "text": long}, {"emotion": "calm", "text": "I felt calm. " + long},
            {"emotion": "sad", "text": "too short"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = import_stories(src, tmp_path / "run", ["calm", "sad"])
    assert (rep.total, rep.kept) == (3, 1)
    assert rep.dropped == {"names_emotion": 1, "too_short": 1}
    assert rep.drop_rate == pytest.approx(2 / 3)
    rep = import_stories(src, tmp_path / "run", ["calm", "sad"])
    assert rep.total == 3
    named = import_stories(src, tmp_path / "run-named", ["calm", "sad"], keep_named=True)
    assert (named.kept, named.dropped) == (2, {"too_short": 1})  # the naming filter off, the length filter on
    src.write_text(json.dumps({"emotion": "zorgle", "text": long}) + "\n")
    with pytest.raises(EmovecError, match="not in the concept list"):
        import_stories(src, tmp_path / "run2", ["calm"])


def test_keep_named_is_a_run_setting_a_resume_must_keep(tmp_path):
    from emovec.rundir import make_config, open_run

    open_run(tmp_path, make_config(keep_named=True))
    assert open_run(tmp_path).keep_named is True
    with pytest.raises(EmovecError, match="started with keep_named=True, not False"):
        open_run(tmp_path, make_config())


def test_torn_jsonl_tail_is_dropped_and_repaired(tmp_path):
    p = tmp_path / "x.jsonl"
    append_jsonl(p, [{"a": 1}, {"a": 2}])
    with open(p, "a") as fh:
        fh.write('{"a": 3, "b"')  # a writer killed mid-line
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    assert repair_jsonl(p) > 0
    append_jsonl(p, [{"a": 4}])
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}, {"a": 4}]
    p.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(EmovecError, match=r"x.jsonl:2"):
        read_jsonl(p)


def test_generation_is_resumable(lm, tmp_path):
    """Stopping after part of the jobs and re-running writes exactly the missing ones, same as one full run."""
    sampling = Sampling(max_new_tokens=12, temperature=0.9)
    backend = HFBackend(lm, batch_size=4)
    emotions = ["happy", "sad"]
    full = tmp_path / "full"
    generate_stories(lm, backend, full, emotions, 3, sampling, seed=5, chunk=2, progress=False)
    part = tmp_path / "part"
    generate_stories(lm, backend, part, emotions, 1, sampling, seed=5, chunk=2, progress=False)
    assert len(read_jsonl(part / "stories.jsonl")) == 2
    generate_stories(lm, backend, part, emotions, 3, sampling, seed=5, chunk=2, progress=False)
    a, b = read_jsonl(full / "stories.jsonl"), read_jsonl(part / "stories.jsonl")
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert len({r["id"] for r in b}) == 6  # nothing duplicated or lost
    assert [r["text"] for r in a] == [r["text"] for r in b]  # chunk seeds make the resumed run identical
    # a re-run with everything done generates nothing new
    generate_stories(lm, backend, part, emotions, 3, sampling, seed=5, chunk=2, progress=False)
    assert len(read_jsonl(part / "stories.jsonl")) == 6
    rep = corpus_report(part / "stories.jsonl", emotions)
    assert rep.total == 6 and rep.dropped.get("too_short", 0) == 6 - rep.kept
