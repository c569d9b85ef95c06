"""Loading causal language models and finding their decoder layers.

`load_model` accepts an embedded model by name (`smollm2-135m`, the default, or
`qwen2.5-coder-0.5b`: GGUF files shipped by packages, see `embedded`), any local
Hugging Face model directory, or a GGUF file. GGUF weights are dequantised once and
cached as safetensors under the user cache directory, so later loads skip the slow
conversion.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ._version import __version__
from .embedded import DEFAULT_MODEL as DEFAULT_MODEL  # re-exported: the default model's name lives with the others
from .embedded import EMBEDDED
from .embedded import embedded_gguf as embedded_gguf  # re-exported (it lived here before)
from .storage import EmovecError, user_cache_dir

# Where decoder layers and the final norm live, as attribute paths; first match wins.
LAYER_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma 2/3 text, Phi, Phi-3
    "model.language_model.layers",  # Gemma 3 / multimodal wrappers (transformers >= 4.52)
    "language_model.model.layers",  # older multimodal wrappers
    "model.model.layers",
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",
    "model.decoder.layers",  # OPT
)
NORM_PATHS = (
    "model.norm",
    "model.language_model.norm",
    "language_model.model.norm",
    "model.model.norm",
    "model.final_layernorm",  # Phi-1/2
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
)
_FINGERPRINT_KEYS = (
    "model_type", "hidden_size", "n_embd", "num_hidden_layers", "n_layer", "vocab_size",
    "intermediate_size", "num_attention_heads", "n_head", "num_key_value_heads",
)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@cache
def _cache_keyword(cls: type) -> str:
    import inspect

    module_cls = cast("type[nn.Module]", cls)
    return "cache" if "cache" in inspect.signature(module_cls.forward).parameters else "past_key_values"


def cache_kw(model: nn.Module, cache: Any) -> dict[str, Any]:
    """The keyword that passes a KV cache to `model.forward`: `cache` in newer transformers 5.x
    releases, `past_key_values` before (the old name warns and goes away in 5.40). Looked up once per class."""
    cls: type = type(model)  # widened to plain `type`, which mypy accepts as Hashable for the cache
    return {_cache_keyword(cls): cache}


def returned_cache(output: Any) -> Any:
    """The KV cache a forward pass returned, under either name."""
    found = getattr(output, "cache", None)
    return found if found is not None else output.past_key_values


def get_path(obj: Any, path: str) -> Any:
    """Follow a dotted attribute path (`model.layers`); None if any step is missing."""
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_layers(model: nn.Module, path: str | None = None) -> tuple[nn.ModuleList, str]:
    """Return the decoder layers of `model` and the attribute path they were found at."""
    candidates = (path,) if path else LAYER_PATHS
    for cand in candidates:
        layers = get_path(model, cand)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers, cand
    lists = [name for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and len(mod) > 1]
    hint = f"; ModuleLists in this model: {', '.join(lists[:4])}" if lists else ""
    what = f"no decoder layers at {path!r}" if path else f"unknown layout for {type(model).__name__}"
    raise EmovecError(f"{what}: pass layers_path= (CLI --layers-path) with the attribute path of its decoder layers{hint}")


def find_final_norm(model: nn.Module) -> nn.Module:
    """Return the norm applied after the last decoder layer (identity if the model has none we know)."""
    for cand in NORM_PATHS:
        mod = get_path(model, cand)
        if isinstance(mod, nn.Module):
            return mod
    warnings.warn(f"no final norm found on {type(model).__name__}; logit lens uses raw residuals", stacklevel=2)
    return nn.Identity()


def config_fingerprint(config: Any) -> str:
    """A short hash of the architecture fields of a model config (width, depth, vocab...)."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    text_cfg = cfg.get("text_config") or {}
    picked = {k: cfg.get(k, text_cfg.get(k)) for k in _FINGERPRINT_KEYS}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class LanguageModel:
    """A loaded causal LM with the handles emovec needs: tokenizer, decoder layers, final norm."""

    model: nn.Module
    tokenizer: Any
    name: str
    layers_path: str
    fingerprint: str
    layers: nn.ModuleList = field(repr=False)
    source: Path | None = None  # the file or directory the weights came from (for the run's file fingerprint)
    weights_dir: Path | None = None  # the Hugging Face folder actually loaded (a GGUF's dequantised cache); for vLLM

    @property
    def n_layers(self) -> int:
        """Number of decoder layers."""
        return len(self.layers)

    @property
    def d_model(self) -> int:
        """Width of the residual stream (the embedding size)."""
        emb = cast(Any, self.model).get_input_embeddings()  # a PreTrainedModel method, not on nn.Module
        return int(emb.weight.shape[1])

    @property
    def device(self) -> torch.device:
        """Device the model's weights are on (inputs are moved there)."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model's weights (steering vectors are cast to it)."""
        return next(self.model.parameters()).dtype

    @property
    def final_norm(self) -> nn.Module:
        """The norm before the unembedding, for the logit lens."""
        return find_final_norm(self.model)

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer can render chat turns (needed for `chat`)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def check_layer(self, layer: int) -> int:
        """Return `layer` (negative counts from the end) or raise a one-line error."""
        if not -self.n_layers <= int(layer) < self.n_layers:
            raise EmovecError(f"layer {layer} is out of range: {self.name} has layers 0..{self.n_layers - 1}")
        return int(layer) % self.n_layers

    def chat(self, user: str, system: str | None = None, assistant_prefix: str = "") -> str:
        """Render a one-turn conversation with the model's chat template, ready for the reply."""
        if not self.has_chat_template:
            raise EmovecError(f"{self.name} has no chat template; use an instruct model or pass plain text prompts")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        text: str = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + assistant_prefix


