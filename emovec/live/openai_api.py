"""OpenAI-compatible endpoints on the live server, so the official `openai` client works against `base_url=.../v1`:

    GET  /v1/models                  the one model served
    GET  /v1/models/{model}          that model (404 for any other)
    POST /v1/chat/completions        chat, streamed (server-sent events) or not
    POST /v1/completions             a bare prompt continued as is (no chat template), streamed or not

A request is validated by `openai_schema.parse_openai`, then runs as an ordinary Engine job through a
`Relay` (same queue, 429/503, deadline and cancel-on-disconnect as /api/generate); this module only turns
the job's events into OpenAI objects. Each token becomes one chunk whose `emovec` field holds that token's
scores and z-scores (for the requested emotions), alerts fired, guard steering in force and `top` (the five
highest z of all emotions); the first chunk's `emovec` says what is monitored, the last one's sums it up.
A non-streamed response carries every token's readout under `emovec.tokens`. Errors are OpenAI-shaped:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import secrets
import statistics
import time
from collections.abc import Callable
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from .engine import Busy, Engine
from .openai_schema import Plan, parse_openai
from .relay import Relay, read_body
from .schema import SECURITY_HEADERS, BadRequest, check_auth, check_headers

ERROR_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "rate_limit_error", 500: "server_error",
               503: "server_error"}
ERROR_CODES = {401: "invalid_api_key", 413: "request_too_large", 429: "rate_limit_exceeded", 503: "server_shutting_down"}


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """An error the way the OpenAI API answers one (the official client raises the class matching `status`)."""
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code or ERROR_CODES.get(status)}}
    extra = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return JSONResponse(body, status_code=status, headers={**SECURITY_HEADERS, **extra, **(headers or {})})


class Reply:
    """One request's answer built from its job's events: streamed chunks, or the whole response at the end.

    Text that might be the start of a stop sequence is held back until it is not (a chunk's text may
    then be empty, or the last chunk carry the rest); the reply ends before the stop sequence.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.chat = plan.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.text, self.sent = "", 0  # all token text so far; how much of it went out
        self.cut: int | None = None  # where a stop sequence begins
        self.tokens: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}

    def _view(self, ev: dict[str, Any]) -> dict[str, Any]:
        names = self.plan.emotions
        return {"position": ev["position"], "token": ev["token"], "scores": {e: ev["scores"][e] for e in names},
                "z": {e: ev["z"][e] for e in names}, "alerts": ev["alerts"], "steering": ev["steering"], "top": ev["top"]}

    def _advance(self) -> str:
        """The text that can go out now: up to a stop sequence, else all but a possible stop-sequence start."""
        stops = self.plan.req.stop
        hits = [i for i in (self.text.find(s, self.sent) for s in stops) if i >= 0]
        end = min(hits) if hits else len(self.text) - max(
            (k for s in stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        if hits:
            self.cut = end
        out, self.sent = self.text[self.sent:max(end, self.sent)], max(end, self.sent)
        return out

    def start(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The first chunk: the role (chat), and what is monitored."""
        self.meta = meta
        info = {"layer": meta["layer"], "seed": meta["seed"], "emotions": self.plan.emotions,
                "steer": meta.get("steer_spec") or {}, "guard": meta.get("guard"), "prompt_tokens": meta["prompt_tokens"]}
        return self._chunk({"role": "assistant", "content": ""} if self.chat else "", info)

    def token(self, ev: dict[str, Any]) -> dict[str, Any] | None:
        """The chunk for one token event (None once the reply has ended at a stop sequence)."""
        if self.cut is not None:
            return None
        self.tokens.append(self._view(ev))
        self.text += ev["token"]
        text = self._advance()
        return self._chunk({"content": text} if self.chat else text, self.tokens[-1])

    def finish_reason(self, done: dict[str, Any]) -> str | None:
        """The OpenAI finish reason: stop or length (a deadline reads as length); None when the job was stopped."""
        if done.get("stopped"):
            return "length" if str(done["stopped"]).startswith("deadline") else None
        return "stop" if self.cut is not None else str(done.get("finish_reason") or "stop")

    def _rest(self) -> str:
        out = self.text[self.sent:] if self.cut is None else ""
        self.sent = len(self.text)
        return out

    def final(self, done: dict[str, Any]) -> list[dict[str, Any]]:
        """The last chunk (finish reason, summary) and, when asked for, the usage chunk."""
        rest = self._rest()
        last = self._chunk(({"content": rest} if rest else {}) if self.chat else rest, self.summary(done),
                           self.finish_reason(done))
        if not self.plan.include_usage:
            return [last]
        return [last, {**self._envelope(), "choices": [], "usage": self.usage()}]

    def usage(self) -> dict[str, int]:
        """Token counts: the rendered prompt, and the tokens generated up to the end of the reply."""
        prompt = int(self.meta.get("prompt_tokens", 0))
        return {"prompt_tokens": prompt, "completion_tokens": len(self.tokens), "total_tokens": prompt + len(self.tokens)}

    def summary(self, done: dict[str, Any]) -> dict[str, Any]:
        """Alerts fired, mean and peak z per reported emotion, the top five by mean z, and why generation stopped."""
        names = self.plan.emotions
        mean = {e: round(statistics.fmean(t["z"][e] for t in self.tokens), 3) for e in names} if self.tokens else {}
        peak = {e: max(t["z"][e] for t in self.tokens) for e in names} if self.tokens else {}
        return {"alerts": [a for t in self.tokens for a in t["alerts"]],
                "summary": {"tokens": len(self.tokens), "mean_z": mean, "max_z": peak,
                            "top": sorted(mean.items(), key=lambda kv: -kv[1])[:5]},
                "stopped": done.get("stopped"), "seconds": done.get("seconds")}

    def response(self, done: dict[str, Any]) -> dict[str, Any]:
        """The whole non-streamed response, with every token's readout under `emovec.tokens`."""
        text = self.text if self.cut is None else self.text[:self.cut]
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": self.finish_reason(done)}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text, "refusal": None}
        else:
            choice["text"] = text
        emovec = {"layer": self.meta.get("layer"), "seed": self.meta.get("seed"), "emotions": self.plan.emotions,
                  "steer": self.meta.get("steer_spec") or {}, "guard": self.meta.get("guard"), **self.summary(done),
                  "tokens": self.tokens}
        return {**self._envelope(), "object": "chat.completion" if self.chat else "text_completion", "choices": [choice],
                "usage": self.usage(), "emovec": emovec}

    def _envelope(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.plan.model, "system_fingerprint": None}

    def _chunk(self, delta: dict[str, Any] | str, emovec: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        choice["delta" if self.chat else "text"] = delta
        chunk = {**self._envelope(), "choices": [choice], "emovec": emovec}
        return {**chunk, "usage": None} if self.plan.include_usage else chunk


class OpenAIAnswer(Response):
    """Runs one planned request as an Engine job and answers it: an SSE stream, or one JSON response.

    Nothing is sent before the job starts, so a refusal (queue full, shutting down, prompt past the
    context) is still a proper error status; the job is cancelled as soon as the client goes away.
    """

    def __init__(self, engine: Engine, plan: Plan) -> None:
        super().__init__(media_type="text/event-stream" if plan.stream else "application/json",
                         headers={"Cache-Control": "no-store", **SECURITY_HEADERS})
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.engine, self.plan = engine, plan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Submit, wait for the start, then stream or collect the job's events until it is done or the client leaves."""
        try:
            relay = Relay(self.engine, self.plan.req, receive)
        except Busy as exc:
            await openai_error(exc.status, str(exc), headers={"Retry-After": "2"})(scope, receive, send)
            return
        try:
            first = await relay.next()
            if first is None:
                return  # the client left before the job started
            if first["type"] != "start":
                await self._refusal(first)(scope, receive, send)
                return
            reply = Reply(self.plan)
            head = reply.start(first["meta"])
            if self.plan.stream:
                await self._stream(relay, reply, head, send)
            else:
                await self._collect(relay, reply, scope, receive, send)
        except OSError:  # the client went away between our checks
            pass
        finally:
            relay.close()

    @staticmethod
    def _refusal(event: dict[str, Any]) -> Response:
        if event["type"] == "error":
            return openai_error(400, str(event["error"]))
        return openai_error(503, f"generation stopped: {event.get('stopped') or 'no output'}")

    async def _collect(self, relay: Relay, reply: Reply, scope: Scope, receive: Receive, send: Send) -> None:
        while (event := await relay.next()) is not None:
            if event["type"] == "token":
                reply.token(event)
            elif event["type"] == "error":
                await openai_error(500, str(event["error"]))(scope, receive, send)
                return
            elif event["type"] == "done":
                if reply.finish_reason(event) is None:
                    await self._refusal(event)(scope, receive, send)
                    return
                await JSONResponse(reply.response(event), headers=SECURITY_HEADERS)(scope, receive, send)
                return

    async def _stream(self, relay: Relay, reply: Reply, head: dict[str, Any], send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await self._event(send, head)
        while (event := await relay.next()) is not None:
            if event["type"] == "token":
                chunk = reply.token(event)
                if chunk is not None:
                    await self._event(send, chunk)
            elif event["type"] == "error" or (event["type"] == "done" and reply.finish_reason(event) is None):
                message = event.get("error") or f"generation stopped: {event.get('stopped')}"
                await self._event(send, {"error": {"message": message, "type": "server_error", "param": None, "code": None}})
            elif event["type"] == "done":
                for chunk in reply.final(event):
                    await self._event(send, chunk)
                await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _event(send: Send, item: dict[str, Any]) -> None:
        line = "data: " + json.dumps(item, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n\n"
        await send({"type": "http.response.body", "body": line.encode("utf-8", "replace"), "more_body": True})


def openai_routes(engine: Engine, hosts: frozenset[str], api_key: str | None) -> list[BaseRoute]:
    """The /v1 routes around `engine`: Host/Origin checks as everywhere, then the bearer key when one is set."""
    created = int(time.time())
    card = {"id": engine.lm.name, "object": "model", "created": created, "owned_by": "emovec"}

    def refused(request: Request, post: bool = False) -> Response | None:
        try:
            check_headers(request.headers, hosts, post)
            check_auth(request.headers, api_key)
        except BadRequest as exc:
            return openai_error(exc.status, str(exc))
        return None

    async def models(request: Request) -> Response:
        return refused(request) or JSONResponse({"object": "list", "data": [card]}, headers=SECURITY_HEADERS)

    async def model(request: Request) -> Response:
        name = request.path_params["model"]
        if name != engine.lm.name:
            return refused(request) or openai_error(404, f"The model {name!r} does not exist here", "model", "model_not_found")
        return refused(request) or JSONResponse(card, headers=SECURITY_HEADERS)

    def completion(kind: Literal["chat", "text"]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            denied = refused(request, post=True)
            if denied is not None:
                return denied
            try:
                plan = parse_openai(await read_body(request, engine.limits.max_body_bytes), kind, engine)
            except BadRequest as exc:
                return openai_error(exc.status, str(exc), exc.param, "model_not_found" if exc.status == 404 else None)
            return OpenAIAnswer(engine, plan)
        return endpoint

    async def unknown(request: Request) -> Response:
        return refused(request) or openai_error(404, f"Invalid URL ({request.method} {request.url.path})",
                                                code="unknown_url")

    any_method = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return [Route("/v1/models", models), Route("/v1/models/{model:path}", model),
            Route("/v1/chat/completions", completion("chat"), methods=["POST"]),
            Route("/v1/completions", completion("text"), methods=["POST"]),
            Route("/v1", unknown, methods=any_method), Route("/v1/{rest:path}", unknown, methods=any_method)]
