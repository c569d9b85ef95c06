"""Does emovec on a CUDA GPU read and steer the model as it does on the CPU?

Loads the model three times (CPU float32, CUDA float32, CUDA bfloat16), pools the same texts
at every layer and reports the cosine of each CUDA activation with the CPU one (minimum and
median per layer). Then builds one steering direction from those texts (the mean of the
`--emotion` stories minus the mean of all, at the middle layer, scaled to a fraction of the
layer's mean norm) and completes a few prompts greedily on each device, unsteered and steered,
reporting how many completions match the CPU's word for word and the VADER compound of each.
Ends with pooling throughput on each device. Writes JSON and prints it.

    python bench/cuda_check.py [--texts tests/data/stories_small.jsonl] [--out cuda_check.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from emovec import Sampling, SteeringVector, load_model, pool_texts
from emovec.generation import HFBackend
from emovec.storage import read_jsonl, write_json

PROMPTS = ["Describe your morning.", "Tell me about the weather today.", "What did you do last weekend?",
           "Write a note to a friend about your week."]


def cosines(a: torch.Tensor, b: torch.Tensor) -> dict[str, list[float]]:
    """Per layer, the minimum and median cosine between matching rows of [n, layers, d] tensors."""
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)  # [n, layers]
    return {"min": [round(float(x), 6) for x in cos.min(0).values],
            "median": [round(float(x), 6) for x in cos.median(0).values]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", default="tests/data/stories_small.jsonl")
    ap.add_argument("--emotion", default="happy")
    ap.add_argument("--strength", type=float, default=0.2)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--device", default="cuda", help="the device compared with the CPU (cpu only to try the script)")
    ap.add_argument("--out", default="cuda_check.json")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this on a GPU machine")
    rows = read_jsonl(Path(args.texts))
    texts, labels = [r["text"] for r in rows], [r["emotion"] for r in rows]
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    out: dict = {"gpu": gpu, "torch": torch.__version__, "n_texts": len(texts)}
    lms = {"cpu-float32": load_model(device="cpu", dtype="float32"),
           "cuda-float32": load_model(device=args.device, dtype="float32"),
           "cuda-bfloat16": load_model(device=args.device, dtype="bfloat16")}
    layers = list(range(lms["cpu-float32"].n_layers))
    pooled, speed = {}, {}
    for name, lm in lms.items():
        pool_texts(lm, texts[:4], layers)  # warm-up
        t = time.perf_counter()
        pooled[name] = pool_texts(lm, texts, layers, batch_size=16)[0].float().cpu()
        speed[name] = round(len(texts) / (time.perf_counter() - t), 1)
    out["pool_texts_per_s"] = speed
    out["cosine_vs_cpu"] = {name: cosines(pooled[name], pooled["cpu-float32"]) for name in pooled if name != "cpu-float32"}

    ref = pooled["cpu-float32"]
    mid = len(layers) // 2
    mask = torch.tensor([lab == args.emotion for lab in labels])
    direction = ref[mask, mid].mean(0) - ref[:, mid].mean(0)
    scale = args.strength * float(ref[:, mid].norm(dim=-1).mean())
    sv = SteeringVector({mid: direction / direction.norm() * scale}, f"{args.emotion} at layer {mid}")
    vader = SentimentIntensityAnalyzer()
    greedy = Sampling(max_new_tokens=args.tokens, temperature=0.0)
    gens: dict[str, dict[str, list[str]]] = {}
    for name, lm in lms.items():
        prompts = [lm.chat(p) for p in PROMPTS]
        backend = HFBackend(lm, batch_size=len(prompts))
        gens[name] = {"unsteered": backend.generate(prompts, greedy, 0)}
        with sv.apply(lm):
            gens[name]["steered"] = backend.generate(prompts, greedy, 0)
    out["generation"] = {
        name: {arm: {"same_as_cpu": sum(a == b for a, b in zip(texts_, gens["cpu-float32"][arm])),
                     "vader_mean": round(sum(vader.polarity_scores(x)["compound"] for x in texts_) / len(texts_), 3)}
               for arm, texts_ in g.items()}
        for name, g in gens.items()}
    out["steering"] = {"layer": mid, "strength": args.strength, "emotion": args.emotion, "n_prompts": len(PROMPTS)}
    out["samples"] = {name: {arm: g[arm][0] for arm in g} for name, g in gens.items()}
    write_json(Path(args.out), out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
