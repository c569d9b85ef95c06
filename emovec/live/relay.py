"""The bridge between the Engine's worker thread and one HTTP response: submit a job, await its events on the
event loop, and cancel the job the moment the client disconnects or the response ends for any reason.

Every endpoint that generates (the page's NDJSON stream, the OpenAI-compatible ones) goes through a `Relay`,
so they share the engine's queue bound (429), shutdown (503), deadline and cancel-on-disconnect.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.types import Receive

from .engine import Engine, Job
from .schema import BadRequest, GenerateRequest


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it (or its declared length) passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BadRequest(413, f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"request body over {limit} bytes")
    return bytes(body)


class Relay:
    """One submitted job seen from the event loop. Raises `Busy` (429/503) when the engine refuses the job.

    Create it inside the response (it needs the running loop), read events with `next`, and
    always `close` it: that stops the worker at its next token if the job is still running.
    """

    def __init__(self, engine: Engine, req: GenerateRequest, receive: Receive) -> None:
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._listening = True  # cleared on close; the worker then stops at its next token
        self.job: Job
        self.job, self.ahead = engine.submit(req, self._deliver)
        self._watcher = asyncio.ensure_future(self._watch(receive))

    def _deliver(self, item: dict[str, Any] | None) -> bool:  # called on the worker thread
        if not self._listening or self._loop.is_closed():
            return False
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:  # the loop closed in between
            return False
        return True

    async def _watch(self, receive: Receive) -> None:  # the request body is read; the next message is the disconnect
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.job.cancel("client disconnected")
                return

    @property
    def client_gone(self) -> bool:
        """Whether the client has disconnected."""
        return self._watcher.done()

    async def next(self) -> dict[str, Any] | None:
        """The job's next event; None once the stream is over or the client has gone."""
        getter = asyncio.ensure_future(self._events.get())
        await asyncio.wait({getter, self._watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            return None  # the client left: the job is cancelled; nobody to write to
        item: dict[str, Any] | None = getter.result()
        return item

    def close(self, reason: str = "stream closed") -> None:
        """Stop listening and cancel the job (a no-op for the worker if it has already finished)."""
        self._listening = False
        self.job.cancel("client disconnected" if self._watcher.done() else reason)
        self._watcher.cancel()