def _resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise EmovecError(f"unknown dtype {dtype!r}: use one of float32, bfloat16, float16")
    return DTYPES[dtype]


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return user_cache_dir() / "models" / f"{gguf.stem}-{key}"


def _dequantise_to_cache(gguf: Path, cache: Path) -> None:
    """Convert a GGUF file once into a float32 safetensors model directory (atomically)."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        tok.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        (tmp / "emovec-source.json").write_text(json.dumps({"gguf": str(gguf), "emovec": __version__}))
        os.replace(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _needs_remote_code(directory: Path) -> bool:
    """True if the directory's config or tokenizer config points at code shipped inside it."""
    for fname in ("config.json", "tokenizer_config.json"):
        try:
            cfg = json.loads((directory / fname).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(cfg, dict) and cfg.get("auto_map"):
            return True
    return False


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    layers_path: str | None = None,
) -> LanguageModel:
    """Load a causal LM: an embedded model (`smollm2-135m`, `qwen2.5-coder-0.5b`), a local HF directory, or a `.gguf` file.

    `trust_remote_code` stays off unless asked for, so loading a directory never
    runs code shipped inside it. `layers_path` overrides decoder-layer lookup.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    torch_dtype = _resolve_dtype(dtype, device)
    if name in EMBEDDED:
        gguf: Path | None = embedded_gguf(name)
        display = EMBEDDED[name].hf_id
    elif name.endswith(".gguf"):
        gguf = Path(name)
        display = gguf.stem
        if not gguf.is_file():
            raise EmovecError(f"model file {gguf} not found; pass an existing .gguf file, a model directory, or one of "
                              f"{', '.join(EMBEDDED)}")
    else:
        gguf = None
        display = name
        if not Path(name).is_dir():
            raise EmovecError(f"model {name!r} not found: pass a local model directory, a .gguf file, or one of "
                              f"{', '.join(EMBEDDED)} (no downloads here)")
        if not (Path(name) / "config.json").exists():
            raise EmovecError(f"{name} has no config.json; point at a Hugging Face model directory")
        if not trust_remote_code and _needs_remote_code(Path(name)):
            raise EmovecError(f"{name} ships its own model code (auto_map); re-run with --trust-remote-code only if you trust it")
        if not any(Path(name).glob("*.safetensors")):
            raise EmovecError(f"{name} has no .safetensors weights; emovec never unpickles .bin files - convert them "
                              "with transformers' save_pretrained(safe_serialization=True) in a trusted environment")
    src = Path(name)
    if gguf is not None:
        src = _gguf_cache_dir(gguf)
        if not (src / "model.safetensors").exists():
            _dequantise_to_cache(gguf, src)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            src, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except (OSError, ValueError, ImportError, AttributeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "trust_remote_code" in str(exc):
            raise EmovecError(f"{name} needs its own code to load; re-run with --trust-remote-code if you trust it") from None
        raise EmovecError(f"could not load model from {name}: {first}") from None
    net: nn.Module = model  # PreTrainedModel's own .to/.eval wrappers are mis-annotated in transformers
    net.to(device)
    net.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    layers, path = find_layers(model, layers_path)
    return LanguageModel(model=model, tokenizer=tokenizer, name=display, layers_path=path,
                         fingerprint=config_fingerprint(model.config), layers=layers,
                         source=gguf if gguf is not None else Path(name), weights_dir=src)
