"""emovec throughput benchmark: one run, same inputs, JSON + printed table.

Measures (issue 7): machine matmul throughput; story generation (emovec backends vs
plain `generate`, same prompts, sampling and token budget); extraction vs a bare
forward pass with padding waste; readout and steering overhead during generation;
peak resident memory of extraction at two corpus sizes. Run with `make bench`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from emovec import load_model
from emovec.activations import hidden_of, layer_hooks, length_sorted_batches, pool_texts, tokenize
from emovec.corpus import story_jobs
from emovec.generation import FastBackend, HFBackend, Sampling
from emovec.pipeline import QUICK_EMOTIONS
from emovec.storage import write_json



def matmul_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def gen_rate(backend, prompts, sampling, lm) -> tuple[float, int, float]:
    t = time.perf_counter()
    outs = backend.generate(prompts, sampling, seed=1)
    dt = time.perf_counter() - t
    n = sum(len(lm.tokenizer(o, add_special_tokens=False).input_ids) for o in outs)
    return n / dt, n, dt


def texts_for(n: int) -> list[str]:
    src = Path("runs/demo/stories.jsonl")
    rows = [json.loads(l) for l in src.read_text().splitlines() if l.strip()] if src.exists() else []
    texts = [r["text"] for r in rows if r.get("kept")]
    if not texts:
        texts = [json.loads(l)["text"] for l in Path("tests/data/stories_small.jsonl").read_text().splitlines() if l.strip()]
    return (texts * (n // len(texts) + 1))[:n]


def bare_forward(lm, texts: list[str], batch_size: int) -> tuple[float, float]:
    """Tokens/s of a hook-free forward over the same length-sorted batches; share of padded positions."""
    lengths = [len(x) for x in lm.tokenizer(texts, truncation=True, max_length=512)["input_ids"]]
    real = padded = 0
    t = time.perf_counter()
    with torch.inference_mode():
        for idx in length_sorted_batches(lengths, batch_size):
            enc = tokenize(lm, [texts[i] for i in idx], 512)
            lm.model.base_model(**enc, use_cache=False)
            real += int(enc["attention_mask"].sum())
            padded += enc["attention_mask"].numel()
    return real / (time.perf_counter() - t), 1 - real / padded


def rss_child(n: int) -> float:
    """Peak RSS (MB) of a fresh process extracting `n` texts at all layers."""
    code = ("import resource, sys; sys.path.insert(0, 'bench'); from bench import texts_for;"
            "from emovec import load_model; from emovec.activations import pool_texts;"
            f"lm = load_model(); pool_texts(lm, texts_for({n}), list(range(lm.n_layers)));"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--texts", type=int, default=96)
    ap.add_argument("--out", default="bench/results.json")
    args = ap.parse_args()
    lm = load_model()
    params = sum(p.numel() for p in lm.model.parameters())
    gflop_tok = 2 * params / 1e9
    res: dict = {"model": lm.name, "threads": torch.get_num_threads(), "gflop_per_token": round(gflop_tok, 3)}
    res["matmul_gflops"] = {"float32": round(matmul_gflops(torch.float32), 1),
                            "bfloat16": round(matmul_gflops(torch.bfloat16), 1)}
    limit = res["matmul_gflops"]["float32"] / gflop_tok
    res["fp32_limit_tokens_per_s"] = round(limit, 1)

    jobs = story_jobs(QUICK_EMOTIONS, max(1, args.prompts // len(QUICK_EMOTIONS) + 1), seed=3)[: args.prompts]
    prompts = [lm.chat(j.prompt()) for j in jobs]
    sampling = Sampling(max_new_tokens=args.new_tokens)
    gen = {}
    for name, be in [("hf_generate", HFBackend(lm, batch_size=48)), ("fast_fp32", FastBackend(lm, batch_size=48)),
                     ("fast_bf16", FastBackend(lm, batch_size=48, dtype="bfloat16"))]:
        rate, n, dt = gen_rate(be, prompts, sampling, lm)
        gen[name] = {"tokens_per_s": round(rate, 1), "tokens": n, "seconds": round(dt, 1),
                     "of_fp32_limit": round(rate / limit, 3)}
    for name in ("fast_fp32", "fast_bf16"):
        gen[name]["vs_hf_generate"] = round(gen[name]["tokens_per_s"] / gen["hf_generate"]["tokens_per_s"], 2)
    res["generation"] = gen

    texts = texts_for(args.texts)
    t = time.perf_counter()
    _, _, n_tok = pool_texts(lm, texts, list(range(lm.n_layers)), batch_size=16)
    ours = sum(len(x) for x in lm.tokenizer(texts, truncation=True, max_length=512)["input_ids"]) / (time.perf_counter() - t)
    bare, waste = bare_forward(lm, texts, 16)
    res["extraction"] = {"emovec_tokens_per_s": round(ours, 1), "bare_forward_tokens_per_s": round(bare, 1),
                         "ratio": round(ours / bare, 3), "padding_waste": round(waste, 3), "texts": len(texts),
                         "of_fp32_limit": round(ours / limit, 3)}

    # readout and steering overhead on the same fp32 decode loop (FastBackend uses lm.model, so hooks apply)
    small = prompts[:16]
    base_rate = gen_rate(FastBackend(lm, batch_size=16), small, sampling, lm)[0]
    units = torch.randn(171, lm.d_model)

    def readout(_i: int, _m: object, _x: tuple, out: object) -> None:
        hidden_of(out)[:, -1].float() @ units.T

    with layer_hooks(lm, [20], readout):
        read_rate = gen_rate(FastBackend(lm, batch_size=16), small, sampling, lm)[0]
    from emovec.steering import SteeringVector

    with SteeringVector({20: torch.randn(lm.d_model)}).apply(lm):
        steer_rate = gen_rate(FastBackend(lm, batch_size=16), small, sampling, lm)[0]
    res["overhead_percent"] = {"readout_171_emotions": round(100 * (base_rate / read_rate - 1), 1),
                               "steering": round(100 * (base_rate / steer_rate - 1), 1),
                               "note": "sampled generation: token counts differ between runs; rates are per token"}
    res["extraction_peak_rss_mb"] = {str(n): round(rss_child(n), 1) for n in (args.texts, 4 * args.texts)}
    res["peak_rss_self_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    write_json(args.out, res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
