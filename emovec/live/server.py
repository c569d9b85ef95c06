"""`emovec serve`: a local web page that streams a monitored, optionally steered reply, and an OpenAI-compatible API.

Starlette app, one page of plain HTML/JS (package data `web/`, no CDN), and a JSON API:

    GET  /api/info       model, layer(s), emotions, context, limits, units, whether a key is needed
    GET  /api/status     queue length, whether a generation runs, counters
    POST /api/generate   {"prompt" | "messages", "max_new_tokens", "temperature", "top_p", "seed", "stop",
                          "raw", "layer", "steer": {emotion: s}, "guard": {emotion: s}, "alerts": {emotion: z}}
                         ->  NDJSON: "start" (trace header), "queued", one "token" line per token, "done"
    /v1/...              the OpenAI API's models, chat completions and completions (`openai_api`)

Every request passes `schema.check_headers` (Host, Origin, JSON content type) and a POST body
`schema.parse_request` (size, depth, strict JSON, pydantic schema, limits) before any work. With an
API key, /api/generate and /v1 also need `Authorization: Bearer <key>`; the page and /api/info,
/api/status stay open. Generation runs on the `Engine`'s worker thread; a `Relay` bridges its events
to the client and cancels the job the moment the client goes away, the deadline passes or the server stops.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from importlib import resources
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from ..models import LanguageModel
from ..storage import EmovecError
from ..vectors import EmotionVectors
from .engine import Busy, Engine
from .openai_api import openai_routes
from .relay import Relay, read_body
from .schema import (
    LOOPBACK_HOSTS,
    SECURITY_HEADERS,
    BadRequest,
    GenerateRequest,
    Limits,
    check_auth,
    check_headers,
    is_loopback,
    parse_request,
)

__all__ = ["BadRequest", "Engine", "Limits", "check_bind", "make_app", "serve"]

PAGES = {"/": ("index.html", "text/html; charset=utf-8"), "/favicon.svg": ("favicon.svg", "image/svg+xml"),
         "/favicon.ico": ("favicon.svg", "image/svg+xml")}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class JobStream(Response):
    """Streams one job's events as NDJSON; cancels the job when the client disconnects, or on any exit."""

    media_type = "application/x-ndjson"

    def __init__(self, engine: Engine, req: GenerateRequest) -> None:
        super().__init__(media_type=self.media_type, headers={"Cache-Control": "no-store", **SECURITY_HEADERS})
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # chunked, open-ended
        self.engine, self.req = engine, req

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Submit the job (429/503 when refused), then forward its events until it is done or the client leaves."""
        try:
            relay = Relay(self.engine, self.req, receive)
        except Busy as exc:
            await _error(exc.status, str(exc), {"Retry-After": "2"})(scope, receive, send)
            return
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if relay.ahead:
                await self._send_line(send, {"type": "queued", "ahead": relay.ahead})
            while (item := await relay.next()) is not None:
                await self._send_line(send, item)
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away between our checks
            pass
        finally:
            relay.close()

    @staticmethod
    async def _send_line(send: Send, item: dict[str, Any]) -> None:
        line = json.dumps(item, ensure_ascii=False, allow_nan=False) + "\n"
        await send({"type": "http.response.body", "body": line.encode("utf-8", "replace"), "more_body": True})


def make_app(engine: Engine, allowed_hosts: Iterable[str] = LOOPBACK_HOSTS, api_key: str | None = None) -> Starlette:
    """The Starlette application around an Engine; only requests for `allowed_hosts` ("*": any) are served.

    With `api_key`, /api/generate and /v1 need `Authorization: Bearer <api_key>`.
    """
    if api_key is not None and not api_key.strip():
        raise EmovecError("the API key is empty; give a real key or None")
    hosts = frozenset(h.lower() for h in allowed_hosts)
    web = resources.files("emovec.live").joinpath("web")
    files = {path: (web.joinpath(name).read_bytes(), ctype) for path, (name, ctype) in PAGES.items()}

    def checked(request: Request, post: bool = False) -> Response | None:
        try:
            check_headers(request.headers, hosts, post)
            if post:
                check_auth(request.headers, api_key)
        except BadRequest as exc:
            return _error(exc.status, str(exc))
        return None

    async def static(request: Request) -> Response:
        refused = checked(request)
        if refused is not None:
            return refused
        body, ctype = files[request.url.path]
        return Response(body, media_type=ctype, headers={"Cache-Control": "no-cache", **SECURITY_HEADERS})

    async def info(request: Request) -> Response:
        return checked(request) or JSONResponse({**engine.info(), "auth": api_key is not None})

    async def status(request: Request) -> Response:
        return checked(request) or JSONResponse(engine.status())

    async def generate(request: Request) -> Response:
        refused = checked(request, post=True)
        if refused is not None:
            return refused
        try:
            req = parse_request(await read_body(request, engine.limits.max_body_bytes), engine.emotions, engine.limits,
                                engine.layers)
        except BadRequest as exc:
            return _error(exc.status, str(exc))
        return JobStream(engine, req)

    routes: list[BaseRoute] = [Route(path, static) for path in PAGES]
    routes += [Route("/api/info", info), Route("/api/status", status), Route("/api/generate", generate, methods=["POST"])]
    return Starlette(routes=routes + openai_routes(engine, hosts, api_key))


class _Server(uvicorn.Server):
    """uvicorn, but the first SIGINT/SIGTERM also stops the engine, so open streams end at once."""

    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self.engine = engine

    def handle_exit(self, sig: int, frame: Any) -> None:
        """Stop the engine (a flag its worker polls), then let uvicorn close the connections."""
        self.engine.close(wait=None)
        super().handle_exit(sig, frame)


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to bind anything but a loopback host without an API key (one-line EmovecError)."""
    if api_key is not None and not api_key.strip():
        raise EmovecError("the API key is empty: pass --api-key KEY with a non-empty KEY (or unset EMOVEC_API_KEY)")
    if api_key is None and not is_loopback(host):
        raise EmovecError(f"refusing to serve on {host or 'all interfaces'} without an API key: pass --api-key KEY "
                          "(or set EMOVEC_API_KEY), or bind 127.0.0.1")


def serve(lm: LanguageModel, vectors: EmotionVectors, host: str = "127.0.0.1", port: int = 8765,
          layer: int | None = None, limits: Limits | None = None, allow_hosts: Iterable[str] = (),
          api_key: str | None = None) -> None:
    """Run the page and the /v1 API until interrupted (bound to localhost unless `host` says otherwise).

    Requests must name a loopback host, the bound `host` or one of `allow_hosts` ("*": any) in
    their Host header, and carry no foreign Origin. Binding a non-loopback host needs `api_key`.
    """
    check_bind(host, api_key)
    engine = Engine(lm, vectors, layer, limits)
    hosts = set(LOOPBACK_HOSTS) | {h.lower() for h in allow_hosts}
    if host not in ("0.0.0.0", "::", ""):
        hosts.add(f"[{host}]" if ":" in host else host)
    config = uvicorn.Config(make_app(engine, hosts, api_key), host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=5)
    try:
        _Server(config, engine).run()
    finally:
        engine.close()
