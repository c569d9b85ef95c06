"""Steering: add emotion directions to the residual stream through removable hooks.

A `SteeringVector` maps layers to the vector added after that decoder layer, in
absolute residual units. Built from emotion vectors, the addition for strength
`s` is `s * mean_norm(layer) * unit_vector(layer)`, so `s = 0.05` means "5% of a
typical residual norm". Steering vectors support arithmetic (`a + b`, `a - b`,
`-a`, `0.5 * a`) and apply to every position the model processes: prompt tokens
and generated tokens alike (with a KV cache, each generated token is steered as
it is computed).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .activations import hidden_of, layer_hooks, with_hidden
from .models import LanguageModel
from .storage import EmovecError
from .vectors import EmotionVectors


@dataclass
class SteeringVector:
    """Per-layer additions to the residual stream, {model layer: [d_model] tensor}."""

    deltas: dict[int, torch.Tensor] = field(default_factory=dict)
    label: str = ""

    def __add__(self, other: SteeringVector) -> SteeringVector:
        out = {k: v.clone() for k, v in self.deltas.items()}
        for k, v in other.deltas.items():
            out[k] = out[k] + v if k in out else v.clone()
        return SteeringVector(out, " + ".join(x for x in (self.label, other.label) if x))

    def __neg__(self) -> SteeringVector:
        return SteeringVector({k: -v for k, v in self.deltas.items()}, f"-({self.label})")

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self + (-other)

    def __mul__(self, factor: float) -> SteeringVector:
        return SteeringVector({k: v * float(factor) for k, v in self.deltas.items()}, f"{factor}*({self.label})")

    __rmul__ = __mul__

    def __bool__(self) -> bool:
        return any(bool(v.any()) for v in self.deltas.values())

    @contextmanager
    def apply(self, lm: LanguageModel, mask: torch.Tensor | None = None,
              rows: torch.Tensor | None = None) -> Iterator[SteeringVector]:
        """Add the deltas while the block runs; hooks are removed in `finally` whatever happens.

        `mask` ([batch, seq], optional) limits steering to marked positions of a
        full-sequence forward pass; passes of another length (cached decoding
        steps) are steered at every position. `rows` ([batch], optional) scales each
        row's steering and is read at every pass, so it may change during generation
        (a guard that switches on per row).
        """
        for layer in self.deltas:
            lm.check_layer(layer)
        dev, dt = lm.device, lm.dtype
        cast = {lay % lm.n_layers: v.to(device=dev, dtype=dt) for lay, v in self.deltas.items()}
        m = mask.to(device=dev, dtype=dt)[:, :, None] if mask is not None else None

        def add(idx: int, _mod: object, _inp: tuple[Any, ...], out: object) -> object:
            h = hidden_of(out)
            delta = cast[idx]
            if rows is not None:
                if rows.shape[0] != h.shape[0]:
                    raise EmovecError(f"steering rows has {rows.shape[0]} entries but the batch has {h.shape[0]} rows")
                delta = rows.to(device=h.device, dtype=h.dtype)[:, None, None] * delta
            if m is not None and m.shape[:2] == h.shape[:2]:
                return with_hidden(out, h + m * delta)
            return with_hidden(out, h + delta)

        with layer_hooks(lm, sorted(cast), add):
            yield self


def parse_spec(spec: str | dict[str, float] | Sequence[str] | None, default: float | None = None) -> dict[str, float]:
    """Parse steering specs like "calm=0.05,desperate=-0.05" (or a list of "name=value") into a dict.

    A bare name ("calm") takes `default` (the recommended strength) when one is given.
    """
    if spec is None:
        return {}
    items: list[tuple[str, float | str]]
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        parts = [spec] if isinstance(spec, str) else list(spec)
        items = []
        for part in (p for chunk in parts for p in re.split(r"\s*,\s*", chunk.strip()) if p):
            name, sep, value = part.partition("=")
            if not sep and default is None:
                raise EmovecError(f"steering {part!r} needs the form EMOTION=STRENGTH, e.g. calm=0.05 (a bare name "
                                  "takes the recommended strength only where the run's steering analysis gave one)")
            if not sep:
                value = str(default)
            items.append((name.strip(), value.strip()))
    out: dict[str, float] = {}
    for name, value in items:
        try:
            strength = float(value)
        except (TypeError, ValueError):
            raise EmovecError(f"steering strength for {name!r} is {value!r}, not a number (e.g. calm=0.05)") from None
        if not torch.isfinite(torch.tensor(strength)):
            raise EmovecError(f"steering strength for {name!r} must be finite, got {value!r}")
        out[name] = out.get(name, 0.0) + strength
    return out


def parse_layers(layers: str | int | list[int] | range | None, n_layers: int) -> list[int] | None:
    """Parse "20", "18-22" or "10,14,20" (negative counts from the end) into layer indices."""
    if layers is None or isinstance(layers, (list, range)):
        return None if layers is None else [int(lay) for lay in layers]
    if isinstance(layers, int):
        return [layers]
    out: list[int] = []
    for part in str(layers).split(","):
        part = part.strip()
        try:
            if span := re.fullmatch(r"(-?\d+)-(\d+)", part):
                lo, hi = span.groups()
                out += list(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise EmovecError(f"layers {layers!r}: use a number, a range like 18-22, or a list like 10,14,20") from None
    for lay in out:
        if not -n_layers <= lay < n_layers:
            raise EmovecError(f"layer {lay} is out of range: the model has layers 0..{n_layers - 1}")
    return [lay % n_layers for lay in out]


def steering_vector(vectors: EmotionVectors, spec: str | dict[str, float] | list[str],
                    layers: str | int | list[int] | None = None, denoised: bool = True) -> SteeringVector:
    """Build `sum_e s_e * mean_norm(layer) * unit_e(layer)` for each steered layer.

    Default layer: `vectors.steering_layer` (the recommended one when attached, else the
    default layer); a bare emotion name in `spec` takes `vectors.steering_strength`.
    """
    strengths = parse_spec(spec, default=vectors.steering_strength)
    n = int(vectors.meta.get("n_layers", max(vectors.layers) + 1))
    chosen = parse_layers(layers, n) or [vectors.steering_layer]
    names = vectors.resolve(list(strengths))
    total = SteeringVector()
    for name, (_, s) in zip(names, strengths.items()):
        deltas = {}
        for layer in chosen:
            li = vectors.layer_index(layer)
            unit = vectors.matrix(layer, [name], denoised=denoised)[0]
            deltas[layer] = s * float(vectors.mean_norm[li]) * unit
        total = total + SteeringVector(deltas, f"{name}={s:g}")
    return total


@contextmanager
def steer(lm: LanguageModel, vectors: EmotionVectors, spec: str | dict[str, float] | list[str],
          layers: str | int | list[int] | None = None, mask: torch.Tensor | None = None) -> Iterator[SteeringVector]:
    """Context manager: steer `lm` with emotion strengths, e.g. `with steer(lm, vecs, "calm=0.05"): ...`."""
    vectors.check_model(lm)
    sv = steering_vector(vectors, spec, layers)
    with sv.apply(lm, mask=mask):
        yield sv
