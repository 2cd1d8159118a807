"""bench/console.py still runs end to end and prints its figures (a small fleet: the benchmark,
not this test, measures 10,000 devices; no figure is checked against a target here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "console.py"


def test_the_console_bench_measures_every_page_and_endpoint() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--devices", "300", "--repeat", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["devices"] == 300
    assert {"GET /overview", "GET /devices (last page)", "GET /steps?limit=100"} <= set(doc["api"])
    assert set(doc["pages"]) == {
        "fleet (index.html)",
        "fleet, last page",
        "device (device.html)",
        "campaign (campaign.html)",
    }
    for figures in (*doc["api"].values(), *doc["pages"].values()):
        assert 0 < figures["median_ms"] <= figures["p95_ms"] <= figures["max_ms"]
    assert all(page["cold_ms"] > 0 for page in doc["pages"].values())
