"""The live page and its API on a real local server: 4xx for bad requests, a bounded load, a real browser."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from emovec.live.server import Engine, Limits, make_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT_DIR = Path(os.environ.get("EMOVEC_SCREENSHOTS", Path(__file__).parent / "artifacts"))


@pytest.fixture(scope="module")
def server(lm, small_vectors):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = Engine(lm, small_vectors, limits=Limits(max_new_tokens=64))
    srv = uvicorn.Server(uvicorn.Config(make_app(engine), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "server did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def _post(url: str, body: bytes, timeout: float = 60) -> tuple[int, bytes]:
    req = urllib.request.Request(url + "/api/generate", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _get_info(url: str) -> dict:
    with urllib.request.urlopen(url + "/api/info", timeout=10) as res:
        return json.loads(res.read())


def test_generate_streams_token_events(server):
    status, body = _post(server, json.dumps({"prompt": "Say hello.", "max_new_tokens": 6, "steer": {"calm": 0.1}}).encode())
    assert status == 200
    lines = [json.loads(line) for line in body.decode().splitlines()]
    tokens = [lay for lay in lines if lay["type"] == "token"]
    assert lines[-1] == {"type": "done", "tokens": len(tokens), "steer": {"calm": 0.1}}
    assert 1 <= len(tokens) <= 6 and set(tokens[0]["z"]) == set(_get_info(server)["emotions"])


@pytest.mark.parametrize("body,status", [
    (b"{not json", 400), (b"\xff\xfe", 400), (b"[1, 2]", 400), (b"{}", 422),
    (json.dumps({"prompt": ""}).encode(), 422),
    (json.dumps({"prompt": "x" * 5000}).encode(), 413),
    (json.dumps({"prompt": "hi", "max_new_tokens": 100000}).encode(), 422),
    (json.dumps({"prompt": "hi", "max_new_tokens": "many"}).encode(), 422),
    (json.dumps({"prompt": "hi", "steer": {"hapy": 0.1}}).encode(), 422),
    (json.dumps({"prompt": "hi", "steer": {"happy": "lots"}}).encode(), 422),
    (json.dumps({"prompt": "hi", "steer": {"happy": 50}}).encode(), 422),
    (json.dumps({"prompt": "hi", "steer": [1]}).encode(), 422),
    (b"{" + b" " * 20000 + b"}", 413),
])
def test_malformed_requests_get_4xx(server, body, status):
    got, payload = _post(server, body)
    assert got == status, payload
    assert "error" in json.loads(payload)
    assert _get_info(server)["layer"] == 20  # still serving


def test_bounded_load_leaves_server_serving(server):
    """1,000 requests from a local client (info reads and malformed posts, 8 at a time, bounded in time)."""
    def one(i: int) -> int:
        if i % 2:
            return _post(server, b"{broken", timeout=10)[0]
        with urllib.request.urlopen(server + "/api/info", timeout=10) as res:
            return res.status
    start = time.time()
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(one, range(1000)))
    assert time.time() - start < 120
    assert codes.count(200) == 500 and codes.count(400) == 500
    assert _get_info(server)["emotions"]


@pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                    reason="Debian chromium not installed (.ci/run installs it; under CI this test must run)")
def test_page_in_real_browser(server):
    from playwright.sync_api import sync_playwright

    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            page.goto(server)
            page.wait_for_selector("#steer-0")
            page.fill("#prompt", "The bank said no and the rent is due tomorrow. What now?")
            page.select_option("#colour", "desperate")
            page.fill("#maxtok", "24")
            page.locator("#steer-0").fill("0.2")
            page.locator("#steer-0").dispatch_event("input")
            assert page.text_content("#steer-value-0") == "0.200"
            page.click("#send")
            page.wait_for_selector("#reply span.tok", timeout=60_000)
            page.wait_for_function("document.querySelector('#status').textContent.includes('tokens')", timeout=120_000)
            n = page.locator("#reply span.tok").count()
            assert n >= 1
            status = page.text_content("#status")
            assert "steered" in status and "0.2" in status, status
            title = page.locator("#reply span.tok").first.get_attribute("title")
            assert title and len(title.splitlines()) == 5  # hover shows the top five emotions
            page.screenshot(path=str(SCREENSHOT_DIR / "monitor-page.png"))
        finally:
            browser.close()
