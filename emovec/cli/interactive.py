"""Interactive commands on a model and its vectors: score, generate, export, monitor, serve."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from ..control_vectors import CONVENTION, architecture, export_emotions, import_gguf, llama_cli_line
from ..generation import Sampling, generate_text
from ..live.interactive import Z_UNITS, check_context, check_strengths, interactive_threads, sink_and_units
from ..live.monitor import Monitor, parse_rules, render_terminal
from ..live.server import check_bind
from ..live.server import serve as run_server
from ..readout import score_text, top_emotions
from ..steering import steering_vector
from ..storage import atomic_path
from .main import _load, main, model_options, vectors_option


@main.command()
@click.argument("text")
@vectors_option
@click.option("--layer", type=int, default=None, help="layer to read (default: the vectors' default layer)")
@click.option("--emotions", default=None, help="comma-separated emotions to show (default: all)")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True, help="top emotions per token")
@click.option("--method", type=click.Choice(["projection", "cosine"]), default="projection", show_default=True)
@click.option("--csv", "csv_path", default=None, help="also write the full tokens x emotions table here")
@click.option("--show-sink", is_flag=True, help="also show position 0 (the attention sink: huge, content-free scores)")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: half the cores, 1-4)")
@model_options
def score(text: str, vectors: str, layer: int | None, emotions: str | None, top: int, method: str,
          csv_path: str | None, show_sink: bool, threads: int | None, model: str | None, device: str, dtype: str | None,
          trust_remote_code: bool | None) -> None:
    """Per-token emotion scores of TEXT (projection on unit vectors, centred; see README). Position 0 is hidden."""
    torch.set_num_threads(interactive_threads(threads))
    vecs, lm = _load(vectors, model, device, dtype, trust_remote_code)
    check_context(lm, text)
    df = score_text(lm, vecs, text, layer=layer, emotions=emotions, method=method)
    tops, units = sink_and_units(top_emotions(df, k=min(top, len(df.columns) - 1)), show_sink,
                                 vecs.default_layer if layer is None else layer, method)
    click.echo(units, err=True)
    click.echo(tops.to_string())
    if csv_path:
        with atomic_path(csv_path) as tmp:
            df.to_csv(tmp)
        click.echo(f"wrote {csv_path}")


@main.command()
@click.argument("prompt")
@vectors_option
@click.option("--steer", "-s", multiple=True, help="EMOTION=STRENGTH, e.g. calm=0.05 (repeatable or comma-separated); "
              "a bare EMOTION takes the run's recommended strength")
@click.option("--layers", default=None, help="steered layers: 20, 18-22 or 10,14,20 (default: the run's recommended "
              "steering layer, else the vectors' default layer)")
@click.option("--max-new-tokens", type=click.IntRange(min=1, max=4096), default=120, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--raw", is_flag=True, help="do not apply the chat template")
@click.option("--steer-file", multiple=True, help="llama.cpp control-vector .gguf to apply too (repeatable; "
              "direction.K is added to the output of layer K, as in llama.cpp)")
@click.option("--force", is_flag=True, help="allow steering strengths beyond +-1")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: half the cores, 1-4)")
@model_options
def generate(prompt: str, vectors: str, steer: tuple[str, ...], layers: str | None, max_new_tokens: int,
             temperature: float, seed: int, raw: bool, steer_file: tuple[str, ...], force: bool, threads: int | None,
             model: str | None, device: str, dtype: str | None, trust_remote_code: bool | None) -> None:
    """Generate a reply to PROMPT, optionally steered along emotion vectors and/or llama.cpp control-vector files."""
    torch.set_num_threads(interactive_threads(threads))
    vecs, lm = _load(vectors, model, device, dtype, trust_remote_code)
    check_strengths(list(steer), force, default=vecs.steering_strength)
    check_context(lm, prompt if raw else lm.chat(prompt), max_new_tokens, add_special_tokens=raw)
    sv = steering_vector(vecs, list(steer), layers)
    for file in steer_file:
        sv = sv + import_gguf(file, lm)
    with sv.apply(lm):
        text = generate_text(lm, prompt, Sampling(max_new_tokens=max_new_tokens, temperature=temperature), seed=seed,
                             chat=not raw)
    if sv.deltas:
        click.echo(f"[steering: {sv.label} at layers {sorted(sv.deltas)}]", err=True)
    click.echo(text)


@main.command()
@click.argument("vectors")
@click.option("--steer", "-s", multiple=True, required=True,
              help="EMOTION=STRENGTH, e.g. calm=0.1,desperate=-0.05 (repeatable or comma-separated)")
@click.option("--layers", default=None, help="steered layers: 20, 12-20 or 10,14,20 (default: the run's "
              "recommended steering layer, else the vectors' default layer); layer 0 cannot be steered in llama.cpp")
@click.option("--output", "-o", required=True, help="the .gguf control-vector file to write")
@click.option("--model-hint", default=None, help="controlvector.model_hint (default: the model's architecture, e.g. llama)")
@model_options
def export(vectors: str, steer: tuple[str, ...], layers: str | None, output: str, model_hint: str | None,
           model: str | None, device: str, dtype: str | None, trust_remote_code: bool | None) -> None:
    """Write emotion steering from VECTORS (a vector file or run directory) as a llama.cpp control-vector file."""
    vecs, lm = _load(vectors, model, device, dtype, trust_remote_code)
    sv = export_emotions(vecs, list(steer), output, layers=layers, model_hint=model_hint or architecture(lm),
                         source=str(Path(vectors).resolve()))
    click.echo(f"wrote {output}: {sv.label} at layers {sorted(sv.deltas)} (strength x mean residual norm baked in)")
    click.echo(f"layer convention: {CONVENTION}\nrun it in llama.cpp: {llama_cli_line(lm, output)}")



@main.command()
@click.argument("prompt")
@vectors_option
@click.option("--emotion", "-e", default="desperate", show_default=True, help="emotion that colours the tokens")
@click.option("--alert", "-a", multiple=True, help="EMOTION=Z alert threshold on the smoothed z-score (negative: alert on falling)")
@click.option("--guard", "-g", default=None, help="steering switched on when an alert fires, e.g. calm=0.1,desperate=-0.1")
@click.option("--layer", type=int, default=None, help="monitored layer (default: the vectors' default layer)")
@click.option("--max-new-tokens", type=click.IntRange(min=1, max=4096), default=120, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--trace", "trace_path", default=None, help="append the trace (tokens, scores, alerts, steering) as JSONL")
@click.option("--force", is_flag=True, help="allow guard strengths beyond +-1")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: half the cores, 1-4)")
@model_options
def monitor(prompt: str, vectors: str, emotion: str, alert: tuple[str, ...], guard: str | None, layer: int | None,
            max_new_tokens: int, temperature: float, seed: int, trace_path: str | None, force: bool, threads: int | None,
            model: str | None, device: str, dtype: str | None, trust_remote_code: bool | None) -> None:
    """Generate a reply to PROMPT, printing it coloured by an emotion's z-score, with alerts."""
    check_strengths(guard, force, what="guard")
    torch.set_num_threads(interactive_threads(threads))
    vecs, lm = _load(vectors, model, device, dtype, trust_remote_code)
    check_context(lm, lm.chat(prompt), max_new_tokens, add_special_tokens=False)
    emotion = vecs.resolve([emotion])[0]
    mon = Monitor(lm, vecs, layer=layer, rules=parse_rules(list(alert), vecs.emotions), guard=guard)
    trace = mon.generate(prompt, Sampling(max_new_tokens=max_new_tokens, temperature=temperature), seed=seed)[0]
    click.echo(Z_UNITS.format(layer=mon.layer, n_tokens=mon.baseline_info.get("n_tokens", "?"), emotion=emotion), err=True)
    click.echo(render_terminal(trace, emotion))
    for a in trace.alerts:
        click.echo(f"alert: {a.emotion} z={a.z:+.2f} at token {a.position}: ...{a.context[-60:]!r}", err=True)
    if trace_path:
        trace.save(trace_path)
        click.echo(f"trace appended to {trace_path}", err=True)


