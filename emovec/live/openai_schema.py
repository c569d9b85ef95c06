"""What the OpenAI-compatible endpoints accept, and how a request becomes the Engine's `GenerateRequest`.

The body passes the same byte checks as /api/generate (`schema.strict_json`), then a strict pydantic
model of the OpenAI fields emovec implements, then `schema.check_request`. Fields emovec cannot honour
(n > 1, logprobs, penalties, tools, ...) are accepted only at their default and refused otherwise with a
400 that names the parameter; unknown fields are refused too, as the OpenAI API does.

emovec's own options travel in the `emovec` field (`extra_body={"emovec": {...}}` in the official client):

    steer     {emotion: strength}   added at the monitored layer for the whole reply (|s| <= max_strength)
    alerts    {emotion: z}          alert when the smoothed z crosses z (negative: on falling)
    guard     {emotion: strength}   steering switched on once an alert fires
    emotions  [name, ...]           emotions reported per token (default: all)
    layer     int                   monitored and steered layer (default: the server's; needs a token baseline)

Defaults follow the OpenAI API where emovec has the knob: temperature 1, max_tokens the server's limit,
a random seed when none is given (reported back in `emovec.seed`). Sampling is otherwise emovec's own, as in
`emovec generate`: top-k 50, top_p 0.95 unless given, repetition penalty 1.1 (so temperature 0 is emovec's greedy).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .engine import Engine
from .schema import BadRequest, GenerateRequest, check_request, first_error, strict_json, unknown_emotion

MAX_SEED = 2**31 - 1
DEFAULT_TEMPERATURE = 1.0  # the OpenAI API's default
STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class TextPart(BaseModel):
    """A text part of a message's content (the only kind of part emovec reads)."""

    model_config = STRICT
    type: Literal["text"]
    text: str


class Message(BaseModel):
    """One chat message; `developer` is read as `system`."""

    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[Any] | None = None

    def text(self) -> str:
        """The message's text (text parts joined)."""
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class EmovecOptions(BaseModel):
    """The `emovec` extension field of a request."""

    model_config = STRICT
    steer: dict[str, float] = Field(default_factory=dict)
    alerts: dict[str, float] = Field(default_factory=dict)
    guard: dict[str, float] = Field(default_factory=dict)
    emotions: list[str] | None = None
    layer: int | None = None


class StreamOptions(BaseModel):
    """`stream_options`: only `include_usage` means anything here."""

    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool | None = None


class CommonRequest(BaseModel):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model_config = STRICT
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    emovec: EmovecOptions | None = None


class ChatRequest(CommonRequest):
    """A /v1/chat/completions body."""

    messages: list[Message]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None


class CompletionRequest(CommonRequest):
    """A /v1/completions body."""

    prompt: str | list[str]
    echo: bool | None = None
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


# fields accepted only at these values (null always passes): emovec has no way to honour anything else
DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "n": (1,), "frequency_penalty": (0,), "presence_penalty": (0,), "logit_bias": ({},), "logprobs": (False, 0),
    "top_logprobs": (0,), "tools": ([],), "tool_choice": ("none", "auto"), "response_format": ({"type": "text"},),
    "echo": (False,), "best_of": (1,), "suffix": ("",),
}
WHY = {"n": "one choice per request", "logprobs": "no log probabilities", "top_logprobs": "no log probabilities",
       "tools": "no tool calls", "tool_choice": "no tool calls", "response_format": "plain text only",
       "echo": "no echo of the prompt", "best_of": "one candidate per request", "suffix": "no insertion"}


@dataclass
class Plan:
    """A validated OpenAI request: the engine's request plus how to answer it."""

    kind: Literal["chat", "text"]
    req: GenerateRequest
    model: str
    stream: bool
    include_usage: bool
    emotions: list[str]


def _param(loc: tuple[int | str, ...]) -> str | None:
    """An OpenAI-style `param` from a pydantic error location (union member tags dropped)."""
    if not loc:
        return None
    head = str(loc[0])
    if len(loc) > 1 and isinstance(loc[1], int):
        return f"{head}[{loc[1]}]"
    if head == "emovec" and len(loc) > 1:
        return f"emovec.{loc[1]}"
    return head


