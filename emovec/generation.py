"""Text generation behind one small interface, so a faster engine can replace the default.

A backend turns fully rendered prompts (chat template already applied) into
completions. `FastBackend` (the default) runs `decode`, emovec's one decode loop,
also used by the live monitor and the experiments: static KV cache, the batch's
shared prompt prefix computed once, attention over the filled cache only.
`HFBackend` uses transformers' `generate` (the reference the benchmark compares
against); any object with the same `generate` method (e.g. a vLLM wrapper on a
GPU) can be passed to the corpus code instead.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
from tqdm.auto import tqdm

from .activations import length_sorted_batches
from .attention import fast_attention, use_matmul_attention
from .models import DTYPES, LanguageModel, cache_kw
from .provenance import cached_probe
from .storage import EmovecError


@dataclass
class Sampling:
    """Sampling settings shared by every backend."""

    max_new_tokens: int = 160
    temperature: float = 0.9
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.1


class GenerationBackend(Protocol):
    """Anything that can complete a batch of rendered prompts reproducibly from a seed."""

    def generate(self, prompts: Sequence[str], sampling: Sampling, seed: int) -> list[str]:
        """Completions of `prompts` (in order); the same seed gives the same completions."""
        ...


class ChunkedBackend(GenerationBackend, Protocol):
    """A backend that works on many chunks at once (e.g. over Ray workers, `emovec.distributed.RayBackend`)."""

    def generate_chunks(self, chunks: Iterable[tuple[Sequence[str], int]], sampling: Sampling) -> Iterator[list[str]]:
        """For each (prompts, seed) in `chunks`, in input order, what `generate(prompts, sampling, seed)` returns.

        `chunks` may be consumed ahead of what has been yielded (work in flight); each result is
        yielded as soon as it and all before it are ready.
        """
        ...


@dataclass
class HFBackend:
    """transformers `generate` on length-sorted, left-padded batches."""

    lm: LanguageModel
    batch_size: int = 32
    progress: bool = False

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], sampling: Sampling, seed: int) -> list[str]:
        """Completions of `prompts` in input order; batch `b` is seeded with `seed + b`."""
        tok = self.lm.tokenizer
        lengths = [len(x) for x in tok(list(prompts), add_special_tokens=False)["input_ids"]]
        out: list[str] = [""] * len(prompts)
        batches = length_sorted_batches(lengths, self.batch_size)
        for b, idx in enumerate(tqdm(batches, desc="generate", unit="batch", disable=not self.progress)):
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, padding_side="left",
                      add_special_tokens=False).to(self.lm.device)
            torch.manual_seed(seed + b)
            greedy = sampling.temperature <= 0
            gen = cast(Any, self.lm.model).generate(  # a PreTrainedModel method, not on nn.Module
                **enc, max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
                temperature=None if greedy else sampling.temperature, top_p=None if greedy else sampling.top_p,
                top_k=None if greedy else sampling.top_k, repetition_penalty=sampling.repetition_penalty, pad_token_id=tok.pad_token_id,
            )
            new = gen[:, enc["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                out[i] = tok.decode(new[row], skip_special_tokens=True).strip()
        return out


def _eos_ids(lm: LanguageModel) -> list[int]:
    ids = {lm.tokenizer.eos_token_id}
    cfg_eos = getattr(lm.model.generation_config, "eos_token_id", None)
    ids |= set(cfg_eos if isinstance(cfg_eos, list) else [cfg_eos])
    return sorted(i for i in ids if i is not None)


def sample_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """Pick next tokens [batch] (on the CPU) from last-position logits [batch, vocab]: greedy, or temperature + top-k + top-p.

    Argmax and top-k run where the logits are; only the k candidates move to the CPU, where
    the draw uses `generator`, so a seed gives the same tokens on any device (given equal
    logits) without copying the whole vocabulary off a GPU at every step.
    """
    if sampling.temperature <= 0:
        return logits.argmax(-1).cpu()
    k = min(sampling.top_k if sampling.top_k > 0 else logits.shape[-1], logits.shape[-1])
    vals, idx = torch.topk(logits, k, dim=-1)  # dividing by the temperature after top-k keeps the order, at k/vocab the cost
    vals, idx = vals.float().cpu() / sampling.temperature, idx.cpu()
    probs = torch.softmax(vals, dim=-1)
    if sampling.top_p < 1.0:
        drop = (torch.cumsum(probs, -1) - probs) > sampling.top_p
        probs = probs.masked_fill(drop, 0.0)
    choice = torch.multinomial(probs, 1, generator=generator)
    return idx.gather(-1, choice).squeeze(-1)


def penalize(logits: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """Repetition penalty on the tokens in `history` [batch, t] (padding = -1), touching only those entries."""
    if penalty == 1.0:
        return logits
    ids = torch.where(history >= 0, history, history.max(dim=1, keepdim=True).values)  # pads repeat a real token
    seen = logits.gather(1, ids)
    return logits.scatter(1, ids, torch.where(seen > 0, seen / penalty, seen * penalty))


@dataclass
class DecodeStep:
    """One decoding step: the token each row sampled, and which rows are still writing (`live`)."""

    step: int
    tokens: torch.Tensor
    live: torch.Tensor


def _layout(lm: LanguageModel, texts: Sequence[str], share: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token ids and mask of a batch laid out as [shared prefix][padding][own suffix], and the prefix length.

    Rendered chat prompts share their template head (system prompt, instructions);
    putting the padding after it lets `decode` compute that prefix once for the batch.
    Without a shared prefix (or `share=False`) this is plain left padding.
    """
    rows = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    if any(not r for r in rows):
        raise EmovecError("cannot generate from an empty prompt")
    p = 0
    if share and len(rows) > 1:
        shortest = min(len(r) for r in rows) - 1  # every row keeps at least one token of its own
        while p < shortest and all(r[p] == rows[0][p] for r in rows):
            p += 1
        p = p if p >= 8 else 0
    width = max(len(r) for r in rows) - p
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([r[:p] + [pad] * (width - len(r) + p) + r[p:] for r in rows])
    mask = torch.tensor([[1] * p + [0] * (width - len(r) + p) + [1] * (len(r) - p) for r in rows])
    return ids, mask, p


