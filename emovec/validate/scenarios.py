"""Scenario readouts: what the vectors say at the moment a reply starts.

Severity templates (an emotion should grow with a stated quantity), implicit
scenarios (a situation that implies an emotion without naming it) and model
comparison (the same prompts through two models, or one model steered). All read
the residual stream at the reply-start token; results are plain dicts with their
sample sizes, reported as computed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from importlib import resources
from typing import Any

import numpy as np
import torch

from ..activations import residuals
from ..models import LanguageModel
from ..readout import project
from ..steering import SteeringVector
from ..storage import EmovecError
from ..vectors import EmotionVectors


@torch.inference_mode()
def reply_states(lm: LanguageModel, prompts: Sequence[str], layer: int, chat: bool = True,
                 steering: SteeringVector | None = None, batch_size: int = 16) -> torch.Tensor:
    """Residual activations [n_prompts, d_model] after `layer` at the position where the reply starts.

    With `chat`, each prompt is the user turn of `lm.chat(prompt)` (template with the
    generation prompt, e.g. `...<|im_start|>assistant\\n`) and the position read is the
    last token of that rendered text: the token whose residual state predicts the
    first token of the assistant's reply. Without `chat`, the last token of the plain
    prompt is read. `steering` is applied to every position while reading.
    """
    layer = lm.check_layer(layer)
    texts = [lm.chat(p) for p in prompts] if chat else list(prompts)
    tok = lm.tokenizer
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, padding_side="right", add_special_tokens=not chat)
        enc = {k: v.to(lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        last = (enc["attention_mask"].sum(1) - 1).cpu()
        with ExitStack() as stack:
            if steering is not None:
                stack.enter_context(steering.apply(lm))
            h = residuals(lm, enc, layer)
        out.append(h[torch.arange(h.shape[0]), last])
    return torch.cat(out)


def _rank_stats(ranks: np.ndarray, n_emotions: int) -> dict[str, Any]:
    return {"n": int(len(ranks)), "top1": float(np.mean(ranks == 0)) if len(ranks) else None,
            "top5": float(np.mean(ranks < 5)) if len(ranks) else None, "mean_rank": float(np.mean(ranks) + 1) if len(ranks) else None,
            "chance_top1": 1 / n_emotions, "chance_top5": min(5, n_emotions) / n_emotions}


# --- logit lens -----------------------------------------------------------------------------------

def severity_templates() -> list[dict[str, Any]]:
    """The built-in severity templates (package data `severity.json`)."""
    templates: list[dict[str, Any]] = json.loads(
        resources.files("emovec").joinpath("data/severity.json").read_text(encoding="utf-8"))["templates"]
    return templates


def severity(lm: LanguageModel, vectors: EmotionVectors, templates: list[dict[str, Any]] | None = None,
             layer: int | None = None) -> dict[str, Any]:
    """Do expected emotions grow or shrink with a stated quantity? Spearman rho per (template, emotion).

    Each quantity fills the template's user turn; scores are read at the reply-start
    token (see `reply_states`) at `layer`. A template's expected emotions that are not
    in the vectors are skipped and listed.
    """
    from scipy.stats import spearmanr

    vectors.check_model(lm)
    layer = vectors.layers[vectors.layer_index(layer)]
    rows, curves, skipped = [], {}, []
    for t in templates or severity_templates():
        expected = [(e, "rise") for e in t.get("rising", [])] + [(e, "fall") for e in t.get("falling", [])]
        present = [(e, d) for e, d in expected if e in vectors.emotions]
        skipped += [f"{t['name']}: {e}" for e, _ in expected if e not in vectors.emotions]
        if not present:
            continue
        qs = list(t["quantities"])
        prompts = [t["prompt"].format(x=f"{q:,}") for q in qs]
        names = [e for e, _ in present]
        s = project(reply_states(lm, prompts, layer), vectors, layer, names).numpy()
        curves[t["name"]] = {"quantities": qs, "unit": t.get("unit", ""),
                             "scores": {e: s[:, j].round(4).tolist() for j, e in enumerate(names)},
                             "expected": dict(present)}
        for j, (e, d) in enumerate(present):
            rho, p = spearmanr(qs, s[:, j])
            rho = None if np.isnan(rho) else float(rho)
            rows.append({"template": t["name"], "emotion": e, "expected": d, "rho": rho,
                         "p": None if rho is None else float(p), "n": len(qs),
                         "agrees": rho is not None and (rho > 0) == (d == "rise")})
    return {"layer": layer, "position": "last token of the chat-rendered prompt (reply start)", "rows": rows,
            "n_agree": sum(r["agrees"] for r in rows), "n_tests": len(rows), "curves": curves, "skipped": skipped}


def implicit_rows() -> list[dict[str, str]]:
    """The built-in implicit scenarios (package data `implicit.jsonl`): {emotion, text}."""
    path = resources.files("emovec").joinpath("data/implicit.jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def implicit_prompts(lm: LanguageModel, vectors: EmotionVectors, rows: list[dict[str, str]] | None = None,
                     layer: int | None = None, center: bool = True) -> dict[str, Any]:
    """Scenarios that imply an emotion without naming it: prompt x emotion scores and the rank of the intended one.

    Each scenario is the user turn; scores are read at the reply-start token (see
    `reply_states`). With `center`, each emotion's scores are centred over the prompt
    set before ranking, removing the baseline every vector has at that position
    (uses no labels). Rows whose emotion is not in the vectors are skipped.
    """
    vectors.check_model(lm)
    layer = vectors.layers[vectors.layer_index(layer)]
    rows = implicit_rows() if rows is None else rows
    used = [r for r in rows if r["emotion"] in vectors.emotions]
    if not used:
        raise EmovecError("none of the implicit scenarios' emotions are in these vectors")
    s = project(reply_states(lm, [r["text"] for r in used], layer), vectors, layer).numpy()
    ranked = s - s.mean(0, keepdims=True) if center and len(used) > 1 else s
    order = np.argsort(-ranked, axis=1)
    truth = np.array([vectors.emotions.index(r["emotion"]) for r in used])
    ranks = np.argmax(order == truth[:, None], axis=1)
    return {"layer": layer, "centered": center, "emotions": list(vectors.emotions),
            "prompts": [{"text": r["text"], "intended": r["emotion"], "rank": int(k) + 1,
                         "top": vectors.emotions[order[i, 0]]} for i, (r, k) in enumerate(zip(used, ranks))],
            "scores": np.round(ranked, 4).tolist(), "skipped": len(rows) - len(used), **_rank_stats(ranks, len(vectors.emotions))}


# --- model comparison -----------------------------------------------------------------------------

def compare_models(lm_a: LanguageModel, lm_b: LanguageModel, vectors: EmotionVectors, prompts: Sequence[str],
                   layer: int | None = None, steer_b: SteeringVector | None = None, chat: bool = True,
                   top: int = 5) -> dict[str, Any]:
    """Read the same vectors on the same prompts through model a and model b (optionally steered); b - a per emotion.

    Scores are read at the reply-start token (see `reply_states`; `chat=False` reads
    the last token of plain prompts, for base models). For each emotion: mean and SD
    of the paired difference, a paired t-test, and how many prompts rose. Sorted
    risers (largest mean increase) and fallers. Both models must share a tokenizer.
    """
    from scipy.stats import ttest_rel

    if lm_a.tokenizer.get_vocab() != lm_b.tokenizer.get_vocab():
        raise EmovecError(f"{lm_a.name} and {lm_b.name} have different tokenizers; compare models that share one")
    vectors.check_model(lm_a)
    vectors.check_model(lm_b)
    if len(prompts) < 2:
        raise EmovecError("compare_models needs at least 2 prompts for a paired statistic")
    layer = vectors.layers[vectors.layer_index(layer)]
    a = project(reply_states(lm_a, prompts, layer, chat), vectors, layer).numpy().astype(np.float64)
    b = project(reply_states(lm_b, prompts, layer, chat, steering=steer_b), vectors, layer).numpy().astype(np.float64)
    d = b - a
    rows: list[dict[str, Any]] = []
    for j, e in enumerate(vectors.emotions):
        sd = float(d[:, j].std(ddof=1))
        t, p = ttest_rel(b[:, j], a[:, j]) if sd > 0 else (float("nan"), float("nan"))
        rows.append({"emotion": e, "mean_diff": float(d[:, j].mean()), "sd_diff": sd,
                     "t": None if np.isnan(t) else float(t), "p": None if np.isnan(p) else float(p),
                     "n_rose": int((d[:, j] > 0).sum()), "n": len(prompts)})
    rows.sort(key=lambda r: -r["mean_diff"])
    return {"layer": layer, "model_a": lm_a.name, "model_b": lm_b.name, "steer_b": steer_b.label if steer_b else None,
            "n_prompts": len(prompts), "rows": rows, "risers": [r["emotion"] for r in rows[:top] if r["mean_diff"] > 0],
            "fallers": [r["emotion"] for r in rows[::-1][:top] if r["mean_diff"] < 0], "test": "paired t-test (scipy ttest_rel)"}
