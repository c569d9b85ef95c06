"""Helpers shared by the live-server tests: a real uvicorn server on loopback, raw HTTP posts, hook checks."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(app: Any, server_cls: Any = None, **server_kw: Any) -> Iterator[tuple[str, Any]]:
    """Run `app` under uvicorn on 127.0.0.1 in a thread; yields (base url, server)."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", timeout_graceful_shutdown=5)
    srv = (server_cls or uvicorn.Server)(config, **server_kw)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.02)
    assert srv.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{port}", srv
    finally:
        srv.should_exit = True
        thread.join(timeout=15)


def post(url: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, bytes]:
    """POST to /api/generate; returns (status, whole body)."""
    host = url.split("//", 1)[1]
    conn = http.client.HTTPConnection(host, timeout=timeout)
    try:
        conn.request("POST", "/api/generate", body=body, headers={"Content-Type": "application/json", **(headers or {})})
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def generate(url: str, timeout: float = 60, **req: Any) -> list[dict[str, Any]]:
    """A well-formed generation; returns its NDJSON events."""
    status, body = post(url, json.dumps(req).encode(), timeout=timeout)
    assert status == 200, body
    return [json.loads(line) for line in body.decode().splitlines()]


def post_and_drop(url: str, req: dict[str, Any], after_lines: int, timeout: float = 60) -> int:
    """Start a streaming generation on a raw socket, read `after_lines` NDJSON lines, then close abruptly."""
    host, port = url.split("//", 1)[1].split(":")
    body = json.dumps(req).encode()
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (host.encode(), port.encode(), len(body)) + body)
        data = b""
        while data.count(b"\n{") < after_lines:  # chunked framing: each NDJSON line starts with "{"
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data.count(b"\n{")
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST, not FIN
        sock.close()


def hooks_on(model: Any) -> int:
    """How many forward (pre-)hooks other than transformers' own are registered anywhere in the model.

    transformers 5 installs output-capturing hooks on every layer the first time a caller asks for
    `output_hidden_states` (another test may have); those are its own and stay, so they are not counted.
    """
    return sum(not (getattr(h, "__module__", "") or "").startswith("transformers.")
               for m in model.modules() for hooks in (m._forward_hooks, m._forward_pre_hooks) for h in hooks.values())


def rss_mb() -> float:
    """This process's resident memory in MB (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
