"""The live server's model owner: one worker thread, one generation at a time, a bounded queue, cancellable jobs.

Only the worker thread touches the model. A request becomes a `Job` with a `deliver`
callback (the server hands it a thread-safe bridge to its event loop) and a cancel flag.
The worker checks the flag, the job's deadline and the engine's shutdown flag after
every token; on any of them it closes the generation at once, which leaves the model
unhooked (`Monitor.stream` enters its hooks only around forward passes), and reports
why it stopped. Nothing the client does can hold the model: the worker never waits on
a client, and a client that goes away only sets a flag.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from ..generation import Sampling
from ..models import LanguageModel
from ..readout import stored_baseline
from ..steering import steering_vector
from ..storage import EmovecError
from ..vectors import EmotionVectors
from .interactive import model_context
from .monitor import Monitor, TokenEvent, parse_rules
from .schema import GenerateRequest, Limits

log = logging.getLogger("emovec")

Deliver = Callable[[dict[str, Any] | None], bool]
"""Takes one event (None: the stream is over); returns False when nobody listens any more."""


class Busy(Exception):
    """The queue is full (answer 429) or the engine is shutting down (answer 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Job:
    """One generation request: what to run, where its events go, its deadline and its cancel flag."""

    def __init__(self, req: GenerateRequest, deliver: Deliver, deadline: float) -> None:
        self.req, self.deliver, self.deadline = req, deliver, deadline
        self.cancelled = threading.Event()
        self.reason = ""
        self.started = threading.Event()

    def cancel(self, reason: str) -> None:
        """Ask the worker to stop this job at the next token (or to skip it if it has not started)."""
        if not self.cancelled.is_set():
            self.reason = reason
            self.cancelled.set()


def token_payload(ev: TokenEvent) -> dict[str, Any]:
    """A token event as sent to the page: the trace fields (`load_traces` reads them back) plus the top five z."""
    top = sorted(ev.z.items(), key=lambda kv: -kv[1])[:5]
    return {"type": "token", **asdict(ev), "top": top}


class Engine:
    """The model, its vectors and the worker thread that runs queued generation jobs one at a time."""

    def __init__(self, lm: LanguageModel, vectors: EmotionVectors, layer: int | None = None,
                 limits: Limits | None = None) -> None:
        self.lm, self.vectors = lm, vectors
        self.limits = limits or Limits()
        self.monitor = Monitor(lm, vectors, layer=layer)
        self.layer = self.monitor.layer
        self.emotions = self.monitor.emotions
        # the layers a request may monitor (and steer): those with a stored token baseline
        self.layers = [x for x in vectors.layers if stored_baseline(vectors, x) is not None]
        self.context = model_context(lm)
        self.stats = {"served": 0, "cancelled": 0, "timed_out": 0, "failed": 0, "busy": 0}
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self.running: Job | None = None
        self._worker = threading.Thread(target=self._work, name="emovec-engine", daemon=True)
        self._worker.start()

    def info(self) -> dict[str, Any]:
        """What the web page needs to know: model, layer, emotions, context, request limits."""
        return {"model": self.lm.name, "layer": self.layer, "layers": self.layers, "emotions": self.emotions,
                "context": self.context, "limits": asdict(self.limits),
                "units": "z: projection on the unit vector at the monitored layer, minus the neutral-text mean, "
                         "over the neutral-text standard deviation (token_baseline)"}

    def status(self) -> dict[str, Any]:
        """Queue length, whether a generation runs, the worker's health and counters."""
        with self._cond:
            queued = sum(not j.cancelled.is_set() for j in self._pending)
        return {"queued": queued, "running": self.running is not None, "worker_alive": self._worker.is_alive(),
                "closing": self._closing.is_set(), **self.stats}

    def submit(self, req: GenerateRequest, deliver: Deliver) -> tuple[Job, int]:
        """Queue a job; returns it and how many jobs are ahead. Raises Busy(429) when the queue is full."""
        if self._closing.is_set():
            raise Busy(503, "the server is shutting down")
        job = Job(req, deliver, time.monotonic() + self.limits.request_timeout_s)
        with self._cond:
            live = [j for j in self._pending if not j.cancelled.is_set()]
            self._pending = deque(live)
            if len(live) >= self.limits.max_queue:
                self.stats["busy"] += 1
                raise Busy(429, f"{len(live)} requests are already waiting for the model; try again shortly")
            self._pending.append(job)
            ahead = len(live) + (self.running is not None)
            self._cond.notify()
        return job, ahead

    def close(self, wait: float | None = 10.0) -> None:
        """Stop at once: the running job ends at its next token, waiting jobs are told the server is shutting down.

        Safe to call from a signal handler with `wait=None` (it only sets a flag the worker polls).
        """
        self._closing.set()
        if wait is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=wait)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing.is_set():
                    self._cond.wait(timeout=0.2)
                if self._closing.is_set():
                    drained, self._pending = list(self._pending), deque()
                else:
                    drained, job = [], self._pending.popleft()
            if self._closing.is_set():
                for j in drained:
                    self._finish(j, {"type": "done", "tokens": 0, "stopped": "server shutting down"})
                return
            if job.cancelled.is_set():
                self._finish(job, None)
                continue
            self.running = job
            try:
                self._run(job)
            except Exception as exc:  # the worker must outlive any one job
                self.stats["failed"] += 1
                log.warning("live generation failed: %s", exc)
                self._finish(job, {"type": "error", "error": f"generation failed: {exc}"[:300]})
            finally:
                self.running = None

    def _finish(self, job: Job, last: dict[str, Any] | None) -> None:
        try:
            if last is not None:
                job.deliver(last)
            job.deliver(None)
        except Exception as exc:  # a broken listener must not take the worker down
            log.warning("live stream listener failed: %s", exc)

    def render(self, req: GenerateRequest) -> str:
        """The text the model continues: the conversation through the chat template (or a bare prompt as is)."""
        turns = req.conversation()
        if req.raw:
            return turns[0]["content"]
        if not self.lm.has_chat_template:
            if req.messages is not None:
                raise EmovecError(f"{self.lm.name} has no chat template, so it cannot read a conversation")
            return turns[0]["content"]
        if len(turns) == 1:
            return self.lm.chat(turns[0]["content"])
        text: str = self.lm.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return text

    def _stop_reason(self, job: Job) -> str | None:
        if self._closing.is_set():
            return "server shutting down"
        if job.cancelled.is_set():
            self.stats["cancelled"] += 1
            return job.reason or "cancelled"
        if time.monotonic() > job.deadline:
            self.stats["timed_out"] += 1
            return f"deadline of {self.limits.request_timeout_s:g} s reached"
        return None

    def _run(self, job: Job) -> None:
        req = job.req
        job.started.set()
        text = self.render(req)
        n_prompt = len(self.lm.tokenizer(text, add_special_tokens=False).input_ids)
        if self.context is not None and n_prompt + req.max_new_tokens > self.context:
            self._finish(job, {"type": "error", "error": f"prompt is {n_prompt} tokens; with {req.max_new_tokens} new "
                               f"tokens that passes the model's context of {self.context}"})
            return
        layer = self.layer if req.layer is None else req.layer
        steer = {k: v for k, v in req.steer.items() if v}
        sv = steering_vector(self.vectors, steer, layer) if steer else None
        guard = {k: v for k, v in req.guard.items() if v}
        rules = parse_rules({k: v for k, v in req.alerts.items() if v}, self.vectors.emotions)
        mon = Monitor(self.lm, self.vectors, layer=layer, rules=rules, guard=guard or None, guard_layers=str(layer))
        meta = mon.meta(source="live", messages=req.conversation(), seed=req.seed, temperature=req.temperature,
                        steer=sv.label if sv is not None else None, steer_spec=steer, prompt_tokens=n_prompt)
        if not job.deliver({"type": "start", "meta": meta}):
            job.cancel("client gone")
        sampling = Sampling(max_new_tokens=req.max_new_tokens, temperature=req.temperature,
                            top_p=Sampling.top_p if req.top_p is None else req.top_p)
        n, stopped, finish, reply, start = 0, None, "stop", "", time.monotonic()
        steps = mon.stream(text, sampling, seed=req.seed, chat=False, steer=sv)
        try:
            stopped = self._stop_reason(job)
            while stopped is None:
                events = next(steps, None)  # one forward pass; its hooks are gone again when it returns
                if events is None:
                    break
                for ev in events:
                    n += 1
                    reply += ev.token
                    if not job.deliver(token_payload(ev)):
                        job.cancel("client gone")
                if any(s in reply for s in req.stop):
                    finish = "stop"
                    break
                finish = "length" if n >= req.max_new_tokens else "stop"
                stopped = self._stop_reason(job)
        finally:
            steps.close()  # frees the KV cache now, not at garbage collection
        if stopped is None:
            self.stats["served"] += 1
        self._finish(job, {"type": "done", "tokens": n, "steer": steer, "guard": guard, "seed": req.seed,
                           "stopped": stopped, "finish_reason": None if stopped else finish, "prompt_tokens": n_prompt,
                           "seconds": round(time.monotonic() - start, 3)})