def _prefill_shared(model: Any, cache: Any, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, p: int,
                    extra: dict[str, Any]) -> bool:
    """Compute the shared prefix once (batch 1) and copy its keys/values into every row of `cache`.

    Uses transformers' StaticLayer storage (`keys`, `values`, `cumulative_length`); on any
    other cache layout it does nothing and returns False, and the caller prefills in full.
    """
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer

    if not all(type(layer) is StaticLayer and hasattr(layer, "cumulative_length") for layer in cache.layers):
        return False
    small = StaticCache(config=model.config, max_cache_len=p)
    model(input_ids=ids[:1, :p], attention_mask=mask[:1, :p], position_ids=pos[:1, :p], **cache_kw(model, small),
          use_cache=True, cache_position=torch.arange(p, device=ids.device), logits_to_keep=1, **extra)
    n = ids.shape[0]
    for big, one in zip(cast("list[StaticLayer]", cache.layers), cast("list[StaticLayer]", small.layers)):  # checked above
        assert one.keys is not None and one.values is not None  # filled by the forward pass just run
        big.lazy_initialization(one.keys.expand(n, -1, -1, -1), one.values.expand(n, -1, -1, -1))
        assert big.keys is not None and big.values is not None  # allocated by lazy_initialization
        big.keys[:, :, :p] = one.keys
        big.values[:, :, :p] = one.values
        big.cumulative_length.fill_(p)
    return True


