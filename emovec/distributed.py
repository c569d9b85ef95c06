"""Ray execution of a run: the corpus writer's chunks and the extraction's shards on a pool of Ray actors.

`emovec run RUN_DIR --ray [ADDRESS]` starts a local Ray instance (no address) or joins a cluster
(`ray.init(address=...)`) and creates `workers` actors, each holding one copy of the run's model
(and writer), loaded by name inside the actor. The driver keeps the run directory: it plans the
same fixed chunks as a single-process run (same prompts, same per-chunk seeds), hands whole chunks
to the actors, and writes what comes back with the same atomic files, so

- stories and neutral rows are appended in chunk order as each chunk and all before it are done
  (`corpus._chunked_run`); a chunk's rows are what one process would have written, because an
  actor runs the run's own backend (`rundir.make_backend`) on the whole chunk with the chunk's
  seed, i.e. the same batches. The files are identical to a single-process run's wherever the
  numbers are (same model files, dtype, library versions, CPU class and thread count);
- activation shards are pooled by the actors and written by the driver as they arrive
  (`activations.extract_corpus` with a `ShardPooler`), each atomically, skipped on resume.

A worker killed mid-task is restarted by Ray and its task retried (`max_restarts`,
`max_task_retries`); nothing is written until a chunk's result reaches the driver, so a retried
chunk is written once. An interrupted driver resumes like any run: finished chunks are skipped.
Ray is optional (`make ray`); importing this module does not import it.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .activations import shard_tensors
from .generation import GenerationBackend, Sampling
from .models import LanguageModel, load_model
from .provenance import cpu_info, drift, library_versions
from .rundir import RunConfig, make_backend, run_model
from .storage import EmovecError

log = logging.getLogger(__name__)

RAY_MISSING = "Ray is not installed: run `make ray` (or pip install 'emovec[ray]') to use --ray"


def import_ray() -> Any:
    """The `ray` module, or a one-line EmovecError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise EmovecError(RAY_MISSING) from None
    return ray


@dataclass
class RayOptions:
    """How a run uses Ray: where the cluster is, how many actors, and their size (execution settings only)."""

    address: str | None = None  # None: start a new local Ray instance; else ray.init(address=...): "auto", "host:6379", "ray://..."
    workers: int | None = None  # actors, each with one model copy (None: the cluster's CPUs // cpus_per_worker)
    cpus_per_worker: int = 1  # also the actor's torch threads
    max_restarts: int = 3  # how often Ray restarts a dead actor (its unfinished tasks are retried)
    window: int = 2  # chunks in flight per actor (one running, one queued)
    # Runs in the actor at the start of each task as hook(method, chunk position); for fault-injection tests.
    task_hook: Callable[[str, int], None] | None = None


