"""Emotion vectors: per-emotion means minus the grand mean, denoised against neutral text.

Stored as one safetensors file whose `__metadata__["emovec"]` holds JSON metadata
(model, config fingerprint, layers, emotions, token start, corpus sizes, denoise
components, emovec version). Tensors are indexed [layer, emotion, d_model] in the
order of `layers` and `emotions`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .activations import CorpusActivations
from .concepts import resolve_emotions
from .models import LanguageModel
from .storage import EmovecError, atomic_path

FORMAT = "emovec.vectors/1"
_MAX_HEADER = 100 * 1024 * 1024


def denoise_components(neutral: torch.Tensor, fraction: float = 0.5) -> tuple[torch.Tensor, float]:
    """Top principal components of `neutral` [n, d] that together explain >= `fraction` of its variance.

    Returns (components [k, d], variance explained by them). `fraction` 0 keeps none.
    """
    if not 0.0 <= fraction < 1.0:
        raise EmovecError(f"denoise fraction must be in [0, 1), got {fraction}")
    x = neutral.to(torch.float64)
    if fraction == 0 or x.shape[0] < 2:
        return torch.zeros(0, x.shape[1]), 0.0
    x = x - x.mean(0, keepdim=True)
    _, s, vt = torch.linalg.svd(x, full_matrices=False)
    var = s**2
    ratio = torch.cumsum(var, 0) / var.sum()
    k = int(torch.searchsorted(ratio, torch.tensor(fraction, dtype=ratio.dtype)).item()) + 1
    k = min(k, vt.shape[0])
    return vt[:k].to(torch.float32), float(ratio[k - 1])


def project_out(vectors: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """Remove the span of orthonormal `components` [k, d] from each row of `vectors` [..., d]."""
    if components.numel() == 0:
        return vectors.clone()
    return vectors - (vectors @ components.T) @ components


@dataclass
class EmotionVectors:
    """Emotion directions at one or more layers of one model.

    `raw[i, j]` is the mean pooled activation of emotion j's stories at layer
    `layers[i]` minus the mean over emotions; `denoised` has the neutral principal
    components projected out. `grand_mean` (the mean over emotions) is the centre
    readout subtracts; `mean_norm` is the average residual norm, the steering unit.
    """

    emotions: list[str]
    layers: list[int]
    raw: torch.Tensor
    denoised: torch.Tensor
    grand_mean: torch.Tensor
    mean_norm: torch.Tensor
    components: dict[int, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_activations(cls, stories: CorpusActivations, neutral: CorpusActivations | None, emotions: list[str],
                         denoise_fraction: float = 0.5, model: LanguageModel | None = None,
                         extra_meta: dict[str, Any] | None = None,
                         topics: Sequence[str] | None = None) -> EmotionVectors:
        """Build vectors from extracted story (and neutral) activations.

        With `topics` (one per story, in the order of `stories.ids`) each story's topic mean is
        removed first (`CorpusActivations.topic_adjusted`), so an emotion's vector does not carry
        the topics its few stories happened to be about.
        """
        if topics is not None:
            stories = stories.topic_adjusted(topics)
        missing = [e for e in emotions if stories.counts.get(e, 0) == 0]
        if missing:
            raise EmovecError(f"no stories for {len(missing)} emotion(s) ({', '.join(missing[:5])}); generate more stories "
                              "or drop them from the concept list")
        means = torch.stack([stories.sums[e] / stories.counts[e] for e in emotions], dim=1).to(torch.float32)  # [L, E, D]
        grand = means.mean(dim=1)
        raw = means - grand[:, None, :]
        denoised = raw.clone()
        components: dict[int, torch.Tensor] = {}
        explained: dict[int, float] = {}
        if neutral is not None and denoise_fraction > 0:
            for i, layer in enumerate(stories.layers):
                if layer not in neutral.keep_layers:
                    raise EmovecError(f"neutral activations lack layer {layer}; re-extract the neutral corpus at all layers")
                comps, frac = denoise_components(neutral.pooled[:, neutral.keep_layers.index(layer)], denoise_fraction)
                components[layer] = comps
                explained[layer] = frac
                denoised[i] = project_out(raw[i], comps)
        norm_sum = stories.norm_sum + (neutral.norm_sum if neutral is not None else 0)
        norm_count = stories.norm_count + (neutral.norm_count if neutral is not None else 0)
        meta = {
            "format": FORMAT, "emovec_version": __version__, "token_start": stories.start,
            "n_stories": {e: stories.counts[e] for e in emotions},
            "n_neutral": sum(neutral.counts.values()) if neutral is not None else 0,
            "denoise_fraction": denoise_fraction if neutral is not None else 0.0,
            "denoise_k": {str(k): int(v.shape[0]) for k, v in components.items()},
            "denoise_explained": {str(k): round(v, 4) for k, v in explained.items()},
            "score": "projection of (activation - grand_mean) on the unit vector",
            "topic_adjusted": topics is not None, "n_topics": len(set(topics)) if topics is not None else 0,
        }
        if model is not None:
            meta.update(model_meta(model))
        meta.update(extra_meta or {})
        return cls(emotions=list(emotions), layers=list(stories.layers), raw=raw, denoised=denoised, grand_mean=grand,
                   mean_norm=(norm_sum / max(norm_count, 1)).to(torch.float32), components=components, meta=meta)

    # --- access -------------------------------------------------------------------------------
    @property
    def default_layer(self) -> int:
        """The layer used when none is given: the stored `default_layer`, else ~2/3 of model depth."""
        if "default_layer" in self.meta and int(self.meta["default_layer"]) in self.layers:
            return int(self.meta["default_layer"])
        target = round(2 * int(self.meta.get("n_layers", max(self.layers) + 1)) / 3)
        return min(self.layers, key=lambda lay: abs(lay - target))

    @property
    def steering_recommendation(self) -> dict[str, Any]:
        """The steering layer/strength recommended for these vectors ({} when none is attached).

        A run's steering-efficacy analysis (`emovec analyze --only steering`) recommends them;
        `emovec.rundir.attach_steering_recommendation` attaches them, and a saved vector
        file keeps them.
        """
        rec = self.meta.get("steering_recommendation")
        return dict(rec) if isinstance(rec, dict) else {}

    @property
    def steering_layer(self) -> int:
        """The layer steering uses when none is given: the recommended one if attached, else `default_layer`."""
        layer = self.steering_recommendation.get("layer")
        return layer if isinstance(layer, int) and layer in self.layers else self.default_layer

    @property
    def steering_strength(self) -> float | None:
        """The recommended strength (the positive end of the fluent range), or None when none is attached."""
        s = self.steering_recommendation.get("strength")
        return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) else None

    def layer_index(self, layer: int | None) -> int:
        """Position of a model layer in the stored tensors, with a clear error if it is not stored."""
        layer = self.default_layer if layer is None else int(layer)
        n = int(self.meta.get("n_layers", max(self.layers) + 1))
        if layer < 0:
            layer += n
        if layer not in self.layers:
            raise EmovecError(f"layer {layer} is not in these vectors (stored layers: {_ranges(self.layers)}); pass one of those")
        return self.layers.index(layer)

    def resolve(self, names: str | Sequence[str] | None) -> list[str]:
        """Validate emotion names against this set (None means all)."""
        return list(self.emotions) if names is None else resolve_emotions(names, self.emotions)

    def matrix(self, layer: int | None = None, emotions: list[str] | str | None = None, denoised: bool = True,
               unit: bool = True) -> torch.Tensor:
        """[n_emotions, d_model] vectors at `layer`, unit-normalised by default."""
        names = self.resolve(emotions)
        src = self.denoised if denoised else self.raw
        m = src[self.layer_index(layer)][[self.emotions.index(e) for e in names]]
        return m / m.norm(dim=-1, keepdim=True).clamp(min=1e-12) if unit else m.clone()

    def center(self, layer: int | None = None) -> torch.Tensor:
        """The grand mean activation at `layer` [d_model], subtracted before readout."""
        return self.grand_mean[self.layer_index(layer)]

    def subset(self, emotions: list[str] | str) -> EmotionVectors:
        """A copy holding only `emotions` (the grand mean stays that of the full set)."""
        names = self.resolve(emotions)
        idx = [self.emotions.index(e) for e in names]
        return EmotionVectors(names, list(self.layers), self.raw[:, idx].clone(), self.denoised[:, idx].clone(),
                              self.grand_mean.clone(), self.mean_norm.clone(), dict(self.components), dict(self.meta))

    def check_model(self, lm: LanguageModel) -> None:
        """Refuse a model these vectors were not made for (different width, depth or config)."""
        width = self.raw.shape[-1]
        if width != lm.d_model:
            raise EmovecError(f"these vectors have width {width} but {lm.name} has width {lm.d_model}; "
                              "use vectors extracted from this model")
        n = self.meta.get("n_layers")
        if n is not None and int(n) != lm.n_layers:
            raise EmovecError(f"these vectors were made for a {n}-layer model but {lm.name} has {lm.n_layers}; "
                              "use vectors extracted from this model")
        fp = self.meta.get("model_fingerprint")
        if fp is not None and fp != lm.fingerprint:
            raise EmovecError(f"these vectors were made for {self.meta.get('model')} (config {fp}), not {lm.name} "
                              f"(config {lm.fingerprint}); re-extract on this model")

    # --- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write vectors and metadata to one safetensors file, atomically."""
        from safetensors.torch import save_file

        tensors = {"raw": self.raw, "denoised": self.denoised, "grand_mean": self.grand_mean, "mean_norm": self.mean_norm}
        tensors.update({f"components.{k}": v for k, v in self.components.items()})
        meta = dict(self.meta, emotions=self.emotions, layers=self.layers, format=FORMAT)
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous().to(torch.float32) for k, v in tensors.items()}, str(tmp),
                      metadata={"emovec": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path, model: LanguageModel | None = None) -> EmotionVectors:
        """Read a vector file (never executes anything); with `model`, check it matches."""
        path = Path(path)
        tensors, meta = _read_vector_file(path)
        vec = cls(emotions=meta["emotions"], layers=meta["layers"], raw=tensors["raw"], denoised=tensors["denoised"],
                  grand_mean=tensors["grand_mean"], mean_norm=tensors["mean_norm"],
                  components={int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("components.")},
                  meta={k: v for k, v in meta.items() if k not in ("emotions", "layers")})
        if model is not None:
            vec.check_model(model)
        return vec

    def info(self) -> dict[str, Any]:
        """A summary for humans: model, layers, emotions, corpus sizes, denoising."""
        n = self.meta.get("n_stories", {})
        return {
            "model": self.meta.get("model"), "model_fingerprint": self.meta.get("model_fingerprint"),
            "width": int(self.raw.shape[-1]), "n_layers": self.meta.get("n_layers"),
            "layers": _ranges(self.layers), "default_layer": self.default_layer,
            "n_emotions": len(self.emotions), "emotions": ", ".join(self.emotions),
            "stories": sum(n.values()) if isinstance(n, dict) else n, "neutral_texts": self.meta.get("n_neutral"),
            "token_start": self.meta.get("token_start"), "denoise_fraction": self.meta.get("denoise_fraction"),
            "denoise_k": self.meta.get("denoise_k", {}).get(str(self.default_layer)),
            "topic_adjustment": (f"each story's topic mean removed ({self.meta.get('n_topics')} topics)"
                                 if self.meta.get("topic_adjusted") else "none"),
            "mean_norm_default_layer": round(float(self.mean_norm[self.layer_index(None)]), 3),
            "score": self.meta.get("score"), "emovec_version": self.meta.get("emovec_version"),
        }


