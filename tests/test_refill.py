"""Replacement stories: emotions the filters leave short get more, judged by the same yardstick, resumably."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import edit_run_file

from emovec.activations import extract_corpus, load_corpus_activations
from emovec.cli import main
from emovec.content_check import CENTRE_FILE, DROP_REASON, RANK_KEY, emotion_logprobs, own_ranks
from emovec.corpus import REFILL_MIN_RATE, load_corpus, refill_jobs, refill_round, story_jobs, topics
from emovec.pipeline import stage_extract, stage_stories
from emovec.rundir import keep_layers, make_config, open_run
from emovec.storage import EmovecError, read_jsonl

EMOTIONS = ["happy", "sad", "afraid"]


def _rows(emotion: str, kept: int, dropped: int, rnd: int = 0) -> list[dict]:
    return [{"id": f"{emotion}|{rnd}.{i}", "emotion": emotion, "kept": i < kept, **({"refill": rnd} if rnd else {})}
            for i in range(kept + dropped)]


def test_refill_jobs_ask_each_short_emotion_for_its_deficit_over_its_keep_rate():
    rows = _rows("happy", 6, 4) + _rows("sad", 2, 8) + _rows("afraid", 0, 10) + _rows("sad", 1, 0, rnd=1)
    jobs = refill_jobs(rows, EMOTIONS, target=6, round_=1, per_emotion=10, topic_list=topics()[:12])
    per = {e: [j for j in jobs if j.emotion == e] for e in EMOTIONS}
    assert per["happy"] == []  # already at the target
    assert math.ceil(4 / REFILL_MIN_RATE) > 10  # sad kept 2 of 10: 16 asked, capped at per_emotion
    assert len(per["sad"]) == 10 and len(per["afraid"]) == 10  # the round's own rows are not counted yet
    assert [j.id for j in per["sad"]] == [f"sad|refill1.{i}" for i in range(10)]
    base = story_jobs(EMOTIONS, 30, topics()[:12])  # replacements continue each emotion's topic order and names
    later = {j.id: j for j in base}
    for i, j in enumerate(per["afraid"]):
        same = later[f"afraid|{10 + i}"]
        assert (j.topic, j.name, j.person) == (same.topic, same.name, same.person)
    again = refill_jobs(rows, EMOTIONS, target=6, round_=2, per_emotion=10, topic_list=topics()[:12])
    sad2 = [j for j in again if j.emotion == "sad"]  # round 1's row counts now: 3 of 11 kept, room for 9 more
    assert len(sad2) == 9 and sad2[0].id == "sad|refill2.0" and sad2[0].topic == later["sad|11"].topic
    assert len(again) == 9 + 10
    rows_half = _rows("sad", 5, 5)
    assert len(refill_jobs(rows_half, ["sad"], 6, 1, 10)) == math.ceil(1 / 0.5)  # its own keep rate, 5 of 10
    assert refill_jobs(rows_half, ["sad"], 0, 1, 10) == []
    assert refill_round({"refill": True}) == 0 and refill_round({"refill": 2}) == 2


@pytest.fixture(scope="module")
def refilled_run(lm, tmp_path_factory) -> tuple[Path, dict]:
    """3 emotions x 2 stories, a check keeping the top two ranks of three, and a target of 3 every emotion misses."""
    run_dir = tmp_path_factory.mktemp("refilled_run")
    cfg = make_config(emotions=EMOTIONS, per_emotion=2, max_new_tokens=72, n_neutral=0, content_check=0.67,
                      refill=3, gen_batch_size=8, extract_batch_size=8, seed=3)
    open_run(run_dir, cfg)
    return run_dir, stage_stories(run_dir, cfg, lm, progress=False)


def test_short_emotions_get_replacements_ranked_by_the_first_rounds_yardstick(refilled_run, lm):
    run_dir, summary = refilled_run
    rows = read_jsonl(run_dir / "stories.jsonl")
    assert len({r["id"] for r in rows}) == len(rows)
    extra = [r for r in rows if refill_round(r) > 0]
    rf = summary["refill"]
    assert extra and rf["written"] == len(extra) and rf["rounds"][0]["round"] == 1
    assert rf["kept"] == sum(r["kept"] for r in extra)
    for rnd in rf["rounds"]:  # one story per request, each round over the emotions still short
        assert rnd["written"] == rnd["requests"] == sum(refill_round(r) == rnd["round"] for r in extra)
        assert rnd["emotions"] == len({r["emotion"] for r in extra if refill_round(r) == rnd["round"]})
    assert all(r["job"].startswith(f"{r['emotion']}|refill{r['refill']}.") for r in extra)
    for e in EMOTIONS:  # at most per_emotion replacements each
        assert sum(r["emotion"] == e for r in extra) <= 2
    centre = json.loads((run_dir / CENTRE_FILE).read_text())
    assert centre["emotions"] == EMOTIONS and centre["n_stories"] == sum(
        1 for r in rows if refill_round(r) == 0 and r["reason"] in (None, DROP_REASON))
    checked = [r for r in extra if r["reason"] in (None, DROP_REASON)]
    assert checked, "no replacement story passed the naming filter; the check on them is untested"
    logprobs = emotion_logprobs(lm, [r["text"] for r in checked], EMOTIONS)
    ranks = own_ranks(logprobs, [r["emotion"] for r in checked], EMOTIONS, np.asarray(centre["centre"], np.float32))
    assert [r[RANK_KEY] for r in checked] == ranks.tolist()  # the saved means, not the replacements' own
    kept_before = {e: sum(r["kept"] for r in rows if refill_round(r) == 0 and r["emotion"] == e) for e in EMOTIONS}
    for r in checked:  # a replacement passes on its rank, or is rescued only where its emotion has under 2 kept
        assert r["kept"] == (r[RANK_KEY] < 0.67 * 3) or (r["kept"] and kept_before[r["emotion"]] < 2)
    per = {e: sum(r["kept"] for r in rows if r["emotion"] == e) for e in EMOTIONS}
    assert rf["short_emotions"] == sum(n < 3 for n in per.values())
    assert summary["stories"]["kept"] == sum(per.values())


def test_a_refilled_run_resumes_without_writing_or_scoring_and_its_shards_match_extraction(refilled_run, lm, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(refilled_run[0], run_dir)
    before = (run_dir / "stories.jsonl").read_bytes()
    cfg = open_run(run_dir)
    again = stage_stories(run_dir, cfg, lm, progress=False)
    assert (run_dir / "stories.jsonl").read_bytes() == before
    assert again["content_check"]["scored"] == 0 and again["refill"]["written"] == refilled_run[1]["refill"]["written"]
    check = refilled_run[1]["content_check"]
    assert check["shards_written"] == check["kept"] > 0
    reused = load_corpus_activations(run_dir / "activations", "stories")
    fresh = extract_corpus(lm, load_corpus(run_dir, "stories", EMOTIONS), tmp_path / "fresh", "stories",
                           keep_layers=keep_layers(cfg, lm), start=cfg.token_start, progress=False)
    assert reused.ids == fresh.ids == [r["id"] for r in read_jsonl(run_dir / "stories.jsonl") if r["kept"]]
    np.testing.assert_allclose(reused.pooled.numpy(), fresh.pooled.numpy(), rtol=1e-4, atol=1e-4)
    shards = {p.name: p.read_bytes() for p in (run_dir / "activations").glob("stories-*.safetensors")}
    stage_extract(run_dir, cfg, lm, progress=False)
    assert {p.name: p.read_bytes() for p in (run_dir / "activations").glob("stories-*.safetensors")} == shards
    rows = {r["id"]: r for r in read_jsonl(run_dir / "stories.jsonl")}  # the first round alone, as bench/ rebuilds it
    first = reused.subset([j for j, i in enumerate(reused.ids) if refill_round(rows[i]) == 0])
    alone = extract_corpus(lm, [rows[i] for i in first.ids], tmp_path / "first", "stories",
                           keep_layers=keep_layers(cfg, lm), start=cfg.token_start, progress=False)
    assert first.ids == alone.ids and first.counts == alone.counts and len(first.ids) < len(reused.ids)
    for e in first.counts:
        np.testing.assert_allclose(first.sums[e].numpy(), alone.sums[e].numpy(), rtol=1e-4, atol=1e-2)


def test_bad_refill_targets_are_one_line_errors(tmp_path):
    res = CliRunner().invoke(main, ["run", str(tmp_path / "r"), "--refill", "-1"])
    assert res.exit_code == 2 and "-1 is not in the range x>=0" in res.output
    open_run(tmp_path / "r2", make_config(refill=4))
    edit_run_file(tmp_path / "r2", refill="six")
    with pytest.raises(EmovecError, match="refill='six' is not an integer >= 0"):
        open_run(tmp_path / "r2")
    open_run(tmp_path / "r3", make_config(refill=4))
    with pytest.raises(EmovecError, match="was started with refill=4, not 0"):
        open_run(tmp_path / "r3", make_config(refill=0))
