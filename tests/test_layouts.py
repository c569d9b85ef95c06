"""Decoder-layer and final-norm lookup across architectures, hook safety, and `load_model` guards.

Every model here is a tiny, randomly initialised model built from a config (no downloads):
hidden size 32, 3 layers, vocab 128. Each is built once (cached) and shared by the tests.
"""

from __future__ import annotations

import json
import sys
import warnings
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn

from emovec.models import LanguageModel, config_fingerprint, find_final_norm, find_layers, get_path, load_model
from emovec.steering import SteeringVector
from emovec.storage import EmovecError

transformers = pytest.importorskip("transformers")

N_LAYERS = 3
VOCAB = 128
D = 32
_DECODER = dict(hidden_size=D, intermediate_size=64, num_hidden_layers=N_LAYERS, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
_WITH_HEAD_DIM = dict(_DECODER, head_dim=8)

# arch id -> (config class, model class, config kwargs, layers path, final-norm path)
ARCHS: dict[str, tuple[str, str, dict, str, str]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _DECODER, "model.layers", "model.norm"),
    "mistral": ("MistralConfig", "MistralForCausalLM", _DECODER, "model.layers", "model.norm"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _DECODER, "model.layers", "model.norm"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", _WITH_HEAD_DIM, "model.layers", "model.norm"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", _WITH_HEAD_DIM, "model.layers", "model.norm"),
    "gemma3-text": ("Gemma3TextConfig", "Gemma3ForCausalLM", _WITH_HEAD_DIM, "model.layers", "model.norm"),
    "gemma3-multimodal": ("Gemma3Config", "Gemma3ForConditionalGeneration", {}, "model.language_model.layers",
                          "model.language_model.norm"),
    "phi": ("PhiConfig", "PhiForCausalLM", _DECODER, "model.layers", "model.final_layernorm"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", _DECODER, "model.layers", "model.norm"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(n_embd=D, n_layer=N_LAYERS, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=1, eos_token_id=2),
             "transformer.h", "transformer.ln_f"),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run ~100x faster on one thread than with a contended thread pool; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(arch: str):
    cfg_name, _, kwargs, _, _ = ARCHS[arch]
    cfg_cls = getattr(transformers, cfg_name, None)
    if cfg_cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {cfg_name}")
    if arch == "gemma3-multimodal":
        vision = dict(hidden_size=D, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      image_size=28, patch_size=14)
        return cfg_cls(text_config=dict(_WITH_HEAD_DIM), vision_config=vision, mm_tokens_per_image=4)
    return cfg_cls(**kwargs)


@cache
def _build(arch: str) -> nn.Module | str:
    """The tiny model for `arch` (eval mode, fixed seed), or a reason string if it cannot be built here."""
    model_cls = getattr(transformers, ARCHS[arch][1], None)
    if model_cls is None:
        return f"transformers {transformers.__version__} has no {ARCHS[arch][1]}"
    try:
        config = _config(arch)
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = model_cls(config)
    except Exception as exc:  # noqa: BLE001 - report why, then skip
        return f"cannot build a tiny {ARCHS[arch][1]} in transformers {transformers.__version__}: {exc}"
    return model.eval()


def tiny_model(arch: str) -> nn.Module:
    model = _build(arch)
    if isinstance(model, str):
        pytest.skip(model)
    return model


def tiny_lm(arch: str) -> LanguageModel:
    """A LanguageModel assembled by hand around the tiny model (no tokenizer needed for hook tests)."""
    model = tiny_model(arch)
    layers, path = find_layers(model)
    return LanguageModel(model=model, tokenizer=None, name=f"tiny-{arch}", layers_path=path,
                         fingerprint=config_fingerprint(model.config), layers=layers)


def _logits(lm: LanguageModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(input_ids=ids, use_cache=False).logits.float()


def _n_hooks(lm: LanguageModel) -> int:
    return sum(len(layer._forward_hooks) for layer in lm.layers)


# --------------------------------------------------------------------------- layer / norm lookup

@pytest.mark.parametrize("arch", list(ARCHS))
def test_find_layers_and_norm(arch):
    model = tiny_model(arch)
    _, _, _, layers_path, norm_path = ARCHS[arch]

    layers, path = find_layers(model)
    assert path == layers_path
    assert isinstance(layers, nn.ModuleList)
    assert layers is get_path(model, layers_path)
    assert len(layers) == N_LAYERS
    # an explicit path finds the same list
    assert find_layers(model, path=layers_path)[0] is layers

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # find_final_norm warns when it falls back to Identity
        norm = find_final_norm(model)
    assert not isinstance(norm, nn.Identity)
    assert norm is get_path(model, norm_path)
    assert "norm" in type(norm).__name__.lower()
    assert getattr(norm, "weight", None) is not None and norm.weight.shape[-1] == D

    lm = tiny_lm(arch)
    assert lm.n_layers == N_LAYERS
    assert lm.d_model == D
    assert lm.layers_path == layers_path
    assert lm.final_norm is norm
    assert len(lm.fingerprint) == 16


def test_fingerprints_tell_architectures_apart():
    prints = {}
    for arch in ARCHS:
        model = _build(arch)
        if not isinstance(model, str):
            prints[arch] = config_fingerprint(model.config)
    # same width/depth/vocab, different model_type (or head layout) -> different fingerprint
    assert len(set(prints.values())) == len(prints)


# --------------------------------------------------------------------------- hooks / steering

@pytest.mark.parametrize("arch", list(ARCHS))
def test_steering_hooks_change_and_restore_output(arch):
    lm = tiny_lm(arch)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 7), generator=g)
    base = _logits(lm, ids)
    assert torch.equal(_logits(lm, ids), base), "forward pass is not deterministic"
    assert _n_hooks(lm) == 0

    # a zero delta is a no-op
    with SteeringVector({0: torch.zeros(lm.d_model)}).apply(lm):
        assert _n_hooks(lm) == 1
        assert torch.equal(_logits(lm, ids), base)

    for layer in (0, -1):  # first layer and last layer (negative index)
        delta = torch.randn(lm.d_model, generator=g) * 4.0
        with SteeringVector({layer: delta}).apply(lm) as sv:
            assert isinstance(sv, SteeringVector)
            assert _n_hooks(lm) == 1
            steered = _logits(lm, ids)
        assert steered.shape == base.shape
        assert torch.isfinite(steered).all()
        assert not torch.allclose(steered, base, atol=1e-4), f"steering layer {layer} did not change the logits"
        assert _n_hooks(lm) == 0
        assert torch.equal(_logits(lm, ids), base), "hooks left behind after the with block"

    # several layers at once, and hooks still removed when the block raises
    multi = SteeringVector({0: torch.randn(lm.d_model, generator=g), N_LAYERS - 1: torch.randn(lm.d_model, generator=g)})
    with pytest.raises(RuntimeError, match="boom"):
        with multi.apply(lm):
            assert _n_hooks(lm) == 2
            assert not torch.allclose(_logits(lm, ids), base, atol=1e-4)
            raise RuntimeError("boom")
    assert _n_hooks(lm) == 0
    assert torch.equal(_logits(lm, ids), base), "hooks left behind after an exception"


