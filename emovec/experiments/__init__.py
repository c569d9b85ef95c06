"""Behavioural experiments under steering: activity preferences, blackmail, reward hacking.

    common.py            what they share: conditions, settings guard, sample store, statistics, readout
    registry.py          EXPERIMENTS: name -> title, run function, results folder, summary_lines (CLI, report)
    preferences.py       activity preferences (activities.py: prompts and readers; elo.py: the fits)
    blackmail.py         the blackmail scenario (blackmail_grading.py: scenario, emails, graders)
    hacking.py           reward hacking (coding_tasks.py: tasks, sandboxed checks, hack classification;
                         hacking_stats.py: hack rates, dose-response, readout by attempt, tables)
    sandbox.py           running model-written code; sandbox_code/ holds the scripts run inside it

Each experiment keeps its samples and results under `RUN_DIR/experiments/<folder>/`.
"""

from .registry import EXPERIMENTS, Experiment, get_experiment

__all__ = ["EXPERIMENTS", "Experiment", "get_experiment"]