def decode(lm: LanguageModel, texts: Sequence[str], sampling: Sampling, generator: torch.Generator | None,
           model: Any = None, feed_last: bool = False, share_prefix: bool = True,
           prefill_tokens: int = 1024, matmul_attention: bool | None = None,
           step_context: Callable[[], AbstractContextManager[Any]] | None = None) -> Iterator[DecodeStep]:
    """The one decode loop of emovec: static KV cache, shared prompt prefix computed once,
    attention over the filled cache only, last-position logits only.

    Each step is yielded after its tokens were fed through the model, so layer hooks
    (readout, steering) have seen them; rows that ended keep feeding an end token and
    are marked not live. The final step is fed only with `feed_last` (a monitor needs
    the last token's state; a corpus writer does not). `model` defaults to `lm.model`
    (e.g. a bf16 copy for the writer). `share_prefix=False` when a hook needs every
    row in every pass (the shared prefix runs as a batch of one). The prompts are fed in
    chunks of about `prefill_tokens` tokens over all rows: one huge pass allocates
    temporaries so large that the page faults of touching them cost more than the maths.

    `step_context` (e.g. readout or steering hooks) is entered around the model's forward
    passes and left before every yield, so a caller that stops iterating never leaves the
    model hooked; grad mode is likewise switched off only inside those passes.
    `matmul_attention` forces (True) or forbids (False) `attention.matmul_attention` for
    decode steps; None decides by the model's dtype and this machine (`use_matmul_attention`).
    """
    from transformers import StaticCache

    model = model if model is not None else lm.model
    dev = lm.device
    eos = torch.tensor(_eos_ids(lm))
    ids, mask, p = _layout(lm, texts, share_prefix)
    n, t0 = ids.shape
    total = t0 + sampling.max_new_tokens
    attn = torch.cat([mask, mask.new_ones(n, sampling.max_new_tokens)], dim=1).to(dev)
    history = torch.cat([torch.where(mask.bool(), ids, -1), ids.new_full((n, sampling.max_new_tokens), -1)], dim=1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0).to(dev)
    ids = ids.to(dev)
    finished = torch.zeros(n, dtype=torch.bool)

    def passes() -> ExitStack:
        """What is in force during the model's forward passes (and only then)."""
        stack = ExitStack()
        stack.enter_context(torch.inference_mode())
        if step_context is not None:
            stack.enter_context(step_context())
        return stack

    with fast_attention(model) as sliced:
        matmul = sliced and (use_matmul_attention(model) if matmul_attention is None else matmul_attention)
        cache = StaticCache(config=model.config, max_cache_len=total)
        with_cache = cache_kw(model, cache)

        def kv(length: int) -> dict[str, int | bool]:
            """Extra forward keywords for `sliced_attention`: the filled cache length, and which kernel."""
            return {"emovec_kv_len": length, "emovec_matmul": matmul} if sliced else {}

        with passes():
            start = p if p and _prefill_shared(model, cache, ids, attn, pos, p, kv(p)) else 0
            width = max(1, prefill_tokens // n)
            for a in range(start, t0, width):  # chunked prefill: small temporaries instead of page-faulting huge ones
                b = min(a + width, t0)
                args = dict(input_ids=ids[:, a:b], attention_mask=attn[:, :b], position_ids=pos[:, a:b], **with_cache,
                            use_cache=True, cache_position=torch.arange(a, b, device=dev), **kv(b))
                if b < t0:
                    model.base_model(**args)  # no logits before the last chunk
                else:
                    logits = model(**args, logits_to_keep=1).logits[:, -1]
        pos = pos[:, -1:]
        for step in range(sampling.max_new_tokens):
            scores = logits  # a bf16 writer's logits stay bf16: sample_next reads only its top k in float32
            if sampling.repetition_penalty != 1.0:
                scores = penalize(logits.float(), history[:, :t0 + step].to(dev), sampling.repetition_penalty)
            nxt = sample_next(scores, sampling, generator)
            nxt = torch.where(finished, eos[0], nxt)
            live = ~finished & ~torch.isin(nxt, eos)
            finished |= ~live
            history[:, t0 + step] = torch.where(live, nxt, -1)
            last = bool(finished.all()) or step == sampling.max_new_tokens - 1
            if not last or (feed_last and bool(live.any())):
                pos = pos + 1
                with passes():
                    logits = model(input_ids=nxt[:, None].to(dev), attention_mask=attn[:, :t0 + step + 1],
                                   position_ids=pos, **with_cache, use_cache=True,
                                   cache_position=torch.tensor([t0 + step], device=dev), **kv(t0 + step + 1)).logits[:, -1]
            yield DecodeStep(step, nxt, live)
            if last:
                break


def bf16_speedup(lm: LanguageModel, rows: int = 96) -> float:
    """How many times faster a decode-shaped matmul ([rows, d] @ [d, 4d]) runs in bf16 than in fp32 here.

    CPUs with native bf16 (AVX512-BF16, AMX) gain ~1.5-2x; on AVX2-only CPUs bf16 is
    emulated and several times slower. Measured once per machine class and width and
    kept in the user cache (`provenance.cached_probe`), so a busy moment cannot flip a
    later decision; runs record the dtype they chose and never re-probe.
    """
    def measure() -> float:
        def per_call(dt: torch.dtype, reps: int, rounds: int) -> float:
            a, b = torch.randn(rows, lm.d_model, dtype=dt), torch.randn(lm.d_model, 4 * lm.d_model, dtype=dt)
            a @ b
            best = float("inf")
            for _ in range(rounds):
                t = time.perf_counter()
                for _ in range(reps):
                    a @ b
                best = min(best, (time.perf_counter() - t) / reps)
            return best

        fp32 = per_call(torch.float32, 10, 5)
        bf16 = per_call(torch.bfloat16, 1, 1)  # emulated bf16 is ~100x slower: one call tells
        if bf16 < 2 * fp32:
            bf16 = per_call(torch.bfloat16, 10, 5)
        return round(fp32 / bf16, 3)

    value, _ = cached_probe(f"bf16_speedup|d={lm.d_model}|rows={rows}", measure)
    return float(value)


BF16_MIN_SPEEDUP = 1.3


def resolve_writer_dtype(lm: LanguageModel, dtype: str | None) -> tuple[str, str]:
    """The concrete dtype name a corpus writer will use for `dtype` ("auto", None or a name), and why.

    "auto" is bfloat16 off the CPU, and on a CPU where bf16 matmuls are at least 1.3x
    faster than fp32 (`bf16_speedup`, cached per machine); else the model's own dtype.
    """
    own = str(lm.dtype).removeprefix("torch.")
    if dtype is None:
        return own, "the model's own dtype"
    if dtype == "auto":
        if lm.dtype != torch.float32:
            return own, "the model's own dtype (already below float32)"
        if lm.device.type != "cpu":
            return "bfloat16", f"auto on {lm.device.type}"
        speed = bf16_speedup(lm)
        if speed >= BF16_MIN_SPEEDUP:
            return "bfloat16", f"auto: bf16 matmuls run {speed:.2f}x faster than fp32 on this CPU (probe cached per machine)"
        return own, f"auto: bf16 would run at {speed:.2f}x of fp32 speed on this CPU (needs >= {BF16_MIN_SPEEDUP}x)"
    if dtype not in DTYPES:
        raise EmovecError(f"unknown writer dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return str(DTYPES[dtype]).removeprefix("torch."), "chosen"


def writer_dtype(lm: LanguageModel, dtype: str | None) -> torch.dtype:
    """The torch dtype a corpus writer decodes in (see `resolve_writer_dtype`)."""
    return DTYPES[resolve_writer_dtype(lm, dtype)[0]]


def cast_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of `model` with its weights in `dtype` and its floating buffers as they were, as loading the
    model in `dtype` gives, so a bf16 writer is the same model whichever way it was made. `Module.to` would
    round buffers too: RoPE's `inv_freq` in bf16 puts angles at position 200 off by up to ~0.3 radian (on
    SmolLM2 the next-token choice barely notices: 97.1% against 97.2% agreement with float32 over 32 stories)."""
    out = copy.deepcopy(model).to(dtype)
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            owner, _, attr = name.rpartition(".")
            setattr(out.get_submodule(owner), attr, buf.clone())
    return out


@dataclass
class FastBackend:
    """emovec's generation path for CPU batches (see `decode`), optionally with a bf16 copy of the
    model for the corpus writer while extraction and readout stay in the model's own dtype.

    `dtype`: None decodes with `lm.model` itself (so steering hooks apply); "auto" uses a
    bf16 copy where that is faster on this hardware (`resolve_writer_dtype`); or a dtype name.
    """

    lm: LanguageModel
    batch_size: int = 256
    dtype: str | None = None
    progress: bool = False
    _model: Any = field(default=None, init=False, repr=False)
    stats: dict[str, int] = field(default_factory=dict, init=False)

    def model(self) -> Any:
        """The model that decodes: `lm.model`, or a copy in `dtype` made on first use."""
        if self._model is None:
            want = writer_dtype(self.lm, self.dtype)
            self._model = self.lm.model if want == self.lm.dtype else cast_copy(self.lm.model, want)
        return self._model

    def generate(self, prompts: Sequence[str], sampling: Sampling, seed: int) -> list[str]:
        """Completions of `prompts` in input order via `decode`; reproducible from `seed`, row-step counts in `stats`."""
        tok, model = self.lm.tokenizer, self.model()
        lengths = [len(x) for x in tok(list(prompts), add_special_tokens=False)["input_ids"]]
        out: list[str] = [""] * len(prompts)
        batches = length_sorted_batches(lengths, self.batch_size)
        self.stats = {"row_steps": 0, "live_row_steps": 0}
        for b, idx in enumerate(tqdm(batches, desc="generate", unit="batch", disable=not self.progress)):
            rows: list[list[int]] = [[] for _ in idx]
            for st in decode(self.lm, [prompts[i] for i in idx], sampling, torch.Generator().manual_seed(seed + b), model):
                live = torch.nonzero(st.live).flatten().tolist()
                self.stats["row_steps"] += len(idx)
                self.stats["live_row_steps"] += len(live)
                for r in live:
                    rows[r].append(int(st.tokens[r]))
            for r, i in enumerate(idx):
                out[i] = tok.decode(rows[r], skip_special_tokens=True).strip()
        return out


def generate_text(lm: LanguageModel, prompt: str, sampling: Sampling | None = None, seed: int = 0,
                  chat: bool = True, system: str | None = None) -> str:
    """Complete one prompt (rendered with the chat template unless `chat=False`); steer with `steer(...)` around it."""
    text = lm.chat(prompt, system=system) if chat else prompt
    return HFBackend(lm, batch_size=1).generate([text], sampling or Sampling(), seed)[0]
