"""emovec's decode loop against transformers' own `generate`, and its shared-prefix prefill against a full one."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import emovec.attention as attention
import emovec.generation as generation
from emovec import EmovecError, FastBackend, HFBackend, Sampling
from emovec.generation import _layout, penalize, sample_next


@pytest.fixture(scope="module")
def prompts(lm):
    topics = ["a lost umbrella", "the night shift at a bakery", "a first swimming lesson", "moving house in winter"]
    return [lm.chat(f"Write two sentences about {t}.") for t in topics]


def test_greedy_decode_matches_transformers_generate(lm, prompts):
    """Static cache, sliced attention, shared prefix and our repetition penalty give generate's exact tokens."""
    sampling = Sampling(max_new_tokens=24, temperature=0)
    assert _layout(lm, prompts, True)[2] >= 8  # the chat template head is shared, so the prefix path runs
    ours = FastBackend(lm, batch_size=4).generate(prompts, sampling, seed=0)
    ref = HFBackend(lm, batch_size=4).generate(prompts, sampling, seed=0)
    assert ours == ref


def test_shared_prefix_prefill_equals_full_prefill(lm, prompts, monkeypatch):
    sampling = Sampling(max_new_tokens=16, temperature=0.9)
    shared = FastBackend(lm, batch_size=4).generate(prompts, sampling, seed=3)
    monkeypatch.setattr(generation, "_prefill_shared", lambda *a, **k: False)
    full = FastBackend(lm, batch_size=4).generate(prompts, sampling, seed=3)
    assert shared == full
    assert len(set(shared)) > 1


def test_layout_puts_padding_after_the_shared_prefix(lm):
    texts = [lm.chat("Say hi."), lm.chat("Say hello to everyone in the room, please.")]
    ids, mask, p = _layout(lm, texts, True)
    assert p >= 8 and mask[:, :p].all()
    for row, text in zip(range(2), texts):
        kept = ids[row][mask[row].bool()].tolist()
        assert lm.tokenizer.decode(kept) == text
    assert _layout(lm, texts, False)[2] == 0
    with pytest.raises(EmovecError, match="empty prompt"):
        _layout(lm, ["", "x"], True)


