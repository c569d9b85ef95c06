"""What the replacement stories add, measured on one finished run that wrote them (`--refill`, the quick preset).

The first round's decisions do not depend on the replacement rounds (the content check decides round by round), so
the run's first-round kept stories are exactly what the same run without replacements would have kept. This builds
vectors from them (reusing the run's per-story activations: no model for the geometry) and compares them with the
run's own: held-out recognition at layer 20, PC1 vs valence at a layer chosen on half the rated emotions (an outcome;
20 splits), the lexical baseline's valence r and top-5 on the same stories, and with `--steering` the six emotions'
VADER slopes at layer 20 (needs the model; about 4 min per variant on a 2-core AVX2 EPYC). Usage, alone on the
machine:

    .venv/bin/python bench/refill_ablation.py runs/demo [--steering]

Prints one JSON line per variant and writes them to RUN/refill-ablation.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from emovec.activations import load_corpus_activations
from emovec.corpus import refill_round
from emovec.recognition import heldout_recognition, recognition_at
from emovec.rundir import load_run, run_emotions, run_topics
from emovec.storage import read_jsonl
from emovec.validate.analyses import valence_layer_holdout
from emovec.validate.lexical import lexical_baseline
from emovec.validate.steering import SteeringConfig, steering_efficacy
from emovec.vectors import EmotionVectors

SIX = ("happy", "sad", "calm", "angry", "afraid", "desperate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--steering", action="store_true", help="also the six emotions' VADER slopes (needs the model)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    run = load_run(args.run_dir)
    cfg, lm = run.config, run.lm
    if not cfg.refill:
        raise SystemExit(f"{args.run_dir} was made without replacement stories (--refill); give a run made with them")
    emotions = run_emotions(cfg)
    stories = load_corpus_activations(args.run_dir / "activations", "stories")
    neutral = load_corpus_activations(args.run_dir / "activations", "neutral")
    rows = {r["id"]: r for r in read_jsonl(args.run_dir / "stories.jsonl")}
    all_topics = run_topics(args.run_dir, cfg, stories.ids)
    variants = {"first round only (no replacements)": [j for j, i in enumerate(stories.ids) if refill_round(rows[i]) == 0],
                "with replacements (the run)": list(range(len(stories.ids)))}
    for name, keep in variants.items():
        sub = stories.subset(keep)
        present = [e for e in emotions if sub.counts.get(e, 0) > 0]
        topics = None if all_topics is None else [all_topics[j] for j in keep]  # as the run built them
        vectors = EmotionVectors.from_activations(sub, neutral, present, cfg.denoise_fraction, model=lm, topics=topics)
        rec = heldout_recognition(sub, neutral, present, folds=min(cfg.folds, min(sub.counts.values())), seed=cfg.seed,
                                  topics=topics)
        hold = valence_layer_holdout(vectors)
        lex = lexical_baseline([rows[i]["text"] for i in sub.ids], sub.labels, folds=rec["folds"], seed=cfg.seed,
                               topics=topics)
        counts = np.array([sub.counts.get(e, 0) for e in emotions])
        row = {"variant": name, "topic_adjusted": topics is not None, "kept": len(sub.ids), "emotions_with_6": int((counts >= 6).sum()),
               "six_kept": {e: sub.counts.get(e, 0) for e in SIX}, "folds": rec["folds"],
               "top5_layer20": recognition_at(rec, 20)["top5"], "chance_top5": rec["chance_top5"],
               "valence_held_out_r": hold["held_out_r"] if hold else None,
               "valence_held_out_sd": hold["held_out_r_sd"] if hold else None,
               "lexical_top5": lex["top5"], "lexical_valence_r": (lex.get("pc1_valence") or {}).get("pearson")}
        if args.steering:
            steer = steering_efficacy(lm, vectors, SteeringConfig(emotions=SIX, layers=(20,), layer_emotions=()))
            row["steering"] = {c["emotion"]: c["fit"] for c in steer["curves"]}
            row["trend_p"] = {c["emotion"]: c["trend"]["p"] for c in steer["curves"]}
        with (args.run_dir / "refill-ablation.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
        print(json.dumps(row, default=str), flush=True)


if __name__ == "__main__":
    main()
