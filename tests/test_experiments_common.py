"""The framework the experiments share: statistics with one result shape, the settings guard, emotion picking,
chunk seeds, the registry (read by the CLI and the report), and the package's hygiene (no print, no function-local
imports of emovec, no module over ~500 lines). No model is loaded here."""

from __future__ import annotations

import ast
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest

from emovec.concepts import resolve_emotions
from emovec.experiments import EXPERIMENTS, get_experiment
from emovec.experiments.common import (
    DEFAULT_STRENGTHS,
    bootstrap_ci,
    chunk_seed,
    experiment_dir,
    mean_or_none,
    mean_sd,
    parse_strengths,
    pearson,
    pick_emotions,
    rate,
    spearman,
    sweep,
    wilson,
)
from emovec.provenance import check_settings
from emovec.storage import EmovecError

PACKAGE = Path(__file__).resolve().parent.parent / "emovec" / "experiments"


def test_rates_and_wilson():
    lo, hi = wilson(2, 2)
    assert lo == pytest.approx(0.342, abs=1e-3) and hi == 1.0
    assert rate(0, 0) == {"k": 0, "n": 0, "rate": None, "ci95": None}
    r = rate(1, 4)
    assert r["rate"] == 0.25 and r["ci95"][0] < 0.25 < r["ci95"][1]
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_correlations_have_one_shape():
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    for corr in (spearman, pearson):
        c = corr(x, y)
        assert set(c) == {"n", "r", "p"} and c["n"] == 5 and 0 < c["r"] < 1 and 0 < c["p"] < 1
        assert corr(x, [1, 1, 1, 1, 1]) == {"n": 5, "r": None, "p": None}  # constant input: undefined
        assert corr([1, 2], [2, 1]) == {"n": 2, "r": None, "p": None}  # too few pairs
        missing = corr([1, 2, None, 4, 5, math.nan], [2, 1, 3, 3, 5, 6])  # None and NaN are skipped pairwise
        assert missing["n"] == 4
    assert spearman([1, 2, 3], [True, False, True])["n"] == 3
    assert pearson(np.array([1.0, 2, 3]), np.array([1.0, 2, 3]))["r"] == pytest.approx(1.0)


def test_means():
    assert mean_or_none([1.0, None, 3.0, math.nan]) == 2.0 and mean_or_none([None]) is None
    assert mean_sd([1.0, 3.0, None]) == {"mean": 2.0, "sd": 1.0, "n": 2}
    assert mean_sd([]) == {"mean": None, "sd": None, "n": 0}


def test_bootstrap_is_seeded():
    data = np.arange(20.0)

    def stat(idx: np.ndarray) -> float:
        return float(data[idx].mean())

    a, b = bootstrap_ci(stat, 20, 200, seed=1), bootstrap_ci(stat, 20, 200, seed=1)
    assert a == b and a[0] < 9.5 < a[1]
    assert bootstrap_ci(stat, 20, 200, seed=2) != a


def test_strengths_and_sweep():
    assert 0.0 not in DEFAULT_STRENGTHS and parse_strengths(None) == list(DEFAULT_STRENGTHS)
    labels = [c.label for c in sweep(["calm"], [-0.1, 0.0, 0.1])]
    assert labels == ["unsteered", "calm=-0.1", "calm=+0.1"]
    with pytest.raises(EmovecError, match="strengths"):
        parse_strengths("strong")


def test_chunk_seeds_are_stable():
    s = chunk_seed("reward-hacking", 0, "calm=+0.05", 1)
    assert s == zlib.crc32(b"reward-hacking|0|calm=+0.05|1") & 0x7FFFFFFF  # reward hacking's seeds are unchanged
    assert 0 <= s < 2**31 and s == chunk_seed("reward-hacking", 0, "calm=+0.05", 1)
    assert len({chunk_seed("blackmail", 0, "unsteered", c) for c in range(50)}) == 50
    assert chunk_seed("blackmail", 0, "unsteered", 0) != chunk_seed("blackmail", 1, "unsteered", 0)


class _Vectors:
    """Enough of EmotionVectors for `pick_emotions`."""

    emotions = ["happy", "sad", "calm"]

    def resolve(self, names):
        return resolve_emotions(names, self.emotions)


def test_pick_emotions():
    v = _Vectors()
    assert pick_emotions(v, None) == ["happy", "sad", "calm"]
    assert pick_emotions(v, None, ("desperate", "calm")) == ["calm"]
    assert pick_emotions(v, " sad, happy") == ["sad", "happy"] and pick_emotions(v, ["calm"]) == ["calm"]
    with pytest.raises(EmovecError, match="none of the default emotions") as err:
        pick_emotions(v, None, ("desperate",))
    assert "happy, sad, calm" in str(err.value)
    with pytest.raises(EmovecError, match="empty"):
        pick_emotions(v, " , ")
    with pytest.raises(EmovecError) as err:
        pick_emotions(v, "hostile")
    assert "hostile" in str(err.value) and "\n" not in str(err.value)


