"""What the live server accepts: request limits, the pydantic schema of a generate request, and the checks that
run on the raw bytes and headers before any parsing (size, nesting depth, content type, Host and Origin).

Every rule answers with `BadRequest(status, one-line reason)`; the server turns it into a JSON 4xx.
Order matters: cheap checks on bytes first (size, depth: a 2,000-deep array would blow Python's
recursion limit inside `json.loads`), then strict JSON (no NaN/Infinity, no lone surrogates),
then the schema (strict types: `"3"`, `2.9` and `true` are not integers), then the limits.
"""

from __future__ import annotations

import difflib
import hmac
import ipaddress
import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


@dataclass
class Limits:
    """Bounds on what one request may ask for, and on the server's load."""

    max_body_bytes: int = 16_384
    max_depth: int = 32
    max_prompt_chars: int = 4_000
    max_turns: int = 32
    max_new_tokens: int = 256
    max_strength: float = 1.0
    max_steered: int = 8
    max_queue: int = 4
    request_timeout_s: float = 120.0


class BadRequest(Exception):
    """A request the server refuses, with the HTTP status to answer it with (and the parameter at fault, if one)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


class Turn(BaseModel):
    """One message of a chat conversation."""

    model_config = ConfigDict(strict=True, extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class GenerateRequest(BaseModel):
    """A /api/generate body: a prompt (or a chat conversation ending with a user turn), sampling, steering, alerts.

    `steer` is added at the monitored layer for the whole reply; `guard` is switched on
    when an alert fires; `alerts` maps an emotion to a z threshold (negative: alert on falling).
    `raw` continues a bare prompt as is (no chat template); `top_p` None keeps emovec's default
    sampling; the reply ends once it contains one of `stop`; `layer` (None: the server's) is the
    monitored and steered layer, one with a stored token baseline.
    """

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
    prompt: str | None = None
    messages: list[Turn] | None = None
    max_new_tokens: int = 80
    temperature: float = 0.0
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    steer: dict[str, float] = Field(default_factory=dict)
    alerts: dict[str, float] = Field(default_factory=dict)
    guard: dict[str, float] = Field(default_factory=dict)
    raw: bool = False
    top_p: float | None = None
    stop: list[str] = Field(default_factory=list)
    layer: int | None = None

    def conversation(self) -> list[dict[str, str]]:
        """The request as chat messages (a bare prompt is one user turn)."""
        if self.messages is not None:
            return [t.model_dump() for t in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]


def check_headers(headers: Any, allowed_hosts: frozenset[str], post: bool) -> None:
    """Refuse a request whose Host is not one we serve (DNS rebinding) or whose Origin is another site (403),
    and a POST whose body is not declared JSON (415)."""
    host = str(headers.get("host", "")).strip().lower()
    if host.startswith("["):  # [::1]:8765
        name = host[: host.index("]") + 1] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if "*" not in allowed_hosts and name not in allowed_hosts:
        raise BadRequest(403, f"host {host!r} is not served here (allowed: {', '.join(sorted(allowed_hosts))})")
    origin = headers.get("origin")
    if origin is not None:
        parts = urlsplit(str(origin))
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host:
            raise BadRequest(403, f"cross-origin request from {origin!r} refused")
    if post:
        ctype = str(headers.get("content-type", "")).split(";")[0].strip().lower()
        if ctype != "application/json":
            raise BadRequest(415, "send the body as application/json")


def check_auth(headers: Any, api_key: str | None) -> None:
    """With a key set, refuse (401) a request without `Authorization: Bearer <key>` (compared in constant time)."""
    if api_key is None:
        return
    scheme, _, token = str(headers.get("authorization", "")).strip().partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise BadRequest(401, "missing or wrong API key: send the header Authorization: Bearer <key>, the key given "
                         "to emovec serve --api-key (or EMOVEC_API_KEY)")


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine (localhost, 127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def json_depth(text: str, limit: int) -> int:
    """Nesting depth of JSON text (brackets outside strings), stopping as soon as it passes `limit`."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _check_strings(value: Any) -> None:
    """Raise ValueError on a lone surrogate anywhere (keys included): such text cannot be encoded or tokenised."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k)
            _check_strings(v)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v)


def strict_json(body: bytes, limits: Limits) -> Any:
    """Parse a body as strict JSON: size and depth first, then no NaN/Infinity, finite numbers, valid UTF-8 strings."""
    if len(body) > limits.max_body_bytes:
        raise BadRequest(413, f"request body over {limits.max_body_bytes} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(400, "request body is not UTF-8") from None
    if json_depth(text, limits.max_depth) > limits.max_depth:
        raise BadRequest(400, f"JSON nested deeper than {limits.max_depth}")
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
        _check_strings(data)
    except UnicodeEncodeError:
        raise BadRequest(400, "request body holds a lone surrogate (\\ud800-\\udfff) in a string") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; so is an over-long integer
        raise BadRequest(400, f"request body is not strict JSON: {str(exc)[:120]}") from None
    return data


def first_error(exc: ValidationError) -> str:
    """The first schema error as one line: where, what, and how many more."""
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}" + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")


def parse_request(body: bytes, emotions: list[str], limits: Limits, layers: Collection[int] | None = None) -> GenerateRequest:
    """Validate a /api/generate body; raise BadRequest(4xx, one-line reason) on anything wrong.

    Emotion names only need to be known here; the Monitor resolves them (`EmotionVectors.resolve`).
    """
    data = strict_json(body, limits)
    if not isinstance(data, dict):
        raise BadRequest(400, "request body must be a JSON object")
    try:
        req = GenerateRequest.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(422, first_error(exc)) from None
    check_request(req, emotions, limits, layers)
    return req


def unknown_emotion(key: str, name: str, emotions: list[str]) -> BadRequest:
    """The 422 for an emotion name these vectors lack, with the closest known name."""
    close = difflib.get_close_matches(name, emotions, n=1)
    return BadRequest(422, f"{key}: unknown emotion {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""), key)


def check_request(req: GenerateRequest, emotions: list[str], limits: Limits, layers: Collection[int] | None = None) -> None:
    """The checks past the schema: one prompt form, sizes, ranges, known emotions, a monitored layer (`layers`)."""
    if (req.prompt is None) == (req.messages is None):
        raise BadRequest(422, "give either prompt or messages")
    turns = req.conversation()
    if not turns or len(turns) > limits.max_turns:
        raise BadRequest(422, f"messages must hold 1..{limits.max_turns} turns", "messages")
    if req.raw and req.messages is not None:
        raise BadRequest(422, "raw continues a bare prompt; it cannot take messages", "raw")
    if not req.raw and (turns[-1]["role"] != "user" or not turns[-1]["content"].strip()):
        raise BadRequest(422, "prompt must be a non-empty string (the last message a non-empty user turn)", "messages")
    if req.raw and not turns[0]["content"]:
        raise BadRequest(422, "prompt must be a non-empty string", "prompt")
    if sum(len(t["content"]) for t in turns) > limits.max_prompt_chars:
        raise BadRequest(413, f"prompt over {limits.max_prompt_chars} characters")
    if not 1 <= req.max_new_tokens <= limits.max_new_tokens:
        raise BadRequest(422, f"max_new_tokens must be 1..{limits.max_new_tokens}", "max_new_tokens")
    if not 0.0 <= req.temperature <= 2.0:
        raise BadRequest(422, "temperature must be in [0, 2]", "temperature")
    if req.top_p is not None and not 0.0 < req.top_p <= 1.0:
        raise BadRequest(422, "top_p must be in (0, 1]", "top_p")
    if len(req.stop) > 4 or not all(0 < len(s) <= 64 for s in req.stop):
        raise BadRequest(422, "stop must hold at most 4 non-empty strings of up to 64 characters", "stop")
    if req.layer is not None and layers is not None and req.layer not in layers:
        raise BadRequest(422, f"layer {req.layer} is not monitored here (layers with a token baseline: "
                         f"{', '.join(map(str, sorted(layers)))})", "layer")
    known = set(emotions)
    for key in ("steer", "alerts", "guard"):
        spec: dict[str, float] = getattr(req, key)
        if len(spec) > limits.max_steered:
            raise BadRequest(422, f"{key} must hold at most {limits.max_steered} emotion: number pairs", key)
        for name, value in spec.items():
            if name not in known:
                raise unknown_emotion(key, name, emotions)
            if key != "alerts" and abs(value) > limits.max_strength:
                raise BadRequest(422, f"{key}.{name} must be within +-{limits.max_strength}", key)
            if key == "alerts" and abs(value) > 50:
                raise BadRequest(422, f"alerts.{name} must be a z threshold within +-50", key)
