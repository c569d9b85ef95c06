"""Residual-stream activations: hooks, pooling, and sharded extraction over a corpus.

Pooling rule (used everywhere a text becomes one vector): average the residual
stream after a decoder layer over token positions `start` .. end. The first
position is never pooled (it is an attention sink whose activation is huge and
content-free). A text with `start` or fewer tokens is pooled over positions
1 .. end instead, and a one-token text over its only position.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .models import LanguageModel
from .storage import EmovecError, atomic_path
from .topics import group_index, remove_group_means

DEFAULT_START = 50


def hidden_of(output: object) -> torch.Tensor:
    """The hidden-state tensor of a decoder layer's output (a tensor or a tuple starting with one)."""
    return cast(torch.Tensor, output[0] if isinstance(output, tuple) else output)


def with_hidden(output: object, hidden: torch.Tensor) -> object:
    """Return a decoder layer's output with its hidden-state tensor replaced."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def layer_hooks(lm: LanguageModel, layers: Sequence[int],
                fn: Callable[[int, nn.Module, tuple[Any, ...], object], object]) -> Iterator[None]:
    """Register `fn(layer_index, module, inputs, output)` as a forward hook on each layer; always removed."""
    handles = []
    try:
        for idx in layers:
            handles.append(lm.layers[idx].register_forward_hook(lambda m, i, o, _idx=idx: fn(_idx, m, i, o)))
        yield
    finally:
        for h in handles:
            h.remove()


class _StopForward(Exception):
    pass


def pool_mask(attention_mask: torch.Tensor, start: int = DEFAULT_START) -> torch.Tensor:
    """Boolean [batch, seq] mask of the positions pooled for each right-padded row (see module doc)."""
    if start < 1:
        raise EmovecError(f"token start must be >= 1 (position 0 is an attention sink), got {start}")
    lengths = attention_mask.sum(dim=1)
    pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None, :]
    first = torch.where(lengths > start, torch.full_like(lengths, start), torch.ones_like(lengths))
    first = torch.where(lengths <= 1, torch.zeros_like(lengths), first)
    return (pos >= first[:, None]) & (pos < lengths[:, None])


def tokenize(lm: LanguageModel, texts: Sequence[str], max_tokens: int) -> dict[str, torch.Tensor]:
    """Right-padded batch encoding of plain texts (no chat template); the shared tokenizer is left as it was."""
    enc = lm.tokenizer(list(texts), return_tensors="pt", padding=True, padding_side="right", truncation=True,
                       max_length=max_tokens)
    return {k: v.to(lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


@torch.inference_mode()
def residuals(lm: LanguageModel, enc: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """Residual stream after `layer` for an encoded batch [batch, seq, d_model] (float32, CPU).

    The forward pass stops at that layer, so no later layer or logits are computed.
    """
    grabbed: dict[str, torch.Tensor] = {}

    def grab(_idx: int, _m: nn.Module, _i: tuple[Any, ...], out: object) -> None:
        grabbed["h"] = hidden_of(out).detach().float().cpu()
        raise _StopForward

    with layer_hooks(lm, [lm.check_layer(layer)], grab):
        try:
            cast(Any, lm.model).base_model(**enc, use_cache=False)  # a PreTrainedModel attribute
        except _StopForward:
            pass
    return grabbed["h"]


@dataclass
class PooledBatch:
    """Pooled activations of one batch: `pooled[layer]` is [batch, d_model]; token-norm sums for steering units."""

    pooled: dict[int, torch.Tensor]
    norm_sum: dict[int, float]
    norm_count: int


@dataclass
class EncodedPool:
    """What `pool_encoded` reads from one batch: the pooled batch, each row's token-norm sums, the last hidden state."""

    batch: PooledBatch
    row_norms: dict[int, torch.Tensor]  # [batch] float64 per layer, only when asked for
    last_hidden: torch.Tensor | None  # [batch, seq, d_model], only when the forward pass runs to the end


