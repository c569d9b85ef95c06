"""Topic adjustment: each story's topic mean is removed before its emotion's stories are averaged.

Synthetic activations (no model) carry a large per-topic offset and a small per-emotion one in an
unbalanced design, the way a few stories per emotion drawn from 12 shared topics do; the adjusted
means must recover the emotion effects that the plain means blur. The pipeline part reuses the
small real run's activations with topics written onto its stories.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import SMALL_EMOTIONS, edit_run_file

from emovec.activations import CorpusActivations, load_corpus_activations
from emovec.recognition import fold_assignment, heldout_ranks
from emovec.rundir import make_config, open_run
from emovec.storage import EmovecError
from emovec.topics import group_index, remove_group_means
from emovec.validate.scaling import corpus_scaling
from emovec.vectors import EmotionVectors, project_out

N_EMO, N_TOPIC, PER, D = 30, 6, 4, 16


def synthetic(seed: int = 0) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """(x [n, 2, D], emotion index, topic index, true emotion effects [N_EMO, D]): topic offsets 5x the emotions'."""
    rng = np.random.default_rng(seed)
    emo_eff = rng.standard_normal((N_EMO, D))
    topic_eff = 5.0 * rng.standard_normal((N_TOPIC, D))
    y = np.repeat(np.arange(N_EMO), PER)
    t = rng.integers(0, N_TOPIC, len(y))  # each emotion's few stories land on a random handful of topics
    x = emo_eff[y] + topic_eff[t] + 0.3 * rng.standard_normal((len(y), D))
    return torch.tensor(np.stack([x, x], axis=1)), y, t, emo_eff


def corpus(x: torch.Tensor, y: np.ndarray) -> CorpusActivations:
    labels = [f"e{i}" for i in y]
    sums: dict[str, torch.Tensor] = {}
    for j, e in enumerate(labels):
        sums[e] = sums.get(e, 0) + x[j].double()
    return CorpusActivations(layers=[0, 1], keep_layers=[0, 1], ids=[f"{e}#{j}" for j, e in enumerate(labels)],
                             labels=labels, pooled=x.float(), sums=sums, counts={e: labels.count(e) for e in sums},
                             norm_sum=torch.ones(2), norm_count=1, start=1)


def recovery(vectors: EmotionVectors, truth: np.ndarray) -> float:
    """Mean cosine between each emotion's raw vector (layer 0) and its true centred effect."""
    centred = torch.tensor(truth - truth.mean(0))
    v = vectors.raw[0].double()
    return float(torch.nn.functional.cosine_similarity(v, centred, dim=1).mean())


def test_remove_group_means_is_the_additive_estimate():
    x, y, t, _ = synthetic()
    flat = x[:, 0]
    adj = remove_group_means(flat, t)
    for g in range(N_TOPIC):  # every topic's mean becomes the overall mean; the overall mean is unchanged
        assert torch.allclose(adj[t == g].mean(0), flat.mean(0), atol=1e-9)
    assert torch.allclose(adj.mean(0), flat.mean(0), atol=1e-9)
    fit = np.arange(len(t)) % 3 != 0  # means from the fitted rows only: changing an unfitted row changes nothing else
    other = flat.clone()
    other[~torch.tensor(fit)] += 100.0
    a, b = remove_group_means(flat, t, fit=fit), remove_group_means(other, t, fit=fit)
    assert torch.allclose(a[torch.tensor(fit)], b[torch.tensor(fit)])
    lonely = np.where(t == 0, 0, 1)
    only_one = remove_group_means(flat, lonely, fit=lonely == 1)  # group 0 has no fitted rows: left as it is
    assert torch.equal(only_one[torch.tensor(lonely == 0)], flat[torch.tensor(lonely == 0)])
    assert group_index(["b", "a", "b", "c"]) == [0, 1, 0, 2]


def test_adjusted_vectors_recover_the_emotion_effects():
    x, y, t, truth = synthetic()
    acts = corpus(x, y)
    topics = [f"topic {i}" for i in t]
    emotions = [f"e{i}" for i in range(N_EMO)]
    plain = EmotionVectors.from_activations(acts, None, emotions)
    adjusted = EmotionVectors.from_activations(acts, None, emotions, topics=topics)
    assert adjusted.meta["topic_adjusted"] is True and adjusted.meta["n_topics"] == N_TOPIC
    assert plain.meta["topic_adjusted"] is False
    assert recovery(adjusted, truth) > 0.9 > recovery(plain, truth) + 0.2
    same = EmotionVectors.from_activations(acts, None, emotions, topics=["one topic"] * len(topics))
    assert torch.allclose(same.raw, plain.raw, atol=1e-5)  # one topic: nothing to adjust
    sub = acts.topic_adjusted(topics)
    assert sub.counts == acts.counts
    for e in emotions:
        rows = [j for j, lab in enumerate(sub.labels) if lab == e]
        assert torch.allclose(sub.sums[e], sub.pooled[rows].double().sum(0), atol=1e-4)


