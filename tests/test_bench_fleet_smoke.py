"""The fleet benchmarks still run end to end and print their figures. Not timed tests: a shared
machine says nothing reliable about µs or messages per second, so no figure is checked against a
target here; `bench/RESULTS.md` records real runs and says whether the targets pass."""

from __future__ import annotations

import pytest
from bench_runner import run_bench as _run

from iotfsm.testing.mosquitto import MosquittoNotFoundError, find_mosquitto


def test_fleet_bench_quick_runs_both_variants_and_prints_the_figures() -> None:
    out = _run("fleet.py", "--quick", timeout=60)
    for heading in ("msg/s", "µs/msg", "create µs/dev", "peak RSS", "B/idle platform"):
        assert heading in out, out
    for label in ("engine (Runtime + Machine + Codec)", "baseline (dict dispatch + json)"):
        rows = [line for line in out.splitlines() if line.startswith(label)]
        assert len(rows) == 2, out  # one per quick size
    assert "Engine / baseline" in out
    verdicts = [
        line.strip() for line in out.splitlines() if line.strip().startswith(("PASS", "FAIL"))
    ]
    # ratio, idle session, peak RSS, linearity; a broken exchange would add a FAIL line of its own
    assert len(verdicts) == 4, out
    assert not any("messages, expected" in line or "did not" in line for line in verdicts), out


def test_mqtt_fleet_bench_quick_runs_against_a_private_mosquitto() -> None:
    try:
        find_mosquitto()
    except MosquittoNotFoundError as exc:
        pytest.skip(str(exc))
    out = _run("mqtt_fleet.py", "--quick", timeout=60)
    assert "messages/s at the platform" in out, out
    for name in ("report -> rsp", "final report -> rsp", "deploy -> offer", "offer -> confirmed"):
        assert name in out, out
    assert "checked: every round" in out, out
    assert "INVALID RUN" not in out, out