@torch.inference_mode()
def pool_encoded(lm: LanguageModel, enc: dict[str, torch.Tensor], text_mask: torch.Tensor, layers: Sequence[int],
                 start: int = DEFAULT_START, to_end: bool = False, row_norms: bool = False) -> EncodedPool:
    """Pool an encoded batch over each row's text positions (`text_mask`, a prefix of every row).

    Positions after the text (e.g. a question appended to it) see the text but are not pooled, so the text's
    pooled activations equal those of the text alone. With `to_end` the forward pass runs through the last
    layer and its hidden state is returned; otherwise it stops after the deepest requested layer.
    """
    mask = pool_mask(text_mask, start)
    weights = mask.to(torch.float32)
    counts = weights.sum(1, keepdim=True).clamp(min=1)
    sink_free = text_mask.bool().clone()
    sink_free[:, 0] = False
    pooled: dict[int, torch.Tensor] = {}
    norm_sum: dict[int, float] = {}
    rows: dict[int, torch.Tensor] = {}
    last = max(layers) if layers else -1

    def grab(idx: int, _m: nn.Module, _i: tuple[Any, ...], out: object) -> None:
        h = hidden_of(out).to(torch.float32)
        pooled[idx] = (torch.bmm(weights[:, None, :], h)[:, 0] / counts).cpu()  # no [batch, seq, d] temporary
        norms = torch.linalg.vector_norm(h, dim=-1) * sink_free
        norm_sum[idx] = float(norms.sum())
        if row_norms:
            rows[idx] = norms.sum(1).to(torch.float64).cpu()
        if idx == last and not to_end:
            raise _StopForward

    hidden = None
    with layer_hooks(lm, layers, grab):
        try:
            hidden = cast(Any, lm.model).base_model(**enc, use_cache=False).last_hidden_state  # a PreTrainedModel
        except _StopForward:
            pass
    return EncodedPool(PooledBatch(pooled=pooled, norm_sum=norm_sum, norm_count=int(sink_free.sum())), rows, hidden)


def pool_batch(lm: LanguageModel, texts: Sequence[str], layers: Sequence[int], start: int = DEFAULT_START,
               max_tokens: int = 512) -> PooledBatch:
    """One forward pass over `texts`, returning pooled residuals at `layers` (float32, on CPU).

    Stops the forward pass after the deepest requested layer and never computes logits.
    """
    enc = tokenize(lm, texts, max_tokens)
    return pool_encoded(lm, enc, enc["attention_mask"], layers, start).batch