@main.command()
@vectors_option
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind (keep 127.0.0.1 unless you mean it)")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--layer", type=int, default=None, help="monitored and steered layer (default: the vectors' default)")
@click.option("--allow-host", multiple=True,
              help="also answer requests naming this Host (repeatable; '*' for any): for a non-loopback bind")
@click.option("--api-key", envvar="EMOVEC_API_KEY", default=None, show_envvar=True,
              help="require Authorization: Bearer KEY for generating (/api/generate, /v1); needed off loopback")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: half the cores, 1-4)")
@model_options
def serve(vectors: str, host: str, port: int, layer: int | None, allow_host: tuple[str, ...], api_key: str | None,
          threads: int | None, model: str | None, device: str, dtype: str | None, trust_remote_code: bool | None) -> None:
    """Serve the live monitor page and an OpenAI-compatible API (/v1: models, chat completions, completions)."""
    check_bind(host, api_key)
    torch.set_num_threads(interactive_threads(threads))
    vecs, lm = _load(vectors, model, device, dtype, trust_remote_code)
    click.echo(f"emovec monitor on http://{host}:{port}/, OpenAI API at http://{host}:{port}/v1  (Ctrl-C to stop; "
               f"{torch.get_num_threads()} torch threads{'; API key required' if api_key else ''})", err=True)
    run_server(lm, vecs, host=host, port=port, layer=layer, allow_hosts=allow_host, api_key=api_key)


