"""llama.cpp control vectors: real files written and read back, checked against the real model.

Export -> import gives identical deltas; the file is what llama.cpp's loader expects (read back with
the `gguf` package's own reader); bad files fail with one line; and an imported file steers the
model token for token like the SteeringVector it came from.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from emovec import EmovecError, SteeringVector, export_emotions, export_gguf, import_gguf, read_gguf
from emovec.cli import main
from emovec.generation import Sampling, generate_text

SPEC = {"calm": 0.1, "desperate": -0.05}


def _one_line_error(exc_info: pytest.ExceptionInfo[EmovecError], *needles: str) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def _raw_file(path, tensors: dict[str, np.ndarray], arch: str = "controlvector") -> None:
    """A control-vector file written directly with the gguf package (as other tools would)."""
    w = GGUFWriter(path, arch)
    w.add_string(f"{arch}.model_hint", "llama")
    w.add_int32(f"{arch}.layer_count", len(tensors))
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def exported(small_vectors, lm, tmp_path_factory):
    path = tmp_path_factory.mktemp("cvec") / "calm.gguf"
    sv = export_emotions(small_vectors, SPEC, path, layers="3-6,-2", model_hint="llama", source="small_run")
    return sv, path


def test_round_trip_gives_identical_deltas(exported, lm):
    sv, path = exported
    assert sorted(sv.deltas) == [3, 4, 5, 6, lm.n_layers - 2]
    back = import_gguf(path, lm)
    assert sorted(back.deltas) == sorted(sv.deltas)
    for k, v in sv.deltas.items():
        assert back.deltas[k].dtype == torch.float32 and v.dtype == torch.float32
        assert torch.equal(back.deltas[k], v)  # bit for bit
    assert back.label == sv.label


def test_file_is_llama_cpp_control_vector_format(exported, lm):
    sv, path = exported
    r = GGUFReader(path)
    assert r.fields["general.architecture"].contents() == "controlvector"
    assert r.fields["controlvector.model_hint"].contents() == "llama"
    assert r.fields["controlvector.layer_count"].contents() == len(sv.deltas)
    assert json.loads(r.fields["emovec.strengths"].contents()) == SPEC
    assert r.fields["emovec.emotions"].contents() == list(SPEC)
    assert r.fields["emovec.source"].contents() == "small_run"
    assert "output of decoder block K" in r.fields["emovec.layer_convention"].contents()
    assert sorted(t.name for t in r.tensors) == sorted(f"direction.{k}" for k in sv.deltas)
    for t in r.tensors:
        assert t.tensor_type == GGMLQuantizationType.F32
        assert [int(d) for d in t.shape] == [lm.d_model] and t.n_elements == lm.d_model
        np.testing.assert_array_equal(t.data, sv.deltas[int(t.name.split(".")[1])].numpy())
    cv = read_gguf(path)
    assert cv.strengths == SPEC and cv.model_hint == "llama" and cv.width == lm.d_model


def test_imported_file_steers_like_the_original(exported, lm):
    sv, path = exported
    strong = sv * 4.0  # strong enough to change a short greedy reply
    strong_path = path.with_name("strong.gguf")
    export_gguf(strong, strong_path, "llama", lm.n_layers, {k: 4 * v for k, v in SPEC.items()})
    imported = import_gguf(strong_path, lm)
    sampling = Sampling(max_new_tokens=12, temperature=0.0)
    prompt = "Tell me about your day."
    plain = generate_text(lm, prompt, sampling)
    with strong.apply(lm):
        want = generate_text(lm, prompt, sampling)
    with imported.apply(lm):
        got = generate_text(lm, prompt, sampling)
    assert got == want
    assert want != plain  # the steering really does something here


def _block_inputs(lm, ids, blocks: list[int]) -> dict[int, torch.Tensor]:
    """The residual stream entering each of `blocks` (block K's input is block K-1's output, llama.cpp's l_out)."""
    seen: dict[int, torch.Tensor] = {}

    def grab(idx):
        def hook(_mod, args, kwargs):
            seen[idx] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        return hook

    handles = [lm.layers[b].register_forward_pre_hook(grab(b), with_kwargs=True) for b in blocks]
    try:
        with torch.no_grad():
            lm.model(ids)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_direction_k_is_added_to_the_output_of_block_k(lm, tmp_path):
    """llama.cpp adds direction.K to block K's output (the input of block K+1); the import does the same."""
    k = 7
    delta = torch.linspace(-1, 1, lm.d_model, dtype=torch.float32)
    path = tmp_path / "one.gguf"
    _raw_file(path, {f"direction.{k}": delta.numpy()})
    sv = import_gguf(path, lm)
    assert list(sv.deltas) == [k]
    ids = lm.tokenizer("The weather today", return_tensors="pt").input_ids
    base = _block_inputs(lm, ids, [k, k + 1])
    with sv.apply(lm):
        steered = _block_inputs(lm, ids, [k, k + 1])
    assert torch.equal(steered[k], base[k])  # the input of block K (output of K-1) is untouched
    assert torch.equal(steered[k + 1], base[k + 1] + delta)  # the output of block K gets direction.K


def test_files_from_other_makers_import(lm, tmp_path):
    """repeng writes layer_count as uint32 and no emovec keys; llama.cpp sums directions naming one layer."""
    path = tmp_path / "repeng.gguf"
    w = GGUFWriter(path, "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_uint32("controlvector.layer_count", 3)
    a, b = np.full(lm.d_model, 0.5, np.float32), np.full(lm.d_model, 0.25, np.float32)
    for name, arr in (("direction.3", a), ("direction.9", b), ("direction.09", b)):
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    sv = import_gguf(path, lm)
    assert sorted(sv.deltas) == [3, 9] and sv.label == "repeng.gguf"
    assert torch.equal(sv.deltas[3], torch.from_numpy(a)) and torch.equal(sv.deltas[9], torch.from_numpy(b + b))
    assert read_gguf(path).strengths == {}


def test_export_refuses_what_llama_cpp_cannot_express(lm, tmp_path):
    vec = torch.ones(lm.d_model)
    with pytest.raises(EmovecError) as e:
        export_gguf(SteeringVector({0: vec}), tmp_path / "a.gguf", "llama", lm.n_layers, {})
    _one_line_error(e, "layer 0", "llama.cpp")
    with pytest.raises(EmovecError) as e:
        export_gguf(SteeringVector({lm.n_layers: vec}), tmp_path / "a.gguf", "llama", lm.n_layers, {})
    _one_line_error(e, "out of range")
    with pytest.raises(EmovecError) as e:
        export_gguf(SteeringVector({3: vec * float("nan")}), tmp_path / "a.gguf", "llama", lm.n_layers, {})
    _one_line_error(e, "non-finite")
    with pytest.raises(EmovecError) as e:
        export_gguf(SteeringVector({-1: vec, lm.n_layers - 1: vec}), tmp_path / "a.gguf", "llama", lm.n_layers, {})
    _one_line_error(e, "same layer")
    with pytest.raises(EmovecError) as e:
        export_gguf(SteeringVector(), tmp_path / "a.gguf", "llama", lm.n_layers, {})
    _one_line_error(e, "nothing to export")
    assert not (tmp_path / "a.gguf").exists()


def test_wrong_width_is_refused_with_both_widths(lm, tmp_path):
    path = tmp_path / "wide.gguf"
    _raw_file(path, {"direction.5": np.ones(lm.d_model + 64, dtype=np.float32)})
    with pytest.raises(EmovecError) as e:
        import_gguf(path, lm)
    _one_line_error(e, f"width {lm.d_model + 64}", f"width {lm.d_model}")


def test_layers_past_the_model_are_refused(lm, tmp_path):
    path = tmp_path / "deep.gguf"
    _raw_file(path, {f"direction.{lm.n_layers}": np.ones(lm.d_model, dtype=np.float32)})
    with pytest.raises(EmovecError) as e:
        import_gguf(path, lm)
    _one_line_error(e, f"layer {lm.n_layers}", f"0..{lm.n_layers - 1}")


@pytest.mark.parametrize("tensors,arch,needle", [
    ({"direction.0": np.ones(8, np.float32)}, "controlvector", "direction.0"),
    ({"direction.2": np.ones(8, np.float16)}, "controlvector", "not float32"),
    ({"direction.2": np.ones((2, 8), np.float32)}, "controlvector", "not a 1-D vector"),
    ({"weights.2": np.ones(8, np.float32)}, "controlvector", "not named direction.K"),
    ({"direction.2": np.full(8, np.nan, np.float32)}, "controlvector", "non-finite"),
    ({"direction.2": np.ones(8, np.float32), "direction.3": np.ones(9, np.float32)}, "controlvector", "width 9"),
    ({}, "controlvector", "no direction tensors"),
    ({"direction.2": np.ones(8, np.float32)}, "llama", "not 'controlvector'"),
])
def test_foreign_files_fail_with_one_line(tmp_path, lm, tensors, arch, needle):
    path = tmp_path / "x.gguf"
    _raw_file(path, tensors, arch=arch)
    with pytest.raises(EmovecError) as e:
        import_gguf(path, lm)
    _one_line_error(e, needle, str(path))


def test_corrupt_files_fail_with_one_line(exported, lm, tmp_path):
    _, good = exported
    data = good.read_bytes()
    cases = {
        "truncated.gguf": data[: len(data) // 2],
        "header-only.gguf": data[:30],
        "random.gguf": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "magic-then-junk.gguf": b"GGUF" + np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty.gguf": b"",
        "pickle.gguf": b"\x80\x04\x95cos\nsystem\n(S'echo pwned'\ntR.",
    }
    for name, blob in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(EmovecError) as e:
            import_gguf(path, lm)
        _one_line_error(e, str(path))
    with pytest.raises(EmovecError) as e:
        import_gguf(tmp_path / "missing.gguf", lm)
    _one_line_error(e, "not found")


def test_model_gguf_is_not_a_control_vector(lm):
    assert lm.source is not None and lm.source.suffix == ".gguf"
    with pytest.raises(EmovecError) as e:
        read_gguf(lm.source)
    _one_line_error(e, "general.architecture is 'llama'")


def test_cli_export_then_generate_with_steer_file(small_run, tmp_path):
    out = tmp_path / "calm.gguf"
    run = CliRunner().invoke(main, ["export", str(small_run), "--steer", "calm=0.4,desperate=-0.2", "--layers",
                                    "12-20", "-o", str(out)], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    assert "llama-cli -m " in run.output and f"--control-vector {out}" in run.output
    assert "direction.K is added to the output of decoder block K" in run.output
    assert read_gguf(out).model_hint == "llama" and sorted(read_gguf(out).directions) == list(range(12, 21))
    common = ["generate", "Say one sentence about rain.", "-v", str(small_run), "--max-new-tokens", "10"]
    by_spec = CliRunner().invoke(main, [*common, "--steer", "calm=0.4,desperate=-0.2", "--layers", "12-20"],
                                 catch_exceptions=False)
    by_file = CliRunner().invoke(main, [*common, "--steer-file", str(out)], catch_exceptions=False)
    assert by_spec.exit_code == 0 and by_file.exit_code == 0, by_file.output
    assert by_file.stdout == by_spec.stdout and by_file.stdout.strip()
    bad = CliRunner().invoke(main, ["export", str(small_run), "--steer", "calm=0.1", "--layers", "0-2", "-o",
                                    str(tmp_path / "l0.gguf")])
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1 and "layer 0" in bad.stderr
