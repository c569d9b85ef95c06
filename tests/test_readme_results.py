"""The README's results table is generated from the committed results file of the demo run, never typed in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from emovec.report.results import readme_block, stage_timings, timings_text
from emovec.storage import write_json

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_table_matches_the_committed_results_file():
    results = ROOT / "results" / "demo.json"
    assert results.exists(), "results/demo.json is missing: run `make demo`, then `make readme-results`"
    block = readme_block(results)
    assert block in (ROOT / "README.md").read_text(encoding="utf-8"), (
        "README.md's results table differs from results/demo.json: run `make readme-results`")


@pytest.mark.parametrize("name", sorted(set(re.findall(r"<!-- results:([\w-]+):start",
                                                   (ROOT / "README.md").read_text(encoding="utf-8")))))
def test_every_readme_results_block_matches_its_results_file(name):
    results = ROOT / "results" / f"{name}.json"
    assert results.exists(), f"README.md has a results block for {name!r} but results/{name}.json is missing"
    assert readme_block(results, name) in (ROOT / "README.md").read_text(encoding="utf-8"), (
        f"README.md's {name} results table differs from results/{name}.json: "
        f"run `emovec results --readme README.md --from results/{name}.json`")


def test_timings_read_in_minutes_and_say_what_they_leave_out():
    text = timings_text({"corpus_s": 1713.8, "extract_s": 24.0, "total_s": 1742.3})
    assert text == "29.0 min (corpus 28.6, extraction 0.4; analyses and report not included)"
    assert timings_text(None) == timings_text({"corpus_s": 3.0}) == "not recorded"
    with_analyses = timings_text({"corpus_s": 1713.8, "extract_s": 24.0, "total_s": 1742.3, "analyses_s": 234.0})
    assert with_analyses == "32.9 min: pipeline 29.0 (corpus 28.6, extraction 0.4), analyses 3.9 (the report's rendering not included)"


def test_stage_timings_add_the_seconds_the_saved_analyses_record(tmp_path):
    write_json(tmp_path / "geometry.json", {"seconds": 0.8, "layer": 20})
    write_json(tmp_path / "steering.json", {"seconds": 318.6})
    write_json(tmp_path / "compare.json", {"rows": []})  # saved without a time: counts nothing
    pipeline = {"corpus_s": 10.0, "total_s": 12.0}
    assert stage_timings(pipeline, tmp_path) == {**pipeline, "analyses_s": 319.4}
    assert stage_timings(pipeline, tmp_path / "none") == pipeline and stage_timings(None, tmp_path) is None
