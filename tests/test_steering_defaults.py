"""The run's steering analysis sets the default steering layer and strength (issue 11)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from emovec import EmotionVectors
from emovec.cli import main
from emovec.experiments.common import layer_setting
from emovec.rundir import load_run
from emovec.steering import steering_vector
from emovec.storage import EmovecError


def _recommend(run_dir, layer, strength=0.15):
    (run_dir / "analyses").mkdir(exist_ok=True)
    (run_dir / "analyses" / "steering.json").write_text(json.dumps(
        {"recommended": {"layer": layer, "strength": strength, "range": [0.0, strength]}}))


def _other_layer(vecs: EmotionVectors) -> int:
    return next(lay for lay in reversed(vecs.layers) if lay != vecs.default_layer)


def test_without_the_analysis_steering_uses_the_default_layer_and_needs_a_strength(run_copy, lm):
    vecs = load_run(run_copy, lm).vectors
    assert vecs.steering_layer == vecs.default_layer and vecs.steering_strength is None
    assert list(steering_vector(vecs, "happy=0.1").deltas) == [vecs.default_layer]
    with pytest.raises(EmovecError, match="EMOTION=STRENGTH"):
        steering_vector(vecs, "happy")


def test_the_recommendation_becomes_the_default_everywhere(run_copy, lm, tmp_path):
    layer = _other_layer(load_run(run_copy, lm).vectors)
    _recommend(run_copy, layer, 0.15)
    vecs = load_run(run_copy, lm).vectors
    assert vecs.steering_layer == layer and vecs.steering_strength == pytest.approx(0.15)
    assert vecs.default_layer != layer  # the readout layer stays where it was
    sv = steering_vector(vecs, "happy")  # a bare name takes the recommended strength
    assert list(sv.deltas) == [layer]
    norm = float(vecs.mean_norm[vecs.layer_index(layer)])
    assert float(torch.linalg.vector_norm(sv.deltas[layer])) == pytest.approx(0.15 * norm, rel=1e-5)
    assert list(steering_vector(vecs, "happy=0.1", layers=str(vecs.default_layer)).deltas) == [vecs.default_layer]
    assert layer_setting(vecs, None) == [layer] and layer_setting(vecs, "3-4") == "3-4"
    saved = EmotionVectors.load(vecs.save(tmp_path / "v.safetensors"))  # a saved file keeps the recommendation
    assert saved.steering_layer == layer


def test_a_recommended_layer_the_vectors_lack_is_ignored_and_a_broken_analysis_is_refused(run_copy, lm):
    _recommend(run_copy, 999)
    vecs = load_run(run_copy, lm).vectors
    assert vecs.steering_layer == vecs.default_layer
    (run_copy / "analyses" / "steering.json").write_text("[1, 2]")
    with pytest.raises(EmovecError, match="no steering recommendation"):
        load_run(run_copy, lm)
    (run_copy / "analyses" / "steering.json").write_text("{not json")
    with pytest.raises(EmovecError, match="not valid UTF-8 JSON"):
        load_run(run_copy, lm)


def test_generate_steers_at_the_recommended_layer(run_copy, lm):
    layer = _other_layer(load_run(run_copy, lm).vectors)
    _recommend(run_copy, layer, 0.1)
    res = CliRunner().invoke(main, ["generate", "Hi", "-v", str(run_copy), "--steer", "happy", "--max-new-tokens", "2",
                                    "--threads", "1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"[steering: happy=0.1 at layers [{layer}]]" in res.stderr
