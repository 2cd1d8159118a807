"""The invented-names benchmark still runs end to end: a platform process over its own anonymous
Mosquitto, flooded with invented names, answers its real devices and keeps nothing of the
invented ones. `--quick` is 20,000 names; `bench/RESULTS.md` records the 300,000-name run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "invented_names.py"


def test_invented_names_bench_quick_keeps_nothing_and_answers_real_devices() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sessions kept 100, invented 0" in proc.stdout
    assert "platform RSS KiB" in proc.stdout and "answer ms" in proc.stdout
