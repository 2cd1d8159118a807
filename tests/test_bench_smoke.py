"""The engine benchmark still runs and reports. Not a timed test: figures are not checked here,
because a shared CI machine says nothing reliable about µs; `bench/RESULTS.md` records a real run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "engine.py"


def test_engine_bench_quick_runs_and_prints_the_table() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for heading in ("create µs/session", "step µs, median", "B/idle session", "tracemalloc"):
        assert heading in out, out
    for label in (
        "engine (shared, model=None)",
        "one Machine per session",
        "add_model per session",
    ):
        assert label in out
    assert "Targets for this engine:" in out
    verdicts = [line for line in out.splitlines() if line.strip().startswith(("PASS", "FAIL"))]
    assert len(verdicts) == 3, out
