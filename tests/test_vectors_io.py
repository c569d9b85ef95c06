"""Vector files: exact round trip, refusal of other models, one-line errors for damaged files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from emovec import EmotionVectors, EmovecError


def test_round_trip_exact(small_vectors, tmp_path):
    path = small_vectors.save(tmp_path / "v.safetensors")
    back = EmotionVectors.load(path)
    assert back.emotions == small_vectors.emotions and back.layers == small_vectors.layers
    for name in ("raw", "denoised", "grand_mean", "mean_norm"):
        assert torch.equal(getattr(back, name), getattr(small_vectors, name))
    assert back.components.keys() == small_vectors.components.keys()
    for k in back.components:
        assert torch.equal(back.components[k], small_vectors.components[k])
    assert back.meta == small_vectors.meta
    # metadata the issue asks for
    for key in ("model", "model_fingerprint", "token_start", "n_stories", "n_neutral", "denoise_k", "emovec_version"):
        assert key in back.meta


def test_other_model_refused(small_vectors, lm, tmp_path):
    other = EmotionVectors.load(small_vectors.save(tmp_path / "v.safetensors"))
    other.meta["model_fingerprint"] = "0123456789abcdef"
    other.meta["model"] = "some/other-model"
    with pytest.raises(EmovecError, match="re-extract on this model"):
        other.check_model(lm)
    narrow = EmotionVectors(other.emotions, other.layers, other.raw[..., :64], other.denoised[..., :64],
                            other.grand_mean[..., :64], other.mean_norm, {}, dict(small_vectors.meta))
    path = narrow.save(tmp_path / "narrow.safetensors")
    with pytest.raises(EmovecError, match="width 64"):
        EmotionVectors.load(path, model=lm)


def _assert_one_line_error(path):
    with pytest.raises(EmovecError) as info:
        EmotionVectors.load(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg


def test_damaged_files(small_vectors, tmp_path):
    good = small_vectors.save(tmp_path / "good.safetensors").read_bytes()
    cases = {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "header_only": good[:200],
        "garbage": b"\x00\xff" * 500,
        "huge_header": (10**12).to_bytes(8, "little") + b"{}",
        "text": b"hello, this is not a tensor file\n",
    }
    flipped = bytearray(good)
    flipped[20] ^= 0xFF
    cases["bitflip_header"] = bytes(flipped)
    for name, blob in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(blob)
        _assert_one_line_error(p)
    _assert_one_line_error(tmp_path / "missing.safetensors")


def test_lying_metadata(small_vectors, tmp_path):
    t = {"raw": small_vectors.raw, "denoised": small_vectors.denoised, "grand_mean": small_vectors.grand_mean,
         "mean_norm": small_vectors.mean_norm}
    meta = dict(small_vectors.meta, emotions=small_vectors.emotions, layers=small_vectors.layers)
    variants = {
        "no_meta": (t, None),
        "wrong_format": (t, dict(meta, format="other/9")),
        "too_many_emotions": (t, dict(meta, emotions=small_vectors.emotions + ["extra"])),
        "missing_tensor": ({k: v for k, v in t.items() if k != "denoised"}, meta),
        "wrong_dtype": (dict(t, raw=t["raw"].to(torch.float16)), meta),
        "nan": (dict(t, denoised=t["denoised"].clone().fill_(float("nan"))), meta),
    }
    for name, (tensors, m) in variants.items():
        p = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(p),
                  metadata=None if m is None else {"emovec": json.dumps(m)})
        _assert_one_line_error(p)


def test_info_and_subset(small_vectors):
    info = small_vectors.info()
    assert info["n_emotions"] == 6 and info["width"] == 576 and info["default_layer"] == 20
    sub = small_vectors.subset(["sad", "happy"])
    assert sub.emotions == ["sad", "happy"]
    assert torch.equal(sub.raw[:, 0], small_vectors.raw[:, small_vectors.emotions.index("sad")])
    with pytest.raises(EmovecError, match="did you mean happy"):
        small_vectors.subset(["hapy"])
    with pytest.raises(EmovecError, match="not in these vectors"):
        small_vectors.matrix(layer=31)
