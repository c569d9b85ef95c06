"""The live page in Debian's Chromium against a real loopback server: reload mid-stream, two tabs, stop, save and
reopen a trace, side-by-side comparison. Each test leaves a screenshot (EMOVEC_SCREENSHOTS, default tests/artifacts)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from live_helpers import CHROMIUM_ARGS, hooks_on, running

from emovec.live.engine import Engine
from emovec.live.monitor import load_traces
from emovec.live.schema import Limits
from emovec.live.server import make_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("EMOVEC_SCREENSHOTS", Path(__file__).parent / "artifacts"))
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                reason="Debian chromium not installed (.ci/run installs it; under CI this test must run)")
DONE = "document.querySelector('#status').textContent.includes('tokens') && !document.querySelector('#send').disabled"


@pytest.fixture(scope="module")
def site(lm, small_vectors):
    engine = Engine(lm, small_vectors, limits=Limits(max_new_tokens=64))
    with running(make_app(engine)) as (url, _):
        yield url, engine
    engine.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    missing = []
    page.on("response", lambda r: missing.append(r.url) if r.status >= 400 else None)
    page.goto(url)
    page.wait_for_function("document.querySelector('#status').textContent === 'ready'")
    return page, missing


def _send(page, prompt, tokens):
    page.fill("#prompt", prompt)
    page.locator("#maxtok").fill(str(tokens))
    page.click("#send")


def test_reload_mid_stream_then_full_reply(site, browser, lm):
    url, engine = site
    page, missing = _open(browser, url)
    _send(page, "Count slowly from one to one hundred.", 64)
    page.wait_for_function("document.querySelectorAll('#reply span.tok').length >= 3", timeout=60_000)
    page.reload()
    page.wait_for_function("document.querySelector('#status').textContent === 'ready'")
    _send(page, "The bank said no and the rent is due tomorrow. What now?", 16)
    page.wait_for_function(DONE, timeout=60_000)
    assert "stopped" not in page.text_content("#status") and page.locator("#reply span.tok").count() >= 1
    assert engine.stats["cancelled"] >= 1 and not missing, missing  # the reload cancelled the first job; no 404
    page.locator("#reply span.tok").nth(2).hover()
    assert page.locator("#tip").is_visible() and "z " in page.text_content("#tip")
    page.screenshot(path=str(SHOTS / "page-reload.png"))
    # recolour on change of the colour emotion, without a new request
    before = page.locator("#reply span.tok").first.evaluate("s => s.style.background")
    page.select_option("#colour", "happy")
    assert page.locator("#reply span.tok").first.evaluate("s => s.style.background") != before
    page.close()
    assert hooks_on(lm.model) == 0


def test_two_tabs_at_once(site, browser):
    url, _ = site
    a, _ = _open(browser, url)
    b, _ = _open(browser, url)
    _send(a, "Name three rivers.", 12)
    _send(b, "Name three mountains.", 12)
    for page in (a, b):
        page.wait_for_function(DONE, timeout=90_000)
        assert "stopped" not in page.text_content("#status") and page.locator("#reply span.tok").count() >= 1
    a.screenshot(path=str(SHOTS / "page-tab-a.png"))
    b.screenshot(path=str(SHOTS / "page-tab-b.png"))
    a.close()
    b.close()


def test_stop_button(site, browser):
    url, engine = site
    page, _ = _open(browser, url)
    cancelled = engine.stats["cancelled"]
    _send(page, "Write a long story about a lighthouse keeper.", 64)
    page.wait_for_function("document.querySelectorAll('#reply span.tok').length >= 3", timeout=60_000)
    page.click("#stop")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('stopped')", timeout=10_000)
    n = page.locator("#reply span.tok").count()
    assert 3 <= n < 64
    deadline = time.time() + 10
    while engine.stats["cancelled"] == cancelled and time.time() < deadline:
        time.sleep(0.05)
    assert engine.stats["cancelled"] > cancelled  # the server stopped generating, not just the page
    page.screenshot(path=str(SHOTS / "page-stop.png"))
    page.close()


def test_save_and_reopen_trace(site, browser, tmp_path):
    url, _ = site
    page, _ = _open(browser, url)
    page.check("#guard")
    _send(page, "My startup has one week of money left. What should I do?", 12)
    page.wait_for_function(DONE, timeout=60_000)
    text = page.text_content("#reply")
    with page.expect_download() as dl:
        page.click("#save")
    path = tmp_path / "trace.jsonl"
    dl.value.save_as(path)
    traces = load_traces(path)  # the Python API reads what the page saved
    assert len(traces) == 1 and traces[0].text == text and traces[0].meta["layer"] == 20
    page.close()
    fresh, _ = _open(browser, url)
    fresh.set_input_files("#open", str(path))
    fresh.wait_for_function("document.querySelector('#status').textContent.startsWith('opened')")
    assert fresh.text_content("#reply") == text
    fresh.screenshot(path=str(SHOTS / "page-reopened.png"))
    fresh.close()


def test_side_by_side_comparison(site, browser):
    url, _ = site
    page, _ = _open(browser, url)
    page.select_option("#steer-emotion-0", "desperate")
    page.locator("#steer-0").fill("0.5")
    page.locator("#steer-0").dispatch_event("input")
    page.fill("#prompt", "Describe your morning.")
    page.locator("#maxtok").fill("16")
    page.click("#compare")
    page.wait_for_function(DONE, timeout=120_000)
    a, b = page.text_content("#reply"), page.text_content("#reply-1")
    assert a and b and a != b
    assert "difference" in page.text_content("#diff") and "desperate" in page.text_content("#diff")
    page.screenshot(path=str(SHOTS / "page-compare.png"), full_page=True)
    page.close()


def test_page_asks_for_the_api_key_when_one_is_set(site, browser):
    _, engine = site
    with running(make_app(engine, api_key="page-key")) as (url, _):
        page, _ = _open(browser, url)  # the page and /api/info load without the key
        assert page.locator("#apikey").is_visible()
        _send(page, "Say hi.", 4)
        page.wait_for_function("document.querySelector('#status').className === 'error'", timeout=30_000)
        assert "API key" in page.text_content("#status")
        page.fill("#apikey", "page-key")
        _send(page, "Say hi.", 4)
        page.wait_for_function(DONE, timeout=60_000)
        assert page.locator("#reply span.tok").count() >= 1
        page.close()
    plain, _ = _open(browser, site[0])
    assert not plain.locator("#apikey").is_visible()  # no key set: no key field
    plain.close()
