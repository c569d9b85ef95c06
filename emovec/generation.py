"""Text generation behind one small interface, so a faster engine can replace the default.

A backend turns fully rendered prompts (chat template already applied) into
completions. `HFBackend` uses transformers' `generate` with left padding and
length-sorted batches; any object with the same `generate` method (e.g. a vLLM
wrapper on a GPU) can be passed to the corpus code instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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
                top_k=None, repetition_penalty=sampling.repetition_penalty, pad_token_id=tok.pad_token_id,
            )
            new = gen[:, enc["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                out[i] = tok.decode(new[row], skip_special_tokens=True).strip()
        return out


def generate_text(lm: LanguageModel, prompt: str, sampling: Sampling | None = None, seed: int = 0,
                  chat: bool = True, system: str | None = None) -> str:
    """Complete one prompt (rendered with the chat template unless `chat=False`); steer with `steer(...)` around it."""
    text = lm.chat(prompt, system=system) if chat else prompt
    return HFBackend(lm, batch_size=1).generate([text], sampling or Sampling(), seed)[0]
