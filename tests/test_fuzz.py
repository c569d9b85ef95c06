"""Fuzzing the loaders: damaged vector files, run directories, corpora, activation shards and concept lists.

A seeded loop (reproducible: every failure names its case) mutates valid files
made by hand (no model needed). Each case must either load into a consistent
object or raise EmovecError with a one-line message; any other exception, a
multi-line message or a case slower than its time bound fails the test.
Over 1,000 cases in total run in a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import signal
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from emovec.activations import load_corpus_activations, read_shard, write_shard
from emovec.concepts import load_concepts
from emovec.corpus import import_stories, load_corpus
from emovec.rundir import RUN_FILE, RunConfig, open_run
from emovec.storage import EmovecError, read_json, read_jsonl
from emovec.vectors import EmotionVectors

EMOTIONS = ["happy", "sad", "calm"]
LAYERS = [1, 3]
D = 8
CASE_SECONDS = 2.0


@contextlib.contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    """Fail a case that hangs (SIGALRM) instead of hanging the suite."""
    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"case took longer than {seconds}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Fuzz:
    """Runs cases and records every failure (so one test run shows them all)."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.cases = 0

    def case(self, name: str, fn: Callable[[], object], check: Callable[[object], None] | None = None) -> None:
        self.cases += 1
        t0 = time.monotonic()
        try:
            with time_bound(CASE_SECONDS):
                out = fn()
            if check is not None:
                check(out)
        except EmovecError as exc:
            msg = str(exc)
            if "\n" in msg or not msg.strip():
                self.failures.append(f"{name}: error message is not one line: {msg!r}")
        except Exception as exc:  # noqa: BLE001 - the point is to catch everything else
            self.failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
        if time.monotonic() - t0 > CASE_SECONDS:
            self.failures.append(f"{name}: took {time.monotonic() - t0:.1f}s")

    def assert_clean(self, minimum: int) -> None:
        assert self.cases >= minimum, self.cases
        assert not self.failures, f"{len(self.failures)} of {self.cases} cases failed:\n" + "\n".join(self.failures[:40])


def _tiny_vectors() -> EmotionVectors:
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(len(LAYERS), len(EMOTIONS), D, generator=g)
    comps = {lay: torch.linalg.qr(torch.randn(D, 2, generator=g))[0].T.contiguous() for lay in LAYERS}
    meta = {"format": "emovec.vectors/1", "model": "tiny", "model_fingerprint": "abc", "n_layers": 4, "d_model": D,
            "token_start": 50, "n_stories": {e: 3 for e in EMOTIONS}, "n_neutral": 4, "denoise_fraction": 0.5,
            "denoise_k": {str(lay): 2 for lay in LAYERS}, "default_layer": 3}
    return EmotionVectors(EMOTIONS, LAYERS, raw, raw * 0.5, torch.randn(len(LAYERS), D, generator=g),
                          torch.rand(len(LAYERS), generator=g) + 1, comps, meta)


def _check_vectors(v: object) -> None:
    assert isinstance(v, EmotionVectors)
    v.info()
    for layer in v.layers:
        m = v.matrix(layer)
        assert m.shape == (len(v.emotions), v.raw.shape[-1]) and torch.isfinite(m).all()
        v.center(layer)


