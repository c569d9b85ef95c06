"""The README's results table is generated from the committed results file of the demo run, never typed in."""

from __future__ import annotations

from pathlib import Path

from emovec.report.results import readme_block

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_table_matches_the_committed_results_file():
    results = ROOT / "results" / "demo.json"
    assert results.exists(), "results/demo.json is missing: run `make demo`, then `make readme-results`"
    block = readme_block(results)
    assert block in (ROOT / "README.md").read_text(encoding="utf-8"), (
        "README.md's results table differs from results/demo.json: run `make readme-results`")
