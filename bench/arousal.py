"""Arousal, investigated (issue 11): run `emovec.validate.arousal` on a run directory and print a compact table.

Needs only the run's stored activations, vectors and corpus (no model is loaded) and the
norms extra. Usage:

    .venv/bin/python bench/arousal.py runs/demo [-o results/arousal_demo.json] [--split-seeds 20] [--perm 1000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from emovec.provenance import cpu_info, library_versions
from emovec.storage import write_json
from emovec.validate.arousal import DEFAULT_FRACTIONS, analyze_run


def _r(c: dict[str, Any]) -> str:
    return "n/a" if c.get("r") is None else f"r = {c['r']:+.2f} (p = {c['p']:.2g}, n = {c['n']})"


def _stat(s: dict[str, Any]) -> str:
    return "n/a" if s["mean"] is None else f"{s['mean']:+.2f} +- {s['sd']:.2f} [{s['min']:+.2f}, {s['max']:+.2f}]"


def report(res: dict[str, Any]) -> list[str]:
    """The compact table as lines of text."""
    d = res["default"]
    lines = [f"{res['run_dir']} ({res['model']}): {res['n_emotions']} emotions, {res['n_stories']} stories, "
             f"{res['n_matched']} rated by the norms (|r| of unrelated data ~ {res['null_abs_r']:.2f}); "
             f"arousal vs valence of those words {_r(res['arousal_valence_r'])}",
             f"default (layer {d['layer']}, denoise {d['fraction']}; rebuilt = stored, min cosine "
             f"{d['rebuilt_vs_stored_min_cosine']:.6f}): PC2 vs arousal {_r(d['pc2_arousal'])} (signed >= 0 on these data), "
             f"PC1 vs valence {_r(d['pc1_valence'])}",
             "  same PCs, signed without the norms: " + "; ".join(f"{k} {_r(c)}" for k, c in d["norm_free_sign"].items()), "",
             "denoise | PC2 |r| @default layer | max PC2 |r| (layer) | best-PC |r| @default layer (PC) | PC1-valence |r| @default"]
    for frac in res["fractions"]:
        rows = [g for g in res["grid"] if g["fraction"] == frac]
        at = next(g for g in rows if g["layer"] == d["layer"])
        top = max(rows, key=lambda g: g["pc2_arousal_abs_r"])
        lines.append(f"{frac:7.2f} | {at['pc2_arousal_abs_r']:.2f} | {top['pc2_arousal_abs_r']:.2f} ({top['layer']}) | "
                     f"{at['best_pc_arousal_abs_r']:.2f} (PC{at['best_pc']}) | {at['pc1_valence_abs_r']:.2f}")
    lines += ["", "grid maximum, SELECTED ON THE SAME DATA (family-wise p from shuffled ratings):"]
    for fam, m in res["same_data_max"].items():
        lines.append(f"  {fam:16s} |r| = {m['abs_r']:.2f} at layer {m['layer']}, denoise {m['fraction']}, PC{m['pc']} vs "
                     f"{m['target']} (nominal p = {m['nominal_p']:.2g}; {m['n_settings']} settings; family-wise p = "
                     f"{m['familywise_p']}, null 95% {m['null_max_abs_r_95']:.2f})")
    h = res["holdout"]
    lines += ["", f"HOLD-OUT ({h['seeds']} split seeds, {'stratified by arousal tertile' if h['stratified'] else 'random'}; "
              f"select on one half, r on the other, n = {h['splits'][0]['n_heldout']}; null |r| ~ {h['null_abs_r_heldout']:.2f}):",
              "  family           | held-out r mean +- sd [min, max] | p<0.05 & r>0 | selection-half |r| | modal pick"]
    for fam, s in h["summary"].items():
        m = s["modal_setting"]
        pick = f"layer {m['layer']}" + (f", denoise {m['fraction']}, PC{m['pc']} {m['target']}" if m["pc"] is not None else "")
        lines.append(f"  {fam:16s} | {_stat(s['heldout_r'])} | {s['heldout_significant']}/{h['seeds']} | "
                     f"{_stat(s['selection_r'])} | {pick} ({m['times']}x)")
    rd = res["ridge"]
    lines += ["", f"ridge, {rd['folds']}-fold CV over the rated emotions (denoise {rd['fraction']}): default layer "
              f"{rd['default_layer']['layer']}: arousal {_r(rd['default_layer']['arousal'])}, valence "
              f"{_r(rd['default_layer']['valence'])}; best layer for arousal, SAME DATA: {rd['best_layer_same_data']['layer']} "
              f"{_r(rd['best_layer_same_data']['arousal'])}", "",
              f"confounds at layer {res['confounds']['layer']} (per emotion):"]
    for name, c in res["confounds"].items():
        if isinstance(c, dict):
            lines.append(f"  {name:14s} mean {c['mean']:.2f}: vs arousal {_r(c['arousal'])}; vs valence {_r(c['valence'])}; "
                         f"vs PC1 score {_r(c['pc1_score'])}; PC1-arousal with it regressed out {_r(c['pc1_arousal_partial'])}")
    cs = res["corpus_size"]
    if "rows" in cs:
        lines += ["", f"corpus size ({cs['n_emotions']} emotions with {cs['ks'][-1]}+ stories, {cs['n_matched']} rated, "
                  f"{cs['seeds']} seeds; |r| unless ridge):"]
        for row in cs["rows"]:
            for s, v in ((k, row[k]) for k in cs["settings"]):
                where = cs["settings"][s]
                lines.append(f"  k={row['k']} {s} (layer {where['layer']}, denoise {where['fraction']}): PC1 {_stat(v['pc1'])}; "
                             f"PC2 {_stat(v['pc2'])}; "
                             f"best PC {_stat(v['best_pc'])}; ridge arousal {_stat(v['ridge'])}; ridge valence "
                             f"{_stat(v['ridge_valence'])}")
    else:
        lines.append(f"corpus size: {cs.get('skipped')}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("-o", "--out", type=Path, default=None, help="default results/arousal_<run name>.json")
    ap.add_argument("--split-seeds", type=int, default=20)
    ap.add_argument("--perm", type=int, default=1000, help="shuffles for the family-wise p of the grid maximum")
    ap.add_argument("--pcs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=5, help="draws per k of the corpus-size curve")
    ap.add_argument("--fractions", default=",".join(str(f) for f in DEFAULT_FRACTIONS))
    ap.add_argument("--random-split", action="store_true", help="random halves instead of stratified by arousal tertile")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = args.out or Path("results") / f"arousal_{args.run_dir.name}.json"
    t0 = time.perf_counter()
    res = analyze_run(args.run_dir, n_pcs=args.pcs, split_seeds=args.split_seeds, n_perm=args.perm, seeds=args.seeds,
                      stratify=not args.random_split, fractions=[float(f) for f in args.fractions.split(",")])
    res.update(seconds=round(time.perf_counter() - t0, 1), cpu=cpu_info(), versions=library_versions(),
               command=f"python bench/arousal.py {args.run_dir} -o {out} --split-seeds {args.split_seeds} --perm {args.perm}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, res)
    print("\n".join(report(res)))
    print(f"{res['seconds']} s; wrote {out}")


if __name__ == "__main__":
    main()