def test_steering_rejects_out_of_range_layer_without_hooking():
    lm = tiny_lm("llama")
    with pytest.raises(EmovecError, match=rf"0\.\.{N_LAYERS - 1}"):
        with SteeringVector({N_LAYERS: torch.ones(lm.d_model)}).apply(lm):
            pass
    assert _n_hooks(lm) == 0


# --------------------------------------------------------------------------- unknown layouts

class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        return x + self.lin(x)


class _OddModel(nn.Module):
    """Decoder blocks at `backbone.stack.blocks`, a path no table knows."""

    def __init__(self, d: int = 8, n: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.stack = nn.Module()
        self.backbone.stack.blocks = nn.ModuleList([_Block(d) for _ in range(n)])
        self.head = nn.Linear(d, 4)


def test_unknown_layout_asks_for_layers_path():
    model = _OddModel()
    with pytest.raises(EmovecError, match="layers_path") as err:
        find_layers(model)
    msg = str(err.value)
    assert "_OddModel" in msg
    assert "backbone.stack.blocks" in msg  # the hint lists the model's ModuleLists

    layers, path = find_layers(model, path="backbone.stack.blocks")
    assert path == "backbone.stack.blocks"
    assert layers is model.backbone.stack.blocks and len(layers) == 3

    for bad in ("backbone.nope", "backbone.stack", "head"):  # missing, not a ModuleList
        with pytest.raises(EmovecError, match="layers_path"):
            find_layers(model, path=bad)

    with pytest.warns(UserWarning, match="no final norm"):
        assert isinstance(find_final_norm(model), nn.Identity)


def test_explicit_path_overrides_the_table():
    model = tiny_model("llama")
    with pytest.raises(EmovecError, match="no decoder layers at 'model.nope'"):
        find_layers(model, path="model.nope")


# --------------------------------------------------------------------------- load_model guards

def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        ["the cat sat on the mat", "a dog ran in the park", "i feel calm and happy today", "she was afraid of the dark ."],
        trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"]),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


def _evil_dir(root: Path, marker: Path, with_tokenizer: bool, evil_tokenizer: bool = False) -> Path:
    """A model directory whose config points at custom code that would drop `marker` if imported."""
    d = root / "evil-model"
    d.mkdir()
    payload = f"from pathlib import Path\nPath({str(marker)!r}).write_text('executed ' + __name__)\n"
    for mod in ("modeling_evil", "configuration_evil", "tokenization_evil"):
        (d / f"{mod}.py").write_text(payload + "class EvilConfig: pass\nclass EvilForCausalLM: pass\nclass EvilTokenizer: pass\n")
    (d / "__init__.py").write_text(payload)
    (d / "config.json").write_text(json.dumps({
        "model_type": "evil_custom",
        "architectures": ["EvilForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                     "AutoModel": "modeling_evil.EvilForCausalLM",
                     "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"},
        "hidden_size": D, "num_hidden_layers": 2, "vocab_size": VOCAB,
    }))
    if with_tokenizer:
        _tiny_tokenizer().save_pretrained(d)
    if evil_tokenizer:
        cfg_path = d / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        cfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
        cfg["tokenizer_class"] = "EvilTokenizer"
        cfg_path.write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("variant", ["with-tokenizer", "no-tokenizer", "evil-tokenizer"])
def test_load_model_refuses_remote_code(tmp_path, variant):
    marker = tmp_path / "EXECUTED"
    d = _evil_dir(tmp_path, marker, with_tokenizer=variant != "no-tokenizer", evil_tokenizer=variant == "evil-tokenizer")
    with pytest.raises(EmovecError) as err:
        load_model(str(d), trust_remote_code=False)
    assert not marker.exists(), f"custom code ran: {marker.read_text()}"
    assert not any("evil" in name for name in sys.modules), "custom module was imported"
    msg = str(err.value)
    assert "\n" not in msg.strip()
    assert str(d) in msg
    if variant != "no-tokenizer":  # the model/tokenizer needs remote code: say how to allow it
        assert "--trust-remote-code" in msg
    # (with no tokenizer files, loading fails on the tokenizer first, before the auto_map is looked at)


def test_load_model_missing_path(tmp_path):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(EmovecError, match="not found") as err:
        load_model(str(missing))
    assert "model directory" in str(err.value)

    with pytest.raises(EmovecError, match="not found"):
        load_model(str(tmp_path / "nope.gguf"))


def test_load_model_dir_without_config(tmp_path):
    (tmp_path / "README.md").write_text("not a model\n")
    with pytest.raises(EmovecError, match="no config.json") as err:
        load_model(str(tmp_path))
    assert "Hugging Face model directory" in str(err.value)


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory) -> tuple[Path, object]:
    d = tmp_path_factory.mktemp("tiny-llama")
    tok = _tiny_tokenizer()
    config = transformers.LlamaConfig(**dict(_DECODER, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model


def test_load_model_local_hf_directory(saved_llama):
    from emovec.activations import pool_batch

    d, original = saved_llama
    lm = load_model(str(d))
    assert isinstance(lm, LanguageModel)
    assert lm.n_layers == N_LAYERS
    assert lm.d_model == D
    assert lm.layers_path == "model.layers"
    assert lm.layers is lm.model.model.layers
    assert lm.name == str(d)
    assert lm.dtype == torch.float32
    assert lm.fingerprint == config_fingerprint(original.config)
    assert lm.tokenizer.pad_token == "<pad>"
    assert not lm.model.training
    assert not isinstance(lm.final_norm, nn.Identity)

    # same weights as the model that was saved
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(lm.model(input_ids=ids).logits, original(input_ids=ids).logits, atol=1e-5)

    # with a real tokenizer the activation hooks work end to end
    res = pool_batch(lm, ["the cat sat on the mat", "i feel calm"], [0, N_LAYERS - 1], start=1)
    assert set(res.pooled) == {0, N_LAYERS - 1}
    assert res.pooled[0].shape == (2, D)
    assert _n_hooks(lm) == 0

    assert lm.check_layer(-1) == N_LAYERS - 1
    assert lm.check_layer(0) == 0
    with pytest.raises(EmovecError, match="out of range") as err:
        lm.check_layer(99)
    assert f"0..{N_LAYERS - 1}" in str(err.value)


def test_load_model_layers_path_override(saved_llama):
    d, _ = saved_llama
    with pytest.raises(EmovecError, match="no decoder layers at 'model.blocks'"):
        load_model(str(d), layers_path="model.blocks")
    assert load_model(str(d), layers_path="model.layers").layers_path == "model.layers"


def test_pickle_only_weights_are_refused(tmp_path):
    """A directory with only pytorch_model.bin (a pickle) is refused before anything is unpickled."""
    from emovec.models import load_model
    from emovec.storage import EmovecError

    (tmp_path / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(EmovecError, match="never unpickles"):
        load_model(str(tmp_path))