@contextmanager
def ray_session(options: RayOptions | None = None) -> Iterator[Any]:
    """Ray for the block: a new local instance (no address, `workers * cpus_per_worker` CPUs, default one per CPU)
    or the cluster at the address; shut down on exit if started here. Already connected: used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    opts = options or RayOptions()
    try:
        if opts.address:
            ray.init(address=opts.address, log_to_driver=False)
        else:
            cpus = (opts.workers or os.cpu_count() or 1) * opts.cpus_per_worker
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EmovecError(f"cannot start or reach Ray at {opts.address or 'a new local instance'}: {first}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


class _Worker:
    """One Ray actor: the run's model (and writer) loaded on first use, generating or pooling whole chunks."""

    def __init__(self, cfg: RunConfig, threads: int, hook: Callable[[str, int], None] | None) -> None:
        torch.set_num_threads(threads)
        self.cfg, self.hook = cfg, hook
        self._lm: LanguageModel | None = None
        self._backend: GenerationBackend | None = None

    def info(self) -> dict[str, Any]:
        """What this worker would write with (compared with the run's provenance), and its process id."""
        return {"versions": library_versions(), "cpu": cpu_info(), "pid": os.getpid(), "threads": torch.get_num_threads()}

    def _model(self) -> LanguageModel:
        if self._lm is None:
            self._lm = run_model(self.cfg)
        return self._lm

    def generate(self, index: int, prompts: list[str], sampling: Sampling, seed: int) -> list[str]:
        """The run's backend on one whole chunk (`GenerationBackend.generate`)."""
        if self.hook is not None:
            self.hook("generate", index)
        if self._backend is None:
            cfg = self.cfg  # the writer is the model itself, or loaded like it (`rundir.run_writer`) without the model
            writer = self._model() if cfg.writer_model() == cfg.model else \
                load_model(cfg.writer_model(), device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
            self._backend = make_backend(cfg, writer)
        return self._backend.generate(prompts, sampling, seed)

    def pool(self, index: int, texts: list[str], labels: list[str], layers: list[int], keep: list[int], start: int,
             batch_size: int, max_tokens: int) -> dict[str, torch.Tensor]:
        """The tensors of one activation shard (`activations.shard_tensors`)."""
        if self.hook is not None:
            self.hook("pool", index)
        return shard_tensors(self._model(), texts, labels, layers, keep, start, batch_size, max_tokens)


class RayPool:
    """A pool of `_Worker` actors for one run; use as a context manager (closing kills the actors).

    `cfg` must be the run's resolved settings (after `pipeline.prepare_models`: the writer and its
    dtype decided), so every actor builds exactly the backend a single process would. Workers whose
    library versions or CPU class differ from the run's provenance are refused unless `allow_drift`.
    """

    def __init__(self, cfg: RunConfig, options: RayOptions | None = None, allow_drift: bool = False) -> None:
        if cfg.backend == "vllm":
            raise EmovecError("--ray with --backend vllm is not supported: each actor would start its own vLLM engine, "
                              "which was not tested; run vLLM without --ray (it batches across requests itself)")
        self.ray = import_ray()
        self.options = opts = options or RayOptions()
        if opts.cpus_per_worker < 1 or (opts.workers is not None and opts.workers < 1):
            raise EmovecError("--ray-workers and the CPUs per worker must be >= 1")
        self._session = ExitStack()
        self._session.enter_context(ray_session(opts))
        have = self.ray.cluster_resources()
        n = opts.workers or max(1, int(have.get("CPU", 1)) // opts.cpus_per_worker)
        gpus = 1 if cfg.device.startswith("cuda") else 0
        if n * opts.cpus_per_worker > have.get("CPU", 0) or n * gpus > have.get("GPU", 0):
            self.close()
            raise EmovecError(f"the Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs, not enough "
                              f"for {n} workers of {opts.cpus_per_worker} CPU{'s' if opts.cpus_per_worker > 1 else ''}"
                              f"{' and 1 GPU' if gpus else ''}: lower --ray-workers")
        actor = self.ray.remote(_Worker).options(num_cpus=opts.cpus_per_worker, num_gpus=gpus,
                                                 max_restarts=opts.max_restarts, max_task_retries=opts.max_restarts)
        self.actors = [actor.remote(cfg, opts.cpus_per_worker, opts.task_hook) for _ in range(n)]
        try:
            self.infos = self.ray.get([a.info.remote() for a in self.actors])
        except Exception:
            self.close()
            raise
        self._check_workers(cfg, allow_drift)

    def _check_workers(self, cfg: RunConfig, allow_drift: bool) -> None:
        recorded = {k: cfg.provenance.get(k) for k in ("versions", "cpu")}
        for info in self.infos:
            diff = drift(recorded, {k: info[k] for k in ("versions", "cpu")}) if all(recorded.values()) else {}
            if diff and not allow_drift:
                self.close()
                raise EmovecError(f"a Ray worker (pid {info['pid']}) differs from the run's start in {', '.join(diff)}; "
                                  "its numbers would differ: use workers like the driver, or pass --allow-drift")
            if diff:
                log.warning("Ray worker pid %s differs from the run's start in %s (allowed)", info["pid"], ", ".join(diff))

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill the actors (no restart); shut Ray down if this pool started it."""
        for a in getattr(self, "actors", []):
            self.ray.kill(a, no_restart=True)
        self.actors = []
        self._session.close()

    def backend(self) -> RayBackend:
        """A `ChunkedBackend` that writes chunks on the actors."""
        return RayBackend(self)

    def pooler(self) -> RayPooler:
        """A `ShardPooler` that pools activation chunks on the actors."""
        return RayPooler(self)

    def stream(self, method: str, calls: Iterable[tuple[Any, ...]], ordered: bool) -> Iterator[tuple[int, Any]]:
        """Call `method(position, *args)` on the actors for each args tuple; yield (position, result).

        At most `window` calls per actor are in flight; with `ordered`, results are yielded in input
        order and calls are not issued further than `window * workers` ahead of the oldest unfinished one.
        """
        ray = self.ray
        slots = deque(a for _ in range(self.options.window) for a in self.actors)
        ahead = self.options.window * len(self.actors)
        calls_it = enumerate(calls)
        pending: dict[Any, tuple[int, Any]] = {}
        ready_out: dict[int, Any] = {}
        next_out = 0
        nxt: tuple[int, tuple[Any, ...]] | None = next(calls_it, None)
        while True:
            while slots and nxt is not None and (not ordered or nxt[0] < next_out + ahead):
                a = slots.popleft()
                pending[getattr(a, method).remote(nxt[0], *nxt[1])] = (nxt[0], a)
                nxt = next(calls_it, None)
            if not pending:
                return
            [ref], _ = ray.wait(list(pending), num_returns=1)
            i, a = pending.pop(ref)
            result = self._get(ref, method, i)
            slots.append(a)
            if not ordered:
                yield i, result
                continue
            ready_out[i] = result
            while next_out in ready_out:
                yield next_out, ready_out.pop(next_out)
                next_out += 1

    def _get(self, ref: Any, method: str, i: int) -> Any:
        """`ray.get`, with a worker's failure as one line (its own EmovecError as it is)."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, EmovecError):
                raise EmovecError(str(cause)) from None
            raise EmovecError(f"a Ray worker failed on {method} chunk {i}: {type(cause).__name__}: "
                              f"{str(cause).splitlines()[0] if str(cause) else ''}; re-run the same command to resume") from None
        except self.ray.exceptions.RayError as exc:
            raise EmovecError(f"Ray could not finish {method} chunk {i} ({type(exc).__name__}, after "
                              f"{self.options.max_restarts} restarts); re-run the same command to resume") from None


@dataclass
class RayBackend:
    """`GenerationBackend` and `ChunkedBackend` on a `RayPool`: each chunk runs whole on one actor."""

    pool: RayPool

    def generate(self, prompts: Sequence[str], sampling: Sampling, seed: int) -> list[str]:
        """Completions of one chunk, written by one actor."""
        return next(self.generate_chunks([(prompts, seed)], sampling))

    def generate_chunks(self, chunks: Iterable[tuple[Sequence[str], int]], sampling: Sampling) -> Iterator[list[str]]:
        """Each chunk's completions in input order, several chunks in flight over the actors."""
        for _, texts in self.pool.stream("generate", ((list(p), sampling, s) for p, s in chunks), ordered=True):
            yield texts


@dataclass
class RayPooler:
    """`ShardPooler` on a `RayPool`: each activation chunk pooled whole by one actor, results in any order."""

    pool: RayPool

    def pool_chunks(self, chunks: Iterable[tuple[list[str], list[str]]], layers: list[int], keep: list[int],
                    start: int, batch_size: int, max_tokens: int) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(position, shard tensors) for each (texts, labels) chunk, as the actors finish them."""
        calls = ((texts, labels, layers, keep, start, batch_size, max_tokens) for texts, labels in chunks)
        yield from self.pool.stream("pool", calls, ordered=False)
