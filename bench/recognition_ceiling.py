"""Is held-out recognition limited by the vectors or by the stories? The vectors against a trained decoder.

On one finished run's stored activations (no model), every kept layer: held-out recognition with the run's
vectors (mean differences, denoised, topic-adjusted as the run was) and with a shrinkage LDA trained on the same
folds and the same topic-adjusted activations (`heldout_recognition(..., classifier="lda")`). LDA also whitens
the within-emotion covariance, so it bounds what a linear reader of the pooled activations gets from these
training stories. If it does no better than the vectors, more recognition needs stories that differ more by
emotion, not another way of building the vectors. Usage, alone on the machine (about 3 min for the demo on a
2-core AVX2 EPYC):

    .venv/bin/python bench/recognition_ceiling.py runs/demo [-o results/recognition_ceiling_demo.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from emovec.activations import load_corpus_activations
from emovec.provenance import cpu_info, library_versions
from emovec.recognition import heldout_recognition
from emovec.rundir import open_run, run_emotions, run_topics
from emovec.storage import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("-o", "--out", type=Path, help="write the result as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = open_run(args.run_dir, write=False)
    stories = load_corpus_activations(args.run_dir / "activations", "stories")
    neutral = load_corpus_activations(args.run_dir / "activations", "neutral")
    topics = run_topics(args.run_dir, cfg, stories.ids)
    present = [e for e in run_emotions(cfg) if stories.counts.get(e, 0) > 0]
    out: dict[str, object] = {"run_dir": str(args.run_dir), "cpu": cpu_info(), "versions": library_versions()}
    for classifier in ("vectors", "lda"):
        t0 = time.perf_counter()
        rec = heldout_recognition(stories, neutral, present, folds=cfg.folds, denoise_fraction=cfg.denoise_fraction,
                                  seed=cfg.seed, topics=topics, classifier=classifier)
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        out[classifier] = rec
    vec, lda = out["vectors"], out["lda"]
    assert isinstance(vec, dict) and isinstance(lda, dict)
    print(f"{args.run_dir}: {vec['n_stories']} stories, {vec['n_emotions']} emotions, {vec['folds']}-fold, "
          f"topic-adjusted {vec['topic_adjusted']}; chance top-1 {vec['chance_top1']:.1%}, top-5 {vec['chance_top5']:.1%}")
    print("layer | vectors top-1 / top-5 | LDA top-1 / top-5 (p top-1)")
    for a, b in zip(vec["layers"], lda["layers"]):
        print(f"{a['layer']:5d} | {a['top1']:6.1%} / {a['top5']:6.1%} | {b['top1']:6.1%} / {b['top5']:6.1%} "
              f"(p = {b['p_top1']:.2g})")
    print(f"seconds: vectors {vec['seconds']}, LDA {lda['seconds']}")
    if args.out:
        write_json(args.out, out)


if __name__ == "__main__":
    main()
