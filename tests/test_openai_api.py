"""The OpenAI-compatible API (/v1) driven by the official `openai` client against a real loopback server and the
real embedded model: streamed and plain chat, completions, usage, stop sequences, emovec's extension fields,
OpenAI-shaped errors (each raising the client's matching exception), the API key, and no steering left behind."""

from __future__ import annotations

import http.client
import json
import time

import openai
import pytest
import torch
from click.testing import CliRunner
from live_helpers import hooks_on, running

from emovec.cli import main
from emovec.generation import Sampling, decode, generate_text
from emovec.live.engine import Engine
from emovec.live.schema import Limits
from emovec.live.server import check_bind, make_app
from emovec.storage import EmovecError

KEY = "sk-test-emovec-123"
PROMPT = "Describe your morning in one sentence."
STEER = {"happy": 0.8}


@pytest.fixture(scope="module")
def engine(lm, small_vectors):
    eng = Engine(lm, small_vectors, limits=Limits(max_new_tokens=32, max_queue=8))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def api(engine):
    with running(make_app(engine)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def keyed(engine):
    with running(make_app(engine, api_key=KEY)) as (url, _):
        yield url


def _client(url: str, key: str = "not-needed") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def _raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(url.split("//", 1)[1], timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        res = conn.getresponse()
        return res.status, json.loads(res.read() or b"null")
    finally:
        conn.close()


def _idle(engine: Engine) -> None:
    deadline = time.time() + 30
    while engine.status()["running"] or engine.status()["queued"]:
        assert time.time() < deadline
        time.sleep(0.02)


def test_models_list_and_retrieve(api, lm):
    client = _client(api)
    models = client.models.list()
    assert [m.id for m in models.data] == [lm.name]
    card = models.data[0]
    assert card.object == "model" and card.owned_by == "emovec" and isinstance(card.created, int)
    assert client.models.retrieve(lm.name).id == lm.name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_streamed_steered_monitored_chat(api, lm):
    client = _client(api)
    common = dict(model=lm.name, messages=[{"role": "user", "content": PROMPT}], max_tokens=16, temperature=0, seed=0)
    stream = client.chat.completions.create(**common, stream=True, stream_options={"include_usage": True},
                                            extra_body={"emovec": {"steer": STEER, "alerts": {"happy": 1.5},
                                                                   "emotions": ["happy", "calm"]}})
    chunks = list(stream)
    head, usage = chunks[0], chunks[-1]
    assert head.choices[0].delta.role == "assistant" and head.emovec["steer"] == STEER
    assert head.emovec["emotions"] == ["happy", "calm"] and head.emovec["prompt_tokens"] > 0
    body = chunks[1:-2]
    assert 1 <= len(body) <= 16 and {c.id for c in chunks} == {head.id} and head.id.startswith("chatcmpl-")
    for c in body:
        assert c.object == "chat.completion.chunk" and c.choices[0].finish_reason is None
        assert set(c.emovec["z"]) == set(c.emovec["scores"]) == {"happy", "calm"} and isinstance(c.emovec["alerts"], list)
    last = chunks[-2]
    assert last.choices[0].finish_reason in ("stop", "length") and "summary" in last.emovec
    assert usage.choices == [] and usage.usage.completion_tokens == len(body)
    steered = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert steered.strip() and steered == "".join(c.emovec["token"] for c in body)
    alerts = [a for c in body for a in c.emovec["alerts"]]
    assert alerts and alerts == last.emovec["alerts"] and alerts[0]["emotion"] == "happy"  # steering happy reads high
    plain = client.chat.completions.create(**common)
    assert plain.choices[0].message.content != steered  # same prompt, seed and greedy decoding: steering changed it


def test_plain_responses_have_the_openai_shape(api, lm):
    client = _client(api)
    chat = client.chat.completions.create(model=lm.name, max_completion_tokens=8, temperature=0,
                                          messages=[{"role": "system", "content": "You are terse."},
                                                    {"role": "user", "content": [{"type": "text", "text": PROMPT}]}])
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-") and chat.model == lm.name
    (choice,) = chat.choices
    assert choice.index == 0 and choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    rendered = lm.tokenizer.apply_chat_template([{"role": "system", "content": "You are terse."},
                                                 {"role": "user", "content": PROMPT}], tokenize=False,
                                                add_generation_prompt=True)
    tokens = chat.emovec["tokens"]
    assert chat.usage.prompt_tokens == len(lm.tokenizer(rendered, add_special_tokens=False).input_ids)
    assert chat.usage.completion_tokens == len(tokens) <= 8
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    assert (choice.finish_reason == "length") == (len(tokens) == 8)
    assert choice.message.content == "".join(t["token"] for t in tokens)
    assert set(tokens[0]["z"]) == set(_served_emotions(lm, api)) and set(chat.emovec["summary"]["mean_z"]) == set(tokens[0]["z"])

    prompt = "The three primary colours are"
    text = client.completions.create(model=lm.name, prompt=prompt, max_tokens=6, temperature=0)
    assert text.object == "text_completion" and text.id.startswith("cmpl-") and text.choices[0].text
    assert text.usage.prompt_tokens == len(lm.tokenizer(prompt, add_special_tokens=False).input_ids)
    assert text.usage.completion_tokens == len(text.emovec["tokens"]) == 6 and text.choices[0].finish_reason == "length"


def _served_emotions(lm, url: str) -> list[str]:
    status, info = _raw(url, "GET", "/api/info")
    assert status == 200 and info["model"] == lm.name
    return info["emotions"]


def test_stop_sequences_end_the_reply_before_them(api, lm):
    client = _client(api)
    prompt = "Once upon a time, in a small village,"
    full = client.completions.create(model=lm.name, prompt=prompt, max_tokens=16, temperature=0).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    expected = full[:full.index(stop)]
    cut = client.completions.create(model=lm.name, prompt=prompt, max_tokens=16, temperature=0, stop=[stop, "zzqx"])
    assert cut.choices[0].text == expected and cut.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(model=lm.name, prompt=prompt, max_tokens=16, temperature=0, stop=stop,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop" and all(c.object == "text_completion" for c in streamed)


BAD_CHAT = [
    ({"max_tokens": "5"}, "max_tokens"), ({"temperature": "hot"}, "temperature"), ({"n": 2}, "n"),
    ({"max_tokens": 10_000}, "max_tokens"), ({"temperature": 3.5}, "temperature"), ({"logprobs": True}, "logprobs"),
    ({"extra_body": {"emovec": {"steer": {"hapy": 0.1}}}}, "emovec.steer"),
    ({"extra_body": {"emovec": {"steer": {"happy": 5.0}}}}, "emovec.steer"),
    ({"extra_body": {"emovec": {"steer": {"happy": "lots"}}}}, "emovec.steer"),
    ({"extra_body": {"emovec": {"alerts": {"calm": True}}}}, "emovec.alerts"),
    ({"extra_body": {"emovec": {"emotions": ["joyous"]}}}, "emovec.emotions"),
    ({"extra_body": {"emovec": {"layer": 0}}}, "emovec.layer"),
    ({"extra_body": {"emovec": {"stear": {}}}}, "emovec.stear"),
    ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
]


@pytest.mark.parametrize("extra,param", BAD_CHAT, ids=[p for _, p in BAD_CHAT])
def test_malformed_requests_raise_bad_request(api, lm, extra, param):
    client = _client(api)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=lm.name, messages=[{"role": "user", "content": "hi"}], **extra)
    assert err.value.param == param and err.value.type == "invalid_request_error", err.value.body
    if param == "emovec.steer" and "hapy" in str(extra):
        assert "did you mean 'happy'" in err.value.message


def test_unknown_model_route_and_malformed_json(api, lm):
    client = _client(api)
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert err.value.param == "model" and err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=lm.name, prompt=["one", "two"])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=lm.name, messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}])
    status, body = _raw(api, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error" and "JSON" in body["error"]["message"]
    status, body = _raw(api, "GET", "/v1/embeddings")
    assert status == 404 and set(body["error"]) == {"message", "type", "param", "code"}
    status, body = _raw(api, "POST", "/v1/chat/completions", json.dumps({"model": lm.name, "messages": "x" * 20000}).encode())
    assert status == 413 and "error" in body


def test_api_key(keyed, lm):
    with pytest.raises(openai.AuthenticationError):
        _client(keyed, "sk-wrong").models.list()
    with pytest.raises(openai.AuthenticationError):
        _client(keyed, "sk-wrong").chat.completions.create(model=lm.name, messages=[{"role": "user", "content": "hi"}])
    status, body = _raw(keyed, "GET", "/v1/models")  # no Authorization header at all
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert [m.id for m in _client(keyed, KEY).models.list().data] == [lm.name]
    req = json.dumps({"prompt": "hi", "max_new_tokens": 1}).encode()
    assert _raw(keyed, "GET", "/api/info")[1]["auth"] is True  # the page still loads; it asks for the key
    assert _raw(keyed, "POST", "/api/generate", req)[0] == 401
    conn = http.client.HTTPConnection(keyed.split("//", 1)[1], timeout=60)
    conn.request("POST", "/api/generate", body=req, headers={"Content-Type": "application/json",
                                                              "Authorization": f"Bearer {KEY}"})
    assert conn.getresponse().status == 200
    conn.close()
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", KEY)
    for host, key in (("0.0.0.0", None), ("192.168.1.5", None), ("::", None), ("127.0.0.1", " ")):
        with pytest.raises(EmovecError, match="api-key"):
            check_bind(host, key)
    refused = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--vectors", "unused"], env={"EMOVEC_API_KEY": None})
    assert refused.exit_code != 0 and "pass --api-key" in refused.output and len(refused.output.strip().splitlines()) == 1


def test_queue_full_and_shutdown_are_openai_errors(lm, small_vectors):
    for limits, closed, exc in ((Limits(max_queue=0), False, openai.RateLimitError),
                                (Limits(), True, openai.InternalServerError)):
        eng = Engine(lm, small_vectors, limits=limits)
        if closed:
            eng.close()
        try:
            with running(make_app(eng)) as (url, _):
                with pytest.raises(exc) as err:
                    _client(url).chat.completions.create(model=lm.name, messages=[{"role": "user", "content": "hi"}])
                assert err.value.status_code == (503 if closed else 429)
        finally:
            eng.close()


def test_cancelled_stream_leaves_no_steering_behind(api, engine, lm):
    client = _client(api)
    cancelled = engine.stats["cancelled"]
    stream = client.chat.completions.create(model=lm.name, messages=[{"role": "user", "content": "Count to fifty."}],
                                            max_tokens=32, temperature=0, stream=True, extra_body={"emovec": {"steer": STEER}})
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 4:
            break
    stream.close()
    _idle(engine)
    assert engine.stats["cancelled"] == cancelled + 1 and hooks_on(lm.model) == 0
    reply = client.chat.completions.create(model=lm.name, messages=[{"role": "user", "content": PROMPT}], max_tokens=16,
                                           temperature=0)
    steps = decode(lm, [lm.chat(PROMPT)], Sampling(max_new_tokens=16, temperature=0), torch.Generator().manual_seed(0))
    plain = [lm.tokenizer.decode([int(s.tokens[0])]) for s in steps if bool(s.live[0])]
    assert [t["token"] for t in reply.emovec["tokens"]] == plain
    assert reply.choices[0].message.content == "".join(plain)
    assert reply.choices[0].message.content.strip() == generate_text(lm, PROMPT, Sampling(max_new_tokens=16, temperature=0)).strip()
