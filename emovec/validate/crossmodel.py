"""Do two models organise the same emotions the same way? Geometry compared across models.

Vectors from different models live in different spaces (other widths, other bases), so
they cannot be compared directly. What can be compared is their geometry over the
emotions both runs share: which emotions each model puts close together (the
cosine-similarity matrices, correlated over emotion pairs: representational similarity
analysis, with a Mantel permutation test that shuffles one model's emotion labels),
whether each emotion has the same nearest neighbours, and whether the first principal
component orders the emotions the same way. Layers are matched by relative depth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr

from ..storage import EmovecError
from ..vectors import EmotionVectors
from .analyses import pca_against_norms


def _cosines(vectors: EmotionVectors, layer: int, emotions: list[str]) -> np.ndarray:
    units = vectors.matrix(layer, emotions).double().numpy()
    return np.asarray(units @ units.T)


def _depth(vectors: EmotionVectors, layer: int) -> float:
    n = int(vectors.meta.get("n_layers", max(vectors.layers) + 1))
    return layer / max(n - 1, 1)


def matched_layer(a: EmotionVectors, layer_a: int, b: EmotionVectors) -> int:
    """The layer of `b` whose relative depth is closest to `layer_a`'s in `a`."""
    target = _depth(a, layer_a)
    return min(b.layers, key=lambda lay: abs(_depth(b, lay) - target))


def _rsa(ca: np.ndarray, cb: np.ndarray, n_perm: int, rng: np.random.Generator) -> dict[str, Any]:
    """Spearman r between the upper triangles of two similarity matrices, with a Mantel permutation p."""
    iu = np.triu_indices(len(ca), k=1)
    r = float(spearmanr(ca[iu], cb[iu])[0])
    rank_a = np.argsort(np.argsort(ca[iu]))
    hits = 0
    for _ in range(n_perm):
        perm = rng.permutation(len(cb))
        rank_b = np.argsort(np.argsort(cb[perm][:, perm][iu]))
        hits += float(np.corrcoef(rank_a, rank_b)[0, 1]) >= r
    return {"r": r, "p_mantel": (hits + 1) / (n_perm + 1), "n_pairs": int(len(iu[0])), "n_perm": n_perm}


def _neighbours(ca: np.ndarray, cb: np.ndarray, k: int) -> dict[str, Any]:
    """Mean overlap of each emotion's k nearest neighbours in the two models (chance: k / (n - 1))."""
    n = len(ca)
    overlaps = []
    for i in range(n):
        order_a = [j for j in np.argsort(-ca[i]) if j != i][:k]
        order_b = [j for j in np.argsort(-cb[i]) if j != i][:k]
        overlaps.append(len(set(order_a) & set(order_b)) / k)
    return {"k": k, "mean_overlap": float(np.mean(overlaps)), "chance": k / (n - 1), "n": n}


def _pc1(a: EmotionVectors, la: int, b: EmotionVectors, lb: int, emotions: list[str]) -> dict[str, Any]:
    """Pearson r between the two models' PC1 scores over the shared emotions (sign: aligned so r >= 0)."""
    sa = pca_against_norms(a.matrix(la, emotions).double().numpy(), emotions, None, 1)["scores"][:, 0]
    sb = pca_against_norms(b.matrix(lb, emotions).double().numpy(), emotions, None, 1)["scores"][:, 0]
    r, p = pearsonr(sa, sb)
    return {"abs_r": abs(float(r)), "p": float(p), "n": len(emotions),
            "note": "PC signs are arbitrary in each model, so |r| is reported"}


def compare_geometry(a: EmotionVectors, b: EmotionVectors, layer_a: int | None = None, layer_b: int | None = None,
                     n_perm: int = 2000, k: int = 5, seed: int = 0, sweep: bool = True) -> dict[str, Any]:
    """Compare the emotion geometry of two models' vectors over the emotions both hold.

    At `layer_a` (default: a's default layer) against `layer_b` (default: b's layer at the
    same relative depth): RSA (Spearman r over emotion pairs, Mantel p from `n_perm` label
    permutations), k-nearest-neighbour overlap against chance, and PC1 agreement. With
    `sweep`, RSA (without permutations) at each of a's layers against b's depth-matched one.
    """
    shared = [e for e in a.emotions if e in set(b.emotions)]
    if len(shared) < max(4, k + 2):
        raise EmovecError(f"the two vector sets share {len(shared)} emotions; need at least {max(4, k + 2)} to compare "
                          "geometry (build both runs over the same concepts)")
    la = a.layers[a.layer_index(layer_a)]
    lb = b.layers[b.layer_index(layer_b)] if layer_b is not None else matched_layer(a, la, b)
    rng = np.random.default_rng(seed)
    ca, cb = _cosines(a, la, shared), _cosines(b, lb, shared)
    iu = np.triu_indices(len(shared), k=1)
    out: dict[str, Any] = {
        "model_a": a.meta.get("model"), "model_b": b.meta.get("model"), "layer_a": la, "layer_b": lb,
        "n_emotions": len(shared), "rsa": _rsa(ca, cb, n_perm, rng), "neighbours": _neighbours(ca, cb, k),
        "pc1": _pc1(a, la, b, lb, shared),
        "mean_cosine": {"a": float(ca[iu].mean()), "b": float(cb[iu].mean())},
    }
    if sweep:
        out["sweep"] = [{"layer_a": lay, "layer_b": (mb := matched_layer(a, lay, b)), "depth": round(_depth(a, lay), 3),
                         "rsa_r": float(spearmanr(_cosines(a, lay, shared)[iu], _cosines(b, mb, shared)[iu])[0])}
                        for lay in a.layers]
    pairs = sorted(((float(ca[i, j] - cb[i, j]), shared[i], shared[j]) for i, j in zip(*iu)), key=lambda t: t[0])
    out["most_closer_in_b"] = [{"pair": [x, y], "cos_a": float(ca[shared.index(x), shared.index(y)]),
                                "cos_b": float(cb[shared.index(x), shared.index(y)])} for _, x, y in pairs[:5]]
    out["most_closer_in_a"] = [{"pair": [x, y], "cos_a": float(ca[shared.index(x), shared.index(y)]),
                                "cos_b": float(cb[shared.index(x), shared.index(y)])} for _, x, y in pairs[::-1][:5]]
    return out


def geometry_lines(r: dict[str, Any]) -> list[str]:
    """What `emovec compare --run-b` prints."""
    rsa, nb, pc = r["rsa"], r["neighbours"], r["pc1"]
    lines = [f"{r['model_a']} layer {r['layer_a']} vs {r['model_b']} layer {r['layer_b']} over {r['n_emotions']} shared emotions:",
             f"  RSA (Spearman r over {rsa['n_pairs']} emotion pairs): {rsa['r']:+.3f}, Mantel p = {rsa['p_mantel']:.2g} "
             f"({rsa['n_perm']} permutations)",
             f"  {nb['k']} nearest neighbours shared: {nb['mean_overlap']:.1%} (chance {nb['chance']:.1%})",
             f"  PC1 agreement |r| = {pc['abs_r']:.3f} (n = {pc['n']}, p = {pc['p']:.2g})"]
    if r.get("sweep"):
        best = max(r["sweep"], key=lambda s: s["rsa_r"])
        lines.append(f"  best depth-matched layers: {best['layer_a']} vs {best['layer_b']} (RSA r {best['rsa_r']:+.3f}; "
                     f"chosen after looking, over {len(r['sweep'])} layers)")
    return lines
