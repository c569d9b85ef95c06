"""The registry of experiments: the one list the CLI and the report read.

Each entry names an experiment (the CLI sub-command), its title, the function
that runs it, the results folder under `RUN_DIR/experiments/`, and
`summary_lines`, which turns its summary into the lines the CLI prints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..storage import EmovecError
from . import blackmail, hacking, preferences
from .common import SUMMARY_FILE, results_folder


@dataclass(frozen=True)
class Experiment:
    """One registered experiment."""

    name: str
    title: str
    run: Callable[..., Mapping[str, Any]]
    folder: str
    summary_lines: Callable[[Any], list[str]]

    def results_dir(self, run_dir: str | Path, tag: str | None = None) -> Path:
        """`RUN_DIR/experiments/<folder>/` (`<folder>-<tag>/` with a tag): the experiment's samples and results."""
        return results_folder(run_dir, self.folder, tag)

    def tagged_dirs(self, run_dir: str | Path) -> list[tuple[str | None, Path]]:
        """(tag, folder) of every results folder of this experiment in a run that has a summary: untagged first."""
        base = self.results_dir(run_dir)
        found = [(None, base)] + [(p.name[len(self.folder) + 1:], p)
                                  for p in sorted(base.parent.glob(f"{self.folder}-*")) if p.is_dir()]
        return [(tag, p) for tag, p in found if (p / SUMMARY_FILE).exists()]

    def summary_path(self, run_dir: str | Path) -> Path:
        """The experiment's summary.json in a run directory (it may not exist yet)."""
        return self.results_dir(run_dir) / SUMMARY_FILE

    def result_lines(self, summary: Mapping[str, Any], run_dir: str | Path, tag: str | None = None) -> list[str]:
        """`summary_lines`, then where the results are and how long the call took."""
        return [*self.summary_lines(summary),
                f"results: {self.results_dir(run_dir, tag)} ({summary['timing']['total_s']:.0f} s)"]


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("preferences", preferences.TITLE, preferences.run_preferences, preferences.NAME, preferences.summary_lines),
    Experiment("blackmail", blackmail.TITLE, blackmail.run_blackmail, blackmail.NAME, blackmail.summary_lines),
    Experiment("reward-hacking", hacking.TITLE, hacking.run_reward_hacking, hacking.NAME, hacking.summary_lines),
)}


def get_experiment(name: str) -> Experiment:
    """The registered experiment called `name`, or a one-line error listing them."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise EmovecError(f"unknown experiment {name!r}: use one of {', '.join(EXPERIMENTS)}") from None
