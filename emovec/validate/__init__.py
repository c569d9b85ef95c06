"""Validation analyses: the paper's evidence that the vectors are real, computed on any run.

`analyses` (logit lens, geometry, layer sweep), `scenarios` (severity, implicit
prompts, model comparison), `speakers` (speaker probes), `arousal` (which direction
tracks human arousal, with a hold-out protocol) and `runner`, which runs them on a run
directory and saves the results under `RUN_DIR/analyses/`.
"""
