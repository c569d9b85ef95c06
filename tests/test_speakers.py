"""Speaker probes at test scale: turn parsing, present/other-speaker vectors on hand-written dialogues, resumable generation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from emovec import HFBackend, Sampling, speaker_dialogues, speaker_probes
from emovec.corpus import names_emotion
from emovec.report import write_report
from emovec.storage import read_jsonl, write_json
from emovec.validate.runner import analyses_dir, summarize
from emovec.validate.speakers import SPEAKERS_FILE, judge_dialogue, parse_turns, turn_positions

DATA = Path(__file__).parent / "data"
EMOTIONS = ["happy", "sad", "afraid", "angry", "calm", "desperate"]


@pytest.fixture(scope="module")
def dialogues() -> list[dict]:
    return [json.loads(line) for line in (DATA / "dialogues_small.jsonl").read_text().splitlines() if line.strip()]


def test_turns_are_parsed_and_mapped_to_their_own_tokens(lm):
    text = "Human: Where is my bag?\n\nAssistant: It is on the chair.\nHuman: Thanks!"
    turns = parse_turns(text)
    assert [(t.speaker, text[t.start:t.end]) for t in turns] == [
        ("Human", "Where is my bag?"), ("Assistant", "It is on the chair."), ("Human", "Thanks!")]
    enc = lm.tokenizer(text, return_offsets_mapping=True)
    positions = turn_positions(enc["offset_mapping"], turns)
    words = [lm.tokenizer.decode([enc["input_ids"][i] for i in pos]).strip() for pos in positions]
    assert words == ["Where is my bag?", "It is on the chair.", "Thanks!"]
    assert all(0 not in pos for pos in positions)
    assert not set(positions[0]) & set(positions[1])
    messy = "Sure! Here it is.\n**Human:** hi\nAssistant:   \n"
    assert [(t.speaker, messy[t.start:t.end]) for t in parse_turns(messy)] == [("Human", "hi")]


def test_hand_written_dialogues_never_name_either_emotion(dialogues):
    assert len(dialogues) == 12
    for d in dialogues:
        assert judge_dialogue(d["text"], d["human_emotion"], d["assistant_emotion"]) is None
        assert not any(names_emotion(d["text"], e) for e in EMOTIONS)


@pytest.fixture(scope="module")
def probes(lm, small_vectors, dialogues) -> dict:
    return speaker_probes(lm, dialogues, layer=20, emotions=EMOTIONS, stories_vectors=small_vectors)


def test_speaker_probes_on_hand_written_dialogues(probes):
    res = probes
    assert res["emotions"] == EMOTIONS and res["layer"] == 20
    assert res["n_dialogues"] == 12 and res["n_turns"] == 48
    assert res["turns_per_emotion"]["present"] == {e: 8 for e in EMOTIONS}
    assert res["turns_per_emotion"]["other"] == {e: 8 for e in EMOTIONS}
    assert len(res["per_emotion"]) == 6 and res["present_other"]["n"] == 6
    st = res["stories"]
    assert st["n_emotions"] == 6
    for row in res["per_emotion"]:
        for key in ("present_other", "story_present", "story_other"):
            assert math.isfinite(row[key]) and -1 <= row[key] <= 1
    print(json.dumps({k: res[k] for k in ("present_other", "present_other_mismatched_mean", "per_emotion", "stories")}, indent=1))
    # measured on this data: present-speaker vectors agree more with story vectors than other-speaker ones do
    assert st["present"]["mean"] > st["other"]["mean"]


def test_speaker_dialogues_are_resumable(lm, tmp_path):
    backend = HFBackend(lm, batch_size=2)
    sampling = Sampling(max_new_tokens=24, temperature=0.8)
    rows = speaker_dialogues(lm, backend, tmp_path, ["happy", "sad"], per_pair=1, sampling=sampling, progress=False)
    assert [r["id"] for r in rows] == ["happy>sad|0", "sad>happy|0"]
    for r in rows:
        assert set(r) >= {"id", "job", "human_emotion", "assistant_emotion", "text", "kept", "reason"}
        assert r["text"].startswith("Human:") and r["kept"] == (r["reason"] is None)
    before = (tmp_path / SPEAKERS_FILE).read_text()
    again = speaker_dialogues(lm, backend, tmp_path, ["happy", "sad"], per_pair=1, sampling=sampling, progress=False)
    assert again == rows and (tmp_path / SPEAKERS_FILE).read_text() == before
    assert len(read_jsonl(tmp_path / SPEAKERS_FILE)) == 2


def test_report_renders_speaker_probes_when_present(probes, run_copy):
    assert "Speaker probes" not in write_report(run_copy, compute=False).read_text(encoding="utf-8")
    write_json(analyses_dir(run_copy) / "speakers.json", probes)
    text = write_report(run_copy, compute=False).read_text(encoding="utf-8")
    assert "<h2>Speaker probes" in text and "cos story/present" in text and "could not render" not in text
    line = summarize("speakers", probes)
    assert "12 dialogues" in line and "48 turns" in line
