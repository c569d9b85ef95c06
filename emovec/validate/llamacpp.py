"""Proof in llama.cpp itself: emovec's exported control vectors steer llama.cpp the way they steer emovec.

One model, two engines: emovec runs the embedded GGUF dequantised to float32 in
transformers with its forward hooks; llama.cpp (through llama-cpp-python, the optional
extra `make llamacpp`) runs the same GGUF file with its quantised kernels and the
control vector loaded through `llama_set_adapter_cvec` from the exported file. For two
opposite emotions (happy and sad by default) this measures, on the same token ids:

- logit agreement at the last prompt position: Pearson r of the two engines' logits,
  unsteered and steered, and r of the steering *deltas* (steered minus unsteered),
  which is the test of the layer convention: a vector added one block off moves the
  logits differently; plus whether the greedy next token agrees;
- generation: greedy replies from each engine under no steering, the first emotion and
  the second, each read back with emovec's readout (first-minus-second emotion score,
  mean over the reply's tokens, read unsteered in the prompt's context) and judged by
  VADER valence. The two engines should move both the same way, in opposite directions
  for the two emotions. Differences are paired over the prompts (t-test on the pairs).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..control_vectors import apply_to_llama, export_emotions
from ..generation import Sampling, generate_text
from ..models import LanguageModel
from ..steering import SteeringVector
from ..storage import EmovecError
from ..vectors import EmotionVectors
from .stats import mean_ci
from .steering import judge, score_replies, steering_prompts

__all__ = ["emovec_logits", "llama_agreement", "llama_logits", "open_llama"]


def open_llama(lm: LanguageModel, n_ctx: int = 1024, threads: int = 1) -> Any:
    """The GGUF that `lm` was loaded from, opened in llama.cpp with logits kept for every position."""
    try:
        from llama_cpp import Llama
    except ImportError:
        raise EmovecError("llama.cpp is an optional extra: run `make llamacpp` (installs llama-cpp-python)") from None
    if lm.source is None or lm.source.suffix != ".gguf":
        raise EmovecError(f"{lm.name} was not loaded from a .gguf file; llama.cpp needs one "
                          "(convert it with llama.cpp's convert_hf_to_gguf.py and load that file)")
    return Llama(model_path=str(lm.source), n_ctx=n_ctx, n_threads=threads, logits_all=True, verbose=False, seed=0)


def emovec_logits(lm: LanguageModel, ids: list[int], steering: SteeringVector | None) -> np.ndarray:
    """emovec's next-token logits after `ids` (float64), steered by `steering` through its hooks."""
    with torch.no_grad(), steering.apply(lm) if steering is not None else torch.no_grad():
        out: np.ndarray = lm.model(torch.tensor([ids], device=lm.device)).logits[0, -1].double().cpu().numpy()
    return out


def llama_logits(llama: Any, ids: list[int], control: Path | SteeringVector | None) -> np.ndarray:
    """llama.cpp's next-token logits after `ids` (float64), with `control` set as its control vector."""
    apply_to_llama(llama, control)
    llama.eval(ids)
    return np.array(llama.scores[llama.n_tokens - 1], dtype=np.float64)


def _paired(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """mean(a - b) over pairs with its 95% interval and the paired t-test's two-sided p."""
    from scipy.stats import ttest_rel

    out = mean_ci(list(a - b))
    out["p"] = float(ttest_rel(a, b).pvalue) if len(a) > 1 and np.any(a != b) else None
    return out


def llama_agreement(lm: LanguageModel, vectors: EmotionVectors, llama: Any, emotions: Sequence[str] = ("happy", "sad"),
                    strength: float = 0.2, layers: str | int | list[int] | None = None,
                    prompts: Sequence[str] | None = None, max_new_tokens: int = 40) -> dict[str, Any]:
    """Steer `lm` and the llama.cpp `llama` with the same exported vectors and compare logits and generations.

    Each emotion is exported alone at `strength` at `layers` (default: the vectors' default layer)
    to a control-vector file, which llama.cpp loads; emovec steers with the same deltas.
    Returns the settings, per-prompt logit agreement and, per engine and condition, the
    replies, their readout (first minus second emotion) and VADER valence, with the paired
    first-vs-second differences.
    """
    if len(emotions) != 2:
        raise EmovecError("compare exactly two emotions, e.g. happy,sad")
    names = vectors.resolve(list(emotions))
    prompts = list(prompts) if prompts is not None else steering_prompts()[:6]
    texts = [lm.chat(p) for p in prompts]
    ids = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    greedy = Sampling(temperature=0.0, max_new_tokens=max_new_tokens)
    with tempfile.TemporaryDirectory(prefix="emovec-cvec-") as tmp:
        files: dict[str, Path | None] = {"unsteered": None}
        steering: dict[str, Any] = {"unsteered": None}
        for e in names:
            path = files[e] = Path(tmp) / f"{e}.gguf"
            steering[e] = export_emotions(vectors, {e: strength}, path, layers=layers)
        logits = []
        for p, tok in zip(prompts, ids):
            h0, l0 = emovec_logits(lm, tok, None), llama_logits(llama, tok, None)
            row: dict[str, Any] = {"prompt": p, "r_unsteered": float(np.corrcoef(h0, l0)[0, 1]),
                                   "top1_unsteered": bool(h0.argmax() == l0.argmax())}
            for e in names:
                h, lc = emovec_logits(lm, tok, steering[e]), llama_logits(llama, tok, files[e])
                row[f"r_{e}"] = float(np.corrcoef(h, lc)[0, 1])
                row[f"r_delta_{e}"] = float(np.corrcoef(h - h0, lc - l0)[0, 1])
                row[f"top1_{e}"] = bool(h.argmax() == lc.argmax())
            logits.append(row)
        replies: dict[str, dict[str, list[str]]] = {"emovec": {}, "llama.cpp": {}}
        for cond in files:
            sv = steering[cond]
            with sv.apply(lm) if sv is not None else torch.no_grad():
                replies["emovec"][cond] = [generate_text(lm, p, greedy) for p in prompts]
            apply_to_llama(llama, files[cond])
            replies["llama.cpp"][cond] = [llama.create_completion(tok, max_tokens=max_new_tokens, temperature=0.0)
                                          ["choices"][0]["text"].strip() for tok in ids]
        apply_to_llama(llama, None)
    engines: dict[str, Any] = {}
    for engine, by_cond in replies.items():
        conds: dict[str, Any] = {}
        for cond, outs in by_cond.items():
            reply_ids = [lm.tokenizer(o, add_special_tokens=False)["input_ids"] for o in outs]
            _, scores = score_replies(lm, vectors, ids, reply_ids, names)
            conds[cond] = {"readout": (scores[:, 0] - scores[:, 1]).round(4).tolist(), "vader": judge(outs),
                           "replies": outs}
        a, b = names
        engines[engine] = {"conditions": conds,
                           "readout_first_minus_second": _paired(np.array(conds[a]["readout"]), np.array(conds[b]["readout"])),
                           "vader_first_minus_second": _paired(np.array(conds[a]["vader"]), np.array(conds[b]["vader"]))}
    return {"emotions": names, "strength": strength, "layers": sorted(steering[names[0]].deltas),
            "max_new_tokens": max_new_tokens, "n_prompts": len(prompts), "logits": logits, "engines": engines}
