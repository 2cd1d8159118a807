"""The invented-names benchmark still runs end to end: a platform process over its own anonymous
Mosquitto, flooded with invented names, answers its real devices and keeps nothing of the
invented ones. `--quick` is 20,000 names; `bench/RESULTS.md` records the 300,000-name run."""

from __future__ import annotations

from bench_runner import run_bench


def test_invented_names_bench_quick_keeps_nothing_and_answers_real_devices() -> None:
    out = run_bench("invented_names.py", "--quick", timeout=180)
    assert "sessions kept 100, invented 0" in out
    assert "platform RSS KiB" in out and "answer ms" in out
