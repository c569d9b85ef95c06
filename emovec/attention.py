"""Attention for emovec's decode loop: SDPA over the filled part of a static KV cache, or two matmuls.

`fast_attention` switches a transformers model to `sliced_attention` for a block. In
half precision on a CPU the decode step's attention has two implementations whose speed
depends on the CPU: SDPA's flash kernel (fast where oneDNN uses AMX tiles, ~8x slower
than plain matmuls on an AVX512-BF16 CPU without AMX) and `matmul_attention`. Which one
a machine uses is measured once per machine class (`matmul_attention_speedup`), like the
writer's dtype, so it never flips within a run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .provenance import cached_probe

MATMUL_MAX_QUERIES = 64  # longer prefill chunks keep SDPA, whose kernel is fast there and never holds all scores
MATMUL_MIN_SPEEDUP = 1.2  # matmul attention must beat SDPA by this much to replace the standard kernel


def sliced_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """SDPA over the filled part of a static KV cache, with grouped-query heads left unrepeated.

    `decode` passes `emovec_kv_len` (positions written so far); everything after it is
    masked anyway, so slicing changes no result and saves reading the empty cache.
    `enable_gqa` spares the copy that repeats each key/value head for its query heads.
    With `emovec_matmul=True` (half precision on a CPU where `matmul_attention_speedup`
    says so), calls with at most 64 queries per row (decode steps, short prefill chunks)
    go to `matmul_attention` instead, over the whole cache.
    Only used for decoder-only full-attention models (see `_can_slice`).
    """
    n = kwargs.get("emovec_kv_len")
    q = query.shape[2]
    if kwargs.get("emovec_matmul") and q <= MATMUL_MAX_QUERIES:  # the whole (contiguous) cache: beats copying a slice
        if attention_mask is None:
            attention_mask = _causal_to(q, key.shape[2], n if n is not None else key.shape[2], query.device)
        return matmul_attention(query, key, value, attention_mask, scaling), None
    if n is not None and n < key.shape[2]:
        key, value = key[:, :, :n], value[:, :, :n]
        if attention_mask is not None:
            attention_mask = attention_mask[..., :n]
    kv = key.shape[2]
    causal = False
    if attention_mask is None and q > 1:  # no padding: causal, aligned to the end of the filled cache
        if q == kv:
            causal = True
        else:
            attention_mask = _causal_to(q, kv, kv, query.device)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling, is_causal=causal,
        enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def _causal_to(q: int, keys: int, filled: int, device: torch.device) -> torch.Tensor:
    """Boolean [q, keys] mask for `q` queries that are the last positions of the `filled` written keys."""
    return torch.ones(q, keys, dtype=torch.bool, device=device).tril(filled - q)


def matmul_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None) -> torch.Tensor:
    """Attention as two batched matmuls with the softmax in float32; shaped like `sliced_attention`'s output.

    On an AVX512-BF16 EPYC without AMX, SDPA's flash kernel ran a bf16 decode step (one
    query per row) about 8x slower than these matmuls (12.9 ms against 1.5 ms for 128
    rows x 9 heads x 200 keys), which made attention half of the bf16 writer's time; on
    a Xeon with AMX the flash kernel is the faster one (0.8 against 1.1 ms). The caller
    passes the whole static cache (its unwritten slots are zeros and masked): a sliced
    cache is not contiguous, and copying it cost more than the product. Query heads are
    grouped onto their key/value head as `enable_gqa` does. `attention_mask` is boolean
    (True = attend) or additive, broadcastable to [batch, 1, q, keys].
    """
    b, h, q, d = query.shape
    hk, t = key.shape[1], key.shape[2]
    scores = torch.matmul(query.reshape(b, hk, h // hk * q, d), key.transpose(-1, -2)).float()
    scores = scores.view(b, hk, h // hk, q, t) * (scaling if scaling is not None else d ** -0.5)
    if attention_mask is not None:
        mask = attention_mask.expand(attention_mask.shape[0] if attention_mask.dim() == 4 else 1, 1, q, t)
        mask = mask.reshape(mask.shape[0], 1, 1, q, t)
        low = torch.finfo(torch.float32).min  # finite: a fully masked (padding) query gets a harmless uniform row, not NaN
        scores = scores.masked_fill(~mask, low) if mask.dtype == torch.bool else scores + mask.float().clamp(min=low)
    out = torch.matmul(scores.softmax(-1).to(value.dtype).view(b, hk, h // hk * q, t), value)
    return out.view(b, h, q, d).transpose(1, 2).contiguous()


def matmul_attention_speedup(heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype = torch.bfloat16,
                             rows: int = 128, cache: int = 224) -> float:
    """How many times faster `matmul_attention` runs a decode step than SDPA here (> 1: matmul wins).

    Decode-shaped: `rows` rows with one query each, the static cache half filled (SDPA
    reads the filled half, the matmuls all of it, as in `decode`). Best of 5 rounds of
    10 calls each; measured once per machine class and shape and kept in the user cache
    (`provenance.cached_probe`), so a busy moment cannot flip a later decision.
    """
    def measure() -> float:
        g = torch.Generator().manual_seed(0)
        q = torch.randn(rows, heads, 1, head_dim, generator=g).to(dtype)
        k, v = (torch.randn(rows, kv_heads, cache, head_dim, generator=g).to(dtype) for _ in range(2))
        filled = cache // 2
        mask = torch.zeros(rows, 1, 1, cache, dtype=torch.bool)
        mask[..., :filled] = True

        def sdpa() -> None:
            sliced_attention(torch.nn.Module(), q, k, v, mask, emovec_kv_len=filled)

        def matmul() -> None:
            sliced_attention(torch.nn.Module(), q, k, v, mask, emovec_kv_len=filled, emovec_matmul=True)

        def best(fn: Any) -> float:
            fn()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(10):
                    fn()
                times.append(time.perf_counter() - t)
            return min(times)

        return round(best(sdpa) / best(matmul), 3)

    name = f"matmul_attention_speedup|h={heads}|hk={kv_heads}|d={head_dim}|{dtype}|rows={rows}|cache={cache}"
    value, _ = cached_probe(name, measure)
    return float(value)


def use_matmul_attention(model: Any) -> bool:
    """Whether `decode` should run `model`'s short-query attention as matmuls: half precision on a
    CPU where `matmul_attention_speedup` for its head shape is at least `MATMUL_MIN_SPEEDUP`."""
    if model.device.type != "cpu" or model.dtype not in (torch.bfloat16, torch.float16):
        return False
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return matmul_attention_speedup(heads, kv_heads, head_dim, model.dtype) >= MATMUL_MIN_SPEEDUP


def _can_slice(model: Any) -> bool:
    """Slicing is exact for full-attention SDPA models (not sliding-window or softcapped ones)."""
    cfg = model.config
    full = all(t == "full_attention" for t in (getattr(cfg, "layer_types", None) or ["full_attention"]))
    return (getattr(cfg, "_attn_implementation", None) == "sdpa" and full and not getattr(cfg, "sliding_window", None)
            and not getattr(cfg, "attn_logit_softcapping", None))


@contextmanager
def fast_attention(model: Any) -> Iterator[bool]:
    """Switch `model` to `sliced_attention` for the block (if it is exact for it); restored afterwards."""
    if not _can_slice(model):
        yield False
        return
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register("emovec_sdpa", sliced_attention)
    AttentionMaskInterface.register("emovec_sdpa", sdpa_mask)
    model.set_attn_implementation("emovec_sdpa")
    try:
        yield True
    finally:
        model.set_attn_implementation("sdpa")
