"""`emovec serve`: a local web page that streams a monitored, optionally steered reply.

Starlette app, one page of plain HTML/JS (package data `web/`, no CDN), and a JSON API:

    GET  /api/info       model, layer, emotions, context, limits, units
    GET  /api/status     queue length, whether a generation runs, counters
    POST /api/generate   {"prompt" | "messages", "max_new_tokens", "temperature", "seed",
                          "steer": {emotion: s}, "guard": {emotion: s}, "alerts": {emotion: z}}
                         ->  NDJSON: "start" (trace header), "queued", one "token" line per token, "done"

Every request passes `schema.check_headers` (Host, Origin, JSON content type) and a POST body
`schema.parse_request` (size, depth, strict JSON, pydantic schema, limits) before any work.
Generation runs on the `Engine`'s worker thread; this module only bridges its events to the
client and cancels the job the moment the client goes away, the deadline passes or the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from importlib import resources
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..models import LanguageModel
from ..vectors import EmotionVectors
from .engine import Busy, Engine, Job
from .schema import LOOPBACK_HOSTS, BadRequest, GenerateRequest, Limits, check_headers, parse_request

__all__ = ["BadRequest", "Engine", "Limits", "make_app", "serve"]

PAGES = {"/": ("index.html", "text/html; charset=utf-8"), "/favicon.svg": ("favicon.svg", "image/svg+xml"),
         "/favicon.ico": ("favicon.svg", "image/svg+xml")}
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


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
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        listening = [True]  # cleared when this response ends; the worker then stops at its next token

        def deliver(item: dict[str, Any] | None) -> bool:  # called on the worker thread
            if not listening[0] or loop.is_closed():
                return False
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the loop closed in between
                return False
            return True

        job: Job
        try:
            job, ahead = self.engine.submit(self.req, deliver)
        except Busy as exc:
            await _error(exc.status, str(exc), {"Retry-After": "2"})(scope, receive, send)
            return

        async def watch() -> None:  # the request body is read; the next message is the disconnect
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    job.cancel("client disconnected")
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if ahead:
                await self._send_line(send, {"type": "queued", "ahead": ahead})
            while True:
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break  # the client left: the job is cancelled; nobody to write to
                item = getter.result()
                if item is None:
                    break
                await self._send_line(send, item)
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away between our checks
            pass
        finally:
            listening[0] = False
            job.cancel("client disconnected" if watcher.done() else "stream closed")
            watcher.cancel()

    @staticmethod
    async def _send_line(send: Send, item: dict[str, Any]) -> None:
        line = json.dumps(item, ensure_ascii=False, allow_nan=False) + "\n"
        await send({"type": "http.response.body", "body": line.encode("utf-8", "replace"), "more_body": True})


def make_app(engine: Engine, allowed_hosts: Iterable[str] = LOOPBACK_HOSTS) -> Starlette:
    """The Starlette application around an Engine; only requests for `allowed_hosts` ("*": any) are served."""
    hosts = frozenset(h.lower() for h in allowed_hosts)
    web = resources.files("emovec.live").joinpath("web")
    files = {path: (web.joinpath(name).read_bytes(), ctype) for path, (name, ctype) in PAGES.items()}

    def checked(request: Request, post: bool = False) -> Response | None:
        try:
            check_headers(request.headers, hosts, post)
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
        return checked(request) or JSONResponse(engine.info())

    async def status(request: Request) -> Response:
        return checked(request) or JSONResponse(engine.status())

    async def generate(request: Request) -> Response:
        refused = checked(request, post=True)
        if refused is not None:
            return refused
        limit = engine.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return _error(413, f"request body over {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _error(413, f"request body over {limit} bytes")
        try:
            req = parse_request(bytes(body), engine.emotions, engine.limits)
        except BadRequest as exc:
            return _error(exc.status, str(exc))
        return JobStream(engine, req)

    routes = [Route(path, static) for path in PAGES]
    routes += [Route("/api/info", info), Route("/api/status", status), Route("/api/generate", generate, methods=["POST"])]
    return Starlette(routes=routes)


class _Server(uvicorn.Server):
    """uvicorn, but the first SIGINT/SIGTERM also stops the engine, so open streams end at once."""

    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self.engine = engine

    def handle_exit(self, sig: int, frame: Any) -> None:
        """Stop the engine (a flag its worker polls), then let uvicorn close the connections."""
        self.engine.close(wait=None)
        super().handle_exit(sig, frame)


def serve(lm: LanguageModel, vectors: EmotionVectors, host: str = "127.0.0.1", port: int = 8765,
          layer: int | None = None, limits: Limits | None = None, allow_hosts: Iterable[str] = ()) -> None:
    """Run the page until interrupted (bound to localhost unless `host` says otherwise).

    Requests must name a loopback host, the bound `host` or one of `allow_hosts` ("*": any) in
    their Host header, and carry no foreign Origin.
    """
    engine = Engine(lm, vectors, layer, limits)
    hosts = set(LOOPBACK_HOSTS) | {h.lower() for h in allow_hosts}
    if host not in ("0.0.0.0", "::", ""):
        hosts.add(f"[{host}]" if ":" in host else host)
    config = uvicorn.Config(make_app(engine, hosts), host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=5)
    try:
        _Server(config, engine).run()
    finally:
        engine.close()
