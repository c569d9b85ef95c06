"""The content check on the real model: it reads hand-written stories as their emotion, drops, resumes, refuses."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DATA, SMALL_EMOTIONS, edit_run_file
from scipy.stats import binomtest

from emovec.cli import main
from emovec.content_check import DROP_REASON, RANK_KEY, apply_content_check, keep_mask, own_ranks
from emovec.corpus import corpus_report
from emovec.pipeline import stage_stories
from emovec.rundir import make_config, open_run
from emovec.storage import EmovecError, read_jsonl


@pytest.fixture(scope="module")
def checked_run(lm, tmp_path_factory) -> tuple[Path, dict]:
    """The 6 x 8 hand-written stories imported into a run with the content check at 0.34 (the best 2 of 6)."""
    run_dir = tmp_path_factory.mktemp("checked_run")
    cfg = make_config(emotions=SMALL_EMOTIONS, import_stories=str(DATA / "stories_small.jsonl"), n_neutral=0,
                      content_check=0.34)
    open_run(run_dir, cfg)
    return run_dir, stage_stories(run_dir, cfg, lm, progress=False)


def test_the_model_reads_handwritten_stories_as_their_emotion(checked_run):
    """Each story's own emotion is ranked first among the six more often than chance (1 in 6) would give."""
    rows = read_jsonl(checked_run[0] / "stories.jsonl")
    ranks = [r[RANK_KEY] for r in rows]
    assert len(ranks) == 48
    first = sum(r == 0 for r in ranks)
    assert binomtest(first, len(ranks), 1 / 6, alternative="greater").pvalue < 0.01, ranks


def test_the_check_drops_missed_stories_keeps_the_best_two_and_reports(checked_run):
    run_dir, summary = checked_run
    rows = read_jsonl(run_dir / "stories.jsonl")
    for r in rows:
        assert r["kept"] == (r["reason"] is None) and r["reason"] in (None, DROP_REASON)
    for e in SMALL_EMOTIONS:
        mine = [r for r in rows if r["emotion"] == e]
        kept = [r for r in mine if r["kept"]]
        assert len(kept) >= 2
        assert all(r[RANK_KEY] < 0.34 * 6 for r in kept) or len(kept) == 2
        assert max(r[RANK_KEY] for r in kept) <= min((r[RANK_KEY] for r in mine if not r["kept"]), default=6)
    check = summary["content_check"]
    assert check["checked"] == 48 and check["kept"] + check["dropped"] == 48 and check["rescored"]
    assert summary["stories"]["kept"] == check["kept"]
    assert corpus_report(run_dir / "stories.jsonl").dropped.get(DROP_REASON, 0) == check["dropped"]


def test_a_rerun_reapplies_the_saved_ranks_without_scoring(checked_run, lm, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(checked_run[0], run_dir)
    before = (run_dir / "stories.jsonl").read_bytes()
    again = apply_content_check(lm, run_dir, SMALL_EMOTIONS, 0.34, progress=False)
    assert again["rescored"] is False and again["kept"] == checked_run[1]["content_check"]["kept"]
    assert (run_dir / "stories.jsonl").read_bytes() == before
    wider = apply_content_check(lm, run_dir, SMALL_EMOTIONS, 1.0, progress=False)  # a wider share keeps everything
    assert wider["kept"] == 48 and wider["rescored"] is False


def test_ranks_centre_each_emotion_and_keep_the_best_per_emotion():
    logprobs = np.log(np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.5, 0.1, 0.4]]))
    ranks = own_ranks(logprobs, ["b", "b", "c"], ["a", "b", "c"])
    assert ranks.tolist() == [0, 0, 0]  # "a" is likeliest everywhere, but centring removes that
    keep = keep_mask(np.array([5, 0, 4, 3]), ["x", "x", "y", "y"], n_emotions=10, fraction=0.1, min_keep=1)
    assert keep.tolist() == [False, True, False, True]


def test_bad_fractions_and_empty_corpora_are_one_line_errors(lm, tmp_path):
    with pytest.raises(EmovecError, match=r"content check fraction must be in \(0, 1\]"):
        apply_content_check(lm, tmp_path, ["calm"], 0.0)
    assert apply_content_check(lm, tmp_path, ["calm"], 0.5)["checked"] == 0  # no stories: nothing to check
    from emovec.content_check import read_stories

    with pytest.raises(EmovecError, match="1 ids for 2 stories: give one id per story"):
        read_stories(lm, ["a calm day.", "a sad day."], ["calm"], ids=["x"], layers=[0])
    res = CliRunner().invoke(main, ["run", str(tmp_path / "r"), "--content-check", "1.5"])
    assert res.exit_code == 2 and "1.5 is not in the range" in res.output
    open_run(tmp_path / "r2", make_config(content_check=0.5))
    edit_run_file(tmp_path / "r2", content_check="half")
    with pytest.raises(EmovecError, match="content_check='half' is not a share of the emotions"):
        open_run(tmp_path / "r2")