def _split(blob: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _join(header: dict | bytes, body: bytes) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def _header_mutations(header: dict, rng: random.Random) -> dict | bytes:
    h = json.loads(json.dumps(header))
    meta = json.loads(h["__metadata__"]["emovec"])
    names = [k for k in h if k != "__metadata__"]
    name = rng.choice(names)
    choice = rng.randrange(24)
    lies: list[object] = [None, 0, -1, 10**30, "x", [], {}, [1, "a"], 1.5, True, ["happy", "happy"], "\udc80",
                          [-5], [10**9], [3, 3], list(range(100))]
    if choice == 0:
        h[name]["dtype"] = rng.choice(["F16", "BF16", "F64", "I64", "U8", "BOOL", "XX", 7])
    elif choice == 1:
        h[name]["shape"] = rng.choice([[], [0], [2**62, 2**62], [-1], ["a"], [1, 2, 3, 4, 5], [3, 3, 8]])
    elif choice == 2:
        a, b = h[name]["data_offsets"]
        h[name]["data_offsets"] = rng.choice([[b, a], [a, b + 4], [0, 2**63], [-8, b], [a, a], "x"])
    elif choice == 3:
        del h[name]
    elif choice == 4:
        h["__metadata__"]["emovec"] = rng.choice(["", "{", "[]", "null", "1e999", "[" * 5000 + "]" * 5000])
    elif choice == 5:
        del h["__metadata__"]
    elif choice == 6:
        h["__metadata__"] = rng.choice([None, [], {"emovec": 5}, "x"])
    elif choice == 7:
        return json.dumps(h).encode()[:-rng.randrange(1, 20)]
    elif choice == 8:
        return json.dumps(h).encode().replace(b"emovec", b"emov\xffc", 1)
    elif choice == 9:
        h[f"components.{rng.choice(['x', '-1', '99', '1.5', ''])}"] = h[name]
    else:
        key = rng.choice(["emotions", "layers", "n_layers", "default_layer", "format", "token_start", "d_model",
                          "n_stories", "denoise_k", "model_fingerprint", "model"])
        if rng.random() < 0.2:
            meta.pop(key, None)
        else:
            meta[key] = rng.choice(lies)
        h["__metadata__"]["emovec"] = json.dumps(meta)
    return h


def test_fuzz_vector_files(tmp_path):
    good_path = _tiny_vectors().save(tmp_path / "good.safetensors")
    good = good_path.read_bytes()
    _check_vectors(EmotionVectors.load(good_path))
    header, body = _split(good)
    rng = random.Random(1234)
    fz = Fuzz()
    path = tmp_path / "v.safetensors"

    def load() -> EmotionVectors:
        return EmotionVectors.load(path)

    blobs: list[tuple[str, bytes]] = [("empty", b""), ("one byte", b"\x00"), ("eight zero", b"\0" * 8),
                                      ("huge header", struct.pack("<Q", 2**63) + b"{}"),
                                      ("header past end", struct.pack("<Q", len(good)) + good[8:]),
                                      ("zero header", struct.pack("<Q", 0) + good[8:]),
                                      ("not json", _join(b"\xff\xfe{}", body)),
                                      ("json list", _join(b"[1, 2]", body)),
                                      ("deep json", _join(b"[" * 20000 + b"]" * 20000, body))]
    for i in range(120):
        blobs.append((f"truncate {i}", good[: rng.randrange(len(good))]))
    for i in range(150):
        b = bytearray(good)
        for _ in range(rng.choice([1, 1, 2, 8])):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        blobs.append((f"bitflip {i}", bytes(b)))
    for i in range(40):
        blobs.append((f"random {i}", rng.randbytes(rng.randrange(1, 600))))
    for i in range(200):
        blobs.append((f"header lie {i}", _join(_header_mutations(header, rng), body)))
    for name, blob in blobs:
        path.write_bytes(blob)
        fz.case(f"vectors/{name}", load, _check_vectors)
    for name, tensors in _tensor_lies().items():
        save_file(tensors, str(path), metadata={"emovec": json.dumps(dict(header_meta(header)))})
        fz.case(f"vectors/tensor {name}", load, _check_vectors)
    fz.case("vectors/missing", lambda: EmotionVectors.load(tmp_path / "nope.safetensors"))
    fz.case("vectors/directory", lambda: EmotionVectors.load(tmp_path))
    fz.assert_clean(500)


def header_meta(header: dict) -> dict:
    return json.loads(header["__metadata__"]["emovec"])


def _tensor_lies() -> dict[str, dict[str, torch.Tensor]]:
    v = _tiny_vectors()
    t = {"raw": v.raw, "denoised": v.denoised, "grand_mean": v.grand_mean, "mean_norm": v.mean_norm,
         "components.1": v.components[1], "components.3": v.components[3]}
    out = {
        "f64": dict(t, raw=v.raw.double()), "int": dict(t, denoised=v.denoised.long()),
        "transposed": dict(t, raw=v.raw.transpose(0, 1).contiguous()), "flat": dict(t, raw=v.raw.flatten()),
        "zero width": dict(t, raw=v.raw[..., :0].contiguous(), denoised=v.denoised[..., :0].contiguous(),
                           grand_mean=v.grand_mean[:, :0].contiguous()),
        "inf": dict(t, grand_mean=torch.full_like(v.grand_mean, float("inf"))),
        "negative norm": dict(t, mean_norm=-v.mean_norm), "zero norm": dict(t, mean_norm=torch.zeros(2)),
        "scalar norm": dict(t, mean_norm=torch.tensor(1.0)),
        "component width": dict(t, **{"components.1": torch.zeros(2, D + 1)}),
        "component 3d": dict(t, **{"components.1": torch.zeros(1, 2, D)}),
        "component nan": dict(t, **{"components.1": torch.full((2, D), float("nan"))}),
        "component f16": dict(t, **{"components.1": torch.zeros(2, D, dtype=torch.float16)}),
        "component other layer": dict(t, **{"components.2": torch.zeros(2, D)}),
        "extra tensor": dict(t, extra=torch.zeros(3)),
    }
    return {k: {n: x.contiguous() for n, x in d.items()} for k, d in out.items()}


def _run_json_lies(rng: random.Random) -> list[tuple[str, bytes]]:
    good = {k: v for k, v in RunConfig().__dict__.items()}
    good["emotions"] = ["happy", "sad"]
    lies: list[object] = [None, "x", -3, 0, 10**40, 1.5, [], {}, ["a", 1], True, "\u0000", [[]], float("nan")]
    out: list[tuple[str, bytes]] = [("empty", b""), ("list", b"[]"), ("null", b"null"), ("number", b"3"),
                                    ("not utf8", b'{"model": "\xff"}'), ("deep", b"[" * 50000 + b"]" * 50000),
                                    ("big int", b'{"seed": ' + b"9" * 5000 + b"}"), ("nan", b'{"seed": NaN}'),
                                    ("unknown keys only", b'{"what": 1}'), ("good", json.dumps(good).encode())]
    text = json.dumps(good).encode()
    for i in range(40):
        out.append((f"truncate {i}", text[: rng.randrange(len(text))]))
    for i in range(40):
        b = bytearray(text)
        b[rng.randrange(len(b))] = rng.randrange(256)
        out.append((f"byte {i}", bytes(b)))
    for i in range(100):
        cfg = dict(good)
        key = rng.choice(list(good))
        cfg[key] = rng.choice(lies)
        out.append((f"type lie {key} {i}", json.dumps(cfg).encode()))
    return out


def _check_config(cfg: object) -> None:
    assert isinstance(cfg, RunConfig)
    assert isinstance(cfg.model, str) and isinstance(cfg.seed, int) and isinstance(cfg.per_emotion, int)
    assert cfg.emotions is None or all(isinstance(e, str) for e in cfg.emotions)
    assert isinstance(cfg.token_start, int) and cfg.token_start >= 1
    assert isinstance(cfg.max_new_tokens, int) and isinstance(cfg.temperature, float)


def test_fuzz_run_directories(tmp_path):
    rng = random.Random(99)
    fz = Fuzz()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name, blob in _run_json_lies(rng):
        (run_dir / RUN_FILE).write_bytes(blob)
        fz.case(f"run.json/{name}", lambda: open_run(run_dir), _check_config)
        fz.case(f"run.json/{name} resumed", lambda: open_run(run_dir, RunConfig(emotions=["happy", "sad"]), write=False),
                _check_config)
    (run_dir / RUN_FILE).unlink()
    (run_dir / RUN_FILE).mkdir()
    fz.case("run.json/is a directory", lambda: open_run(run_dir))
    fz.case("summary.json/deep", lambda: read_json(_write(tmp_path / "s.json", b"{" * 30000)))
    fz.assert_clean(300)


def _write(path: Path, blob: bytes) -> Path:
    path.write_bytes(blob)
    return path


def _jsonl_blobs(rng: random.Random) -> list[tuple[str, bytes]]:
    good_rows = [{"emotion": rng.choice(EMOTIONS), "text": "word " * 45, "id": f"s{i}", "job": f"j{i}"} for i in range(6)]
    good = "".join(json.dumps(r) + "\n" for r in good_rows).encode()
    out: list[tuple[str, bytes]] = [
        ("empty", b""), ("newlines", b"\n\n\n"), ("not utf8", b'{"text": "\xff\xfe"}\n'), ("list row", b"[1]\n"),
        ("string row", b'"x"\n'), ("deep", b"[" * 100000 + b"]" * 100000 + b"\n"), ("big int", b'{"a": ' + b"1" * 5000 + b"}\n"),
        ("huge line", b'{"text": "' + b"a" * 2_000_000 + b'"}\n'), ("nul", b'{"text": "a\x00b"}\n'),
        ("bom", b'\xef\xbb\xbf{"text": "x"}\n'), ("lone surrogate", b'{"emotion": "\\udc80", "text": "\\ud800"}\n'),
        ("crlf", good.replace(b"\n", b"\r\n")), ("good", good),
    ]
    for i in range(60):
        out.append((f"truncate {i}", good[: rng.randrange(len(good))]))
    for i in range(60):
        b = bytearray(good)
        for _ in range(rng.choice([1, 3])):
            b[rng.randrange(len(b))] = rng.randrange(256)
        out.append((f"byte {i}", bytes(b)))
    lies: list[object] = [None, 5, 1.5, [], {}, ["happy"], "", " ", "HAPPY", "x" * 10000, True, {"text": "y"}]
    for i in range(80):
        rows = [dict(r) for r in good_rows]
        row = rng.choice(rows)
        key = rng.choice(["emotion", "text", "id", "job", "kept", "topic", "person", "reason"])
        if rng.random() < 0.2:
            row.pop(key, None)
        else:
            row[key] = rng.choice(lies)
        out.append((f"type lie {key} {i}", "".join(json.dumps(r) + "\n" for r in rows).encode()))
    for i in range(20):
        out.append((f"random {i}", rng.randbytes(rng.randrange(1, 400))))
    return out


def _check_rows(rows: object) -> None:
    assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows)


