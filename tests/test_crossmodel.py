"""Emotion geometry compared across models (`emovec compare --run-b`); synthetic vectors, no model loaded."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from emovec import EmotionVectors
from emovec.cli import main
from emovec.storage import EmovecError
from emovec.validate.crossmodel import compare_geometry, matched_layer

NAMES = [f"e{i}" for i in range(30)]


def _vectors(units: torch.Tensor, layers: list[int], n_layers: int, names: list[str] = NAMES) -> EmotionVectors:
    v = units.unsqueeze(0).repeat(len(layers), 1, 1)
    return EmotionVectors(list(names), layers, v, v.clone(), torch.zeros(len(layers), units.shape[1]),
                          torch.ones(len(layers)), meta={"n_layers": n_layers, "model": f"m{units.shape[1]}"})


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A model's emotion vectors (clustered: 6 groups of 5) and the same geometry in another, wider space."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, 16, generator=g)
    a = centres.repeat_interleave(5, 0) + 0.3 * torch.randn(30, 16, generator=g)
    rotation = torch.linalg.qr(torch.randn(40, 40, generator=g))[0][:16]  # an isometry into 40 dimensions
    return a, a @ rotation


def test_the_same_geometry_in_another_space_agrees_and_unrelated_vectors_do_not():
    a, b = _pair()
    same = compare_geometry(_vectors(a, [4, 8], 12), _vectors(b, [10, 20], 30), n_perm=200)
    assert same["layer_a"] == 8 and same["layer_b"] == 20  # default layer 8 of 12 -> depth-matched 20 of 30
    assert same["rsa"]["r"] == pytest.approx(1.0, abs=1e-6) and same["rsa"]["p_mantel"] < 0.01
    assert same["neighbours"]["mean_overlap"] == pytest.approx(1.0) and same["pc1"]["abs_r"] == pytest.approx(1.0, abs=1e-6)
    other = torch.randn(30, 40, generator=torch.Generator().manual_seed(9))
    diff = compare_geometry(_vectors(a, [8], 12), _vectors(other, [20], 30), n_perm=200)
    assert abs(diff["rsa"]["r"]) < 0.2 and diff["rsa"]["p_mantel"] > 0.05
    assert diff["neighbours"]["mean_overlap"] < 3 * diff["neighbours"]["chance"]


def test_only_shared_emotions_are_compared_and_too_few_is_refused():
    a, b = _pair(1)
    res = compare_geometry(_vectors(a, [8], 12), _vectors(b[5:], [20], 30, NAMES[5:]), n_perm=50)
    assert res["n_emotions"] == 25
    with pytest.raises(EmovecError, match="share 3 emotions"):
        compare_geometry(_vectors(a, [8], 12), _vectors(b[:3], [20], 30, NAMES[:3]))


def test_matched_layer_uses_relative_depth():
    a = _vectors(torch.randn(30, 8), [0, 15, 29], 30)
    b = _vectors(torch.randn(30, 8), [0, 6, 12, 18, 23], 24)
    assert [matched_layer(a, lay, b) for lay in a.layers] == [0, 12, 23]


def test_cli_compare_run_b_writes_the_result(tmp_path):
    a, b = _pair(2)
    for name, vecs in (("a", _vectors(a, [8], 12)), ("b", _vectors(b, [20], 30))):
        (tmp_path / name).mkdir()
        vecs.save(tmp_path / name / "vectors.safetensors")
    res = CliRunner().invoke(main, ["compare", str(tmp_path / "a"), "--run-b", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "RSA" in res.output and (tmp_path / "a" / "analyses" / "compare_runs.json").exists()
    both = CliRunner().invoke(main, ["compare", str(tmp_path / "a")])
    assert both.exit_code != 0 and "exactly one of --model-b" in both.output
