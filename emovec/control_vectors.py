"""llama.cpp control vectors: export emovec steering as GGUF files, and import such files back.

The format is llama.cpp's (also written by its `llama-cvector-generator`, by repeng's
`ControlVector.export_gguf` and read by EasySteer): a GGUF file with
`general.architecture = "controlvector"`, `controlvector.model_hint` (a string),
`controlvector.layer_count` (the number of direction tensors), and one float32 1-D tensor
`direction.K` of the model's width per steered layer. emovec adds its own keys under
`emovec.` (strengths, emotions, source, label, ...); llama.cpp ignores them.

Layer index convention (read in ggerganov/llama.cpp at commit c392e509, Feb 2025):

- `src/llama.cpp`, `build_llama()` line ~1613: inside `for (int il = 0; il < n_layer; ++il)`,
  after the feed-forward residual (`cur = ggml_add(ctx0, cur, ffn_inp)`) the graph does
  `cur = lctx.cvec.apply_to(ctx0, cur, il)` and names the result `l_out`, the input of
  block il+1. So `direction.K` is added to the OUTPUT of block K, 0-based as in
  transformers' `model.layers[K]`, i.e. the residual stream that transformers reports as
  `hidden_states[K + 1]` (= the input of block K+1). It is not added to the input of block K
  (= output of K-1). (With transformers 5, `output_hidden_states` records a block's output
  before forward hooks change it, so a steered `hidden_states[K + 1]` looks unsteered; the
  tests check the input of block K+1 instead.)
- `common/common.cpp`, `common_control_vector_load_one()` line ~1960: a tensor whose name is
  not `direction.<int>` is an error, `layer_idx == 0` is an error ("invalid (zero) direction
  tensor layer index"), non-F32 and non-1-D tensors are errors, and all tensors must share one
  width; data for layer K goes to offset `n_embd * (K - 1)` (layer 0 is never stored).
  `common_init_from_params()` line ~960 defaults the applied range to 1..n_layer.
- `src/llama-adapter.cpp`, `llama_adapter_cvec::init()`/`apply()`: tensors exist only for
  blocks 1..n_layer-1 ("there's never a tensor for layer 0"); a width other than the model's
  `n_embd` is refused ("control vector n_embd does not match model"); a `direction.K` with
  K >= n_layer is silently dropped.

emovec's `SteeringVector.deltas` are keyed by the 0-based decoder layer whose output they are
added to (a forward hook on `model.layers[K]`), exactly llama.cpp's K, so the mapping is the
identity: emovec layer K <-> `direction.K`. Layer 0 (and layers past the model's last block)
cannot be expressed in llama.cpp and are refused on export. (llama.cpp's own generator reads
`l_out` of block K-1 and writes it as `direction.K`, and repeng reads `hidden_states[K+1]`;
those are choices of the makers about where a direction is measured. Where it is applied is
fixed by the reader above, and that is what emovec follows on both export and import.)

llama.cpp does no norm matching: a tensor is added as it is (times `--control-vector-scaled`'s
scale). emovec's deltas are already `strength x mean_norm(layer) x unit(layer)`, so the file
holds them unchanged and `--control-vector FILE` reproduces emovec's steering.
"""

from __future__ import annotations

import ctypes
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from ._version import __version__
from .models import LanguageModel
from .steering import SteeringVector, parse_spec, steering_vector
from .storage import EmovecError, atomic_path
from .vectors import EmotionVectors

ARCH = "controlvector"
CONVENTION = ("direction.K is added to the output of decoder block K (0-based, model.layers[K], "
              "transformers hidden_states[K+1]); emovec layer K = llama.cpp direction.K; K = 0 cannot be steered")
_DIRECTION = re.compile(r"direction\.(\d+)")


