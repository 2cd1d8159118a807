"""The README's first command: `iotfsm demo` passes every check and says so."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from iotfsm.cli import main
from iotfsm.testing import Mosquitto


def test_demo_passes_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--devices", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] is True
    assert doc["devices"] == 3
    names = " ".join(c["name"] for c in doc["checks"])
    features = ("log level", "config", "ota", "upload", "download", "rrpc", "broadcast", "shadow")
    for feature in (*features, "campaign", "wire"):
        assert feature in names
    assert all(c["passed"] for c in doc["checks"])


def test_the_demo_runs_over_a_real_broker(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--devices", "2", "--json", "--broker", mosquitto.url]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] is True and doc["broker"] == mosquitto.url


def test_python_dash_m_runs_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "iotfsm", "demo", "--devices", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--devices", "0"]) == 2
    assert capsys.readouterr().err.strip() == "iotfsm: --devices must be at least 1"