def test_fuzz_corpus_files(tmp_path):
    rng = random.Random(7)
    fz = Fuzz()
    for i, (name, blob) in enumerate(_jsonl_blobs(rng)):
        src = _write(tmp_path / f"in{i}.jsonl", blob)
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        _write(run_dir / "stories.jsonl", blob)
        _write(run_dir / "neutral.jsonl", blob)
        fz.case(f"read_jsonl/{name}", lambda src=src: read_jsonl(src), _check_rows)
        fz.case(f"load_corpus/{name}", lambda run_dir=run_dir: load_corpus(run_dir, "stories", EMOTIONS), _check_rows)
        fz.case(f"load_corpus neutral/{name}", lambda run_dir=run_dir: load_corpus(run_dir, "neutral"), _check_rows)
        fresh = tmp_path / f"fresh{i}"
        fz.case(f"import_stories/{name}", lambda src=src, fresh=fresh: import_stories(src, fresh, EMOTIONS))
        fz.case(f"import_stories into damaged run/{name}",
                lambda run_dir=run_dir: import_stories(_write(tmp_path / "ok.jsonl", b'{"emotion": "calm", "text": "a b"}\n'), run_dir,
                                       EMOTIONS))
    fz.case("read_jsonl/missing", lambda: read_jsonl(tmp_path / "none.jsonl"))
    fz.case("read_jsonl/directory", lambda: read_jsonl(tmp_path))
    fz.assert_clean(500)