@dataclass
class ControlVectorFile:
    """A control-vector file as read, before it is matched to a model."""

    path: Path
    directions: dict[int, torch.Tensor]  # llama.cpp layer K (= emovec layer K) -> [width] float32
    model_hint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # every other metadata key, e.g. emovec.strengths

    @property
    def width(self) -> int:
        """Width of the direction tensors (the model's embedding size they fit)."""
        return int(next(iter(self.directions.values())).shape[0])

    @property
    def strengths(self) -> dict[str, float]:
        """The emotion strengths emovec recorded when it exported the file ({} for other makers' files)."""
        try:
            raw = json.loads(str(self.meta.get("emovec.strengths", "{}")))
            return {str(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        except (ValueError, TypeError, AttributeError):
            return {}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:160] if text else type(exc).__name__


def export_gguf(steering: SteeringVector, path: str | Path, model_hint: str, n_layers: int,
                strengths: Mapping[str, float] | None = None, *, source: str = "",
                meta: Mapping[str, str] | None = None) -> Path:
    """Write `steering` as a llama.cpp control-vector file at `path`, atomically.

    `steering.deltas[K]` becomes `direction.K` unchanged (float32), K normalised to 0..n_layers-1;
    K = 0 and K outside the model's `n_layers` blocks are refused (llama.cpp cannot apply them).
    `model_hint` goes to `controlvector.model_hint` (llama.cpp's generator and repeng put the
    architecture there, e.g. "llama"); `strengths`, `source` and `meta` are recorded under `emovec.`.
    """
    if not steering.deltas:
        raise EmovecError("nothing to export: the steering vector has no layers (give strengths, e.g. calm=0.1)")
    if not model_hint:
        raise EmovecError("a control-vector file needs a model hint (e.g. the architecture, llama)")
    directions: dict[int, np.ndarray[Any, Any]] = {}
    given: dict[int, int] = {}  # llama.cpp index -> the key it came from
    width = None
    for key in sorted(steering.deltas):
        if not -n_layers <= key < n_layers:
            raise EmovecError(f"layer {key} is out of range: the model has layers 0..{n_layers - 1}")
        k = key % n_layers
        if k == 0:
            raise EmovecError(f"layer 0 cannot be exported: llama.cpp never steers block 0 (it rejects direction.0); "
                              f"steer layers 1..{n_layers - 1}")
        if k in given:
            raise EmovecError(f"layers {given[k]} and {key} are the same layer of a {n_layers}-layer model; give it once")
        vec = steering.deltas[key].detach().to("cpu", torch.float32)
        if vec.dim() != 1 or (width is not None and vec.shape[0] != width):
            raise EmovecError(f"the delta at layer {key} has shape {tuple(vec.shape)}; control vectors need one "
                              f"1-D vector of the model's width per layer")
        if not bool(torch.isfinite(vec).all()):
            raise EmovecError(f"the delta at layer {key} has non-finite values; llama.cpp would add NaN or inf")
        width, given[k] = vec.shape[0], key
        directions[k] = np.ascontiguousarray(vec.numpy(), dtype=np.float32)
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = GGUFWriter(tmp, ARCH)
        writer.add_string(f"{ARCH}.model_hint", model_hint)
        writer.add_int32(f"{ARCH}.layer_count", len(directions))  # int32, as llama.cpp's cvector-generator writes it
        writer.add_string("emovec.version", __version__)
        writer.add_string("emovec.layer_convention", CONVENTION)
        writer.add_string("emovec.strengths", json.dumps(dict(strengths or {})))
        writer.add_array("emovec.emotions", list(strengths or {}))
        writer.add_string("emovec.label", steering.label)
        writer.add_string("emovec.source", source)
        for name, value in (meta or {}).items():
            writer.add_string(name if name.startswith("emovec.") else f"emovec.{name}", str(value))
        for k, arr in directions.items():
            writer.add_tensor(f"direction.{k}", arr)
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return path


def read_gguf(path: str | Path) -> ControlVectorFile:
    """Read and validate a control-vector file on its own (no model); never executes anything.

    Checks what llama.cpp's loader checks, and a little more: architecture `controlvector`,
    tensors named `direction.K` with K >= 1, float32, 1-D, one width, finite values. Every defect
    (a truncated file, random bytes, a model GGUF) becomes a one-line EmovecError.
    """
    path = Path(path)
    if not path.is_file():
        raise EmovecError(f"control-vector file {path} not found")

    def bad(why: str) -> EmovecError:
        return EmovecError(f"{path} is not a usable llama.cpp control-vector file: {why}")

    try:
        reader = GGUFReader(path)
        arch_field = reader.fields.get("general.architecture")
        arch = arch_field.contents() if arch_field is not None else None
        if arch_field is None or arch_field.types != [GGUFValueType.STRING] or arch != ARCH:
            raise bad(f"general.architecture is {arch!r}, not {ARCH!r}" if arch is not None else "no general.architecture")
        meta = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
        tensors = [(t.name, t.tensor_type, [int(d) for d in t.shape], np.array(t.data, dtype=np.float32, copy=True)
                    if t.tensor_type == GGMLQuantizationType.F32 else None) for t in reader.tensors]
        del reader  # drop the memory map
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, OSError, MemoryError, AttributeError) as exc:
        raise bad(f"not a readable GGUF file ({_one_line(exc)})") from None
    hint = meta.pop(f"{ARCH}.model_hint", "")
    directions: dict[int, torch.Tensor] = {}
    for name, ttype, shape, data in tensors:
        m = _DIRECTION.fullmatch(name)
        if m is None:
            raise bad(f"tensor {name!r} is not named direction.K")
        k = int(m.group(1))
        if k == 0:
            raise bad("it has direction.0, which llama.cpp rejects (block 0 cannot be steered)")
        if data is None:
            raise bad(f"{name} is {getattr(ttype, 'name', ttype)}, not float32")
        if not shape or any(d != 1 for d in shape[1:]):
            raise bad(f"{name} has shape {shape}, not a 1-D vector")
        vec = torch.from_numpy(data.reshape(-1))
        if directions and vec.shape[0] != next(iter(directions.values())).shape[0]:
            raise bad(f"{name} has width {vec.shape[0]} but the other directions have "
                      f"{next(iter(directions.values())).shape[0]}")
        if not bool(torch.isfinite(vec).all()):
            raise bad(f"{name} has non-finite values")
        # llama.cpp adds directions that name the same layer ("direction.5", "direction.05"): so does emovec.
        directions[k] = directions[k] + vec if k in directions else vec
    if not directions:
        raise bad("it has no direction tensors")
    return ControlVectorFile(path=path, directions=dict(sorted(directions.items())), model_hint=str(hint or ""), meta=meta)


