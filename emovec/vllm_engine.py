"""vLLM as emovec's engine: corpus writing, pooled extraction, per-token readout and steering.

vLLM brings continuous batching, a paged KV cache, its own CPU and GPU kernels and
tensor parallelism; the `vllm-lens` plugin gives per-request hooks on the decoder
layers, which is all emovec needs on top:

- `VLLMBackend` writes stories and dialogues (a `GenerationBackend`): the same rendered
  prompts, tokenised by the run's own tokenizer, one sampling seed per prompt.
- `VLLMPooler` pools residual streams for extraction (a `ShardPooler`): a hook sums each
  text's residual over the pooled positions inside the engine, so only [layers, d_model]
  per text comes back, never every token's activations.
- `VLLMEngine.token_scores` is the per-token readout (the projection runs in the hook);
  `VLLMEngine.generate(..., steer=...)` steers single requests of a batch.

vLLM is an optional extra with pins of its own (`make vllm` builds `.venv-vllm`, with
emovec installed in it). It reads a Hugging Face folder; emovec gives it the dequantised
copy it already caches, with tied tensors written out under both names.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from .activations import DEFAULT_START, shard_from_pooled
from .generation import Sampling
from .models import LanguageModel
from .readout import METHODS
from .steering import SteeringVector
from .storage import EmovecError, user_cache_dir
from .vectors import EmotionVectors

VLLM_MISSING = ("vLLM is not installed in this environment: run `make vllm` and use .venv-vllm/bin/emovec "
                "(vLLM pins its own torch and transformers, so it lives in an environment of its own)")


def import_vllm() -> Any:
    """The `vllm` module with the `vllm_lens` plugin, or a one-line EmovecError saying how to install them."""
    try:
        import vllm
        import vllm_lens  # noqa: F401  (registers the hooks the engine needs)
    except ImportError:
        raise EmovecError(VLLM_MISSING) from None
    return vllm


def engine_folder(lm: LanguageModel) -> Path:
    """A Hugging Face folder vLLM can load with exactly `lm`'s weights (made once, atomically, in the user cache).

    emovec's dequantised cache stores tied tensors once (safetensors' `save_model` keeps one
    name and records the other in its metadata); vLLM reads neither the alias nor, for some
    architectures, the tie, so the copy for vLLM writes each alias out as a tensor of its own.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = lm.weights_dir
    if src is None or not (src / "config.json").exists():
        raise EmovecError(f"{lm.name} was not loaded from a model folder, so vLLM cannot load it")
    files = sorted(src.glob("*.safetensors"))
    aliases: dict[str, str] = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            names = set(st.keys())
            aliases.update({a: k for a, k in (st.metadata() or {}).items() if k in names})
    if not aliases:
        return src
    out = user_cache_dir() / "vllm" / src.name
    if (out / "model.safetensors").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tensors: dict[str, torch.Tensor] = {}
        for f in files:
            with safe_open(str(f), "pt") as st:
                tensors.update({k: st.get_tensor(k) for k in st.keys()})
        tensors.update({alias: tensors[kept].clone() for alias, kept in aliases.items()})
        save_file(tensors, str(tmp / "model.safetensors"))
        for item in src.iterdir():
            if item.is_file() and item.suffix != ".safetensors":
                shutil.copy2(item, tmp / item.name)
        (tmp / "emovec-vllm.json").write_text(json.dumps({"from": str(src), "aliases": aliases}))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _pool_hook(start: int, ctx: Any, h: torch.Tensor) -> None:
    """vllm-lens hook: add this pass's positions to the text's running sums (prefill may come in chunks).

    Keeps, per layer, the sums over all positions, over positions >= 1 and over positions
    >= `start`, and the sum of token norms over positions >= 1; the client picks the sum
    the pooling rule (`emovec.activations`) asks for once it knows the text's length.
    """
    layer, x = ctx.layer_idx, h.double()
    seen = int(ctx.saved.get(f"n{layer}", torch.zeros((), dtype=torch.long)))
    pos = torch.arange(seen, seen + x.shape[0], device=x.device)
    zero = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    ctx.saved[f"all{layer}"] = ctx.saved.get(f"all{layer}", zero) + x.sum(0)
    ctx.saved[f"from1_{layer}"] = ctx.saved.get(f"from1_{layer}", zero) + x[pos >= 1].sum(0)
    ctx.saved[f"fromstart{layer}"] = ctx.saved.get(f"fromstart{layer}", zero) + x[pos >= start].sum(0)
    norms = torch.linalg.vector_norm(x[pos >= 1], dim=-1).sum()
    ctx.saved[f"norm{layer}"] = ctx.saved.get(f"norm{layer}", torch.zeros((), dtype=torch.float64)) + norms.cpu()
    ctx.saved[f"n{layer}"] = torch.tensor(seen + x.shape[0])
    return None


