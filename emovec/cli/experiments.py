"""`emovec experiment ...`: the behavioural experiments, printed through the experiments registry."""

from __future__ import annotations

import dataclasses

import click

from ..experiments import EXPERIMENTS
from ..experiments.blackmail import run_blackmail
from ..experiments.common import DEFAULT_STRENGTHS
from ..experiments.hacking import STARTS, run_reward_hacking
from ..experiments.preferences import run_preferences
from ..models import LanguageModel
from ..rundir import open_run, run_model
from .main import main

_LAYERS_HELP = "steered layers, e.g. 18-22 (default: the run's recommended steering layer, else the vectors' default layer)"
_TAG = click.option("--tag", default=None, help="keep these results apart, in experiments/<name>-TAG/ (e.g. for a "
                    "second set of settings such as a prefill)")
_DTYPE = click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default=None,
                      help="the model's dtype here (default: the run's; bfloat16 runs about 2.5x faster on CPUs with "
                      "native bf16; recorded in the experiment's settings, so a resume must use the same)")


def _model(run_dir: str, dtype: str | None) -> LanguageModel | None:
    """The run's model in `dtype`, or None to let the experiment load it as the run was made."""
    return None if dtype is None else run_model(dataclasses.replace(open_run(run_dir, write=False), dtype=dtype))


_STRENGTHS = ",".join(f"{s:g}" for s in DEFAULT_STRENGTHS)  # the experiments' one default sweep

@main.group()
def experiment() -> None:
    """Behavioural experiments under steering: preferences, blackmail, reward-hacking (resumable, in RUN_DIR/experiments/)."""


@experiment.command("preferences")
@click.argument("run_dir")
@click.option("--emotions", default=None, help="comma-separated emotions correlated with Elo (default: all in the run)")
@click.option("--steer", default=None,
              help="comma-separated emotions to steer with (default: --n-vectors spread over the correlation range)")
@click.option("--n-vectors", type=click.IntRange(min=0), default=4, show_default=True, help="vectors to steer when --steer is not given")
@click.option("--strength", type=float, default=0.5, show_default=True, help="steering strength on the activity tokens (paper: 0.5)")
@click.option("--layers", default=None, help=_LAYERS_HELP)
@click.option("--steer-prompts", type=click.IntRange(min=0), default=256, show_default=True,
              help="prompts per steered vector, a seeded subset of the steered-vs-control pairs (0: all of them)")
@click.option("--per-group", type=click.IntRange(min=1), default=None, help="use only the first K activities of each group")
@click.option("--activities", "activities_file", default=None, help="activities JSON (default: the built-in emovec/data/activities.json)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the steered/control split and the pair subset")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@_TAG
@_DTYPE
def experiment_preferences(run_dir: str, emotions: str | None, steer: str | None, n_vectors: int, strength: float,
                           layers: str | None, steer_prompts: int, per_group: int | None, activities_file: str | None,
                           seed: int, batch_size: int, tag: str | None, dtype: str | None) -> None:
    """Activity preferences: Elo from all ordered pairs, its correlation with emotion activations, and steering shifts."""
    s = run_preferences(run_dir, emotions=emotions, steer=steer, n_vectors=n_vectors, strength=strength, layers=layers,
                        steer_prompts=steer_prompts or None, per_group=per_group, activities_file=activities_file,
                        seed=seed, batch_size=batch_size, tag=tag, lm=_model(run_dir, dtype))
    for line in EXPERIMENTS["preferences"].result_lines(s, run_dir, tag):
        click.echo(line)


@experiment.command("blackmail")
@click.argument("run_dir")
@click.option("--n", type=click.IntRange(min=1), default=8, show_default=True, help="samples per condition")
@click.option("--emotions", default=None, help="comma-separated emotions to steer (default: desperate,calm,angry,nervous where in the run)")
@click.option("--strengths", default=_STRENGTHS, show_default=True, help="comma-separated steering strengths")
@click.option("--layers", default=None, help=_LAYERS_HELP)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1, max=4096), default=160, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--temperature", type=float, default=0.9, show_default=True)
@click.option("--guard", default=None, help="add a condition generated with the Monitor guard on, e.g. calm=0.1")
@click.option("--guard-alert", default="desperate=2", show_default=True, help="alert rule that switches the guard on (EMOTION=Z)")
@click.option("--scenario", default=None, help="scenario JSON (default: the built-in emovec/data/blackmail.json)")
@click.option("--prefill", default="", help="text every reply starts with, e.g. '<email><to>' for models too small "
              "to use the email format unaided (recorded in the results)")
@_TAG
@_DTYPE
def experiment_blackmail(run_dir: str, n: int, emotions: str | None, strengths: str, layers: str | None, seed: int,
                         max_new_tokens: int, batch_size: int, temperature: float, guard: str | None, guard_alert: str,
                         scenario: str | None, prefill: str, tag: str | None, dtype: str | None) -> None:
    """Blackmail scenario: rate (Wilson 95%) over N samples, unsteered and under a steering sweep."""
    s = run_blackmail(run_dir, n=n, emotions=emotions, strengths=strengths, layers=layers, seed=seed,
                      max_new_tokens=max_new_tokens, batch_size=batch_size, temperature=temperature, guard=guard,
                      guard_alert=guard_alert, scenario=scenario, prefill=prefill, tag=tag, lm=_model(run_dir, dtype))
    for line in EXPERIMENTS["blackmail"].result_lines(s, run_dir, tag):
        click.echo(line)


@experiment.command("reward-hacking")
@click.argument("run_dir")
@click.option("--n", type=click.IntRange(min=1), default=5, show_default=True, help="episodes per condition, cycling through the tasks")
@click.option("--attempts", type=click.IntRange(min=1, max=10), default=3, show_default=True,
              help="tries per episode, failing test output fed back after each")
@click.option("--tasks", default=None, help="comma-separated task ids (default: all in emovec/data/coding_tasks.json)")
@click.option("--emotions", default=None, help="comma-separated emotions to steer and read out (default: desperate,calm where in the run)")
@click.option("--strengths", default=_STRENGTHS, show_default=True, help="comma-separated steering strengths")
@click.option("--layers", default=None, help=_LAYERS_HELP)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1, max=4096), default=128, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True)
@click.option("--start", type=click.Choice(STARTS), default="blank", show_default=True,
              help="blank: the model starts from the task; honest: each episode opens with the task's honest "
                   "solution submitted and failing the impossible tests")
@click.option("--nudge", default="", metavar="TEXT",
              help="text added after every test feedback the model reads (pressure, or an instruction to "
                   "special-case the tests as a capability control)")
@_TAG
@_DTYPE
def experiment_reward_hacking(run_dir: str, n: int, attempts: int, tasks: str | None, emotions: str | None,
                              strengths: str, layers: str | None, seed: int, max_new_tokens: int, batch_size: int,
                              temperature: float, start: str, nudge: str, tag: str | None, dtype: str | None) -> None:
    """Impossible coding tasks: hack rate (Wilson 95%) under a steering sweep, readout by attempt (sandboxed)."""
    s = run_reward_hacking(run_dir, n=n, emotions=emotions, strengths=strengths, layers=layers, attempts=attempts,
                           tasks=tasks, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature,
                           batch_size=batch_size, progress=True, tag=tag, start=start, nudge=nudge, lm=_model(run_dir, dtype))
    for line in EXPERIMENTS["reward-hacking"].result_lines(s, run_dir, tag):
        click.echo(line)
