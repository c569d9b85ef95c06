"""The content check's share, measured on one corpus: what each share keeps and what its vectors do.

Takes a finished run made WITHOUT the content check whose per-story activations are kept at every layer (the
quick preset keeps all), ranks its kept stories once with `emovec.content_check` (cached in OUT, per question wording), and for each
share builds the vectors from the stories that pass (reusing the run's activations, so no re-extraction), then
reports the norm-free measures the share is chosen by (held-out recognition at layer 20, the six steering
emotions' VADER slopes and trend tests at layer 20, and the emotion-words judge: whether each vector raises its own
emotion's EmoLex words more than the others do) and, as an outcome, PC1 vs valence at a layer chosen on half the rated
emotions. Vectors and recognition are topic-adjusted where the run was (`topic_adjust`; runs made before that
setting existed were not). Usage, alone on the machine (on a 2-core AVX2 EPYC, float32: ranking 7 min, then ~4 min per share):

    .venv/bin/python bench/content_check_ablation.py runs/demo-prev-avx2 --fractions 1 0.5 0.35 0.25

Writes OUT/ablation.jsonl (default `RUN/content-ablation/`), one line per share.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from emovec.activations import load_corpus_activations
from emovec.content_check import emotion_logprobs, keep_mask, own_ranks, question_suffix
from emovec.recognition import heldout_recognition, recognition_at
from emovec.rundir import load_run, run_emotions, run_topics
from emovec.storage import read_jsonl
from emovec.validate.analyses import valence_layer_holdout
from emovec.validate.steering import SteeringConfig, steering_efficacy
from emovec.vectors import EmotionVectors

SIX = ("happy", "sad", "calm", "angry", "afraid", "desperate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.35, 0.25])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    run = load_run(args.run_dir)
    cfg, lm = run.config, run.lm
    if cfg.content_check:
        raise SystemExit(f"{args.run_dir} was made with a content check; give a run made without one")
    emotions = run_emotions(cfg)
    out = args.out or args.run_dir / "content-ablation"
    out.mkdir(parents=True, exist_ok=True)
    stories = load_corpus_activations(args.run_dir / "activations", "stories")
    neutral = load_corpus_activations(args.run_dir / "activations", "neutral")
    text = {r["id"]: r["text"] for r in read_jsonl(args.run_dir / "stories.jsonl")}
    all_topics = run_topics(args.run_dir, cfg, stories.ids)
    cache = out / f"logprobs-{hashlib.sha256(question_suffix().encode()).hexdigest()[:8]}.npy"  # per question wording
    if cache.exists():
        logprobs = np.load(cache)
    else:
        t = time.time()
        logprobs = emotion_logprobs(lm, [text[i] for i in stories.ids], emotions, batch_size=8, progress=True)
        np.save(cache, logprobs)
        print(f"ranked {len(stories.ids)} stories in {time.time() - t:.0f} s", flush=True)
    ranks = own_ranks(logprobs, stories.labels, emotions)
    for f in args.fractions:
        keep = keep_mask(ranks, stories.labels, len(emotions), f) if f < 1 else np.ones(len(ranks), bool)
        chosen = [int(j) for j in np.flatnonzero(keep)]
        sub = stories.subset(chosen)
        present = [e for e in emotions if sub.counts.get(e, 0) > 0]
        topics = None if all_topics is None else [all_topics[j] for j in chosen]  # as the run built them
        vectors = EmotionVectors.from_activations(sub, neutral, present, cfg.denoise_fraction, model=lm, topics=topics)
        rec = heldout_recognition(sub, neutral, present, folds=min(cfg.folds, min(sub.counts.values())), seed=cfg.seed,
                                  topics=topics)
        hold = valence_layer_holdout(vectors)
        steer = steering_efficacy(lm, vectors, SteeringConfig(emotions=SIX, layers=(20,), layer_emotions=()))
        row = {"fraction": f, "topic_adjusted": topics is not None, "kept": len(sub.ids),
               "six_kept": {e: sub.counts.get(e, 0) for e in SIX},
               "recognition_layer20": recognition_at(rec, 20), "folds": rec["folds"],
               "valence_held_out_r": hold["held_out_r"] if hold else None,
               "valence_held_out_sd": hold["held_out_r_sd"] if hold else None,
               "steering_headline": steer["headline"]["text"] if steer.get("headline") else None,
               "steering": {c["emotion"]: c["fit"] for c in steer["curves"]},
               "trend_p": {c["emotion"]: c["trend"]["p"] for c in steer["curves"]},
               "emotion_words": steer.get("emotion_words") and {
                   k: steer["emotion_words"][k] for k in ("n_rises", "n_specific", "n_own", "own")}}
        with (out / "ablation.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
        print(json.dumps({k: row[k] for k in ("fraction", "kept", "six_kept", "valence_held_out_r")}), flush=True)


if __name__ == "__main__":
    main()
