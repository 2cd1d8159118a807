"""The OTA throughput benchmark still runs end to end and reports both throughputs. Not a timed
test: loopback and fsync figures on a shared VM say nothing reliable; `bench/RESULTS.md` records a
real run, and whether the target passes is for that run to say, not for this test."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "ota.py"


def _rate(out: str, label: str) -> float:
    """The MB/s column of the table row starting with `label`."""
    for line in out.splitlines():
        if line.startswith(label):
            match = re.search(r"\s(\d+\.\d{3})\s+(\d+\.\d)\s", line[len(label) :])
            assert match, line
            return float(match.group(2))
    raise AssertionError(f"no row {label!r} in:\n{out}")


def test_ota_bench_quick_runs_and_prints_both_throughputs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert _rate(out, "bare urllib GET + md5, /dev/null") > 0
    assert _rate(out, "device role: offer -> burning") > 0
    assert _rate(out, "download() adapter") > 0
    assert "device / bare /dev/null" in out
    assert "Memory of the device path" in out
    verdicts = [line for line in out.splitlines() if line.strip().startswith(("PASS", "FAIL"))]
    assert len(verdicts) == 2, out
    assert list(tmp_path.iterdir()) == [], "the bench must clean up its temporary files"
