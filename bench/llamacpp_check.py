"""llama.cpp steered by emovec's exported control vectors, compared with emovec's own steering (README figures).

Opens the embedded GGUF in llama.cpp and in emovec, exports happy and sad from a run's
vectors at its recommended steering layer and strength (`analyses/steering.json`; else
the vectors' default layer and 0.2), and compares logits and greedy generations on the
built-in steering prompts (see `emovec.validate.llamacpp`). Needs `make llamacpp`. Usage:

    .venv/bin/python bench/llamacpp_check.py runs/demo [--prompts 12] [--tokens 40] [--out results/llamacpp.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import emovec
from emovec.provenance import cpu_info, library_versions
from emovec.storage import write_json
from emovec.validate.llamacpp import llama_agreement, open_llama
from emovec.validate.steering import steering_prompts


def _ci(stat: dict) -> str:
    return "[{:+.2f}, {:+.2f}]".format(*stat["ci95"]) if stat.get("ci95") else "[n/a]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("results/llamacpp.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    lm = emovec.load_model("smollm2-135m")
    vectors = emovec.EmotionVectors.load(args.run_dir / "vectors.safetensors", model=lm)
    rec_file = args.run_dir / "analyses" / "steering.json"
    rec = json.loads(rec_file.read_text()).get("recommended") or {} if rec_file.exists() else {}
    layer, strength = int(rec.get("layer") or vectors.default_layer), float(rec.get("strength") or 0.2)
    t0 = time.perf_counter()
    res = llama_agreement(lm, vectors, open_llama(lm), ("happy", "sad"), strength=strength, layers=[layer],
                          prompts=steering_prompts()[: args.prompts], max_new_tokens=args.tokens)
    res.update(run_dir=str(args.run_dir), seconds=round(time.perf_counter() - t0, 1), cpu=cpu_info(),
               versions=library_versions(), command=f"python bench/llamacpp_check.py {args.run_dir} "
               f"--prompts {args.prompts} --tokens {args.tokens}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, res)
    rows = res["logits"]
    for key in ("r_unsteered", "r_happy", "r_sad", "r_delta_happy", "r_delta_sad"):
        v = np.array([r[key] for r in rows])
        print(f"{key:14s} median {np.median(v):.4f} min {v.min():.4f} (n={len(v)} prompts)")
    for key in ("top1_unsteered", "top1_happy", "top1_sad"):
        print(f"{key:14s} {sum(r[key] for r in rows)}/{len(rows)} greedy next tokens agree")
    for engine, e in res["engines"].items():
        means = {c: float(np.mean(v["readout"])) for c, v in e["conditions"].items()}
        d, j = e["readout_first_minus_second"], e["vader_first_minus_second"]
        print(f"{engine:9s} readout happy-sad: " + ", ".join(f"{c} {m:+.2f}" for c, m in means.items())
              + f"; happy-steered minus sad-steered {d['mean']:+.2f} {_ci(d)} p={d['p']:.2g} (n={d['n']}); "
              f"VADER {j['mean']:+.2f} {_ci(j)} p={j['p']:.2g}")
    print(f"layer {layer}, strength {strength}, {res['seconds']} s; wrote {args.out}")


if __name__ == "__main__":
    main()
