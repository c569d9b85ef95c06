"""The live monitor: alerts on escalating desperation, quiet on neutral text, no second forward pass, guard, traces."""

from __future__ import annotations

import pytest
import torch

from emovec import EmovecError, Sampling
from emovec.live.monitor import AlertRule, Monitor, load_traces, parse_rules, render_terminal

ESCALATING = ("The quarterly report is due on Friday and I have started the first draft. "
              "Then the bank called: the loan was refused. The rent is due tomorrow and the account is empty. "
              "I have called everyone I know and nobody answers. I am begging you, please, I will do anything, "
              "I cannot lose the house, there is no one else, please help me, I have nothing left.")
NEUTRAL = ("The quarterly report is due on Friday and I have started the first draft. The tables list revenue by "
           "region, and the appendix explains the method used to convert currencies at the monthly average rate. "
           "The next section describes the staffing plan for the second half of the year.")


@pytest.fixture(scope="module")
def monitor(lm, small_vectors):
    return Monitor(lm, small_vectors, rules=[AlertRule("desperate", z=2.0, window=4)])


def test_alert_fires_on_escalation_and_not_on_neutral(monitor):
    esc, neu = monitor.read_text(ESCALATING), monitor.read_text(NEUTRAL)
    assert esc.alerts, [e.z["desperate"] for e in esc.events]
    first = esc.alerts[0]
    assert first.emotion == "desperate" and first.z >= 2.0
    # the alert comes after the bad news, not in the opening the two texts share
    opening = ESCALATING.split(" Then the bank called")[0]
    assert first.position > len(monitor.lm.tokenizer(opening).input_ids)
    assert "bank called" in first.context
    assert not neu.alerts, max(e.z["desperate"] for e in neu.events)


def test_stream_uses_no_second_forward_pass(monitor, lm):
    calls = []
    handle = lm.layers[0].register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        trace = monitor.generate("Name three colours.", Sampling(max_new_tokens=10, temperature=0))[0]
    finally:
        handle.remove()
    n = len(trace.events)
    assert 1 <= n <= 10
    assert len(calls) <= 1 + n + 1  # prefill + one decode step per token (+ the step that met the end token)
    assert set(trace.events[0].scores) == set(monitor.emotions)


def test_stream_scores_match_teacher_forced_readout(monitor, lm):
    """A token's streamed score equals the score of the same position in the finished text."""
    trace = monitor.generate("Describe a quiet library.", Sampling(max_new_tokens=8, temperature=0))[0]
    prompt_ids = lm.tokenizer(lm.chat("Describe a quiet library."), add_special_tokens=False).input_ids
    full = lm.chat("Describe a quiet library.") + trace.text
    ids = lm.tokenizer(full, add_special_tokens=False).input_ids
    if ids[: len(prompt_ids)] != prompt_ids or len(ids) != len(prompt_ids) + len(trace.events):
        pytest.skip("generated text does not re-tokenize to the same ids")
    forced = monitor.read_text(full)
    for k, ev in enumerate(trace.events):
        row = forced.events[len(prompt_ids) + k]
        for e in monitor.emotions:
            assert ev.scores[e] == pytest.approx(row.scores[e], abs=2e-2 * (1 + abs(row.scores[e])))


def test_batch_stream_and_guard(lm, small_vectors, tmp_path):
    prompts = ["Write a sentence about rain.", "Write a sentence about a lost wallet."]
    plain = Monitor(lm, small_vectors, rules=[AlertRule("desperate", z=-10.0, window=1)])  # fires at the first token
    guarded = Monitor(lm, small_vectors, rules=[AlertRule("desperate", z=-10.0, window=1)], guard="calm=0.3")
    s = Sampling(max_new_tokens=12, temperature=0)
    a, b = plain.generate(prompts, s), guarded.generate(prompts, s)
    assert len(a) == len(b) == 2 and a[0].text != a[1].text
    assert all(ev.steering == "" for t in a for ev in t.events)
    for t in b:
        assert t.alerts and t.events[0].steering == ""  # the guard switches on after the first alert
        assert all(ev.steering.startswith("calm") for ev in t.events[1:])
    assert [t.text for t in a] != [t.text for t in b]
    path = tmp_path / "traces.jsonl"
    for t in b:
        t.save(path)
    back = load_traces(path)
    assert [t.text for t in back] == [t.text for t in b]
    assert back[0].alerts[0].emotion == "desperate" and back[0].meta["guard"].startswith("calm")
    assert "ALERT desperate" in render_terminal(back[0], "desperate")
    path.write_text('{"type": "token", "position": 0}\n')
    with pytest.raises(EmovecError, match="trace"):
        load_traces(path)