def _good_shard() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    ids, labels = ["a", "b", "c"], ["happy", "sad", "happy"]
    groups = ["happy", "sad"]
    layers, keep = [0, 1, 2], [1, 2]
    pooled = torch.randn(3, len(layers), D, generator=torch.Generator().manual_seed(3))
    sums = torch.zeros(len(groups), len(layers), D, dtype=torch.float64)
    sums.index_add_(0, torch.tensor([0, 1, 0]), pooled.double())
    tensors = {"pooled": pooled[:, 1:].contiguous(), "sums": sums, "counts": torch.tensor([2, 1]),
               "norm_sum": torch.rand(len(layers), dtype=torch.float64) * 100, "norm_count": torch.tensor(40)}
    meta = {"ids": json.dumps(ids), "labels": json.dumps(labels), "groups": json.dumps(groups),
            "spec": json.dumps({"layers": layers, "keep_layers": keep, "start": 50, "max_tokens": 512})}
    return tensors, meta


def _check_acts(acts: object) -> None:
    n = acts.pooled.shape[0]  # type: ignore[attr-defined]
    assert len(acts.ids) == n == len(acts.labels) == sum(acts.counts.values())  # type: ignore[attr-defined]
    assert acts.pooled.shape[1] == len(acts.keep_layers)  # type: ignore[attr-defined]
    for s in acts.sums.values():  # type: ignore[attr-defined]
        assert s.shape == (len(acts.layers), acts.pooled.shape[2])  # type: ignore[attr-defined]
    assert acts.norm_sum.shape == (len(acts.layers),) and acts.mean_norm.shape == (len(acts.layers),)  # type: ignore[attr-defined]
    assert isinstance(acts.start, int) and set(acts.keep_layers) <= set(acts.layers)  # type: ignore[attr-defined]


