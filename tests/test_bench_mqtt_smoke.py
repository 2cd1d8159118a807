"""The MQTT throughput benchmark still runs end to end against its own Mosquitto and reports both
rates. Not a timed test: a shared machine says nothing reliable about messages per second, so the
figures are not checked here; `bench/RESULTS.md` records a real run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from iotfsm.testing.mosquitto import MosquittoNotFoundError, find_mosquitto

BENCH = Path(__file__).resolve().parents[1] / "bench" / "mqtt.py"


def test_mqtt_bench_quick_runs_and_prints_both_rates() -> None:
    try:
        find_mosquitto()
    except MosquittoNotFoundError as exc:
        pytest.skip(str(exc))
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "INVALID RUN" not in out, out
    for label in ("same client, decode+reply", "bare paho + json.loads", "iotfsm Platform"):
        rows = [line for line in out.splitlines() if line.startswith(label)]
        # one row for the round, one for the median; the median row carries a msg/s figure
        # and the share of the stock and of the same-client subscriber
        assert len(rows) == 2, out
        assert re.search(r"\d[\d,]* +\d[\d,]* +\d+\.\d% +\d+\.\d%$", rows[-1]), rows[-1]
    assert re.search(
        r"^(PASS|FAIL)  platform >= 80% of the same-client decode-and-reply subscriber", out, re.M
    ), out
