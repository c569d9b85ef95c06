"""emovec: find, validate, monitor and steer emotion vectors in open-weight language models.

Data flow, one module per stage:
concepts -> corpus -> activations -> vectors -> readout / steering -> analyses -> report,
with behavioural experiments (preferences, blackmail, hacking) on top of steering and readout.
"""

__version__ = "0.1.0"

from .activations import CorpusActivations, extract_corpus, load_corpus_activations, pool_mask, pool_texts
from .analyses import geometry, heldout_recognition, layer_sweep, load_norms, logit_lens
from .concepts import load_concepts, resolve_emotions
from .corpus import (
    generate_neutral,
    generate_stories,
    import_stories,
    load_corpus,
    names_emotion,
    parse_stories,
)
from .experiments import Condition, SampleStore, reply_scores, sweep, wilson
from .generation import FastBackend, GenerationBackend, HFBackend, Sampling, decode, generate_text
from .blackmail import Grade, Grader, JudgeGrader, RuleGrader, load_scenario, run_blackmail
from .hacking import check_solution, classify_hack, load_tasks, run_reward_hacking
from .preferences import bradley_terry, fit_elo, load_activities, pair_preferences, run_preferences
from .models import DEFAULT_MODEL, LanguageModel, find_layers, load_model
from .pipeline import PRESETS, RunConfig, make_config, run
from .speakers import speaker_dialogues, speaker_probes
from .readout import project, score_text, score_texts, top_emotions
from .scenarios import compare_models, implicit_prompts, severity
from .report import run_analyses, write_report
from .steering import SteeringVector, parse_spec, steer, steering_vector
from .storage import EmovecError
from .vectors import EmotionVectors

__all__ = [
    "__version__", "CorpusActivations", "DEFAULT_MODEL", "EmotionVectors", "EmovecError", "GenerationBackend",
    "HFBackend", "LanguageModel", "PRESETS", "RunConfig", "Sampling", "SteeringVector", "extract_corpus",
    "find_layers", "generate_neutral", "generate_stories", "generate_text", "heldout_recognition", "import_stories",
    "load_concepts", "load_corpus", "load_corpus_activations", "load_model", "make_config", "names_emotion",
    "parse_spec", "parse_stories", "pool_mask", "pool_texts", "project", "resolve_emotions", "run", "score_text",
    "score_texts", "steer", "steering_vector", "top_emotions",
    "compare_models", "geometry", "implicit_prompts", "layer_sweep", "load_norms", "logit_lens", "run_analyses",
    "severity", "write_report", "speaker_dialogues", "speaker_probes",
    "Condition", "FastBackend", "Grade", "Grader", "JudgeGrader", "RuleGrader", "SampleStore", "bradley_terry",
    "check_solution", "classify_hack", "decode", "fit_elo", "load_activities", "load_scenario", "load_tasks",
    "pair_preferences", "reply_scores", "run_blackmail", "run_preferences", "run_reward_hacking", "sweep", "wilson",
]