def test_fuzz_activation_shards(tmp_path):
    rng = random.Random(5)
    fz = Fuzz()
    tensors, meta = _good_shard()
    good_path = tmp_path / "good.safetensors"
    write_shard(good_path, tensors, meta)
    good = good_path.read_bytes()
    cases: list[tuple[str, dict[str, torch.Tensor] | bytes, dict[str, str]]] = []
    for i in range(60):
        cases.append((f"truncate {i}", good[: rng.randrange(len(good))], meta))
    for i in range(60):
        b = bytearray(good)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        cases.append((f"bitflip {i}", bytes(b), meta))
    meta_lies = ["", "{", "null", "5", "[]", '["a"]', '[1, 2, 3]', '{"layers": "x"}', '"s"', "[" * 9000,
                 '{"layers": [0, 1, 2], "keep_layers": [7], "start": 50}', '{"layers": [], "keep_layers": [], "start": 1}',
                 '{"layers": [0, 1, 2], "keep_layers": [1, 2], "start": "50"}', '["happy", "happy"]', '["a", "b", "c", "d"]']
    for i in range(120):
        m = dict(meta)
        key = rng.choice(list(m))
        if rng.random() < 0.15:
            del m[key]
        else:
            m[key] = rng.choice(meta_lies)
        cases.append((f"meta lie {key} {i}", tensors, m))
    tensor_lies = {
        "pooled 2d": {"pooled": torch.zeros(3, D)}, "pooled rows": {"pooled": torch.zeros(5, 2, D)},
        "pooled width": {"pooled": torch.zeros(3, 2, D + 1)}, "sums groups": {"sums": torch.zeros(1, 3, D, dtype=torch.float64)},
        "sums layers": {"sums": torch.zeros(2, 1, D, dtype=torch.float64)}, "counts short": {"counts": torch.tensor([3])},
        "counts lie": {"counts": torch.tensor([5, 7])}, "counts float": {"counts": torch.tensor([2.0, 1.0])},
        "counts negative": {"counts": torch.tensor([-2, 5])}, "norm 2d": {"norm_sum": torch.zeros(3, 3)},
        "norm count vector": {"norm_count": torch.tensor([1, 2])}, "norm count float": {"norm_count": torch.tensor(1.5)},
        "pooled f16": {"pooled": torch.zeros(3, 2, D, dtype=torch.float16)}, "pooled nan": {"pooled": torch.full((3, 2, D), float("nan"))},
        "sums bool": {"sums": torch.zeros(2, 3, D, dtype=torch.bool)}, "missing pooled": {"pooled": None},
        "missing counts": {"counts": None}, "missing norm": {"norm_count": None},
    }
    for name, change in tensor_lies.items():
        t = {k: v for k, v in {**tensors, **change}.items() if v is not None}
        cases.append((f"tensor {name}", t, meta))
    other = dict(meta, spec=json.dumps({"layers": [0, 1, 2], "keep_layers": [2], "start": 50, "max_tokens": 512}))
    for i, (name, content, m) in enumerate(cases):
        d = tmp_path / f"acts{i}"
        d.mkdir()
        path = d / "stories-00000.safetensors"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            write_shard(path, content, m)
        fz.case(f"shard/{name}", lambda path=path: read_shard(path))
        fz.case(f"acts/{name}", lambda d=d: load_corpus_activations(d, "stories"), _check_acts)
    d = tmp_path / "mixed"
    d.mkdir()
    write_shard(d / "stories-00000.safetensors", tensors, meta)
    write_shard(d / "stories-00001.safetensors", {**tensors, "pooled": tensors["pooled"][:, :1].contiguous()}, other)
    fz.case("acts/mixed settings", lambda: load_corpus_activations(d, "stories"), _check_acts)
    fz.case("acts/empty dir", lambda: load_corpus_activations(tmp_path / "nowhere", "stories"))
    fz.assert_clean(300)