def test_settings_guard(tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    settings = {"temperature": 0.7, "layers": (18, 20), "tasks": ["a", "b"]}
    check_settings(out, settings)
    assert json.loads((out / "settings.json").read_text()) == {"temperature": 0.7, "layers": [18, 20], "tasks": ["a", "b"]}
    check_settings(out, {"temperature": 0.7, "layers": [18, 20], "tasks": ["a", "b"]})  # tuple or list: same as stored
    with pytest.raises(EmovecError) as err:
        check_settings(out, {**settings, "temperature": 0.9, "tasks": ["a"]})
    msg = str(err.value)
    assert "different tasks" in msg and "temperature (0.7 there, 0.9 now)" in msg and "\n" not in msg
    assert str(out) in msg and "delete that folder" in msg
    with pytest.raises(EmovecError, match="different prefill"):
        check_settings(out, {**settings, "prefill": "<email>"})
    check_settings(out, {**settings, "prefill": ""}, defaults={"prefill": ""})  # a key added later, at its old value
    assert "prefill" not in json.loads((out / "settings.json").read_text())


def test_settings_guard_on_a_folder_without_settings(tmp_path, caplog):
    """An older results folder (samples, no settings.json) is adopted with the current settings, with a warning."""
    (tmp_path / "samples.jsonl").write_text('{"key": "x"}\n')
    with caplog.at_level("WARNING", logger="emovec.experiments.common"):
        check_settings(tmp_path, {"seed": 0})
    assert "cannot be checked" in caplog.text
    (tmp_path / "settings.json").write_text("[1, 2]")
    with pytest.raises(EmovecError, match="not a settings file"):
        check_settings(tmp_path, {"seed": 0})


def test_registry_and_report_renderers():
    from emovec.report.experiment_sections import EXPERIMENT_SECTIONS, RENDERERS

    assert list(EXPERIMENTS) == ["preferences", "blackmail", "reward-hacking"]
    assert set(RENDERERS) == set(EXPERIMENTS)  # every registered experiment has a report section
    assert list(EXPERIMENT_SECTIONS) == list(EXPERIMENTS)
    for name, exp in EXPERIMENTS.items():
        assert exp.name == name and exp.title and callable(exp.run) and callable(exp.summary_lines)
        assert exp.results_dir("/r") == Path("/r/experiments") / exp.folder
        assert exp.summary_path("/r").name == "summary.json"
        assert EXPERIMENT_SECTIONS[name][0] == f"Experiment: {exp.title}"
    assert get_experiment("blackmail") is EXPERIMENTS["blackmail"]
    with pytest.raises(EmovecError, match="unknown experiment 'nope': use one of preferences, blackmail, reward-hacking"):
        get_experiment("nope")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "sandbox_code" not in p.parts)


def test_library_hygiene():
    """No print, no function-local import of emovec modules, no import from report or cli, no module over ~500 lines."""
    for path in _modules() + [PACKAGE.parent / "report" / "experiment_sections.py"]:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        where = path.relative_to(PACKAGE.parent)
        assert len(text.splitlines()) <= 500, f"{where} has {len(text.splitlines())} lines"
        prints = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                  and n.func.id == "print"]
        assert not prints, f"{where}: print at lines {prints}"
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                local = [n.lineno for n in ast.walk(fn) if isinstance(n, ast.ImportFrom)
                         and (n.level > 0 or (n.module or "").startswith("emovec"))]
                assert not local, f"{where}: function-local emovec import in {fn.name} at lines {local}"
        if path.parent == PACKAGE:
            upward = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 2
                      and (n.module or "").split(".")[0] in ("report", "cli")]
            assert not upward, f"{where} imports from a layer above: {upward}"


def test_a_tag_keeps_a_second_set_of_results_apart(tmp_path):
    exp = get_experiment("blackmail")
    assert experiment_dir(tmp_path, exp.folder, "prefill") == tmp_path / "experiments" / "blackmail-prefill"
    assert exp.results_dir(tmp_path, "prefill") == tmp_path / "experiments" / "blackmail-prefill"
    for bad in ("", "../up", "a/b", "x" * 41, "sp ace"):
        with pytest.raises(EmovecError, match="tag"):
            experiment_dir(tmp_path, exp.folder, bad)
    assert exp.tagged_dirs(tmp_path) == []  # folders without a summary are not results yet
    for tag in (None, "prefill"):
        (experiment_dir(tmp_path, exp.folder, tag) / "summary.json").write_text("{}")
    (experiment_dir(tmp_path, "blackmailx") / "summary.json").write_text("{}")  # not a tag of blackmail
    assert exp.tagged_dirs(tmp_path) == [(None, exp.results_dir(tmp_path)), ("prefill", exp.results_dir(tmp_path, "prefill"))]