def model_meta(lm: LanguageModel) -> dict[str, Any]:
    """The model identity stored with vectors: name, config fingerprint, depth, width, layer path."""
    return {"model": lm.name, "model_fingerprint": lm.fingerprint, "n_layers": lm.n_layers,
            "d_model": lm.d_model, "layers_path": lm.layers_path}


def _ranges(layers: list[int]) -> str:
    if not layers:
        return "none"
    parts, start, prev = [], layers[0], layers[0]
    for lay in list(layers[1:]) + [None]:
        if lay is not None and lay == prev + 1:
            prev = lay
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if lay is not None:
            start = prev = lay
    return ",".join(parts)


def _read_vector_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Parse and validate a vector file; every defect becomes a one-line EmovecError."""
    from safetensors import SafetensorError, safe_open

    def bad(why: str) -> EmovecError:
        return EmovecError(f"{path}: not a valid emovec vector file ({why}); re-create it with `emovec extract`")

    if not path.is_file():
        raise EmovecError(f"{path}: vector file not found")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8:
        raise bad("file too short")
    header_len = int.from_bytes(head, "little")
    if header_len > min(size - 8, _MAX_HEADER):
        raise bad("truncated or corrupt header")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw_meta = (fh.metadata() or {}).get("emovec")
            keys = set(fh.keys())
            tensors = {k: fh.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        raise bad(str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__) from None
    if raw_meta is None:
        raise bad("no emovec metadata")
    try:
        meta = json.loads(raw_meta)
    except (ValueError, RecursionError):
        raise bad("metadata is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise bad(f"format is {meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT}")
    emotions, layers = meta.get("emotions"), meta.get("layers")
    if not (isinstance(emotions, list) and emotions and all(isinstance(e, str) for e in emotions)):
        raise bad("emotion list missing")
    if not (isinstance(layers, list) and layers and all(_is_int(lay) and lay >= 0 for lay in layers)):
        raise bad("layer list missing")
    if len(set(emotions)) != len(emotions) or len(set(layers)) != len(layers):
        raise bad("emotions or layers listed twice")
    _check_meta_fields(meta, layers, bad)
    for key in ("raw", "denoised", "grand_mean", "mean_norm"):
        if key not in tensors:
            raise bad(f"tensor {key!r} missing")
        if tensors[key].dtype != torch.float32:
            raise bad(f"tensor {key!r} has dtype {tensors[key].dtype}, expected float32")
    n_l, n_e, d = len(layers), len(emotions), tensors["raw"].shape[-1] if tensors["raw"].dim() == 3 else -1
    expect = {"raw": (n_l, n_e, d), "denoised": (n_l, n_e, d), "grand_mean": (n_l, d), "mean_norm": (n_l,)}
    for key, shape in expect.items():
        if tuple(tensors[key].shape) != shape or d <= 0:
            raise bad(f"tensor {key!r} has shape {tuple(tensors[key].shape)}, expected {shape}")
        if not torch.isfinite(tensors[key]).all():
            raise bad(f"tensor {key!r} holds NaN or infinite values")
    for key, t in tensors.items():
        if not key.startswith("components."):
            continue
        layer = key.split(".", 1)[1]
        if not (layer.isdigit() and int(layer) in layers):
            raise bad(f"tensor {key!r} names no stored layer")
        if t.dtype != torch.float32 or t.dim() != 2 or t.shape[-1] != d or not torch.isfinite(t).all():
            raise bad(f"tensor {key!r} has shape {tuple(t.shape)} and dtype {t.dtype}, expected [k, {d}] finite float32")
    if not all(math.isfinite(float(x)) and float(x) > 0 for x in tensors["mean_norm"]):
        raise bad("mean norms must be positive")
    return tensors, meta


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_meta_fields(meta: dict[str, Any], layers: list[int], bad: Any) -> None:
    """Metadata that later code relies on must have the right types (a file may lie)."""
    n = meta.get("n_layers")
    if n is not None and not (_is_int(n) and n > max(layers)):
        raise bad(f"n_layers {n!r} is not a depth above the stored layers")
    default = meta.get("default_layer")
    if default is not None and not _is_int(default):
        raise bad(f"default_layer {default!r} is not an integer")
    for key in ("d_model", "token_start", "n_neutral"):
        if meta.get(key) is not None and not _is_int(meta[key]):
            raise bad(f"{key} {meta[key]!r} is not an integer")
    for key in ("n_stories", "denoise_k", "denoise_explained"):
        value = meta.get(key)
        if key in meta and not (isinstance(value, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                       for v in value.values())):
            raise bad(f"{key} is not a table of numbers")
    for key in ("model", "model_fingerprint", "model_source", "layers_path", "score", "emovec_version"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise bad(f"{key} {meta[key]!r} is not a string")
