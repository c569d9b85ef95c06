"""emovec: find, validate, monitor and steer emotion vectors in open-weight language models.

The package is layered; each layer imports only the ones below it:

- core stages (this folder): storage, models, concepts, activations, vectors, generation, readout,
  steering, control_vectors (llama.cpp GGUF control vectors), corpus, recognition, rundir (run directories),
  distributed (a run's writing and extraction on Ray actors; Ray optional) and pipeline (the stages of a run);
- `validate/`: the paper's validation analyses and the runner that saves them in a run;
- `live/`: the streaming monitor and the web server around it;
- `experiments/`: behavioural experiments under steering;
- `report/`: the HTML report, and `run` (pipeline + report);
- `cli.py`: the command line.

This module re-exports the public names, so `import emovec` is all most users need.
"""

from ._version import __version__
from .activations import CorpusActivations, extract_corpus, load_corpus_activations, pool_mask, pool_texts
from .concepts import load_concepts, resolve_emotions
from .control_vectors import ControlVectorFile, export_emotions, export_gguf, import_gguf, read_gguf
from .corpus import (
    generate_neutral,
    generate_stories,
    import_stories,
    load_corpus,
    names_emotion,
    parse_stories,
    refill_stories,
)
from .experiments.blackmail import Grade, Grader, JudgeGrader, RuleGrader, load_scenario, run_blackmail
from .experiments.common import Condition, SampleStore, reply_scores, sweep, wilson
from .experiments.hacking import check_solution, classify_hack, gaming_evidence, load_tasks, run_reward_hacking
from .experiments.preferences import bradley_terry, fit_elo, load_activities, pair_preferences, run_preferences
from .generation import FastBackend, GenerationBackend, HFBackend, Sampling, decode, generate_text
from .live.monitor import AlertRule, Monitor
from .models import DEFAULT_MODEL, LanguageModel, find_layers, load_model
from .readout import project, score_text, score_texts, token_baseline, top_emotions
from .recognition import heldout_recognition
from .report import run, write_report
from .rundir import PRESETS, RunConfig, load_run, make_config
from .steering import SteeringVector, parse_spec, steer, steering_vector
from .storage import EmovecError
from .validate.analyses import geometry, layer_sweep, load_norms, logit_lens
from .validate.runner import run_analyses
from .validate.scenarios import compare_models, implicit_prompts, severity
from .validate.speakers import speaker_dialogues, speaker_probes
from .vectors import EmotionVectors

__all__ = [
    "__version__", "AlertRule", "CorpusActivations", "DEFAULT_MODEL", "EmotionVectors", "EmovecError",
    "GenerationBackend", "HFBackend", "LanguageModel", "Monitor", "PRESETS", "RunConfig", "Sampling",
    "SteeringVector", "extract_corpus", "find_layers", "generate_neutral", "generate_stories", "generate_text",
    "heldout_recognition", "import_stories", "load_concepts", "load_corpus", "load_corpus_activations", "load_model",
    "load_run", "make_config", "names_emotion", "parse_spec", "parse_stories", "pool_mask", "pool_texts", "project",
    "resolve_emotions", "run", "score_text", "score_texts", "steer", "steering_vector", "token_baseline",
    "top_emotions", "compare_models", "geometry", "implicit_prompts", "layer_sweep", "load_norms", "logit_lens",
    "run_analyses", "severity", "write_report", "speaker_dialogues", "speaker_probes",
    "Condition", "FastBackend", "Grade", "Grader", "JudgeGrader", "RuleGrader", "SampleStore", "bradley_terry",
    "check_solution", "classify_hack", "decode", "gaming_evidence", "fit_elo", "load_activities", "load_scenario", "load_tasks",
    "pair_preferences", "reply_scores", "run_blackmail", "run_preferences", "run_reward_hacking", "sweep", "wilson",
    "ControlVectorFile", "export_emotions", "export_gguf", "import_gguf", "read_gguf", "refill_stories",
]
