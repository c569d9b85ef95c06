"""Readout: emotion scores of every token of a text, or of whole texts.

Score definition (used by every readout, monitor and analysis): at a layer,
`score_e(h) = (h - grand_mean) . u_e`, the projection of the residual activation
`h`, centred on the mean over emotion stories, onto the unit vector `u_e` of
emotion e (denoised by default). `method="cosine"` divides by |h - grand_mean|
instead, giving a value in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from .activations import DEFAULT_START, pool_texts, residuals, tokenize
from .models import LanguageModel
from .storage import EmovecError
from .vectors import EmotionVectors

METHODS = ("projection", "cosine")


def project(h: torch.Tensor, vectors: EmotionVectors, layer: int | None = None, emotions: list[str] | None = None,
            method: str = "projection") -> torch.Tensor:
    """Scores [..., n_emotions] of activations `h` [..., d_model] (see module doc for the definition)."""
    if method not in METHODS:
        raise EmovecError(f"unknown readout method {method!r}: use one of {', '.join(METHODS)}")
    units = vectors.matrix(layer, emotions).to(h.device, torch.float32)
    x = h.to(torch.float32) - vectors.center(layer).to(h.device)
    s = x @ units.T
    if method == "cosine":
        s = s / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return s


@torch.inference_mode()
def token_activations(lm: LanguageModel, text: str, layer: int) -> tuple[list[str], torch.Tensor]:
    """Token strings and residual activations [n_tokens, d_model] after `layer` for one text."""
    layer = lm.check_layer(layer)
    if not text:
        raise EmovecError("cannot score an empty text")
    enc = tokenize(lm, [text], max_tokens=100_000)
    ids = enc["input_ids"][0].tolist()
    return [lm.tokenizer.decode([i]) for i in ids], residuals(lm, enc, layer)[0]


def score_text(lm: LanguageModel, vectors: EmotionVectors, text: str, layer: int | None = None,
               emotions: list[str] | str | None = None, method: str = "projection") -> pd.DataFrame:
    """Per-token emotion scores of `text`: a DataFrame with a `token` column and one column per emotion."""
    vectors.check_model(lm)
    names = vectors.resolve(emotions)
    layer = vectors.default_layer if layer is None else lm.check_layer(layer)
    vectors.layer_index(layer)
    tokens, h = token_activations(lm, text, layer)
    scores = project(h, vectors, layer, names, method)
    df = pd.DataFrame(scores.numpy(), columns=names)
    df.insert(0, "token", tokens)
    df.index.name = "position"
    return df


def top_emotions(scores: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    """For each row of a score table, the `k` highest-scoring emotions and their scores."""
    values = scores.drop(columns=[c for c in ("token", "text") if c in scores.columns])
    rows = []
    for pos, row in values.iterrows():
        best = row.nlargest(k)
        rec = {"token": scores.at[pos, "token"]} if "token" in scores.columns else {}
        rec.update({f"top{i + 1}": name for i, name in enumerate(best.index)})
        rec.update({f"score{i + 1}": round(float(v), 3) for i, v in enumerate(best.values)})
        rows.append(rec)
    return pd.DataFrame(rows, index=scores.index)


def score_texts(lm: LanguageModel, vectors: EmotionVectors, texts: Sequence[str], layer: int | None = None,
                emotions: list[str] | str | None = None, start: int | None = None, method: str = "projection",
                batch_size: int = 16) -> pd.DataFrame:
    """Scores of whole texts (pooled with the extraction rule from `start`): texts x emotions."""
    vectors.check_model(lm)
    names = vectors.resolve(emotions)
    layer = vectors.default_layer if layer is None else lm.check_layer(layer)
    vectors.layer_index(layer)
    start = int(vectors.meta.get("token_start", DEFAULT_START)) if start is None else start
    pooled, _, _ = pool_texts(lm, list(texts), [layer], start=start, batch_size=batch_size)
    scores = project(pooled[:, 0], vectors, layer, names, method)
    df = pd.DataFrame(scores.numpy(), columns=names)
    df.insert(0, "text", list(texts))
    return df


def token_baseline(lm: LanguageModel, vectors: EmotionVectors, texts: Sequence[str], layer: int | None = None,
                   max_texts: int = 64) -> dict[str, Any]:
    """Mean and std of per-token scores (all emotions, positions >= 1) over neutral `texts`."""
    texts = [t for t in texts if t.strip()][:max_texts]
    if not texts:
        raise EmovecError("token baseline needs at least one neutral text")
    layer = vectors.default_layer if layer is None else lm.check_layer(layer)
    rows = [score_text(lm, vectors, t, layer=layer).drop(columns="token").to_numpy()[1:] for t in texts]
    allrows = np.concatenate([r for r in rows if len(r)])
    return {"layer": layer, "emotions": list(vectors.emotions), "mean": allrows.mean(0).tolist(),
            "std": np.maximum(allrows.std(0), 1e-6).tolist(), "n_tokens": int(len(allrows)), "n_texts": len(texts)}


def stored_baseline(vectors: EmotionVectors, layer: int) -> dict[str, Any] | None:
    """The token baseline saved with the vectors for `layer`, if any."""
    base = (vectors.meta.get("token_baseline") or {}).get(str(layer))
    return base if isinstance(base, dict) and base.get("emotions") == list(vectors.emotions) else None