def _score_hook(center: torch.Tensor, units: torch.Tensor, cosine: bool, ctx: Any, h: torch.Tensor) -> None:
    """vllm-lens hook: per-token emotion scores (`emovec.readout` definition), appended pass after pass."""
    x = h.float() - center.to(h.device)
    s = x @ units.to(h.device).T
    if cosine:
        s = s / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    prev = ctx.saved.get("scores")
    ctx.saved["scores"] = s.cpu() if prev is None else torch.cat([prev, s.cpu()])
    return None


def _hook_results(out: Any, key: str | None = None) -> Any:
    """The first hook's saved values of one request, or the one under `key` (vllm-lens swallows hook errors and
    logs them, so an absent result is an error here)."""
    found = (getattr(out, "hook_results", None) or {}).get("0")
    if not isinstance(found, dict) or (key is not None and key not in found):
        raise EmovecError("the vLLM engine returned no hook results: is the vllm-lens plugin installed and loaded? "
                          "(a failing hook is logged by the engine)")
    return found if key is None else found[key]


@contextmanager
def _engine_env(cpu: bool) -> Iterator[None]:
    """On a CPU, let the engine's worker compute on every core this process may use (vLLM's CPU build otherwise
    binds it to all but one, which on 2 cores halves it: bf16 decode measured 141 vs 251 tok/s here).

    The engine's processes read this from the environment when they start, so it is set only
    while the engine is made and then restored; settings the user exported are left alone.
    """
    want = {}
    if cpu and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        bind = f"{cores[0]}-{cores[-1]}" if cores == list(range(cores[0], cores[-1] + 1)) else ",".join(map(str, cores))
        want = {"VLLM_CPU_OMP_THREADS_BIND": bind, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    saved = {k: os.environ.get(k) for k in want}
    os.environ.update(want)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class VLLMEngine:
    """One vLLM engine on `lm`'s weights, started on first use and shut down by `close()` (or `with`).

    `dtype`: the engine's compute dtype (None: the model's own); `engine_args` go to `vllm.LLM`
    on top of emovec's settings (e.g. `tensor_parallel_size` on a GPU node). `kv_cache_gib` sizes the
    CPU KV cache (vLLM's own default is sized for a GPU box); `max_model_len` bounds prompt
    plus completion; `batch_tokens` is the most prompt tokens one engine step takes. Prefix
    caching is off, so every prompt position runs through the layers (the hooks must see them
    all, and steering must not reuse unsteered entries). Chunked prefill is off: vLLM 0.32's
    CPU worker crashes ("CPU Generator does not use offset") when a request with its own seed
    is prefilled in parts, and per-request seeds are what makes a chunk of stories reproducible.
    """

    lm: LanguageModel
    dtype: str | None = None
    max_model_len: int = 2048
    kv_cache_gib: float = 1.0
    batch_tokens: int = 8192
    engine_args: dict[str, Any] = field(default_factory=dict)
    _llm: Any = field(default=None, init=False, repr=False)

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def llm(self) -> Any:
        """The `vllm.LLM` (started on first use: about half a minute on a CPU)."""
        if self._llm is None:
            vllm = import_vllm()
            dtype = self.dtype or str(self.lm.dtype).removeprefix("torch.")
            args = {"max_model_len": self.max_model_len, "enable_prefix_caching": False, "seed": 0,
                    "enable_chunked_prefill": False, "max_num_batched_tokens": max(self.max_model_len, self.batch_tokens),
                    "kv_cache_memory_bytes": int(self.kv_cache_gib * 2**30), "trust_remote_code": False,
                    **self.engine_args}
            folder = str(engine_folder(self.lm))
            with _engine_env(self.lm.device.type == "cpu"):
                self._llm = vllm.LLM(model=folder, tokenizer=folder, dtype=dtype, **args)
        return self._llm

    def close(self) -> None:
        """Shut the engine (and its worker processes) down; a later call starts a new one."""
        if self._llm is not None:
            core = getattr(getattr(self._llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self._llm = None

    def _prompts(self, texts: Sequence[str], max_tokens: int | None, special: bool, room: int = 0) -> list[Any]:
        """Token prompts made by emovec's own tokenizer, so both engines read exactly the same ids.

        `max_tokens` truncates (as extraction does); `room` is what the completion needs on top.
        """
        from vllm.inputs import TokensPrompt

        if not texts:
            raise EmovecError("no texts given to the vLLM engine")
        enc = self.lm.tokenizer(list(texts), add_special_tokens=special, truncation=max_tokens is not None,
                                max_length=max_tokens)
        prompts = []
        for text, ids in zip(texts, enc["input_ids"]):
            if not ids:
                raise EmovecError(f"text {text[:40]!r} has no tokens")
            if len(ids) + room > self.max_model_len:
                raise EmovecError(f"a prompt of {len(ids)} tokens plus {room} to generate does not fit the engine's "
                                  f"max_model_len {self.max_model_len}: raise max_model_len")
            prompts.append(TokensPrompt(prompt_token_ids=ids))
        return prompts

    def generate(self, prompts: Sequence[str], sampling: Sampling, seed: int,
                 steer: SteeringVector | Sequence[SteeringVector | None] | None = None) -> list[str]:
        """Completions of rendered `prompts` in order; prompt i samples with seed `seed + i`.

        `steer` is one steering vector for every prompt, or one per prompt (None: unsteered),
        applied by vllm-lens at every position of that request only.
        """
        return [text for text, _ in self._generate(prompts, sampling, seed, steer, None)]

    def generate_with_readout(self, prompts: Sequence[str], sampling: Sampling, seed: int, vectors: EmotionVectors,
                              layer: int | None = None, emotions: list[str] | str | None = None,
                              steer: SteeringVector | Sequence[SteeringVector | None] | None = None,
                              ) -> list[tuple[str, torch.Tensor]]:
        """`generate`, plus each request's per-token scores ([positions, n_emotions]) read in the engine as it runs.

        The scores cover the prompt and every generated token the model read (all but the
        last one sampled), with the `emovec.readout` definition at `layer` (default: the
        vectors' default layer): the monitor's readout, computed by a hook, not by a second pass.
        """
        return cast("list[tuple[str, torch.Tensor]]",
                    self._generate(prompts, sampling, seed, steer, self._score_fn(vectors, layer, emotions, "projection")))

    def _generate(self, prompts: Sequence[str], sampling: Sampling, seed: int,
                  steer: SteeringVector | Sequence[SteeringVector | None] | None,
                  read: tuple[Any, int] | None) -> list[tuple[str, torch.Tensor | None]]:
        from vllm import SamplingParams
        from vllm_lens import Hook

        per_row = list(steer) if isinstance(steer, Sequence) else [steer] * len(prompts)
        if len(per_row) != len(prompts):
            raise EmovecError(f"{len(per_row)} steering vectors for {len(prompts)} prompts")
        greedy = sampling.temperature <= 0
        params = []
        for i, vec in enumerate(per_row):
            extra: dict[str, Any] = {"apply_steering_vectors": [self._steering(vec)]} if vec else {}
            if read is not None:
                extra["apply_hooks"] = [Hook(fn=read[0], layer_indices=[read[1]])]
            params.append(SamplingParams(
                max_tokens=sampling.max_new_tokens, temperature=0.0 if greedy else sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p, top_k=0 if greedy else sampling.top_k,
                repetition_penalty=sampling.repetition_penalty, seed=seed + i, skip_special_tokens=True,
                extra_args=extra or None))
        outs = self.llm.generate(self._prompts(prompts, None, special=False, room=sampling.max_new_tokens), params,
                                 use_tqdm=False)
        return [(o.outputs[0].text.strip(), _hook_results(o, "scores") if read is not None else None) for o in outs]

    def _score_fn(self, vectors: EmotionVectors, layer: int | None, emotions: list[str] | str | None,
                  method: str) -> tuple[Any, int]:
        """The readout hook for `vectors` (checked against this model) and the layer it runs on."""
        if method not in METHODS:
            raise EmovecError(f"unknown readout method {method!r}: use one of {', '.join(METHODS)}")
        vectors.check_model(self.lm)
        names = vectors.resolve(emotions)
        layer = vectors.default_layer if layer is None else self.lm.check_layer(layer)
        vectors.layer_index(layer)
        fn = functools.partial(_score_hook, vectors.center(layer).float(), vectors.matrix(layer, names).float(),
                               method == "cosine")
        return fn, layer

    def _steering(self, vec: SteeringVector) -> Any:
        from vllm_lens import SteeringVector as LensVector

        layers = sorted(self.lm.check_layer(lay) for lay in vec.deltas)
        acts = torch.stack([vec.deltas[lay].to(torch.float32).cpu() for lay in layers])
        return LensVector(activations=acts, layer_indices=layers, scale=1.0)

    def _run_hook(self, prompts: list[Any], fn: Any, layers: list[int], key: str | None = None) -> list[Any]:
        """Prefill each prompt (from `_prompts`) once with `fn` hooked on `layers` (one sampled token, discarded);
        each prompt's hook results (or the one under `key`)."""
        from vllm import SamplingParams
        from vllm_lens import Hook

        params = SamplingParams(max_tokens=1, temperature=0.0, extra_args={"apply_hooks": [Hook(fn=fn, layer_indices=layers)]})
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [_hook_results(o, key) for o in outs]

    def pool(self, texts: Sequence[str], layers: Sequence[int], start: int = DEFAULT_START,
             max_tokens: int = 512) -> tuple[torch.Tensor, torch.Tensor, int]:
        """`emovec.activations.pool_texts` computed in the engine: ([n, layers, d] float32, norm sums [layers], tokens)."""
        if start < 1:
            raise EmovecError(f"token start must be >= 1 (position 0 is an attention sink), got {start}")
        if not texts:
            raise EmovecError("no texts to read activations from (empty corpus)")
        layers = [self.lm.check_layer(lay) for lay in layers]
        prompts = self._prompts(texts, max_tokens, special=True, room=1)
        lengths = [len(p["prompt_token_ids"]) for p in prompts]
        results = self._run_hook(prompts, functools.partial(_pool_hook, start), layers)
        out = torch.zeros(len(texts), len(layers), self.lm.d_model)
        norm_sum = torch.zeros(len(layers), dtype=torch.float64)
        for i, (n, res) in enumerate(zip(lengths, results)):
            for j, lay in enumerate(layers):
                if int(res.get(f"n{lay}", -1)) != n:
                    raise EmovecError(f"the vLLM engine saw {int(res.get(f'n{lay}', 0))} of {n} positions of a text at "
                                      f"layer {lay} (prefix caching on, or a hook failed: see the engine's log)")
                key, count = (f"fromstart{lay}", n - start) if n > start else (f"from1_{lay}", n - 1)
                if n <= 1:
                    key, count = f"all{lay}", n
                out[i, j] = (res[key] / max(count, 1)).to(torch.float32)
                norm_sum[j] += float(res[f"norm{lay}"])
        return out, norm_sum, sum(max(n - 1, 0) for n in lengths)

    def token_scores(self, texts: Sequence[str], vectors: EmotionVectors, layer: int | None = None,
                     emotions: list[str] | str | None = None, method: str = "projection") -> list[torch.Tensor]:
        """Per-token scores of each text ([n_tokens, n_emotions], `emovec.readout` definition), projected in the engine."""
        fn, layer = self._score_fn(vectors, layer, emotions, method)
        return self._run_hook(self._prompts(texts, self.max_model_len - 1, special=True, room=1), fn, [layer], key="scores")


@dataclass
class VLLMBackend:
    """A `GenerationBackend` on a `VLLMEngine` (the corpus writer with `--backend vllm`)."""

    engine: VLLMEngine

    def generate(self, prompts: Sequence[str], sampling: Sampling, seed: int) -> list[str]:
        """Completions of `prompts` in input order; the same seed gives the same completions."""
        return self.engine.generate(prompts, sampling, seed)

    def close(self) -> None:
        """Shut the engine down."""
        self.engine.close()


@dataclass
class VLLMPooler:
    """A `ShardPooler` on a `VLLMEngine`: extraction with `--backend vllm`, one chunk after another."""

    engine: VLLMEngine

    def pool_chunks(self, chunks: Iterable[tuple[list[str], list[str]]], layers: list[int], keep: list[int],
                    start: int, batch_size: int, max_tokens: int) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(position in `chunks`, the chunk's shard tensors), in order; `batch_size` is left to vLLM's scheduler."""
        for k, (texts, labels) in enumerate(chunks):
            pooled, norm_sum, n_tok = self.engine.pool(texts, layers, start, max_tokens)
            yield k, shard_from_pooled(pooled, norm_sum, n_tok, labels, layers, keep)

    def close(self) -> None:
        """Shut the engine down."""
        self.engine.close()
