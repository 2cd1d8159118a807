"""The RRPC benchmark still runs end to end against its own Mosquitto and every call is answered
with its own answer. Not a timed test: `bench/RESULTS.md` records a real run's figures."""

from __future__ import annotations

from bench_runner import run_bench


def test_rrpc_bench_quick_answers_every_call() -> None:
    out = run_bench("rrpc.py", "--quick", timeout=120)
    assert "every call answered with its own answer" in out
    assert "calls/s" in out and "latency ms" in out