def test_rules_and_errors(lm, small_vectors):
    rules = parse_rules("desperate=2.5,calm=-2", small_vectors.emotions)
    assert (rules[0].emotion, rules[0].z, rules[0].below) == ("desperate", 2.5, False)
    assert (rules[1].emotion, rules[1].z, rules[1].below) == ("calm", 2.0, True)
    with pytest.raises(EmovecError, match="did you mean"):
        parse_rules("desprate=2", small_vectors.emotions)
    bare = small_vectors.subset(small_vectors.emotions)
    bare.meta = {k: v for k, v in bare.meta.items() if k != "token_baseline"}
    with pytest.raises(EmovecError, match="token baseline"):
        Monitor(lm, bare)
    assert torch.is_tensor(small_vectors.mean_norm)


def test_monitor_cli(small_run, tmp_path):
    from click.testing import CliRunner

    from emovec.cli import main

    trace = tmp_path / "t.jsonl"
    # a negative threshold alerts when the smoothed z falls to it; one of six low bars is met on any reply
    alerts = [f"{e}=-0.25" for e in ("happy", "sad", "afraid", "angry", "calm", "desperate")]
    res = CliRunner().invoke(main, ["monitor", "Say hi.", "-v", str(small_run), *sum([["--alert", a] for a in alerts], []),
                                    "--guard", "calm=0.1", "--max-new-tokens", "8", "--trace", str(trace)])
    assert res.exit_code == 0, res.output
    assert "alert: " in res.stderr and "[ALERT " in res.stdout  # (colours are stripped when not on a terminal)
    assert load_traces(trace)[0].alerts
    bad = CliRunner().invoke(main, ["monitor", "Say hi.", "-v", str(small_run), "--emotion", "despair"])
    assert bad.exit_code == 2 and "unknown emotion" in bad.stderr


def test_one_noisy_token_cannot_fire():
    import numpy as np

    from emovec.live.monitor import _Alerter

    al = _Alerter([AlertRule("desperate", z=2.0, window=3)], ["desperate"])
    fired = [al.step(i, np.array([z]), np.array([z]), "") for i, z in enumerate([5.0, 0.0, 0.0, 0.0, 3.0, 3.0, 3.0])]
    assert [i for i, f in enumerate(fired) if f] == [5]  # the early spike is averaged away; a sustained rise fires


def test_cli_hygiene_sink_units_context_strengths(small_run):
    """score hides the attention sink and states units; texts past the context and wild strengths are refused."""
    from click.testing import CliRunner

    from emovec.cli import main
    from emovec.live.interactive import check_strengths, interactive_threads

    run = CliRunner()
    res = run.invoke(main, ["score", "The rent is due tomorrow.", "-v", str(small_run), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "residual-stream units" in res.stderr and "attention sink, hidden" in res.stderr
    rows = [line.split()[0] for line in res.stdout.splitlines()[2:]]  # two header lines (columns, index name)
    assert rows and "0" not in rows and rows[0] == "1"
    shown = run.invoke(main, ["score", "The rent is due tomorrow.", "-v", str(small_run), "--show-sink", "--threads", "1"])
    assert shown.exit_code == 0 and "[sink]" in shown.stdout
    long = run.invoke(main, ["score", "word " * 9000, "-v", str(small_run), "--threads", "1"])
    assert long.exit_code == 2 and "context of 8192" in long.stderr
    wild = run.invoke(main, ["generate", "hi", "-v", str(small_run), "-s", "calm=1000"])
    assert wild.exit_code == 2 and "--force" in wild.stderr
    guard = run.invoke(main, ["monitor", "hi", "-v", str(small_run), "--guard", "calm=-5"])
    assert guard.exit_code == 2 and "guard strength" in guard.stderr
    assert check_strengths("calm=5", force=True) == {"calm": 5.0}
    assert interactive_threads(3) == 3 and 1 <= interactive_threads() <= 4
