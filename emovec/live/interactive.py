"""Checks and defaults for the interactive commands (score, generate, monitor, serve): thread count, steering
strength range, context length, and the one-line statement of what the numbers are.

Nothing here changes global state: the CLI applies `interactive_threads` with `torch.set_num_threads`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from ..models import LanguageModel
from ..steering import parse_spec
from ..storage import EmovecError

SANE_STRENGTH = 1.0
"""Largest |strength| accepted without --force: the paper's useful range is 0.025-0.1 (behaviour) and 0.5 (preferences)."""

SCORE_UNITS = ("scores: projection of the layer-{layer} residual stream on each unit emotion vector "
               "(residual-stream units; {method})")
Z_UNITS = ("z: (projection on the unit emotion vector at layer {layer} - its mean over neutral text) / its standard "
           "deviation there ({n_tokens} neutral tokens); colour: {emotion} (red above the neutral mean, blue below)")


def usable_cores() -> int:
    """CPU cores this process may run on (affinity-aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def interactive_threads(requested: int | None = None) -> int:
    """Torch threads for a one-sequence, token-by-token command: `requested`, else half the cores (1 to 4).

    Decoding one sequence of a small model is latency-bound; on a busy 2-core machine two
    threads made a 40-token generate of SmolLM2-135M take 14-16 s against 2.7-2.9 s with one.
    """
    if requested is not None:
        if requested < 1:
            raise EmovecError("--threads must be at least 1")
        return requested
    return max(1, min(4, usable_cores() // 2))


def check_strengths(spec: str | dict[str, float] | Sequence[str] | None, force: bool = False,
                    limit: float = SANE_STRENGTH, what: str = "steering", default: float | None = None) -> dict[str, float]:
    """Parse a steering spec and refuse |strength| > `limit` unless `force` (strengths scale the mean residual norm).

    `default`: the strength a bare emotion name takes (the recommended one), as in `parse_spec`.
    """
    strengths = parse_spec(spec, default=default)
    wild = {k: v for k, v in strengths.items() if abs(v) > limit}
    if wild and not force:
        shown = ", ".join(f"{k}={v:g}" for k, v in wild.items())
        raise EmovecError(f"{what} strength {shown} is beyond +-{limit:g} (x the mean residual norm: the paper's useful "
                          "range is 0.025-0.1, 0.5 for preferences); pass --force to use it anyway")
    return strengths


def model_context(lm: LanguageModel) -> int | None:
    """The model's context length in tokens, where its config says."""
    ctx = getattr(getattr(lm.model, "config", None), "max_position_embeddings", None)
    return int(ctx) if isinstance(ctx, int) else None


def check_context(lm: LanguageModel, text: str, new_tokens: int = 0, add_special_tokens: bool = True) -> int:
    """Token count of `text`; raise a clear EmovecError when it plus `new_tokens` passes the model's context."""
    n = len(lm.tokenizer(text, add_special_tokens=add_special_tokens).input_ids)
    ctx = model_context(lm)
    if ctx is not None and n + new_tokens > ctx:
        extra = f" plus {new_tokens} new tokens" if new_tokens else ""
        raise EmovecError(f"the text is {n} tokens{extra}, past {lm.name}'s context of {ctx} tokens; shorten it "
                          "(scores past the context are not meaningful)")
    return n


def sink_and_units(table: pd.DataFrame, show_sink: bool, layer: int, method: str) -> tuple[pd.DataFrame, str]:
    """A per-token score table without position 0 (the attention sink; kept and marked with `show_sink`),
    and the line that says what its numbers are."""
    if show_sink and len(table):
        table = table.copy()
        table.iloc[0, table.columns.get_loc("token")] = f"{table.iloc[0]['token']} [sink]"
    elif not show_sink:
        table = table.iloc[1:]
    units = SCORE_UNITS.format(layer=layer, method="cosine similarity" if method == "cosine" else "dot with the unit vector")
    return table, units + ("" if show_sink else "; position 0, the attention sink, hidden (--show-sink)")