@dataclass
class PooledTexts:
    """Per-text pooled activations made by another pass over the texts (the content check's), for `write_shards`.

    `pooled` is [n, len(layers), d_model] float32, `norm_sum` [n, len(layers)] float64 (each text's summed token
    norms, sink excluded) and `n_tokens` [n] (its non-sink tokens); valid for these `layers`, `start`, `max_tokens`.
    """

    ids: list[str]
    layers: list[int]
    start: int
    max_tokens: int
    pooled: torch.Tensor
    norm_sum: torch.Tensor
    n_tokens: torch.Tensor

    @classmethod
    def concat(cls, parts: Sequence[PooledTexts]) -> PooledTexts:
        """One set of pools from several passes made with the same layers, token start and length cap."""
        first = parts[0]
        if any((p.layers, p.start, p.max_tokens) != (first.layers, first.start, first.max_tokens) for p in parts):
            raise EmovecError("pools made with other layers, token start or length cap cannot be joined")
        if len(parts) == 1:
            return first
        return cls(ids=[i for p in parts for i in p.ids], layers=first.layers, start=first.start,
                   max_tokens=first.max_tokens, pooled=torch.cat([p.pooled for p in parts]),
                   norm_sum=torch.cat([p.norm_sum for p in parts]), n_tokens=torch.cat([p.n_tokens for p in parts]))

    @cached_property
    def _row(self) -> dict[str, int]:
        return {i: k for k, i in enumerate(self.ids)}

    def shard(self, ids: Sequence[str], labels: Sequence[str], spec: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """The shard tensors of these texts from the stored pools, or None where they do not cover the shard."""
        if (spec["layers"], spec["start"], spec["max_tokens"]) != (self.layers, self.start, self.max_tokens):
            return None
        if any(i not in self._row for i in ids):
            return None
        rows = torch.tensor([self._row[i] for i in ids])
        return shard_from_pooled(self.pooled[rows], self.norm_sum[rows].sum(0), int(self.n_tokens[rows].sum()),
                                 labels, spec["layers"], spec["keep_layers"])


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to keep padding small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def pool_texts(lm: LanguageModel, texts: Sequence[str], layers: Sequence[int], start: int = DEFAULT_START,
               batch_size: int = 16, max_tokens: int = 512, progress: bool = False,
               desc: str = "activations") -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pooled activations of many texts: ([n_texts, n_layers, d_model], token-norm sums [n_layers], token count)."""
    if not texts:
        raise EmovecError("no texts to read activations from (empty corpus)")
    layers = [lm.check_layer(lay) for lay in layers]
    lengths = [len(ids) for ids in lm.tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"]]
    out = torch.zeros(len(texts), len(layers), lm.d_model)
    norm_sum = torch.zeros(len(layers), dtype=torch.float64)
    n_tokens = 0
    batches = length_sorted_batches(lengths, batch_size)
    for idx in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
        res = pool_batch(lm, [texts[i] for i in idx], layers, start, max_tokens)
        out[idx] = torch.stack([res.pooled[lay] for lay in layers], dim=1)
        norm_sum += torch.tensor([res.norm_sum[lay] for lay in layers], dtype=torch.float64)
        n_tokens += res.norm_count
    return out, norm_sum, n_tokens


def shard_name(kind: str, index: int) -> str:
    """File name of shard `index` of a corpus kind; zero-padded so shards sort in order."""
    return f"{kind}-{index:05d}.safetensors"


def write_shard(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Write one activation shard atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def _damaged(path: Path, why: str | Exception) -> EmovecError:
    """The one-line error for a shard that cannot be used, from a reason or the exception that showed it."""
    if isinstance(why, Exception):
        why = str(why).splitlines()[0][:80] if str(why) else type(why).__name__
    return EmovecError(f"{path}: damaged activation shard ({why}); delete it and re-run `emovec extract` to redo it")


def read_shard_meta(path: Path) -> dict[str, str]:
    """The metadata of one shard, without reading its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _damaged(path, exc) from None


def read_shard(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read one shard written by `write_shard`; a damaged file is a one-line error."""
    meta = read_shard_meta(path)
    try:
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _damaged(path, exc) from None


@dataclass
class CorpusActivations:
    """Everything extraction keeps about one corpus (stories or neutral texts).

    `sums[label]` is the summed pooled activation per layer [n_layers, d_model]
    (float64, all extracted layers) and `counts[label]` its number of texts, so
    memory does not grow with the corpus; `pooled` holds per-text activations
    [n_texts, n_keep, d_model] at `keep_layers` only, for held-out analyses.
    """

    layers: list[int]
    keep_layers: list[int]
    ids: list[str]
    labels: list[str]
    pooled: torch.Tensor
    sums: dict[str, torch.Tensor]
    counts: dict[str, int]
    norm_sum: torch.Tensor
    norm_count: int
    start: int

    def subset(self, rows: Sequence[int]) -> CorpusActivations:
        """The texts at `rows` only, sums and counts rebuilt from their pooled activations (which must then be kept
        at every extracted layer, as the quick preset keeps them)."""
        if self.keep_layers != self.layers:
            raise EmovecError("a subset needs the per-text activations at every layer; extract with keep_layers all")
        labels = [self.labels[j] for j in rows]
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for j, e in zip(rows, labels):
            sums[e] = sums.get(e, 0) + self.pooled[j].double()
            counts[e] = counts.get(e, 0) + 1
        return CorpusActivations(layers=self.layers, keep_layers=self.keep_layers, ids=[self.ids[j] for j in rows],
                                 labels=labels, pooled=self.pooled[list(rows)], sums=sums, counts=counts,
                                 norm_sum=self.norm_sum, norm_count=self.norm_count, start=self.start)

    def topic_adjusted(self, topics: Sequence[str]) -> CorpusActivations:
        """These texts with each one's topic mean removed (`remove_group_means`) and the sums rebuilt from them.

        `topics` holds one name per text, in the order of `ids`. Needs the per-text activations at
        every extracted layer (the quick and standard presets keep them).
        """
        if len(topics) != len(self.ids):
            raise EmovecError(f"topic adjustment needs one topic per text: got {len(topics)} for {len(self.ids)} texts")
        if self.keep_layers != self.layers:
            raise EmovecError("topic adjustment needs the per-story activations at every layer; extract with "
                              "keep_layers all, or run with --no-topic-adjust")
        pooled = remove_group_means(self.pooled.double(), group_index(topics))
        sums: dict[str, torch.Tensor] = {}
        for j, e in enumerate(self.labels):
            sums[e] = sums.get(e, 0) + pooled[j]
        return dataclasses.replace(self, pooled=pooled.to(self.pooled.dtype), sums=sums)

    @property
    def mean_norm(self) -> torch.Tensor:
        """Average residual-stream norm per layer over all non-sink tokens [n_layers]."""
        return (self.norm_sum / max(self.norm_count, 1)).to(torch.float32)


def shard_tensors(lm: LanguageModel, texts: Sequence[str], labels: Sequence[str], layers: Sequence[int],
                  keep: Sequence[int], start: int = DEFAULT_START, batch_size: int = 16,
                  max_tokens: int = 512) -> dict[str, torch.Tensor]:
    """The tensors of one activation shard: pooled texts at `keep`, per-label sums and counts, token norms."""
    pooled, norm_sum, n_tok = pool_texts(lm, texts, layers, start, batch_size, max_tokens)
    return shard_from_pooled(pooled, norm_sum, n_tok, labels, layers, keep)


def shard_from_pooled(pooled: torch.Tensor, norm_sum: torch.Tensor, n_tokens: int, labels: Sequence[str],
                      layers: Sequence[int], keep: Sequence[int]) -> dict[str, torch.Tensor]:
    """A shard's tensors from pooled texts [n, len(layers), d] (as `pool_texts` returns them, from any engine)."""
    groups = sorted(set(labels))
    gidx = torch.tensor([groups.index(lab) for lab in labels])
    sums = torch.zeros(len(groups), len(layers), pooled.shape[-1], dtype=torch.float64)
    sums.index_add_(0, gidx, pooled.to(torch.float64))
    keep_idx = [list(layers).index(lay) for lay in keep]
    return {"pooled": pooled[:, keep_idx], "sums": sums, "counts": torch.bincount(gidx, minlength=len(groups)),
            "norm_sum": norm_sum, "norm_count": torch.tensor(n_tokens)}


class ShardPooler(Protocol):
    """Computes `shard_tensors` for many chunks elsewhere (e.g. on Ray workers, `emovec.distributed`)."""

    def pool_chunks(self, chunks: Iterable[tuple[list[str], list[str]]], layers: list[int], keep: list[int],
                    start: int, batch_size: int, max_tokens: int) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(position in `chunks`, `shard_tensors` of that chunk's (texts, labels)), in any order, one per chunk."""
        ...


def extract_corpus(lm: LanguageModel, rows: Sequence[dict[str, Any]], out_dir: str | Path, kind: str,
                   layers: Sequence[int] | None = None, keep_layers: Sequence[int] | None = None,
                   start: int = DEFAULT_START, batch_size: int = 16, shard_size: int = 256,
                   max_tokens: int = 512, progress: bool = True, pooler: ShardPooler | None = None,
                   reuse: PooledTexts | None = None) -> CorpusActivations:
    """Pool activations of `rows` (dicts with `id`, `text`, optional `emotion`) into shards under `out_dir`
    (`write_shards`) and read them back."""
    write_shards(lm, rows, out_dir, kind, layers, keep_layers, start, batch_size, shard_size, max_tokens, progress,
                 pooler, reuse)
    return load_corpus_activations(out_dir, kind)


def write_shards(lm: LanguageModel, rows: Sequence[dict[str, Any]], out_dir: str | Path, kind: str,
                 layers: Sequence[int] | None = None, keep_layers: Sequence[int] | None = None,
                 start: int = DEFAULT_START, batch_size: int = 16, shard_size: int = 256,
                 max_tokens: int = 512, progress: bool = True, pooler: ShardPooler | None = None,
                 reuse: PooledTexts | None = None) -> None:
    """Pool activations of `rows` into shards under `out_dir`, without reading them back.

    Work is cut into fixed chunks of `shard_size` rows, each written atomically as
    `{kind}-NNNNN.safetensors`; a re-run skips every chunk whose shard exists with
    the same ids, so an interrupted extraction resumes where it stopped. With a
    `pooler` the chunks are pooled there (in any order) and the shards written here.
    A chunk that `reuse` covers (same texts and settings) is built from it without the model.
    """
    if not rows:
        raise EmovecError(f"the {kind} corpus is empty: generate or import texts first (`emovec stories`)")
    layers = list(range(lm.n_layers)) if layers is None else sorted({lm.check_layer(lay) for lay in layers})
    keep = layers if keep_layers is None else sorted({lm.check_layer(lay) for lay in keep_layers})
    if not set(keep) <= set(layers):
        raise EmovecError(f"keep layers {keep} must be among the extracted layers {layers}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chunks = [rows[i:i + shard_size] for i in range(0, len(rows), shard_size)]
    spec = {"layers": layers, "keep_layers": keep, "start": start, "max_tokens": max_tokens}
    bar = tqdm(total=len(rows), desc=f"extract {kind}", unit="text", disable=not progress)
    todo: list[tuple[int, list[str], list[str], list[str]]] = []  # (chunk index, ids, texts, labels)
    for ci, chunk in enumerate(chunks):
        ids = [str(r["id"]) for r in chunk]
        if (out_dir / shard_name(kind, ci)).exists() and _shard_matches(out_dir / shard_name(kind, ci), ids, spec):
            bar.update(len(chunk))
        else:
            labels = [str(r.get("emotion", kind)) for r in chunk]
            tensors = reuse.shard(ids, labels, spec) if reuse is not None else None
            if tensors is not None:
                _write_chunk(out_dir / shard_name(kind, ci), tensors, ids, labels, spec)
                bar.update(len(chunk))
            else:
                todo.append((ci, ids, [r["text"] for r in chunk], labels))
    if pooler is None:  # here, one chunk after another
        results: Iterable[tuple[int, dict[str, torch.Tensor]]] = (
            (k, shard_tensors(lm, texts, labels, layers, keep, start, batch_size, max_tokens))
            for k, (_, _, texts, labels) in enumerate(todo))
    else:
        results = pooler.pool_chunks(((texts, labels) for _, _, texts, labels in todo), layers, keep, start,
                                     batch_size, max_tokens)
    for k, tensors in results:
        ci, ids, _, labels = todo[k]
        _write_chunk(out_dir / shard_name(kind, ci), tensors, ids, labels, spec)
        bar.update(len(ids))
    bar.close()
    for stale in sorted(out_dir.glob(f"{kind}-*.safetensors"))[len(chunks):]:
        stale.unlink()


def _write_chunk(path: Path, tensors: dict[str, torch.Tensor], ids: list[str], labels: list[str],
                 spec: dict[str, Any]) -> None:
    write_shard(path, tensors, {"ids": json.dumps(ids), "labels": json.dumps(labels),
                                "groups": json.dumps(sorted(set(labels))), "spec": json.dumps(spec)})


def _shard_matches(path: Path, ids: list[str], spec: dict[str, Any]) -> bool:
    """True if an existing shard holds exactly these texts with these settings (a damaged one is redone)."""
    try:
        meta = read_shard_meta(path)
        return bool(json.loads(meta.get("ids", "[]")) == ids and json.loads(meta.get("spec", "{}")) == spec)
    except (EmovecError, json.JSONDecodeError):
        return False


def _check_shard(path: Path, tensors: dict[str, torch.Tensor],
                 meta: dict[str, str]) -> tuple[dict[str, Any], list[str], list[str], list[str]]:
    """Validate one shard's metadata against its tensors; return (spec, groups, ids, labels)."""
    def bad(why: str) -> EmovecError:
        return _damaged(path, why)

    try:
        spec, groups, ids, labels = (json.loads(meta[k]) for k in ("spec", "groups", "ids", "labels"))
    except (KeyError, ValueError, RecursionError):
        raise bad("metadata missing or not JSON") from None
    if not (isinstance(spec, dict) and isinstance(spec.get("layers"), list) and isinstance(spec.get("keep_layers"), list)
            and all(isinstance(lay, int) and not isinstance(lay, bool) for lay in spec["layers"] + spec["keep_layers"])
            and spec["layers"] and set(spec["keep_layers"]) <= set(spec["layers"])
            and isinstance(spec.get("start"), int) and not isinstance(spec["start"], bool) and spec["start"] >= 1):
        raise bad("settings (layers, keep_layers, start) missing or inconsistent")
    for name, value in (("groups", groups), ("ids", ids), ("labels", labels)):
        if not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
            raise bad(f"{name} is not a list of names")
    if len(set(groups)) != len(groups) or not set(labels) <= set(groups) or len(labels) != len(ids):
        raise bad("labels do not match groups")
    want = {"pooled": (len(ids), len(spec["keep_layers"]), None), "sums": (len(groups), len(spec["layers"]), None),
            "counts": (len(groups),), "norm_sum": (len(spec["layers"]),), "norm_count": ()}
    d = tensors["pooled"].shape[-1] if "pooled" in tensors and tensors["pooled"].dim() == 3 else None
    for name, shape in want.items():
        t = tensors.get(name)
        if t is None:
            raise bad(f"tensor {name!r} missing")
        expect = tuple(d if x is None else x for x in shape)
        if tuple(t.shape) != expect or (d is not None and d < 1):
            raise bad(f"tensor {name!r} has shape {tuple(t.shape)}, expected {expect}")
        floating = name in ("pooled", "sums", "norm_sum")
        if t.dtype.is_floating_point != floating or t.dtype == torch.bool:
            raise bad(f"tensor {name!r} has dtype {t.dtype}")
        if floating and not torch.isfinite(t).all():
            raise bad(f"tensor {name!r} holds NaN or infinite values")
    counts = tensors["counts"]
    if bool((counts < 0).any()) or counts.tolist() != [labels.count(g) for g in groups] or int(tensors["norm_count"]) < 0:
        raise bad("counts do not match labels")
    return spec, groups, ids, labels


def load_corpus_activations(out_dir: str | Path, kind: str) -> CorpusActivations:
    """Aggregate the shards of one corpus kind written by `extract_corpus`."""
    paths = sorted(Path(out_dir).glob(f"{kind}-*.safetensors"))
    if not paths:
        raise EmovecError(f"no {kind} activations in {out_dir}; run `emovec extract` first")
    ids: list[str] = []
    labels: list[str] = []
    pooled: list[torch.Tensor] = []
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    norm_sum: torch.Tensor | None = None
    norm_count = 0
    spec: dict[str, Any] | None = None
    for path in paths:
        tensors, meta = read_shard(path)
        shard_spec, groups, shard_ids, shard_labels = _check_shard(path, tensors, meta)
        ids += shard_ids
        labels += shard_labels
        if spec is not None and shard_spec != spec:
            raise EmovecError(f"{path}: extracted with different settings than the other shards; delete {out_dir} and re-extract")
        spec = shard_spec
        pooled.append(tensors["pooled"])
        for g, name in enumerate(groups):
            sums[name] = sums.get(name, 0) + tensors["sums"][g]
            counts[name] = counts.get(name, 0) + int(tensors["counts"][g])
        norm_sum = tensors["norm_sum"] if norm_sum is None else norm_sum + tensors["norm_sum"]
        norm_count += int(tensors["norm_count"])
    assert spec is not None and norm_sum is not None  # `paths` is not empty, so the loop ran
    return CorpusActivations(layers=spec["layers"], keep_layers=spec["keep_layers"], ids=ids, labels=labels,
                             pooled=torch.cat(pooled), sums=sums, counts=counts, norm_sum=norm_sum,
                             norm_count=norm_count, start=spec["start"])