def import_gguf(path: str | Path, lm: LanguageModel) -> SteeringVector:
    """Read a llama.cpp control-vector file (llama.cpp, repeng, EasySteer or emovec made) as a SteeringVector for `lm`.

    `direction.K` becomes the delta at emovec layer K (added to the output of `lm.layers[K]`),
    as llama.cpp applies it. The width must be `lm.d_model` and every K within 1..n_layers-1.
    """
    cv = read_gguf(path)
    if cv.width != lm.d_model:
        raise EmovecError(f"{cv.path} has width {cv.width} but {lm.name} has width {lm.d_model}; "
                          f"use a control vector made for this model (its hint: {cv.model_hint or 'none'})")
    beyond = [k for k in cv.directions if k >= lm.n_layers]
    if beyond:
        raise EmovecError(f"{cv.path} steers layer {beyond[0]} but {lm.name} has layers 0..{lm.n_layers - 1} "
                          f"(hint: {cv.model_hint or 'none'}); use a control vector made for this model")
    label = str(cv.meta.get("emovec.label") or "") or cv.path.name
    return SteeringVector(dict(cv.directions), label)


def export_emotions(vectors: EmotionVectors, spec: str | dict[str, float] | Sequence[str], path: str | Path,
                    layers: str | int | list[int] | None = None, model_hint: str | None = None,
                    source: str = "", denoised: bool = True) -> SteeringVector:
    """Build emovec steering from emotion strengths (as `steer` would) and write it as a control-vector file.

    `layers` defaults to the vectors' default layer; `model_hint` to the vectors' model name.
    Returns the exported SteeringVector (its `deltas` keys are the llama.cpp layer indices).
    """
    strengths = parse_spec(spec)
    if not strengths:
        raise EmovecError("give at least one strength to export, e.g. calm=0.1")
    sv = steering_vector(vectors, strengths, layers, denoised=denoised)
    n_layers = int(vectors.meta.get("n_layers", max(vectors.layers) + 1))
    model = str(vectors.meta.get("model") or "")
    extra = {"model": model, "model_fingerprint": str(vectors.meta.get("model_fingerprint") or ""),
             "denoised": str(denoised).lower()}
    export_gguf(sv, path, model_hint or model or "unknown", n_layers, strengths, source=source,
                meta={k: v for k, v in extra.items() if v})
    return sv


