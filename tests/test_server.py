"""The live server's API on a real loopback server: validation (4xx before any work), no wedge after a disconnect,
a bounded queue (429), deadlines, shutdown, and a load of streams, disconnects and malformed bodies."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from live_helpers import generate, hooks_on, post, post_and_drop, rss_mb, running

from emovec.generation import Sampling, decode
from emovec.live.engine import Busy, Engine
from emovec.live.schema import GenerateRequest, Limits, json_depth
from emovec.live.server import _Server, make_app


@pytest.fixture(scope="module")
def engine(lm, small_vectors):
    eng = Engine(lm, small_vectors, limits=Limits(max_new_tokens=64, max_queue=8))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def server(engine):
    with running(make_app(engine)) as (url, _):
        yield url


def _info(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url + "/api/info", timeout=10) as res:
        return json.loads(res.read())


def test_generate_streams_token_events(server):
    lines = generate(server, prompt="Say hello.", max_new_tokens=6, steer={"calm": 0.1})
    assert lines[0]["type"] == "start" and lines[0]["meta"]["steer_spec"] == {"calm": 0.1}
    tokens = [x for x in lines if x["type"] == "token"]
    done = lines[-1]
    assert done["type"] == "done" and done["tokens"] == len(tokens) and done["steer"] == {"calm": 0.1}
    assert done["stopped"] is None
    assert 1 <= len(tokens) <= 6 and set(tokens[0]["z"]) == set(_info(server)["emotions"])
    assert set(tokens[0]) >= {"position", "token", "scores", "z", "alerts", "steering", "top"}


def test_chat_conversation_and_guard(server):
    messages = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Say one word."}]
    low = {e: -0.25 for e in ("happy", "sad", "afraid", "angry", "calm", "desperate")}  # one of six low bars is met
    lines = generate(server, messages=messages, max_new_tokens=10, alerts=low, guard={"calm": 0.2})
    toks = [x for x in lines if x["type"] == "token"]
    assert lines[0]["meta"]["messages"] == messages and lines[0]["meta"]["guard"].startswith("calm")
    first = next(i for i, t in enumerate(toks) if t["alerts"])
    assert all(t["steering"] == "" for t in toks[: first + 1])
    assert all(t["steering"].startswith("calm") for t in toks[first + 1:])  # the guard switched on after the alert


BAD = [
    (b"{not json", 400), (b"\xff\xfe", 400), (b"[1, 2]", 400), (b"{}", 422),
    (b'{"prompt": "hi", "steer": {"calm": NaN}}', 400), (b'{"prompt": "hi", "alerts": {"desperate": NaN}}', 400),
    (b'{"prompt": "hi", "temperature": Infinity}', 400), (b'{"prompt": "hi", "temperature": -Infinity}', 400),
    (b'{"prompt": "hi", "temperature": 1e999}', 400), (b'{"prompt": "\\ud800"}', 400),
    (b'{"prompt": "hi", "steer": {"\\udc00": 0.1}}', 400), (b'{"prompt": "hi", "max_new_tokens": 1' + b"0" * 5000 + b"}", 400),
    (b"[" * 3000 + b"]" * 3000, 400), (b'{"a": ' * 40 + b"1" + b"}" * 40, 400),
    (json.dumps({"prompt": ""}).encode(), 422), (json.dumps({"prompt": "x" * 5000}).encode(), 413),
    (json.dumps({"prompt": "hi", "max_new_tokens": 100000}).encode(), 422),
    (json.dumps({"prompt": "hi", "max_new_tokens": "3"}).encode(), 422),
    (json.dumps({"prompt": "hi", "max_new_tokens": 2.9}).encode(), 422),
    (json.dumps({"prompt": "hi", "max_new_tokens": True}).encode(), 422),
    (json.dumps({"prompt": "hi", "temperature": "0"}).encode(), 422),
    (json.dumps({"prompt": "hi", "seed": -1}).encode(), 422),
    (json.dumps({"prompt": "hi", "steer": {"hapy": 0.1}}).encode(), 422),
    (json.dumps({"prompt": "hi", "steer": {"happy": "lots"}}).encode(), 422),
    (json.dumps({"prompt": "hi", "steer": {"happy": True}}).encode(), 422),
    (json.dumps({"prompt": "hi", "steer": {"happy": 50}}).encode(), 422),
    (json.dumps({"prompt": "hi", "steer": [1]}).encode(), 422),
    (json.dumps({"prompt": "hi", "stear": {}}).encode(), 422),
    (json.dumps({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}).encode(), 422),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}).encode(), 422),
    (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}).encode(), 422),
    (b"{" + b" " * 20000 + b"}", 413),
]


@pytest.mark.parametrize("body,status", BAD)
def test_malformed_requests_get_4xx(server, body, status):
    got, payload = post(server, body)
    assert got == status, payload
    assert "error" in json.loads(payload)


@pytest.mark.parametrize("headers,status", [
    ({"Content-Type": "text/plain"}, 415), ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ({"Origin": "http://evil.example"}, 403), ({"Origin": "null"}, 403), ({"Host": "evil.example:8765"}, 403),
    ({"Host": "attacker.localhost.evil"}, 403),
])
def test_foreign_pages_cannot_drive_it(server, headers, status):
    got, payload = post(server, json.dumps({"prompt": "hi", "max_new_tokens": 1}).encode(), headers=headers)
    assert got == status, payload


def test_same_origin_post_is_served(server):
    got, _ = post(server, json.dumps({"prompt": "hi", "max_new_tokens": 1}).encode(), headers={"Origin": server})
    assert got == 200


def test_schema_helpers():
    assert json_depth('{"a": "[[[[", "b": [[1]]}', 32) == 3
    assert GenerateRequest.model_validate({"prompt": "x"}).conversation() == [{"role": "user", "content": "x"}]


def test_disconnect_mid_stream_does_not_wedge(server, engine, lm):
    """The old wedge: a client that leaves mid-stream held the model lock (and its hooks) for good."""
    for _ in range(2):
        seen = post_and_drop(server, {"prompt": "Count slowly from one to fifty.", "max_new_tokens": 64}, after_lines=3,
                             timeout=30)
        assert seen >= 3
    start = time.time()
    lines = generate(server, timeout=30, prompt="Name a colour.", max_new_tokens=8)
    assert lines[-1]["type"] == "done" and lines[-1]["stopped"] is None, lines[-1]
    assert time.time() - start < 30
    time.sleep(0.2)
    assert hooks_on(lm.model) == 0 and engine.status()["running"] is False
    assert engine.stats["cancelled"] >= 2


def test_queue_bound_deadline_and_shutdown(lm, small_vectors, engine):
    """A second engine with room for one waiting job and a 1.5 s deadline; its app answers 429 beyond the queue."""
    tight = Engine(lm, small_vectors, limits=Limits(max_new_tokens=64, max_queue=1, request_timeout_s=1.5))
    try:
        with running(make_app(tight)) as (url, _):
            results: dict[str, list] = {}
            first = threading.Thread(target=lambda: results.setdefault("a", generate(url, prompt="Tell a long story.",
                                                                                     max_new_tokens=64)))
            first.start()
            while not tight.status()["running"]:
                time.sleep(0.01)
            second = threading.Thread(target=lambda: results.setdefault("b", generate(url, prompt="Hi.", max_new_tokens=64)))
            second.start()
            while tight.status()["queued"] < 1:
                time.sleep(0.01)
            status, body = post(url, json.dumps({"prompt": "Hi.", "max_new_tokens": 4}).encode())
            assert status == 429 and "waiting" in json.loads(body)["error"]
            first.join(30)
            second.join(30)
        a = results["a"]
        assert a[-1]["stopped"].startswith("deadline") and 0 < a[-1]["tokens"] < 64
        assert any(x["type"] == "queued" for x in results["b"])
        with pytest.raises(Busy):
            tight.close()
            tight.submit(GenerateRequest(prompt="x"), lambda _: True)
    finally:
        tight.close()
    assert hooks_on(lm.model) == 0


def test_first_sigterm_ends_streams_and_server(lm, small_vectors, engine):
    eng = Engine(lm, small_vectors, limits=Limits(max_new_tokens=200))
    with running(make_app(eng), server_cls=_Server, engine=eng) as (url, srv):
        out: dict[str, list] = {}
        t = threading.Thread(target=lambda: out.setdefault("r", generate(url, prompt="Write an essay.", max_new_tokens=200)))
        t.start()
        while not eng.status()["running"]:
            time.sleep(0.01)
        time.sleep(0.3)
        start = time.time()
        srv.handle_exit(15, None)
        t.join(10)
        assert not t.is_alive() and out["r"][-1]["stopped"] == "server shutting down"
        assert time.time() - start < 5
    assert not eng.status()["worker_alive"] and hooks_on(lm.model) == 0


def _malformed(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    kind = rng.randrange(8)
    if kind == 0:
        d = rng.randint(33, 6000)
        return rng.choice([b"[" * d + b"]" * d, b'{"a":' * d + b"1" + b"}" * d]), {}
    if kind == 1:
        return rng.choice([b'{"prompt":"x","steer":{"calm":NaN}}', b'{"prompt":"x","temperature":-Infinity}']), {}
    if kind == 2:
        return ('{"prompt": "a\\u' + format(rng.randint(0xD800, 0xDFFF), "04x") + ' b"}').encode(), {}
    if kind == 3:
        value = rng.choice(['"3"', "2.9", "true", "null", "[]", "{}", "-5", "1e3"])
        return ('{"prompt": "x", "max_new_tokens": ' + value + "}").encode(), {}
    if kind == 4:
        return json.dumps({"prompt": "x"}).encode(), {"Content-Type": rng.choice(["text/plain", "multipart/form-data", ""])}
    if kind == 5:
        return json.dumps({"prompt": "x"}).encode(), rng.choice([{"Origin": "https://evil.example"}, {"Host": "evil:80"}])
    if kind == 6:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))), {}
    return json.dumps({"prompt": rng.choice([1, None, "", ["x"]]), "steer": {"calm": rng.choice(["1", 9, True])}}).encode(), {}


def test_load_disconnects_and_malformed_bodies(server, engine, lm):
    """8 clients: 200 streams (about half dropped mid-stream) and 1,000 malformed bodies, then serving, unhooked, flat."""
    generate(server, prompt="Warm up.", max_new_tokens=2)
    rss0 = rss_mb()
    rng = random.Random(17)
    jobs = [("stream", i) for i in range(200)] + [("bad", i) for i in range(1000)]
    rng.shuffle(jobs)

    def one(job: tuple[str, int]) -> str:
        kind, i = job
        r = random.Random(i)
        if kind == "bad":
            body, headers = _malformed(r)
            status, _ = post(server, body, headers=headers, timeout=30)
            assert 400 <= status < 500, (body[:80], headers, status)
            return "bad"
        req = {"prompt": f"Say something about the number {i}.", "max_new_tokens": r.randint(1, 4)}
        if r.random() < 0.5:
            post_and_drop(server, req, after_lines=r.randint(0, 3), timeout=60)
            return "dropped"
        lines = generate(server, timeout=120, **req)
        assert lines[-1]["type"] == "done" and lines[-1]["stopped"] is None, lines[-1]
        return "full"

    with ThreadPoolExecutor(max_workers=8) as pool:
        kinds = list(pool.map(one, jobs))
    assert kinds.count("bad") == 1000 and kinds.count("full") + kinds.count("dropped") == 200
    deadline = time.time() + 30
    while engine.status()["running"] or engine.status()["queued"]:
        assert time.time() < deadline
        time.sleep(0.05)
    assert hooks_on(lm.model) == 0 and engine.status()["worker_alive"]
    # unhooked: a plain request equals emovec's own greedy decode, token for token
    prompt = "Name three fruits."
    served = [x["token"] for x in generate(server, prompt=prompt, max_new_tokens=12) if x["type"] == "token"]
    steps = decode(lm, [lm.chat(prompt)], Sampling(max_new_tokens=12, temperature=0), torch.Generator().manual_seed(0))
    plain = [lm.tokenizer.decode([int(s.tokens[0])]) for s in steps if bool(s.live[0])]
    assert served == plain
    assert rss_mb() - rss0 < 60, (rss0, rss_mb())