def test_repetition_penalty_touches_only_seen_tokens():
    logits = torch.tensor([[2.0, -2.0, 3.0, 1.0]])
    out = penalize(logits, torch.tensor([[0, 1, -1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 3.0, 1.0]]


def test_chunked_prefill_equals_one_pass(lm, prompts):
    """Feeding the prompts a few tokens at a time writes the same cache as one pass: same greedy tokens."""
    sampling = Sampling(max_new_tokens=12, temperature=0)
    texts = [p + "Sure." for p in prompts]

    def run(chunk: int) -> list[list[int]]:
        steps = list(generation.decode(lm, texts, sampling, None, prefill_tokens=chunk))
        return torch.stack([s.tokens for s in steps], 1).tolist()

    assert run(4 * 3) == run(100_000)  # 3 positions per pass over 4 rows vs everything at once


def test_sliced_attention_without_mask_is_causal_to_the_end_of_the_cache():
    """With no padding mask, queries sit at the end of the filled cache (chunked prefill) and see only the past."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 6, 3, 8, generator=g), torch.randn(2, 2, 9, 8, generator=g), torch.randn(2, 2, 9, 8, generator=g))
    mod = torch.nn.Module()
    out, _ = attention.sliced_attention(mod, q, k, v, None, emovec_kv_len=7)
    kk, vv = k[:, :, :7].repeat_interleave(3, 1), v[:, :, :7].repeat_interleave(3, 1)
    causal = torch.ones(3, 7, dtype=torch.bool).tril(4)  # query i is position 4 + i
    ref = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=causal).transpose(1, 2)
    assert torch.allclose(out, ref, atol=1e-6)
    assert not torch.allclose(out[:, 0], torch.nn.functional.scaled_dot_product_attention(q, kk, vv).transpose(1, 2)[:, 0])


def test_writer_dtype(lm):
    assert generation.writer_dtype(lm, None) == lm.dtype
    assert generation.writer_dtype(lm, "float32") == torch.float32
    assert generation.writer_dtype(lm, "bfloat16") == torch.bfloat16
    auto = generation.writer_dtype(lm, "auto")
    assert auto == (torch.bfloat16 if generation.bf16_speedup(lm) >= generation.BF16_MIN_SPEEDUP else lm.dtype)
    name, why = generation.resolve_writer_dtype(lm, "auto")
    assert name in ("bfloat16", "float32") and "auto" in why  # what a run records: never "auto" itself
    with pytest.raises(EmovecError, match="unknown writer dtype"):
        generation.writer_dtype(lm, "int4")


def test_sample_next_draws_on_the_cpu_from_the_top_k_and_the_nucleus_only() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, -10.0, 2.0, 1.0]] * 300)
    top3 = Sampling(temperature=1.0, top_k=3, top_p=1.0)
    drawn = sample_next(logits, top3, torch.Generator().manual_seed(0))
    assert drawn.device.type == "cpu" and set(drawn.tolist()) == {0, 1, 2}
    assert torch.equal(drawn, sample_next(logits, top3, torch.Generator().manual_seed(0)))
    nucleus = Sampling(temperature=1.0, top_k=0, top_p=0.5)  # token 0 alone holds 64% of the mass
    assert set(sample_next(logits, nucleus, torch.Generator().manual_seed(0)).tolist()) == {0}
    assert sample_next(logits[:2], Sampling(temperature=0.0), None).tolist() == [0, 0]


def test_half_precision_attention_matches_float32_sdpa_and_respects_the_masks():
    """Both bf16 CPU kernels (two matmuls over the whole cache, and SDPA on its filled part) give float32 SDPA's
    answer: padding and the unwritten slots after `emovec_kv_len` are ignored, with or without a mask."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 6, 2, 8, generator=g), torch.randn(3, 2, 9, 8, generator=g), torch.randn(3, 2, 9, 8, generator=g))
    k[:, :, 7:], v[:, :, 7:] = 0.0, 0.0  # unwritten static-cache slots
    v[0, :, 2:4] = 1e4  # padding of row 0: would dominate the output if it leaked
    mask = torch.ones(3, 1, 2, 9, dtype=torch.bool).tril(5)  # the causal mask decode's model builds: queries at 5, 6
    mask[0, ..., 2:4] = False

    def reference(m: torch.Tensor | None) -> torch.Tensor:
        kk, vv = k[:, :, :7].repeat_interleave(3, 1), v[:, :, :7].repeat_interleave(3, 1)
        causal = torch.ones(2, 7, dtype=torch.bool).tril(5)
        full = causal if m is None else m[..., :7]
        return torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=full).transpose(1, 2)

    for m, matmul in itertools.product((mask, None), (True, False)):  # no mask: row 0's padding is attended
        out, _ = attention.sliced_attention(torch.nn.Module(), q.bfloat16(), k.bfloat16(), v.bfloat16(), m,
                                            emovec_kv_len=7, emovec_matmul=matmul)
        assert out.dtype == torch.bfloat16 and out.shape == (3, 2, 6, 8)
        assert torch.allclose(out.float(), reference(m), atol=3e-2, rtol=1e-2)
        assert (out.float().abs().max() < 10) == (m is not None)


@pytest.mark.parametrize("matmul", [True, False], ids=["matmul", "sdpa"])
def test_bf16_decode_follows_the_models_own_greedy_generate(lm, matmul):
    """End to end in bf16: emovec's decode loop (either attention kernel, shared prefix, chunked prefill) picks the
    tokens the float32 model's greedy `generate` picks, on padded prompts of different lengths, except at near-ties:
    where a row first departs, the float32 logits of the two tokens differ by under 0.5 (bf16 carries ~3 digits; a
    wrong mask or position departs at a clear margin)."""
    model = copy.deepcopy(lm.model).to(torch.bfloat16)
    texts = [lm.chat("Name three colours."), lm.chat("Write one sentence about the sea at night, please.")]
    sampling = generation.Sampling(max_new_tokens=12, temperature=0.0, repetition_penalty=1.0)  # as generate
    steps = list(generation.decode(lm, texts, sampling, None, model=model, prefill_tokens=8, matmul_attention=matmul))
    ours = torch.stack([s.tokens for s in steps], 1)
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    with torch.inference_mode():
        ref = lm.model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    ref = ref[:, enc["input_ids"].shape[1]:]
    for row, text in enumerate(texts):
        differs = torch.nonzero(ours[row] != ref[row]).flatten().tolist()
        if not differs:
            continue
        j = differs[0]
        ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            logits = lm.model(torch.cat([ids, ref[row:row + 1, :j]], 1)).logits[0, -1]
        margin = (logits[ref[row, j]] - logits[ours[row, j]]).item()
        assert margin < 0.5, (row, j, margin, ours[row].tolist(), ref[row].tolist())


def test_the_decode_attention_kernel_is_measured_once_per_machine_and_only_for_half_precision_on_cpu(lm):
    """float32 keeps SDPA everywhere; bf16 on this CPU uses matmuls exactly when the cached probe says they are
    at least MATMUL_MIN_SPEEDUP faster, and the probe answers the same on a second call (it is cached)."""
    assert attention.use_matmul_attention(lm.model) is False  # the session's model is float32
    cfg = lm.model.config
    shape = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads)
    speedup = attention.matmul_attention_speedup(*shape)
    assert speedup > 0 and attention.matmul_attention_speedup(*shape) == speedup
    half = copy.deepcopy(lm.model).to(torch.bfloat16)
    assert attention.use_matmul_attention(half) == (speedup >= attention.MATMUL_MIN_SPEEDUP)


def test_the_writers_half_copy_keeps_float32_rope_frequencies_like_a_model_loaded_in_bf16(lm):
    """FastBackend's bf16 copy of a float32 model equals the model loaded in bf16, buffers included, so a run's
    stories do not depend on which of the two writes them (`Module.to` rounded the rotary `inv_freq` to bf16)."""
    import emovec

    copy16 = FastBackend(lm, dtype="bfloat16").model()
    loaded = emovec.load_model("smollm2-135m", dtype="bfloat16").model
    assert copy16 is not lm.model and next(copy16.parameters()).dtype == torch.bfloat16
    ours, theirs = dict(copy16.named_buffers()), dict(loaded.named_buffers())
    assert ours.keys() == theirs.keys() and any(k.endswith("inv_freq") for k in ours)
    for k, buf in ours.items():
        assert buf.dtype == theirs[k].dtype == lm.model.get_buffer(k).dtype and torch.equal(buf, theirs[k]), k
    assert all(torch.equal(a, b) for a, b in zip(copy16.parameters(), loaded.parameters()))
