"""What topic adjustment does, measured on one finished run's stored activations: vectors without it and with it.

Both variants use the run's own kept stories and neutral dialogues (no model for the geometry). The measures that
choose (no human norms): held-out recognition at layer 20 (topic means from the training folds only), and the
split-half agreement of the vectors with k = 3 stories per emotion (mean cosine between two disjoint draws, over
the emotions with 6+ stories, 5 seeds) at layers 18, 20 and 25. The outcomes: PC1 vs valence at a layer chosen on
half the rated emotions (20 splits) and the lexical baseline on the same stories, plain and topic-adjusted. With
`--steering` also the six emotions' VADER slopes at layer 20 and their own words' rates (needs the model; about 5
min per variant on a 2-core AVX2 EPYC). Usage, alone on the machine:

    .venv/bin/python bench/topic_ablation.py runs/demo [--steering]

Prints one JSON line per variant and writes them to RUN/topic-ablation.jsonl.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

from emovec.activations import load_corpus_activations
from emovec.recognition import heldout_recognition, recognition_at
from emovec.rundir import load_run, run_emotions
from emovec.storage import read_jsonl
from emovec.validate.analyses import valence_layer_holdout
from emovec.validate.lexical import lexical_baseline
from emovec.validate.scaling import corpus_scaling
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
    emotions = run_emotions(cfg)
    stories = load_corpus_activations(args.run_dir / "activations", "stories")
    neutral = load_corpus_activations(args.run_dir / "activations", "neutral")
    rows = {r["id"]: r for r in read_jsonl(args.run_dir / "stories.jsonl")}
    topics = [str(rows[i].get("topic") or "") for i in stories.ids]
    present = [e for e in emotions if stories.counts.get(e, 0) > 0]
    counts = Counter(stories.labels)
    six_plus = [e for e in present if counts[e] >= 6]
    texts = [rows[i]["text"] for i in stories.ids]
    for name, tp in (("plain means", None), ("topic-adjusted", topics)):
        vectors = EmotionVectors.from_activations(stories, neutral, present, cfg.denoise_fraction, model=lm, topics=tp)
        rec = heldout_recognition(stories, neutral, present, layers=[20], folds=cfg.folds, seed=cfg.seed, topics=tp)
        hold = valence_layer_holdout(vectors)
        lex = lexical_baseline(texts, stories.labels, folds=rec["folds"], seed=cfg.seed, topics=tp)
        split = {}
        for layer in (18, 20, 25):
            sc = corpus_scaling(stories, neutral, six_plus, layer, ks=[3], seeds=5, topics=tp, min_share=0.0)
            split[layer] = {"split_half": sc["rows"][0]["split_half"]["mean"], "top5_k3": sc["rows"][0]["top5"]["mean"]}
        row = {"variant": name, "kept": len(stories.ids), "n_topics": len(set(topics)),
               "top1_layer20": recognition_at(rec, 20)["top1"], "p_top1_layer20": recognition_at(rec, 20)["p_top1"],
               "top5_layer20": recognition_at(rec, 20)["top5"], "chance_top5": rec["chance_top5"],
               "split_half_k3": split, "split_half_emotions": len(six_plus),
               "valence_held_out_r": hold["held_out_r"] if hold else None,
               "valence_held_out_sd": hold["held_out_r_sd"] if hold else None,
               "valence_chosen_layers": hold["chosen_layers"] if hold else None,
               "lexical_top5": lex["top5"], "lexical_valence_r": (lex.get("pc1_valence") or {}).get("pearson")}
        if args.steering:
            steer = steering_efficacy(lm, vectors, SteeringConfig(emotions=SIX, layers=(20,), layer_emotions=()))
            row["steering"] = {c["emotion"]: c["fit"] for c in steer["curves"]}
            row["trend_p"] = {c["emotion"]: c["trend"]["p"] for c in steer["curves"]}
            row["emotion_words"] = {k: steer["emotion_words"][k] for k in ("own", "n_rises", "n_specific")}
        with (args.run_dir / "topic-ablation.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
        print(json.dumps(row, default=str), flush=True)


if __name__ == "__main__":
    main()
