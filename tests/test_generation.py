"""emovec's decode loop against transformers' own `generate`, and its shared-prefix prefill against a full one."""

from __future__ import annotations

import pytest
import torch

import emovec.generation as generation
from emovec import EmovecError, FastBackend, HFBackend, Sampling
from emovec.generation import _layout, penalize


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
