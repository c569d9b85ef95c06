"""Pooling, grand-mean subtraction and PCA denoising agree with independent numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emovec import EmovecError, pool_mask
from emovec.activations import CorpusActivations, pool_batch
from emovec.vectors import EmotionVectors, denoise_components, project_out


def test_pool_mask_rules():
    # lengths 80, 50, 51, 10, 1 padded on the right to 80
    lengths = [80, 50, 51, 10, 1]
    am = torch.zeros(len(lengths), 80, dtype=torch.long)
    for i, n in enumerate(lengths):
        am[i, :n] = 1
    m = pool_mask(am, start=50)
    assert m[0].nonzero().flatten().tolist() == list(range(50, 80))
    # exactly `start` tokens: too short for the start position -> positions 1..end
    assert m[1].nonzero().flatten().tolist() == list(range(1, 50))
    assert m[2].nonzero().flatten().tolist() == [50]
    assert m[3].nonzero().flatten().tolist() == list(range(1, 10))
    # a one-token text pools its only position
    assert m[4].nonzero().flatten().tolist() == [0]
    # the first position (attention sink) is never pooled for texts longer than one token
    assert not m[:4, 0].any()
    with pytest.raises(EmovecError, match="attention sink"):
        pool_mask(am, start=0)


def test_pool_batch_matches_hidden_states(lm):
    """Hook-based pooling equals a numpy mean over output_hidden_states for padded batches."""
    texts = ["The kettle clicked off and steam rose in the quiet kitchen. " * 6, "Short text here.",
             "A longer sentence about a bus that arrived late on a rainy Tuesday morning. " * 3]
    layers = [0, 7, 28]  # HF applies the final norm to its last hidden_states entry, so compare below it
    res = pool_batch(lm, texts, layers, start=20)
    for i, text in enumerate(texts):
        ids = lm.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hs = lm.model(**ids, output_hidden_states=True).hidden_states
        n = ids["input_ids"].shape[1]
        positions = np.arange(20, n) if n > 20 else np.arange(1, n)
        for layer in layers:
            h = hs[layer + 1][0].numpy()  # hidden_states[0] is the embedding output
            expect = h[positions].mean(0)
            np.testing.assert_allclose(res.pooled[layer][i].numpy(), expect, rtol=1e-4, atol=1e-4)


def _acts(pooled_by_label: dict[str, np.ndarray], keep: list[int]) -> CorpusActivations:
    labels, rows = [], []
    for lab, x in pooled_by_label.items():
        labels += [lab] * len(x)
        rows.append(x)
    pooled = torch.tensor(np.concatenate(rows), dtype=torch.float32)
    return CorpusActivations(
        layers=keep, keep_layers=keep, ids=[str(i) for i in range(len(labels))], labels=labels, pooled=pooled,
        sums={lab: torch.tensor(x.sum(0), dtype=torch.float64) for lab, x in pooled_by_label.items()},
        counts={lab: len(x) for lab, x in pooled_by_label.items()},
        norm_sum=torch.ones(len(keep), dtype=torch.float64) * 10, norm_count=5, start=50,
    )


def test_vectors_match_numpy():
    rng = np.random.default_rng(0)
    n_layers, d = 2, 12
    data = {e: rng.normal(size=(7 + i, n_layers, d)) + i for i, e in enumerate(["a", "b", "c", "d"])}
    neutral = rng.normal(size=(40, n_layers, d)) * np.linspace(3, 0.1, d)  # anisotropic noise
    stories = _acts(data, [0, 1])
    neu = _acts({"neutral": neutral}, [0, 1])
    vec = EmotionVectors.from_activations(stories, neu, ["a", "b", "c", "d"], denoise_fraction=0.5)
    for li in range(n_layers):
        means = np.stack([data[e][:, li].mean(0) for e in "abcd"])
        raw = means - means.mean(0)
        np.testing.assert_allclose(vec.raw[li].numpy(), raw, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(vec.grand_mean[li].numpy(), means.mean(0), rtol=1e-5, atol=1e-5)
        # independent PCA: eigen-decomposition of the neutral covariance
        x = neutral[:, li] - neutral[:, li].mean(0)
        evals, evecs = np.linalg.eigh(x.T @ x)
        order = np.argsort(evals)[::-1]
        evals, evecs = evals[order], evecs[:, order]
        k = int(np.searchsorted(np.cumsum(evals) / evals.sum(), 0.5) + 1)
        assert vec.meta["denoise_k"][str(li)] == k
        u = evecs[:, :k]
        expect = raw - raw @ u @ u.T
        np.testing.assert_allclose(vec.denoised[li].numpy(), expect, rtol=1e-4, atol=1e-4)
    assert float(vec.mean_norm[0]) == pytest.approx(20 / 10)


def test_denoise_fraction_edges():
    x = torch.randn(30, 8)
    comps, frac = denoise_components(x, 0.0)
    assert comps.shape == (0, 8) and frac == 0.0
    comps, frac = denoise_components(x, 0.99)
    assert frac >= 0.99
    v = torch.randn(3, 8)
    out = project_out(v, comps)
    assert torch.allclose(out @ comps.T, torch.zeros(3, comps.shape[0]), atol=1e-5)
    with pytest.raises(EmovecError):
        denoise_components(x, 1.0)