def test_a_checked_run_builds_vectors_and_its_scaling_curve_reaches_past_two(checked_run, lm, tmp_path):
    """The check keeps some emotions at 2 stories on purpose; the curve then covers the half that reach more."""
    from emovec.pipeline import stage_extract
    from emovec.validate.runner import run_analyses

    run_dir = tmp_path / "run"
    shutil.copytree(checked_run[0], run_dir)
    cfg = open_run(run_dir)
    vectors = stage_extract(run_dir, cfg, lm, progress=False)
    kept = {e: sum(r["kept"] for r in read_jsonl(run_dir / "stories.jsonl") if r["emotion"] == e) for e in SMALL_EMOTIONS}
    assert sorted(vectors.emotions) == sorted(SMALL_EMOTIONS)
    scaling = run_analyses(run_dir, lm, only=["scaling"])["scaling"]
    counts = sorted(kept.values(), reverse=True)
    assert max(scaling["ks"]) == counts[2]  # the largest k half of the six emotions reach (90% would give the minimum)
    assert scaling["n_emotions"] == sum(c >= counts[2] for c in counts)


def test_results_record_each_emotions_steering_at_the_first_layer():
    from emovec.report.results import per_emotion_steering, per_emotion_text

    fit = {"slope": 1.5, "ci95": [1.0, 2.0], "p": 1e-4, "n": 36}
    steering = {"settings": {"layers": [20, 15]}, "curves": [
        {"emotion": "happy", "layer": 20, "expected": 1, "fit": fit, "as_expected": True, "monotonic": True},
        {"emotion": "sad", "layer": 20, "expected": -1, "fit": fit, "as_expected": False, "monotonic": False},
        {"emotion": "happy", "layer": 15, "expected": 1, "fit": fit, "as_expected": True, "monotonic": True}]}
    per = per_emotion_steering(steering)
    assert per is not None and per["layer"] == 20 and [r["emotion"] for r in per["rows"]] == ["happy", "sad"]
    text = per_emotion_text(per)
    assert "happy +1.50 [+1.00, +2.00], p = 0.0001" in text
    assert "the expected way: 1 of 2, monotonic over the fluent range: 1 of 2" in text
    assert "Page" not in text  # results from before the trend test read as they did
    assert per_emotion_steering({"settings": {"layers": [20]}, "curves": []}) is None
    steps = [{"from": 0.0, "to": 0.1, "change": 0.2, "p": 0.01}, {"from": 0.1, "to": 0.2, "change": -0.031, "p": 0.68}]
    for c in steering["curves"]:
        c.update(trend={"p": 0.001 if c["emotion"] == "happy" else 0.2}, steps=steps)
    text = per_emotion_text(per_emotion_steering(steering))
    assert "(happy +0.1 to +0.2: 0.03 the wrong way, paired p = 0.68; sad +0.1 to +0.2" in text
    assert text.endswith("ordered trend the expected way (Page's L test, paired by prompt, p < 0.05): 1 of 2")


def test_the_question_follows_the_story_exactly_as_extraction_reads_it(plain_model_dir, lm):
    from emovec import load_model
    from emovec.content_check import check_inputs, emotion_logprobs, question_suffix

    base = load_model(str(plain_model_dir))
    for model in (lm, base):  # a chat model is asked in plain text too: the story must come first and alone
        ids, lengths = check_inputs(model, ["the cat sat on the mat."])
        story = model.tokenizer(["the cat sat on the mat."])["input_ids"][0]
        assert ids[0][:lengths[0]] == list(story) and len(ids[0]) > lengths[0] == len(story)
    ids, lengths = check_inputs(lm, ["a story."])
    assert lm.tokenizer.decode(ids[0][lengths[0]:]) == question_suffix()
    assert question_suffix().endswith("what emotion does the main character feel?\n\nThe main character feels")
    assert emotion_logprobs(base, ["the cat sat on the mat"], ["calm", "sad"]).shape == (1, 2)


def test_the_checks_pass_writes_the_kept_stories_activations_as_extraction_would(checked_run, lm, tmp_path):
    """The check reads each story once: its shards match a separate extraction, which then has nothing to do."""
    from emovec.activations import extract_corpus, load_corpus_activations
    from emovec.corpus import load_corpus
    from emovec.pipeline import stage_extract
    from emovec.rundir import keep_layers

    run_dir = tmp_path / "run"
    shutil.copytree(checked_run[0], run_dir)
    check = checked_run[1]["content_check"]
    assert check["shards_written"] == check["kept"] > 0
    cfg = open_run(run_dir)
    reused = load_corpus_activations(run_dir / "activations", "stories")
    fresh = extract_corpus(lm, load_corpus(run_dir, "stories", SMALL_EMOTIONS), tmp_path / "fresh", "stories",
                           keep_layers=keep_layers(cfg, lm), start=cfg.token_start, progress=False)
    assert reused.ids == fresh.ids and reused.counts == fresh.counts and reused.layers == fresh.layers
    assert reused.ids == [r["id"] for r in read_jsonl(run_dir / "stories.jsonl") if r["kept"]]
    np.testing.assert_allclose(reused.pooled.numpy(), fresh.pooled.numpy(), rtol=1e-4, atol=1e-4)
    for e in SMALL_EMOTIONS:
        np.testing.assert_allclose(reused.sums[e].numpy(), fresh.sums[e].numpy(), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(reused.mean_norm.numpy(), fresh.mean_norm.numpy(), rtol=1e-6)
    shards = {p.name: p.read_bytes() for p in (run_dir / "activations").glob("stories-*.safetensors")}
    stage_extract(run_dir, cfg, lm, progress=False)
    assert {p.name: p.read_bytes() for p in (run_dir / "activations").glob("stories-*.safetensors")} == shards
