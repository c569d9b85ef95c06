"""emovec throughput benchmark: one run, same inputs, JSON + printed table.

Measures (issue 7): the machine's matmul throughput and the compute limit it implies;
story generation (emovec's decode loop vs plain `model.generate`, same prompts,
sampling and token budget); extraction vs a bare forward pass with padding waste;
readout (all emotions, every token) and steering overhead during generation; peak
resident memory of extraction at two corpus sizes. Each generation row is also given
as a share of the roofline of the dtype it computes in (matmul rate / FLOP per token).
With `--vllm` (in the environment `make vllm` builds: `make bench-vllm`) the same
prompts and texts also go through a vLLM engine: generation in fp32 and bf16,
extraction (pooled in the engine) and its readout and steering overheads.
Run with `make bench`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from emovec import EmotionVectors, SteeringVector, load_concepts, load_model
from emovec.activations import length_sorted_batches, pool_texts, tokenize
from emovec.corpus import story_jobs
from emovec.generation import BF16_MIN_SPEEDUP, FastBackend, HFBackend, Sampling, bf16_speedup, decode
from emovec.live.monitor import Monitor
from emovec.rundir import QUICK_EMOTIONS
from emovec.storage import write_json


def matmul_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 20) -> float:
    """Best-of-3 square matmul throughput in GFLOP/s."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def gen_rate(backend, prompts, sampling, lm) -> dict:
    """Generated tokens/s of one backend (tokens = the re-tokenized completions, the same count for every backend)."""
    t = time.perf_counter()
    outs = backend.generate(prompts, sampling, seed=1)
    dt = time.perf_counter() - t
    n = sum(len(lm.tokenizer(o, add_special_tokens=False).input_ids) for o in outs)
    return {"tokens_per_s": round(n / dt, 1), "tokens": n, "seconds": round(dt, 1)}


def texts_for(n: int) -> list[str]:
    """`n` story texts (the demo run's kept stories if present, else the test stories), repeated as needed."""
    src = Path("runs/demo/stories.jsonl")
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()] if src.exists() else []
    texts = [r["text"] for r in rows if r.get("kept")]
    if not texts:
        texts = [json.loads(line)["text"] for line in Path("tests/data/stories_small.jsonl").read_text().splitlines() if line.strip()]
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


