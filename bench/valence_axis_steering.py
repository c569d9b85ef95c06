"""Does steering carry more than valence? The six emotions steered with, without and only along PC1 of the vectors.

On the demo the vectors steer VADER the expected way for all six valence-laden emotions, but no emotion raises its
own EmoLex words more steeply than every other steered emotion does (happy's joy words rise as steeply under calm).
This bench takes one run's vectors at one layer (20 by default) and its first principal component over all the
run's emotions (found without the human norms; on the demo it follows human valence at r = 0.62 at layer 20 and
0.86 at layer 21), then
runs the steering analysis (`emovec.validate.steering.steering_efficacy`, VADER and EmoLex judges, 36 prompts x 5
strengths) three times on the six emotions (each analysis whole, replies included, in RUN/valence-axis/; a variant
whose replies are saved there for the same PC1 is re-analysed from them, without generating, unless --force):

- `as built`: the run's vectors;
- `PC1 removed`: each vector minus its component along PC1, renormalised (steering scales unit vectors);
- `PC1 only`: each vector's component along PC1 alone, renormalised (so every vector is +-PC1: emotions on the
  same side become one vector, which makes their comparisons a null test of the specificity verdict).

If the vectors were only a valence axis, `PC1 removed` would move neither judge and `PC1 only` would match `as
built`; emotion-specific content would show as own-word rises that survive the removal. Also prints each vector's
cosine with PC1 and the cosines among the six, and for `PC1 only` the specificity test between emotions that
became one vector (every pair on the same side of PC1 x every EmoLex category; a null, so about 5% should fall
below 0.05). Usage, alone on the machine (about 4.5 min per variant on a 2-core
AVX2 EPYC):

    .venv/bin/python bench/valence_axis_steering.py runs/demo [--layer 20] [-o results/valence_axis_steering_demo.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any

import torch

from emovec.provenance import cpu_info, library_versions
from emovec.rundir import load_run
from emovec.storage import read_json, write_json
from emovec.validate.emotion_words import CATEGORIES, by_prompt, load_emolex, paired_slope_gap, word_rates
from emovec.validate.steering import SteeringConfig, analyse_samples, steering_efficacy
from emovec.vectors import EmotionVectors

SIX = ("happy", "sad", "calm", "angry", "afraid", "desperate")


def first_pc(vectors: EmotionVectors, layer: int) -> torch.Tensor:
    """Unit first principal component of all the run's unit vectors at `layer`, centred: the PCA the geometry
    analysis correlates with the norms (`emovec.validate.analyses.pca_against_norms`), so its r applies here."""
    m = vectors.matrix(layer).to(torch.float64)
    return torch.linalg.svd(m - m.mean(0), full_matrices=False).Vh[0]


def along_axis(vectors: EmotionVectors, layer: int, axis: torch.Tensor, keep: bool) -> EmotionVectors:
    """A copy whose vectors at `layer` keep only their component along `axis` (`keep`) or lose it."""
    li = vectors.layer_index(layer)
    denoised = vectors.denoised.clone()
    v = denoised[li].to(torch.float64)
    part = (v @ axis)[:, None] * axis[None, :]
    denoised[li] = (part if keep else v - part).to(denoised.dtype)
    return dataclasses.replace(vectors, denoised=denoised, meta={**vectors.meta, "variant": "pc1 only" if keep else "pc1 removed"})


def summary(steer: dict[str, Any]) -> dict[str, Any]:
    """The per-emotion VADER fits and trend p, and the emotion-words verdicts, of one steering analysis."""
    words = steer.get("emotion_words") or {}
    return {"vader": {c["emotion"]: c["fit"] for c in steer["curves"]},
            "trend_p": {c["emotion"]: c["trend"]["p"] for c in steer["curves"]},
            "emotion_words": {k: words.get(k) for k in ("own", "n_rises", "n_specific", "n_own", "slopes")},
            "timing": steer.get("timing")}


def identical_pairs_check(full: dict[str, Any], sides: dict[str, int]) -> dict[str, Any]:
    """The specificity test between emotions steered with one and the same vector (a null: no real difference).

    `sides[e]` is the sign of e's component along PC1; in the `PC1 only` variant emotions on one side are the
    same vector. For every such pair and every EmoLex category, the paired-by-prompt gap test on the saved
    replies over the strengths both are fluent at; returns how many of these null tests fall below 0.05 and 0.01.
    """
    lexicon = load_emolex()
    if lexicon is None:
        return {"n_tests": 0}
    layer = full["settings"]["layers"][0]
    ranges = {c["emotion"]: c["useful_range"] for c in full["curves"] if c["layer"] == layer}
    rows = {e: [r for r in full["samples"] if r["emotion"] in (None, e) and r["layer"] in (None, layer)] for e in ranges}
    rates = {e: word_rates([r["text"] for r in rows[e]], lexicon) for e in ranges}
    ps = []
    for a, b in itertools.combinations(sorted(ranges), 2):
        if sides[a] != sides[b]:
            continue
        lo, hi = max(ranges[a][0], ranges[b][0]), min(ranges[a][1], ranges[b][1])
        for k in range(len(CATEGORIES)):
            p = paired_slope_gap(by_prompt(rows[a], rates[a][:, k], lo, hi), by_prompt(rows[b], rates[b][:, k], lo, hi))["p"]
            if p is not None:
                ps.append({"pair": f"{a}~{b}", "category": CATEGORIES[k], "p": p})
    return {"n_tests": len(ps), "below_05": sum(t["p"] < 0.05 for t in ps), "below_01": sum(t["p"] < 0.01 for t in ps),
            "smallest": sorted(ps, key=lambda t: t["p"])[:3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--layer", type=int, default=20)
    ap.add_argument("-o", "--out", type=Path, help="write the result as JSON here")
    ap.add_argument("--force", action="store_true", help="generate again even where a variant's replies are saved")
    args = ap.parse_args()
    torch.set_num_threads(2)
    run = load_run(args.run_dir)
    vectors, layer = run.vectors, args.layer
    axis = first_pc(vectors, layer)
    units = vectors.matrix(layer, list(SIX)).to(torch.float64)
    out: dict[str, Any] = {"run_dir": str(args.run_dir), "layer": layer, "cpu": cpu_info(), "versions": library_versions(),
                           "cos_pc1": {e: round(float(u @ axis), 3) for e, u in zip(SIX, units)},
                           "cos_among": {f"{a}~{b}": round(float(units[i] @ units[j]), 3)
                                         for i, a in enumerate(SIX) for j, b in enumerate(SIX) if i < j},
                           "variants": {}}
    print(f"cosine with PC1 at layer {layer}: {out['cos_pc1']}", flush=True)
    print(f"cosines among the six: {out['cos_among']}", flush=True)
    config = SteeringConfig(emotions=SIX, layers=(layer,), layer_emotions=())
    for name, vecs in (("as built", vectors), ("PC1 removed", along_axis(vectors, layer, axis, keep=False)),
                       ("PC1 only", along_axis(vectors, layer, axis, keep=True))):
        t0 = time.perf_counter()
        saved = args.run_dir / "valence-axis" / f"L{layer}-{name.replace(' ', '-').lower()}.json"
        full = read_json(saved) if saved.exists() and not args.force else None
        axis_used = None if vecs is vectors else axis.tolist()  # the variants made from PC1 record it
        if full is not None and (axis_used is None or torch.allclose(torch.tensor(full.get("pc1_axis") or [0.0] * len(axis)),
                                                                      axis.float())):
            full.update(analyse_samples(full["samples"], full["settings"], full["settings"]["readout_layer"]))
        else:  # no replies saved, or saved for another PC1
            full = {**steering_efficacy(run.lm, vecs, config), "pc1_axis": axis_used}
        write_json(saved, full)
        row = summary(full)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        if name == "PC1 only":
            row["identical_pairs_check"] = identical_pairs_check(full, {e: 1 if c > 0 else -1 for e, c in out["cos_pc1"].items()})
            print(f"  identical vectors compared (a null): {row['identical_pairs_check']}", flush=True)
        out["variants"][name] = row
        vader = ", ".join(f"{e} {f['slope']:+.2f} (p = {f['p']:.1g})" for e, f in row["vader"].items() if f and f.get("slope") is not None)
        own = "; ".join(f"{r['emotion']}: {r['category']} {100 * r['slope']:+.1f} (p = {r['p']:.2g}; steepest other "
                        f"{r['rival']} {100 * r['rival_slope']:+.1f}, gap p = {r['gap_p']:.2g})"
                        for r in row["emotion_words"]["own"] or [])
        print(f"{name} ({row['wall_s']} s): VADER slope per unit strength: {vader}", flush=True)
        words = row["emotion_words"]
        print(f"  own words (points of the reply's words per unit strength): {own}; "
              f"rise {words['n_rises']}, specific {words['n_specific']}", flush=True)
    if args.out:
        write_json(args.out, out)


if __name__ == "__main__":
    main()
