"""Text generation behind one small interface, so a faster engine can replace the default.

A backend turns fully rendered prompts (chat template already applied) into
completions. `HFBackend` uses transformers' `generate` with left padding and
length-sorted batches; any object with the same `generate` method (e.g. a vLLM
wrapper on a GPU) can be passed to the corpus code instead.
"""

from __future__ import annotations

from collections.abc import Sequence
import copy
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from .activations import length_sorted_batches
from .models import LanguageModel


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

    def generate(self, prompts: Sequence[str], sampling: Sampling, seed: int) -> list[str]: ...


@dataclass
class HFBackend:
    """transformers `generate` on length-sorted, left-padded batches."""

    lm: LanguageModel
    batch_size: int = 32
    progress: bool = False

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], sampling: Sampling, seed: int) -> list[str]:
        tok = self.lm.tokenizer
        tok.padding_side = "left"
        lengths = [len(x) for x in tok(list(prompts), add_special_tokens=False)["input_ids"]]
        out: list[str] = [""] * len(prompts)
        batches = length_sorted_batches(lengths, self.batch_size)
        for b, idx in enumerate(tqdm(batches, desc="generate", unit="batch", disable=not self.progress)):
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(self.lm.device)
            torch.manual_seed(seed + b)
            greedy = sampling.temperature <= 0
            gen = self.lm.model.generate(
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
    """Pick next tokens [batch] from last-position logits [batch, vocab]: greedy, or temperature + top-k + top-p."""
    if sampling.temperature <= 0:
        return logits.argmax(-1)
    k = min(sampling.top_k if sampling.top_k > 0 else logits.shape[-1], logits.shape[-1])
    vals, idx = torch.topk(logits.float() / sampling.temperature, k, dim=-1)
    probs = torch.softmax(vals, dim=-1)
    if sampling.top_p < 1.0:
        drop = (torch.cumsum(probs, -1) - probs) > sampling.top_p
        probs = probs.masked_fill(drop, 0.0)
    choice = torch.multinomial(probs, 1, generator=generator)
    return idx.gather(-1, choice).squeeze(-1)


@dataclass
class FastBackend:
    """A lean decode loop for CPU batches: a static KV cache (no per-step cache copies),
    last-position logits only, cheap top-k/top-p sampling, and optionally a bf16 copy
    of the model for generation (the corpus writer) while extraction stays in float32.

    With `dtype=None` it decodes with `lm.model` itself, so steering hooks apply.
    """

    lm: LanguageModel
    batch_size: int = 48
    dtype: str | None = None
    progress: bool = False
    _model: Any = field(default=None, init=False, repr=False)

    def model(self) -> Any:
        if self._model is None:
            want = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(self.dtype or "")
            if want is None or want == self.lm.dtype:
                self._model = self.lm.model
            else:
                self._model = copy.deepcopy(self.lm.model).to(want)
        return self._model

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], sampling: Sampling, seed: int) -> list[str]:
        from transformers import StaticCache

        tok, model = self.lm.tokenizer, self.model()
        dev = self.lm.device
        tok.padding_side = "left"
        eos_ids = _eos_ids(self.lm)
        eos = torch.tensor(eos_ids)
        vocab = model.get_output_embeddings().weight.shape[0]
        lengths = [len(x) for x in tok(list(prompts), add_special_tokens=False)["input_ids"]]
        out: list[str] = [""] * len(prompts)
        batches = length_sorted_batches(lengths, self.batch_size)
        for b, idx in enumerate(tqdm(batches, desc="generate", unit="batch", disable=not self.progress)):
            gen = torch.Generator().manual_seed(seed + b)
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            ids, attn = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
            n, t0 = ids.shape
            seen = torch.zeros(n, vocab, dtype=torch.bool)
            if sampling.repetition_penalty != 1.0:
                seen.scatter_(1, ids.cpu(), True)
            cache = StaticCache(config=model.config, max_cache_len=t0 + sampling.max_new_tokens)
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True,
                           cache_position=torch.arange(t0, device=dev), logits_to_keep=1).logits[:, -1]
            new = torch.full((n, sampling.max_new_tokens), -1, dtype=torch.long)
            finished = torch.zeros(n, dtype=torch.bool)
            for step in range(sampling.max_new_tokens):
                logits = logits.float().cpu()
                if sampling.repetition_penalty != 1.0:
                    pen = torch.where(logits > 0, logits / sampling.repetition_penalty, logits * sampling.repetition_penalty)
                    logits = torch.where(seen, pen, logits)
                nxt = sample_next(logits, sampling, gen)
                nxt = torch.where(finished, eos[0], nxt)
                new[:, step] = torch.where(finished, -1, nxt)
                finished |= torch.isin(nxt, eos)
                if bool(finished.all()) or step == sampling.max_new_tokens - 1:
                    break
                seen.scatter_(1, nxt[:, None], True)
                attn = torch.cat([attn, attn.new_ones(n, 1)], dim=1)
                pos = pos[:, -1:] + 1
                logits = model(input_ids=nxt[:, None].to(dev), attention_mask=attn, position_ids=pos, past_key_values=cache,
                               use_cache=True, cache_position=torch.tensor([t0 + step], device=dev)).logits[:, -1]
            for r, i in enumerate(idx):
                toks = [t for t in new[r].tolist() if t >= 0 and t not in eos_ids]
                out[i] = tok.decode(toks, skip_special_tokens=True).strip()
        return out


def generate_text(lm: LanguageModel, prompt: str, sampling: Sampling | None = None, seed: int = 0,
                  chat: bool = True, system: str | None = None) -> str:
    """Complete one prompt (rendered with the chat template unless `chat=False`); steer with `steer(...)` around it."""
    text = lm.chat(prompt, system=system) if chat else prompt
    return HFBackend(lm, batch_size=1).generate([text], sampling or Sampling(), seed)[0]
