"""`emovec serve`: a local web page that streams a monitored, optionally steered reply.

Starlette app, one page of plain HTML/JS (package data `web/index.html`, no CDN),
and a JSON API:

    GET  /api/info       model, layer, emotions, limits
    POST /api/generate   {"prompt", "max_new_tokens", "temperature", "steer": {emotion: s},
                          "alerts": {emotion: z}}  ->  NDJSON stream of token events, then a "done" line

Requests are bounded (body size, prompt length, token budget, strength range);
malformed ones get a 4xx JSON error and the server keeps serving. One generation
runs at a time (the model is shared); others wait their turn.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from ..generation import Sampling
from ..models import LanguageModel
from ..steering import steering_vector
from ..storage import EmovecError
from ..vectors import EmotionVectors
from .monitor import Monitor, parse_rules


@dataclass
class Limits:
    """Bounds on what one request may ask for."""

    max_body_bytes: int = 16_384
    max_prompt_chars: int = 4_000
    max_new_tokens: int = 256
    max_strength: float = 2.0
    max_steered: int = 8


class BadRequest(Exception):
    """A request the server refuses, with the HTTP status to answer it with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_request(body: bytes, vectors: EmotionVectors, limits: Limits) -> dict[str, Any]:
    """Validate a /api/generate body; raise BadRequest(4xx, one-line reason) on anything wrong."""
    if len(body) > limits.max_body_bytes:
        raise BadRequest(413, f"request body over {limits.max_body_bytes} bytes")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest(400, "request body is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "request body must be a JSON object")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest(422, "prompt must be a non-empty string")
    if len(prompt) > limits.max_prompt_chars:
        raise BadRequest(413, f"prompt over {limits.max_prompt_chars} characters")
    try:
        n = int(data.get("max_new_tokens", 80))
        temperature = float(data.get("temperature", 0.0))
    except (TypeError, ValueError):
        raise BadRequest(422, "max_new_tokens and temperature must be numbers") from None
    if not 1 <= n <= limits.max_new_tokens:
        raise BadRequest(422, f"max_new_tokens must be 1..{limits.max_new_tokens}")
    if not 0.0 <= temperature <= 2.0:
        raise BadRequest(422, "temperature must be in [0, 2]")
    out: dict[str, Any] = {"prompt": prompt, "max_new_tokens": n, "temperature": temperature}
    for key in ("steer", "alerts"):
        spec = data.get(key) or {}
        if not isinstance(spec, dict) or len(spec) > limits.max_steered:
            raise BadRequest(422, f"{key} must be an object of at most {limits.max_steered} emotion: number pairs")
        clean: dict[str, float] = {}
        for name, value in spec.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise BadRequest(422, f"{key}.{name} must be a number")
            if key == "steer" and abs(value) > limits.max_strength:
                raise BadRequest(422, f"steer.{name} must be within +-{limits.max_strength}")
            try:
                clean[vectors.resolve([str(name)])[0]] = float(value)
            except EmovecError as exc:
                raise BadRequest(422, str(exc)) from None
        out[key] = clean
    return out


class Engine:
    """The model, vectors and a lock: turns validated requests into streams of token events."""

    def __init__(self, lm: LanguageModel, vectors: EmotionVectors, layer: int | None = None, limits: Limits | None = None) -> None:
        self.lm, self.vectors = lm, vectors
        self.limits = limits or Limits()
        self.monitor = Monitor(lm, vectors, layer=layer)
        self.lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """What the web page needs to know: model, layer, emotions and request limits."""
        return {"model": self.lm.name, "layer": self.monitor.layer, "emotions": self.monitor.emotions,
                "limits": asdict(self.limits)}

    def stream(self, req: dict[str, Any]) -> Iterator[str]:
        """NDJSON lines: one per generated token, then a summary line."""
        steer = {k: v for k, v in req.get("steer", {}).items() if v}
        sv = steering_vector(self.vectors, steer) if steer else None
        rules = parse_rules({k: v for k, v in req.get("alerts", {}).items() if v}, self.vectors.emotions)
        sampling = Sampling(max_new_tokens=req["max_new_tokens"], temperature=req["temperature"])
        mon = self.monitor
        with self.lock:  # the monitor is shared: set this request's rules only while it holds the model
            mon.rules = rules
            n = 0
            for events in mon.stream(req["prompt"], sampling, seed=0, steer=sv):
                for ev in events:
                    n += 1
                    top = sorted(ev.z.items(), key=lambda kv: -kv[1])[:5]
                    yield json.dumps({"type": "token", "position": ev.position, "token": ev.token, "z": ev.z,
                                      "top": top, "alerts": [asdict(a) for a in ev.alerts]}) + "\n"
            yield json.dumps({"type": "done", "tokens": n, "steer": steer}) + "\n"


def make_app(engine: Engine) -> Any:
    """The Starlette application around an Engine."""
    from starlette.applications import Starlette
    from starlette.concurrency import iterate_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    page = resources.files("emovec.live").joinpath("web/index.html").read_text(encoding="utf-8")

    async def index(_: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def info(_: Request) -> JSONResponse:
        return JSONResponse(engine.info())

    async def generate(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared and (not declared.isdigit() or int(declared) > engine.limits.max_body_bytes):
            return JSONResponse({"error": f"request body over {engine.limits.max_body_bytes} bytes"}, status_code=413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > engine.limits.max_body_bytes:
                return JSONResponse({"error": f"request body over {engine.limits.max_body_bytes} bytes"}, status_code=413)
        try:
            req = parse_request(body, engine.vectors, engine.limits)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return StreamingResponse(iterate_in_threadpool(engine.stream(req)), media_type="application/x-ndjson")

    return Starlette(routes=[Route("/", index), Route("/api/info", info),
                             Route("/api/generate", generate, methods=["POST"])])


def serve(lm: LanguageModel, vectors: EmotionVectors, host: str = "127.0.0.1", port: int = 8765,
          layer: int | None = None) -> None:
    """Run the page until interrupted (bound to localhost unless `host` says otherwise)."""
    import uvicorn

    uvicorn.run(make_app(Engine(lm, vectors, layer)), host=host, port=port, log_level="warning")