def _check_defaults(body: CommonRequest) -> None:
    for name in sorted(body.model_fields_set & DEFAULT_ONLY.keys()):
        value = getattr(body, name)
        if value is not None and value not in DEFAULT_ONLY[name]:
            allowed = " or ".join(repr(v) for v in DEFAULT_ONLY[name])
            why = WHY.get(name, "not supported")
            raise BadRequest(400, f"{name}={value!r} is not supported by emovec serve ({why}); leave it out or use {allowed}",
                             name)


def _max_tokens(body: CommonRequest, engine: Engine) -> int:
    given = {k: v for k, v in (("max_tokens", body.max_tokens),
                               ("max_completion_tokens", getattr(body, "max_completion_tokens", None))) if v is not None}
    if len(set(given.values())) > 1:
        raise BadRequest(400, "max_tokens and max_completion_tokens disagree; give one of them", "max_completion_tokens")
    limit = engine.limits.max_new_tokens
    name, value = next(iter(given.items()), ("max_tokens", limit))
    if not 1 <= value <= limit:
        raise BadRequest(400, f"{name} must be 1..{limit} on this server", name)
    return value


def _turns(body: ChatRequest) -> list[dict[str, str]]:
    turns = []
    for i, m in enumerate(body.messages):
        if m.tool_calls:
            raise BadRequest(400, "tool calls are not supported by emovec serve", f"messages[{i}].tool_calls")
        turns.append({"role": "system" if m.role == "developer" else m.role, "content": m.text()})
    return turns


def _emotions(opts: EmovecOptions, engine: Engine) -> list[str]:
    if opts.emotions is None:
        return list(engine.emotions)
    if not opts.emotions:
        raise BadRequest(400, "emovec.emotions must name at least one emotion (leave it out for all)", "emovec.emotions")
    for name in opts.emotions:
        if name not in engine.emotions:
            exc = unknown_emotion("emovec.emotions", name, engine.emotions)
            raise BadRequest(400, str(exc), exc.param)
    return list(dict.fromkeys(opts.emotions))


def parse_openai(body: bytes, kind: Literal["chat", "text"], engine: Engine) -> Plan:
    """Validate an OpenAI chat (`kind="chat"`) or completions body; raise BadRequest with an OpenAI status and param.

    The model must be the one served (404 otherwise); anything else wrong is a 400 (413 for size).
    """
    data = strict_json(body, engine.limits)
    if not isinstance(data, dict):
        raise BadRequest(400, "request body must be a JSON object")
    try:
        parsed: CommonRequest = (ChatRequest if kind == "chat" else CompletionRequest).model_validate(data)
    except ValidationError as exc:
        raise BadRequest(400, first_error(exc), _param(exc.errors(include_url=False)[0]["loc"])) from None
    if parsed.model != engine.lm.name:
        raise BadRequest(404, f"The model {parsed.model!r} does not exist here; this server runs {engine.lm.name!r} "
                         "(GET /v1/models)", "model")
    _check_defaults(parsed)
    opts = parsed.emovec or EmovecOptions()
    seed = secrets.randbelow(MAX_SEED + 1) if parsed.seed is None else parsed.seed
    if not 0 <= seed <= MAX_SEED:
        raise BadRequest(400, f"seed must be in 0..{MAX_SEED}", "seed")
    fields: dict[str, Any] = {
        "max_new_tokens": _max_tokens(parsed, engine), "seed": seed, "top_p": parsed.top_p,
        "temperature": DEFAULT_TEMPERATURE if parsed.temperature is None else parsed.temperature,
        "stop": [parsed.stop] if isinstance(parsed.stop, str) else list(parsed.stop or []),
        "steer": opts.steer, "alerts": opts.alerts, "guard": opts.guard, "layer": opts.layer}
    if isinstance(parsed, ChatRequest):
        fields["messages"] = _turns(parsed)
    elif isinstance(parsed, CompletionRequest):
        prompt = parsed.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise BadRequest(400, "prompt must be one string (batched prompts are not supported)", "prompt")
            prompt = prompt[0]
        fields.update(prompt=prompt, raw=True)
    req = GenerateRequest.model_validate(fields)
    try:
        check_request(req, engine.emotions, engine.limits, engine.layers)
    except BadRequest as exc:
        param = exc.param if exc.param not in ("steer", "alerts", "guard", "layer") else f"emovec.{exc.param}"
        raise BadRequest(400 if exc.status == 422 else exc.status, str(exc), param) from None
    include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
    return Plan(kind, req, engine.lm.name, bool(parsed.stream), include_usage, _emotions(opts, engine))