def architecture(lm: LanguageModel) -> str:
    """The model's architecture name (e.g. "llama"): what llama.cpp's generator and repeng put in model_hint."""
    return str(getattr(getattr(lm.model, "config", None), "model_type", "") or lm.name)


def llama_cli_line(lm: LanguageModel, path: str | Path) -> str:
    """The llama.cpp command that applies the control vector at `path` to `lm` (its GGUF when it came from one)."""
    if lm.source is not None and lm.source.suffix == ".gguf":
        return f"llama-cli -m {lm.source} --control-vector {path}"
    return (f"llama-cli -m MODEL.gguf --control-vector {path}  "
            f"(MODEL.gguf: {lm.name} converted with llama.cpp's convert_hf_to_gguf.py)")


def apply_to_llama(llama: Any, control: str | Path | ControlVectorFile | SteeringVector | None) -> None:
    """Set (None: clear) the control vector of a llama-cpp-python `Llama`, as `llama-cli --control-vector` would.

    `control` is a control-vector file (path or as read), or emovec steering itself. Its
    `direction.K` goes to block K through `llama_set_adapter_cvec` (buffer from layer 1, range
    = the lowest to the highest steered K). The Llama's cached tokens are dropped, so the next
    evaluation runs under the new vector instead of reusing a prefix computed under the old one.
    """
    import llama_cpp  # optional extra: `make llamacpp`

    n_embd = int(llama.n_embd())
    n_layer = int(llama_cpp.llama_model_n_layer(llama.model))
    ctx = llama.ctx
    llama.reset()
    if control is None:
        if llama_cpp.llama_set_adapter_cvec(ctx, None, 0, n_embd, 0, 0) != 0:
            raise EmovecError("llama.cpp refused to clear the control vector")
        return
    if isinstance(control, SteeringVector):
        directions = {int(k): v.detach().float().cpu() for k, v in control.deltas.items()}
        where = control.label
    else:
        cv = control if isinstance(control, ControlVectorFile) else read_gguf(control)
        directions, where = cv.directions, str(cv.path)
    bad = [k for k in directions if not 1 <= k < n_layer]
    if bad:
        raise EmovecError(f"{where} steers layer {bad[0]} but llama.cpp can steer only layers 1..{n_layer - 1} of this model")
    widths = {int(v.shape[0]) for v in directions.values()}
    if widths != {n_embd}:
        raise EmovecError(f"{where} has width {widths.pop()} but the llama.cpp model has n_embd {n_embd}")
    top = max(directions)
    buf = np.zeros((top, n_embd), dtype=np.float32)  # row K-1 holds direction.K
    for k, v in directions.items():
        buf[k - 1] = v.numpy()
    data = buf.ravel()
    ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    if llama_cpp.llama_set_adapter_cvec(ctx, ptr, data.size, n_embd, min(directions), top) != 0:
        raise EmovecError(f"llama.cpp refused the control vector {where}")
