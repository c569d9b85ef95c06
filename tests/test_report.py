"""The HTML report: self-contained, every analysis rendered, re-renderable from saved results without a model."""

from __future__ import annotations

import re
import shutil

import pytest
from click.testing import CliRunner

from emovec import compare_models, severity, steering_vector
from emovec.cli import main
from emovec.report import write_report
from emovec.storage import write_json
from emovec.validate.runner import ANALYSES, analyses_dir
from emovec.validate.scenarios import implicit_rows, severity_templates
from emovec.validate.steering import SteeringConfig, steering_efficacy, steering_prompts


@pytest.fixture(scope="module")
def reported_run(lm, small_run, small_vectors, tmp_path_factory):
    """A copy of the small run; severity and comparison are saved first on fewer prompts (to keep tests fast)."""
    run_dir = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(small_run, run_dir)
    write_json(analyses_dir(run_dir) / "severity.json", severity(lm, small_vectors, severity_templates()[:2]))
    prompts = [r["text"] for r in implicit_rows()][:3]
    write_json(analyses_dir(run_dir) / "compare.json",
               compare_models(lm, lm, small_vectors, prompts, steer_b=steering_vector(small_vectors, "sad=0.1")))
    small = SteeringConfig(emotions=("happy", "sad"), layer_emotions=(), strengths=(-0.2, 0.0, 0.2), layers=(20,),
                           prompts=tuple(steering_prompts()[:4]), max_new_tokens=16)
    write_json(analyses_dir(run_dir) / "steering.json", steering_efficacy(lm, small_vectors, small))
    return run_dir, write_report(run_dir, lm)


def test_report_is_self_contained_with_every_figure(reported_run):
    run_dir, path = reported_run
    text = path.read_text(encoding="utf-8")
    assert path == run_dir / "report.html"
    assert not re.search(r"https?://", text)  # opens offline: no external references at all
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,', text)) == 7
    for heading in ("What reproduced", "Held-out recognition", "Layer sweep", "Geometry", "Logit lens",
                    "Severity scaling", "Implicit scenarios", "Corpus scaling", "Steering efficacy", "Model comparison"):
        assert f"<h2>{heading}" in text
    assert "not available" not in text and "could not render" not in text
    assert "0.81 (n=45)" in text and "26%" in text  # the paper's numbers beside ours


def test_results_saved_and_report_rerenders_without_model(reported_run):
    run_dir, path = reported_run
    for name in ANALYSES + ("compare",):
        assert (analyses_dir(run_dir) / f"{name}.json").exists(), name
    before = path.read_text(encoding="utf-8").count("<img")
    res = CliRunner().invoke(main, ["report", str(run_dir), "--no-compute"], catch_exceptions=False)
    assert res.exit_code == 0 and "report.html" in res.output
    assert path.read_text(encoding="utf-8").count("<img") == before


def test_analyze_cli_prints_key_numbers_from_saved_results(reported_run):
    run_dir, _ = reported_run
    res = CliRunner().invoke(main, ["analyze", str(run_dir), "--only", "geometry,layer-sweep"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "PC1" in res.output and "paper 26%" in res.output and "best layer" in res.output
    res = CliRunner().invoke(main, ["analyze", str(run_dir), "--only", "vibes"])
    assert res.exit_code == 2 and "unknown analysis 'vibes'" in res.stderr