def test_fuzz_concept_lists(tmp_path):
    rng = random.Random(11)
    fz = Fuzz()
    alphabet = ["happy", "sad", "\n", " ", "#", "-", "'", "\u00e9", "\u0000", "\t", "\r", "1", "_", "\u200b", "\ufeff",
                "\u2028", "Ω", "💥", "a" * 70, ",", "\x85"]
    blobs: list[tuple[str, bytes]] = [("empty", b""), ("comments", b"# only\n#\n"), ("not utf8", b"happy\n\xff\xfe\n"),
                                      ("utf16", "happy\nsad\n".encode("utf-16")), ("huge line", b"a" * 5_000_000),
                                      ("many", "\n".join(f"word{chr(97 + i % 26)}{'x' * (i // 26)}" for i in range(3000)).encode()),
                                      ("duplicate", b"happy\nHappy\n"), ("latin1", "caf\u00e9\n".encode("latin-1"))]
    for i in range(150):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30)))
        blobs.append((f"text {i}", text.encode("utf-8", errors="surrogatepass")))
    for i in range(20):
        blobs.append((f"random {i}", rng.randbytes(rng.randrange(1, 300))))

    def check(names: object) -> None:
        assert isinstance(names, list) and names and len(set(names)) == len(names)
        assert all(isinstance(n, str) and n == n.strip() and n and "\n" not in n and len(n) <= 64 for n in names)

    path = tmp_path / "concepts.txt"
    for name, blob in blobs:
        path.write_bytes(blob)
        fz.case(f"concepts/{name}", lambda: load_concepts(path), check)
    fz.case("concepts/missing", lambda: load_concepts(tmp_path / "none.txt"))
    fz.case("concepts/directory", lambda: load_concepts(tmp_path))
    fz.assert_clean(150)


def test_no_pickle_anywhere():
    """No module of emovec can unpickle: no pickle imports, torch.load only with weights_only=True."""
    root = Path(__file__).resolve().parents[1] / "emovec"
    bad = []
    for path in sorted(root.rglob("*.py")):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\b(c?pickle|dill|joblib|marshal\.loads?|shelve)\b", code):
                bad.append(f"{path.name}:{i}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                bad.append(f"{path.name}:{i}: {line.strip()}")
            if re.search(r"allow_pickle\s*=\s*True|trust_remote_code\s*=\s*True", code):
                bad.append(f"{path.name}:{i}: {line.strip()}")
    assert not bad, bad
