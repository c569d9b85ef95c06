"""Live emotion monitor: per-token readout during generation, alerts, an opt-in guard, traces.

The readout rides on the generation's own forward passes (a hook on the
monitored layer reads the newest position), so monitoring costs no second pass.
Scores are z-scored against the model's own per-token readout on neutral text
(`token_baseline`), smoothed over a window, and an alert fires when the smoothed
z crosses a rule's threshold. With a guard, an alert switches on steering (e.g.
`calm=+0.1, desperate=-0.1`) for the rest of the generation, and the trace
records when it did.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..activations import hidden_of, layer_hooks
from ..concepts import resolve_emotions
from ..generation import Sampling, decode
from ..models import LanguageModel
from ..readout import project, score_text, stored_baseline
from ..steering import SteeringVector, parse_spec, steering_vector
from ..storage import EmovecError, append_jsonl, read_jsonl
from ..vectors import EmotionVectors


def render_terminal(trace: Trace, emotion: str, width: float = 3.0) -> str:
    """The trace's text with each token's background coloured by the z-score of `emotion` (ANSI), alerts marked."""
    import click

    if trace.events and emotion not in trace.events[0].z:
        raise EmovecError(f"emotion {emotion!r} was not monitored in this trace (monitored: {', '.join(trace.events[0].z)})")
    out = []
    for ev in trace.events:
        z = max(-1.0, min(1.0, ev.z.get(emotion, 0.0) / width))
        shade = int(255 * (1 - abs(z)))
        bg = (255, shade, shade) if z > 0 else (shade, shade, 255)
        out.append(click.style(ev.token, bg=bg, fg=(0, 0, 0)))
        for a in ev.alerts:
            out.append(click.style(f" [ALERT {a.emotion} z={a.z:+.1f}] ", fg=(255, 255, 255), bg=(160, 0, 0), bold=True))
    return "".join(out)


@dataclass
class AlertRule:
    """Fire when the `window`-token mean z-score of `emotion` reaches `z` (or falls to -z with `below`)."""

    emotion: str
    z: float = 3.0
    window: int = 4
    below: bool = False


@dataclass
class Alert:
    """An alert rule that fired: where in the text, for which emotion, and its score and z-score there."""

    position: int
    emotion: str
    score: float
    z: float
    context: str


@dataclass
class TokenEvent:
    """One token of a monitored text: its scores, z-scores, alerts fired here, steering in force."""

    position: int
    token: str
    scores: dict[str, float]
    z: dict[str, float]
    alerts: list[Alert] = field(default_factory=list)
    steering: str = ""
    row: int = 0


def parse_rules(spec: str | dict[str, float] | Sequence[str] | None, known: list[str]) -> list[AlertRule]:
    """Parse "desperate=3,calm=-2.5" into rules (a negative threshold alerts on falling below it)."""
    rules = []
    for name, value in parse_spec(spec).items():
        emotion = resolve_emotions([name], known)[0]
        rules.append(AlertRule(emotion, z=abs(value), below=value < 0))
    return rules


class _Alerter:
    """Tracks smoothed z-scores for one sequence and fires each rule once per crossing."""

    def __init__(self, rules: list[AlertRule], emotions: list[str]) -> None:
        self.rules = rules
        self.idx = {r.emotion: emotions.index(r.emotion) for r in rules}
        self.history: list[np.ndarray] = []
        self.armed = {r.emotion: True for r in rules}

    def step(self, position: int, z: np.ndarray, scores: np.ndarray, context: str) -> list[Alert]:
        self.history.append(z)
        fired = []
        for r in self.rules:
            i = self.idx[r.emotion]
            window = np.array([h[i] for h in self.history[-r.window:]])
            smooth = float(window.mean())
            hit = smooth <= -r.z if r.below else smooth >= r.z
            if hit and self.armed[r.emotion] and len(window) >= r.window:  # a full window: one token cannot fire
                fired.append(Alert(position, r.emotion, float(scores[i]), round(smooth, 3), context[-120:]))
                self.armed[r.emotion] = False
            elif not hit:
                self.armed[r.emotion] = True
        return fired


@dataclass
class Trace:
    """A monitored text: settings, token events, and the steering applied; JSONL on disk."""

    meta: dict[str, Any]
    events: list[TokenEvent]

    @property
    def alerts(self) -> list[Alert]:
        """Every alert fired over the trace, in token order."""
        return [a for e in self.events for a in e.alerts]

    @property
    def text(self) -> str:
        """The monitored text, reassembled from its tokens."""
        return "".join(e.token for e in self.events)

    def save(self, path: str | Path) -> Path:
        """Append this trace as JSONL: one header line, then one line per token."""
        rows = [{"type": "trace", **self.meta}] + [{"type": "token", **asdict(e)} for e in self.events]
        append_jsonl(path, rows)
        return Path(path)


def load_traces(path: str | Path) -> list[Trace]:
    """Read every trace from a JSONL file written by `Trace.save`."""
    traces: list[Trace] = []
    for i, row in enumerate(read_jsonl(path), 1):
        kind = row.pop("type", None)
        if kind == "trace":
            traces.append(Trace(meta=row, events=[]))
        elif kind == "token" and traces:
            try:
                row["alerts"] = [Alert(**a) for a in row.get("alerts", [])]
                traces[-1].events.append(TokenEvent(**row))
            except TypeError:
                raise EmovecError(f"{path}:{i}: not a token line of an emovec trace") from None
        else:
            raise EmovecError(f"{path}:{i}: not an emovec trace line (expected a trace header first)")
    return traces


class Monitor:
    """Reads emotions token by token at one layer while a model generates (or over a given text)."""

    def __init__(self, lm: LanguageModel, vectors: EmotionVectors, layer: int | None = None,
                 emotions: list[str] | str | None = None, rules: list[AlertRule] | None = None,
                 baseline: dict[str, Any] | None = None, guard: str | dict[str, float] | None = None,
                 guard_layers: str | None = None) -> None:
        vectors.check_model(lm)
        self.lm, self.vectors = lm, vectors
        self.layer = vectors.default_layer if layer is None else lm.check_layer(layer)
        vectors.layer_index(self.layer)
        self.emotions = vectors.resolve(emotions)
        self.rules = rules or []
        for r in self.rules:
            vectors.resolve([r.emotion])
        base = baseline or stored_baseline(vectors, self.layer)
        if base is None:
            raise EmovecError("these vectors carry no token baseline for this layer; compute one with "
                              "emovec.readout.token_baseline(lm, vectors, neutral_texts) and pass baseline=")
        pick = [base["emotions"].index(e) for e in self.emotions]
        self.mean = np.asarray(base["mean"])[pick]
        self.std = np.asarray(base["std"])[pick]
        self.baseline_info = {k: base[k] for k in ("n_tokens", "n_texts") if k in base}
        self.guard: SteeringVector | None = steering_vector(vectors, guard, guard_layers) if guard else None

    def _event(self, pos: int, token: str, s: np.ndarray, alerter: _Alerter, context: str, steering: str,
               row: int = 0) -> TokenEvent:
        z = (s - self.mean) / self.std
        alerts = alerter.step(pos, z, s, context + token)
        return TokenEvent(pos, token, dict(zip(self.emotions, np.round(s.astype(np.float64), 3).tolist())),
                          dict(zip(self.emotions, np.round(z.astype(np.float64), 3).tolist())), alerts, steering, row)

    def meta(self, **extra: Any) -> dict[str, Any]:
        """What a trace header records: model, layer, emotions, rules, baseline, guard, plus `extra`."""
        return {"model": self.lm.name, "layer": self.layer, "emotions": self.emotions,
                "rules": [asdict(r) for r in self.rules], "baseline": self.baseline_info,
                "guard": self.guard.label if self.guard else None, **extra}

    def read_text(self, text: str) -> Trace:
        """Monitor an existing text (teacher-forced): same scores and alert logic as generation."""
        df = score_text(self.lm, self.vectors, text, layer=self.layer, emotions=self.emotions)
        alerter = _Alerter(self.rules, self.emotions)
        events, context = [], ""
        for pos, row in df.iterrows():
            scores = row[self.emotions].to_numpy(dtype=float)
            if pos == 0:  # the attention sink: shown, but kept out of the alert windows
                events.append(TokenEvent(0, row["token"], {e: round(float(v), 3) for e, v in zip(self.emotions, scores)},
                                         {e: 0.0 for e in self.emotions}))
            else:
                events.append(self._event(int(pos), row["token"], scores, alerter, context, ""))
            context += row["token"]
        return Trace(self.meta(source="text"), events)

    def stream(self, prompts: str | Sequence[str], sampling: Sampling | None = None, seed: int = 0,
               chat: bool = True, steer: SteeringVector | None = None) -> Generator[list[TokenEvent], None, None]:
        """Generate from one or more prompts, yielding each step's new tokens (one event per live row).

        Runs on emovec's decode loop (`generation.decode`): each token is scored by a
        hook on the monitored layer when it is fed back, inside the generation's own
        forward pass, so reading costs one projection per step and no extra pass.
        """
        lm, sampling = self.lm, sampling or Sampling()
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        texts = [lm.chat(p) if chat else p for p in batch]
        n = len(batch)
        captured: dict[str, torch.Tensor] = {}

        def grab(_idx: int, _m: object, _i: tuple[Any, ...], out: object) -> None:
            captured["h"] = hidden_of(out)[:, -1].detach().float().cpu()

        alerters = [_Alerter(self.rules, self.emotions) for _ in range(n)]
        contexts = [""] * n
        guard_rows = torch.zeros(n)
        guard = self.guard

        def hooks() -> ExitStack:  # entered only around forward passes: never left on the model between tokens
            stack = ExitStack()
            stack.enter_context(layer_hooks(lm, [self.layer], grab))
            if steer is not None:
                stack.enter_context(steer.apply(lm))
            if guard is not None:
                stack.enter_context(guard.apply(lm, rows=guard_rows))
            return stack

        steps = decode(lm, texts, sampling, torch.Generator().manual_seed(seed), feed_last=True, share_prefix=False,
                       step_context=hooks)
        for st in steps:
            if not bool(st.live.any()):
                break
            scores = project(captured["h"], self.vectors, self.layer, self.emotions).numpy()
            events = []
            for r in torch.nonzero(st.live).flatten().tolist():
                piece = lm.tokenizer.decode([int(st.tokens[r])])
                label = guard.label if guard is not None and guard_rows[r] else ""
                ev = self._event(st.step, piece, scores[r], alerters[r], contexts[r], label, r)
                contexts[r] += piece
                if ev.alerts and guard is not None:
                    guard_rows[r] = 1.0
                events.append(ev)
            yield events

    def generate(self, prompts: str | Sequence[str], sampling: Sampling | None = None, seed: int = 0,
                 chat: bool = True, steer: SteeringVector | None = None) -> list[Trace]:
        """Run `stream` to the end and return one trace per prompt."""
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        per_row: list[list[TokenEvent]] = [[] for _ in batch]
        for events in self.stream(batch, sampling, seed, chat, steer):
            for ev in events:
                per_row[ev.row].append(ev)
        return [Trace(self.meta(source="generation", prompt=p, seed=seed,
                                 steer=steer.label if steer is not None else None), evs)
                for p, evs in zip(batch, per_row)]