def peak_rss_mb() -> float:
    """This process's peak RSS in MB: VmHWM on Linux (ru_maxrss there keeps the parent's peak from the fork)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def rss_child(n: int) -> float:
    """Peak RSS (MB) of a fresh process extracting `n` texts at all layers."""
    code = ("import sys; sys.path.insert(0, 'bench'); from bench import texts_for, peak_rss_mb;"
            "from emovec import load_model; from emovec.activations import pool_texts;"
            f"lm = load_model(); pool_texts(lm, texts_for({n}), list(range(lm.n_layers)));"
            "print(peak_rss_mb())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def wide_vectors(lm, layer: int) -> EmotionVectors:
    """Vectors for all 171 concepts at one layer (random directions: the readout costs the same as real ones)."""
    names = load_concepts()
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(1, len(names), lm.d_model, generator=g)
    base = {"layer": layer, "emotions": names, "mean": [0.0] * len(names), "std": [1.0] * len(names)}
    return EmotionVectors(names, [layer], raw, raw.clone(), torch.zeros(1, lm.d_model), torch.ones(1),
                          meta={"n_layers": lm.n_layers, "token_baseline": {str(layer): base}})


def overheads(lm, prompts: list[str], new_tokens: int, reps: int = 3) -> dict:
    """Readout (Monitor: all 171 emotions, every token, events built) and steering vs the same decode loop without them.

    All variants decode the same rows for the same number of steps (same seed; the
    steering delta is tiny, so the text and its length hardly change); runs are
    interleaved and the best wall time of each variant is compared.
    """
    layer = 2 * lm.n_layers // 3
    monitor = Monitor(lm, wide_vectors(lm, layer), layer=layer)
    texts = [lm.chat(p) for p in prompts]
    sampling = Sampling(max_new_tokens=new_tokens)
    sv = SteeringVector({layer: 1e-3 * torch.randn(lm.d_model)})

    def plain():
        return decode(lm, texts, sampling, torch.Generator().manual_seed(5), feed_last=True, share_prefix=False)

    def read():
        return monitor.stream(prompts, sampling, seed=5)

    def steered():
        with sv.apply(lm):
            yield from plain()

    best = {"plain": float("inf"), "readout": float("inf"), "steering": float("inf")}
    for _ in range(reps):
        for name, run in (("plain", plain), ("readout", read), ("steering", steered)):
            t = time.perf_counter()
            steps = sum(1 for _ in run())
            best[name] = min(best[name], time.perf_counter() - t)
    return {"rows": len(prompts), "new_tokens": new_tokens, "steps_last_run": steps,
            **{f"{k}_s": round(v, 2) for k, v in best.items()},
            "readout_171_emotions": round(100 * (best["readout"] / best["plain"] - 1), 1),
            "steering": round(100 * (best["steering"] / best["plain"] - 1), 1)}


def vllm_rows(lm, prompts: list[str], sampling: Sampling, texts: list[str], n_tok: int, gen: dict) -> dict:
    """vLLM on the same prompts and texts: generation rows (added to `gen`), extraction, readout and steering cost.

    Each engine is started, warmed on a few prompts, measured and shut down; start-up
    time (not in the rates) is reported. Overheads compare best-of-3 wall times of the
    same requests with and without a steering vector, and with a readout hook projecting
    every token onto 171 emotions.
    """
    from emovec.vllm_engine import VLLMEngine

    out: dict = {}
    layer = 2 * lm.n_layers // 3
    for dtype, name in (("float32", "vllm fp32"), ("bfloat16", "vllm bf16")):
        t = time.perf_counter()
        with VLLMEngine(lm, dtype=dtype) as eng:
            eng.generate(prompts[:4], Sampling(max_new_tokens=8), seed=0)
            out[f"start_s_{dtype}"] = round(time.perf_counter() - t, 1)
            gen[name] = gen_rate(eng, prompts, sampling, lm)
    with VLLMEngine(lm) as eng:
        eng.pool(texts[:4], [0])
        best = 0.0
        for _ in range(3):
            t = time.perf_counter()
            eng.pool(texts, list(range(lm.n_layers)))
            best = max(best, n_tok / (time.perf_counter() - t))
        out["extraction_tokens_per_s"] = round(best, 1)
        short = Sampling(max_new_tokens=96)
        rows = prompts[:32]
        sv = SteeringVector({layer: 1e-3 * torch.randn(lm.d_model)})
        vecs = wide_vectors(lm, layer)
        times = {"plain": float("inf"), "steering": float("inf"), "readout": float("inf")}
        for _ in range(3):
            for kind in times:
                t = time.perf_counter()
                if kind == "readout":
                    eng.generate_with_readout(rows, short, 5, vecs, layer)
                else:
                    eng.generate(rows, short, seed=5, steer=sv if kind == "steering" else None)
                times[kind] = min(times[kind], time.perf_counter() - t)
        out["overhead_percent"] = {k: round(100 * (times[k] / times["plain"] - 1), 1) for k in ("steering", "readout")}
        out["overhead_rows"] = len(rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=256, help="story prompts for the generation comparison")
    ap.add_argument("--batch", type=int, default=FastBackend.batch_size, help="emovec's decode batch (its default)")
    ap.add_argument("--new-tokens", type=int, default=150, help="token budget per story (the quick preset uses 150)")
    ap.add_argument("--texts", type=int, default=96, help="texts for extraction (RSS also at 4x this)")
    ap.add_argument("--out", default="bench/results.json")
    ap.add_argument("--vllm", action="store_true", help="add the vLLM engine's rows (needs `make vllm`)")
    args = ap.parse_args()
    lm = load_model()
    params = sum(p.numel() for p in lm.model.parameters())
    embed = lm.model.get_input_embeddings().weight.numel()
    # generation runs every matmul incl. the (tied) output head; extraction never computes logits
    gflop_gen, gflop_ext = 2 * params / 1e9, 2 * (params - embed) / 1e9
    res: dict = {"model": lm.name, "threads": torch.get_num_threads(), "gflop_per_token": {
        "generation": round(gflop_gen, 3), "extraction": round(gflop_ext, 3)}}
    res["matmul_gflops"] = {"float32": round(matmul_gflops(torch.float32), 1),
                            "bfloat16": round(matmul_gflops(torch.bfloat16), 1)}
    lim_gen = res["matmul_gflops"]["float32"] / gflop_gen
    lim_ext = res["matmul_gflops"]["float32"] / gflop_ext
    res["fp32_limit_tokens_per_s"] = {"generation": round(lim_gen, 1), "extraction": round(lim_ext, 1)}

    jobs = story_jobs(QUICK_EMOTIONS, max(1, args.prompts // len(QUICK_EMOTIONS) + 1), seed=3)[: args.prompts]
    prompts = [lm.chat(j.prompt()) + j.prime() for j in jobs]  # what the quick preset asks (primed stories)
    sampling = Sampling(max_new_tokens=args.new_tokens)
    gen = {"hf_generate (batch 48)": gen_rate(HFBackend(lm, batch_size=48), prompts, sampling, lm)}
    bf16 = bf16_speedup(lm) >= BF16_MIN_SPEEDUP
    res["bf16_writer"] = {"pays_here": bf16, "note": "the default writer dtype 'auto' uses bf16 only where it pays"}
    backends = [(f"emovec fp32{'' if bf16 else ' (default)'}", FastBackend(lm, batch_size=args.batch))]
    if bf16:
        backends.append(("emovec bf16 (default)", FastBackend(lm, batch_size=args.batch, dtype="bfloat16")))
    for name, be in backends:
        gen[name] = gen_rate(be, prompts, sampling, lm)
        gen[name]["finished_row_waste"] = round(1 - be.stats["live_row_steps"] / be.stats["row_steps"], 3)
    texts = texts_for(args.texts)
    n_tok = sum(len(x) for x in lm.tokenizer(texts, truncation=True, max_length=512)["input_ids"])
    if args.vllm:
        res["vllm"] = vllm_rows(lm, prompts, sampling, texts, n_tok, gen)
    hf = gen["hf_generate (batch 48)"]["tokens_per_s"]
    for name, row in gen.items():
        dtype = "bfloat16" if "bf16" in name else "float32"
        row["dtype"] = dtype
        row["vs_hf_generate"] = round(row["tokens_per_s"] / hf, 2)
        row["of_fp32_limit"] = round(row["tokens_per_s"] / lim_gen, 3)
        row["of_roofline"] = round(row["tokens_per_s"] / (res["matmul_gflops"][dtype] / gflop_gen), 3)
    res["generation"] = {"prompts": len(prompts), "new_tokens": args.new_tokens, "batch": args.batch, "backends": gen}

    bare = ours = 0.0
    for _ in range(3):  # interleaved, best of 3: this kind of machine drifts by tens of percent between minutes
        rate, waste = bare_forward(lm, texts, 16)
        bare = max(bare, rate)
        t = time.perf_counter()
        pool_texts(lm, texts, list(range(lm.n_layers)), batch_size=16)
        ours = max(ours, n_tok / (time.perf_counter() - t))
    if args.vllm:
        res["vllm"]["extraction_vs_bare_forward"] = round(res["vllm"]["extraction_tokens_per_s"] / bare, 3)
    res["extraction"] = {"emovec_tokens_per_s": round(ours, 1), "bare_forward_tokens_per_s": round(bare, 1),
                         "ratio": round(ours / bare, 3), "padding_waste": round(waste, 3), "texts": len(texts),
                         "of_fp32_limit": round(ours / lim_ext, 3)}
    res["overhead_percent"] = overheads(lm, [j.prompt() for j in jobs[:32]], 96)
    res["extraction_peak_rss_mb"] = {str(n): round(rss_child(n), 1) for n in (args.texts, 4 * args.texts)}
    write_json(args.out, res)
    print_table(res)


def print_table(res: dict) -> None:
    """The results as a plain table (the JSON file has everything)."""
    print(f"model {res['model']}, {res['threads']} threads; matmul fp32 {res['matmul_gflops']['float32']} / bf16 "
          f"{res['matmul_gflops']['bfloat16']} GFLOP/s; fp32 limit: generation {res['fp32_limit_tokens_per_s']['generation']}"
          f" tok/s, extraction {res['fp32_limit_tokens_per_s']['extraction']} tok/s")
    g = res["generation"]
    print(f"\ngeneration ({g['prompts']} story prompts x {g['new_tokens']} new tokens, same sampling; emovec batch "
          f"{g['batch']}; bf16 writer {'used' if res['bf16_writer']['pays_here'] else 'skipped: slower than fp32 here'})")
    print(f"{'path':<26}{'dtype':>9}{'tok/s':>9}{'vs generate':>13}{'of fp32 limit':>15}{'of its roofline':>17}")
    for name, row in g["backends"].items():
        print(f"{name:<26}{row['dtype']:>9}{row['tokens_per_s']:>9}{row['vs_hf_generate']:>12}x"
              f"{row['of_fp32_limit']:>14.1%}{row['of_roofline']:>16.1%}")
    e = res["extraction"]
    print(f"\nextraction {e['emovec_tokens_per_s']} tok/s vs bare forward {e['bare_forward_tokens_per_s']} "
          f"(ratio {e['ratio']}), padding waste {e['padding_waste']:.1%}, {e['of_fp32_limit']:.1%} of fp32 limit")
    o = res["overhead_percent"]
    print(f"overhead during generation: readout (171 emotions, every token) {o['readout_171_emotions']:+.1f}%, "
          f"steering {o['steering']:+.1f}%")
    print(f"extraction peak RSS (MB): {res['extraction_peak_rss_mb']}")
    v = res.get("vllm")
    if v:
        print(f"vLLM: extraction {v['extraction_tokens_per_s']} tok/s = {v['extraction_vs_bare_forward']} of the bare "
              f"forward; overhead ({v['overhead_rows']} rows): readout {v['overhead_percent']['readout']:+.1f}%, "
              f"steering {v['overhead_percent']['steering']:+.1f}%; engine start {v['start_s_float32']} s (fp32), "
              f"{v['start_s_bfloat16']} s (bf16)")


if __name__ == "__main__":
    main()
