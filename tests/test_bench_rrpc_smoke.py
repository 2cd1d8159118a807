"""The RRPC benchmark still runs end to end against its own Mosquitto and every call is answered
with its own answer. Not a timed test: `bench/RESULTS.md` records a real run's figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "rrpc.py"


def test_rrpc_bench_quick_answers_every_call() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every call answered with its own answer" in proc.stdout
    assert "calls/s" in proc.stdout and "latency ms" in proc.stdout
