"""Do vectors built through the vLLM engine equal the transformers path's, on a real corpus? (`make vllm` first)

Extracts one run's kept stories and neutral dialogues (default: the demo run, else the test
stories) three times, at every layer, with the run's token start: transformers in float32
(emovec's own path), the vLLM engine in float32, and the vLLM engine in bfloat16. Builds the
vectors from each and reports, per layer, the minimum and median cosine per emotion against
the transformers vectors, and the wall time of each extraction. Writes JSON and prints a table.

    .venv-vllm/bin/python bench/vllm_check.py [--run runs/demo] [--out bench/vllm_check.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from emovec import EmotionVectors, load_model
from emovec.activations import extract_corpus
from emovec.corpus import load_corpus
from emovec.rundir import open_run
from emovec.storage import read_jsonl, write_json
from emovec.vllm_engine import VLLMEngine, VLLMPooler


def corpus(run: Path) -> tuple[list[dict], list[dict], int]:
    """(kept stories, kept neutral rows, token start) of `run`, or the test stories when it has none."""
    if (run / "stories.jsonl").exists():
        neutral = load_corpus(run, "neutral") if (run / "neutral.jsonl").exists() else []
        return load_corpus(run, "stories"), neutral, open_run(run).token_start
    rows = read_jsonl(Path("tests/data/stories_small.jsonl"))
    stories = [{"id": f"s{i}", **r} for i, r in enumerate(rows)]
    neutral = [{"id": f"n{i}", **r} for i, r in enumerate(read_jsonl(Path("tests/data/neutral_small.jsonl")))]
    return stories, neutral, 50


def vectors_via(lm, stories: list[dict], neutral: list[dict], start: int, pooler) -> tuple[EmotionVectors, float]:
    """Vectors from the corpus pooled by `pooler` (None: transformers in this process), and the seconds it took."""
    emotions = sorted({r["emotion"] for r in stories})
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        acts = extract_corpus(lm, stories, d, "stories", start=start, progress=False, pooler=pooler)
        neu = extract_corpus(lm, neutral, d, "neutral", start=start, progress=False, pooler=pooler) if neutral else None
        seconds = time.perf_counter() - t
    present = [e for e in emotions if acts.counts.get(e, 0) > 0]
    return EmotionVectors.from_activations(acts, neu, present, 0.5, model=lm), seconds


def agreement(ref: EmotionVectors, got: EmotionVectors) -> dict[str, dict[str, float]]:
    """Per layer: min and median over emotions of the cosine between the two vectors of each emotion."""
    out = {}
    for layer in ref.layers:
        cos = torch.nn.functional.cosine_similarity(got.matrix(layer), ref.matrix(layer), dim=-1)
        out[str(layer)] = {"min": round(float(cos.min()), 6), "median": round(float(cos.median()), 6)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--out", default="bench/vllm_check.json")
    args = ap.parse_args()
    lm = load_model()
    stories, neutral, start = corpus(Path(args.run))
    ref, t_ref = vectors_via(lm, stories, neutral, start, None)
    res: dict = {"model": lm.name, "run": args.run, "stories": len(stories), "neutral": len(neutral),
                 "emotions": len(ref.emotions), "token_start": start, "seconds": {"transformers_float32": round(t_ref, 1)},
                 "cosine_vs_transformers": {}}
    for dtype in ("float32", "bfloat16"):
        with VLLMEngine(lm, dtype=dtype) as eng:
            eng.pool(["warm the engine up"], [0])
            got, secs = vectors_via(lm, stories, neutral, start, VLLMPooler(eng))
        res["seconds"][f"vllm_{dtype}"] = round(secs, 1)
        res["cosine_vs_transformers"][dtype] = agreement(ref, got)
    write_json(args.out, res)
    print(f"{res['stories']} stories, {res['neutral']} neutral texts, {res['emotions']} emotions, all {lm.n_layers} "
          f"layers; seconds {res['seconds']}")
    for dtype, per_layer in res["cosine_vs_transformers"].items():
        mins = [v["min"] for v in per_layer.values()]
        meds = [v["median"] for v in per_layer.values()]
        worst = min(per_layer, key=lambda k: per_layer[k]["min"])
        print(f"vLLM {dtype}: per-emotion cosine vs transformers fp32: min over emotions and layers {min(mins):.6f} "
              f"(layer {worst}), median of medians {sorted(meds)[len(meds) // 2]:.6f}")


if __name__ == "__main__":
    main()
