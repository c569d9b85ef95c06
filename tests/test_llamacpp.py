"""llama.cpp runs emovec's exported control vectors and is steered as emovec steers (optional extra: `make llamacpp`).

The embedded GGUF is opened in llama.cpp (quantised kernels) and in emovec (dequantised
float32 with hooks). Both are steered with the same happy and sad vectors, llama.cpp from
the exported GGUF control-vector files, and must agree on logits, on the logit *change*
steering causes (a vector applied one block off does not), and on the direction in which
steering moves the generated text as emovec's readout reads it.
"""

from __future__ import annotations

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp is an optional extra: run `make llamacpp`")

from emovec.control_vectors import apply_to_llama, export_emotions, read_gguf  # noqa: E402
from emovec.steering import SteeringVector  # noqa: E402
from emovec.storage import EmovecError  # noqa: E402
from emovec.validate.llamacpp import emovec_logits, llama_agreement, llama_logits, open_llama  # noqa: E402
from emovec.validate.steering import steering_prompts  # noqa: E402

LAYER = 18
STRENGTH = 0.2


@pytest.fixture(scope="module")
def llama(lm):
    return open_llama(lm)


def test_llama_cpp_is_steered_as_emovec_steers(lm, small_vectors, llama):
    res = llama_agreement(lm, small_vectors, llama, ("happy", "sad"), strength=STRENGTH, layers=[LAYER],
                          prompts=steering_prompts()[:4], max_new_tokens=24)
    assert res["layers"] == [LAYER] and res["n_prompts"] == 4
    for row in res["logits"]:
        assert row["r_unsteered"] > 0.99 and row["r_happy"] > 0.99 and row["r_sad"] > 0.99, row
        assert row["r_delta_happy"] > 0.9 and row["r_delta_sad"] > 0.9, row  # the same change, not just the same model
    moved = {engine: e["readout_first_minus_second"]["mean"] for engine, e in res["engines"].items()}
    assert moved["emovec"] > 0, moved  # happy-steered replies read happier than sad-steered ones ...
    assert moved["llama.cpp"] > 0, moved  # ... in llama.cpp too, from the exported files


def test_a_vector_one_block_off_changes_the_logits_differently(lm, small_vectors, llama, tmp_path):
    """The layer convention is observable: direction.K at block K matches emovec, at block K-1 it does not."""
    sv = export_emotions(small_vectors, {"happy": STRENGTH}, tmp_path / "h.gguf", layers=[LAYER])
    ids = lm.tokenizer(lm.chat(steering_prompts()[0]), add_special_tokens=False)["input_ids"]
    h0, h1 = emovec_logits(lm, ids, None), emovec_logits(lm, ids, sv)
    l0 = llama_logits(llama, ids, None)
    r = {}
    for shift in (0, -1, 1):
        shifted = SteeringVector({LAYER + shift: sv.deltas[LAYER]}, "shifted")
        r[shift] = np.corrcoef(h1 - h0, llama_logits(llama, ids, shifted) - l0)[0, 1]
    apply_to_llama(llama, None)
    assert r[0] > 0.9 and r[0] > r[-1] + 0.05 and r[0] > r[1] + 0.05, r


def test_clearing_leaves_no_steering_behind(lm, small_vectors, llama, tmp_path):
    ids = lm.tokenizer(lm.chat("Describe your morning."), add_special_tokens=False)["input_ids"]
    before = llama_logits(llama, ids, None)
    export_emotions(small_vectors, {"sad": 0.3}, tmp_path / "s.gguf", layers=[10, 18])
    steered = llama_logits(llama, ids, tmp_path / "s.gguf")
    after = llama_logits(llama, ids, None)
    assert not np.allclose(before, steered, atol=1e-2)
    assert np.allclose(before, after, atol=1e-4)  # cached tokens were dropped with the vector


def test_files_for_another_model_are_refused(lm, small_vectors, llama, tmp_path):
    sv = export_emotions(small_vectors, {"calm": 0.1}, tmp_path / "c.gguf", layers=[LAYER])
    with pytest.raises(EmovecError, match="width 5 but the llama.cpp model has n_embd"):
        apply_to_llama(llama, SteeringVector({LAYER: sv.deltas[LAYER][:5]}, "narrow"))
    with pytest.raises(EmovecError, match="can steer only layers 1.."):
        apply_to_llama(llama, SteeringVector({lm.n_layers + 3: sv.deltas[LAYER]}, "deep"))
    with pytest.raises(EmovecError, match="can steer only layers 1.."):
        apply_to_llama(llama, SteeringVector({0: sv.deltas[LAYER]}, "zero"))
    assert read_gguf(tmp_path / "c.gguf").width == lm.d_model