def test_recognition_and_scaling_adjust_inside_their_folds():
    x, y, t, _ = synthetic(1)
    flat = x[:, 0]
    assign = fold_assignment([str(i) for i in y], 4, 0)
    none = torch.zeros(0, D, dtype=flat.dtype)
    plain, _ = heldout_ranks(flat, y, N_EMO, none, assign)
    adjusted, _ = heldout_ranks(flat, y, N_EMO, none, assign, t)
    assert np.mean(adjusted == 0) > np.mean(plain == 0) + 0.3
    acts = corpus(x, y)
    emotions = [f"e{i}" for i in range(N_EMO)]
    topics = [f"topic {i}" for i in t]
    runs = [corpus_scaling(acts, None, emotions, 0, ks=[2], seeds=2, topics=tp) for tp in (None, topics)]
    assert runs[1]["topic_adjusted"] and not runs[0]["topic_adjusted"]
    assert runs[1]["rows"][0]["top1"]["mean"] > runs[0]["rows"][0]["top1"]["mean"] + 0.1


def test_topic_adjusted_needs_every_layer_and_one_topic_per_text():
    x, y, t, _ = synthetic()
    acts = corpus(x, y)
    with pytest.raises(EmovecError, match="one topic per text"):
        acts.topic_adjusted(["a"])
    with pytest.raises(EmovecError, match="one topic per story"):
        corpus_scaling(acts, None, sorted(acts.counts), 0, ks=[2], topics=["a"])
    partial = CorpusActivations(**{**acts.__dict__, "keep_layers": [1], "pooled": acts.pooled[:, 1:]})
    with pytest.raises(EmovecError, match="every layer.*--no-topic-adjust"):
        partial.topic_adjusted(["a"] * len(acts.ids))


def test_settings(tmp_path):
    assert make_config("quick").topic_adjust is True and make_config("paper").topic_adjust is False
    with pytest.raises(EmovecError, match="topic adjustment needs the per-story activations at every layer"):
        open_run(tmp_path / "a", make_config(keep_layers=[20]), write=False)
    run = tmp_path / "old"
    open_run(run, make_config(emotions=["happy", "sad"]))
    path = run / "run.json"
    stored = json.loads(path.read_text())
    del stored["topic_adjust"]  # a run made before the setting existed was made without it
    path.write_text(json.dumps(stored))
    assert open_run(run, write=False).topic_adjust is False
    with pytest.raises(EmovecError, match="started with topic_adjust=False, not True"):
        open_run(run, make_config(emotions=["happy", "sad"]), write=False)
    edit_run_file(run, topic_adjust="yes")
    with pytest.raises(EmovecError, match="topic_adjust='yes' is not true or false"):
        open_run(run, write=False)


def test_a_run_builds_its_vectors_and_recognition_topic_adjusted(small_run, lm, tmp_path):
    """The small run's stories get three topics; resuming rebuilds the vectors from the stored shards, adjusted."""
    from emovec.pipeline import stage_extract, stage_recognition

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    rows = [json.loads(line) for line in (run / "stories.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):
        r["topic"] = f"topic {i % 3}"
    (run / "stories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = {p.name: p.read_bytes() for p in (run / "activations").glob("stories-*")}
    cfg = open_run(run, write=False)
    assert cfg.topic_adjust
    vectors = stage_extract(run, cfg, lm, progress=False)
    assert {p.name: p.read_bytes() for p in (run / "activations").glob("stories-*")} == before  # reused, not re-pooled
    assert vectors.meta["topic_adjusted"] is True and vectors.meta["n_topics"] == 3
    acts = load_corpus_activations(run / "activations", "stories")
    topic = {r["id"]: r["topic"] for r in rows}
    t = np.array([int(topic[i][-1]) for i in acts.ids])
    for layer in acts.layers[::10]:  # by hand: topic means out, emotion means, grand mean, neutral PCs
        x = acts.pooled[:, acts.layers.index(layer)].double()
        centre = x.mean(0)
        for g in range(3):
            x[t == g] -= x[t == g].mean(0) - centre
        means = torch.stack([x[[j for j, e in enumerate(acts.labels) if e == emo]].mean(0) for emo in vectors.emotions])
        want = project_out(means - means.mean(0), vectors.components[layer].double())
        got = vectors.denoised[vectors.layers.index(layer)].double()
        assert torch.nn.functional.cosine_similarity(got, want, dim=1).min() > 0.9999
    assert sorted(vectors.emotions) == sorted(SMALL_EMOTIONS)
    rec = stage_recognition(run, cfg)
    assert rec["topic_adjusted"] is True
    assert json.loads((small_run / "recognition.json").read_text())["topic_adjusted"] is True  # no topics: a no-op
