"""A quick throughput check for sizing the demo: the story writer and extraction, on the embedded model.

Writes 128 plain-recipe stories (150 new tokens, batch 128) with the bf16 writer, then pools them at all 30
layers in float32 and in bfloat16. Usage, alone on the machine (~2 minutes on 2 cores):

    .venv/bin/python bench/quick_throughput.py
    .venv/bin/python bench/quick_throughput.py --writer float32,bfloat16 --batch 64,128 --no-extract

`--writer` and `--batch` time the writer in each dtype at each batch size on the same prompts (is the
auto-chosen bf16 writer the faster one on this CPU, and at which batch?).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

import emovec
from emovec.activations import pool_texts
from emovec.concepts import load_concepts
from emovec.corpus import story_jobs, topics
from emovec.generation import FastBackend, Sampling


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writer", default="bfloat16", help="writer dtypes to time, comma-separated")
    ap.add_argument("--batch", default="128", help="writer batch sizes to time, comma-separated")
    ap.add_argument("--no-extract", action="store_true", help="time the writer only")
    args = ap.parse_args()
    lm = emovec.load_model("smollm2-135m")
    print("torch threads", torch.get_num_threads())
    jobs = story_jobs(load_concepts(), 2, topics()[:12], seed=5, style="plain")[:128]
    prompts = [lm.chat(j.prompt()) for j in jobs]
    sampling = Sampling(max_new_tokens=150, temperature=0.8, top_p=1.0, repetition_penalty=1.0)
    texts: list[str] = []
    for dtype in args.writer.split(","):
        for batch in (int(b) for b in args.batch.split(",")):
            backend = FastBackend(lm, batch_size=batch, dtype=dtype)
            backend.model()
            texts, dt = timed(lambda b=backend: b.generate(prompts, sampling, seed=1))
            n = sum(len(lm.tokenizer(x)["input_ids"]) for x in texts)
            print(f"writer {dtype} batch {batch}: {n} tokens in {dt:.1f} s = {n / dt:.0f} tok/s, "
                  f"{len(texts) / dt:.2f} stories/s")
    if args.no_extract:
        return
    n = sum(len(lm.tokenizer(x)["input_ids"]) for x in texts)
    for name in ("float32", "bfloat16"):
        model = emovec.load_model("smollm2-135m", dtype=name)  # as a run with this --dtype loads it
        _, dt = timed(lambda m=model: pool_texts(m, texts, list(range(m.n_layers)), start=10, batch_size=16))
        print(f"extraction {name}: {n} tokens in {dt:.1f} s = {n / dt:.0f} tok/s")


if __name__ == "__main__":
    main()
