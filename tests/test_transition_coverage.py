"""Transition coverage: steps counted per declared edge, the pytest table and threshold, and the
diagram that draws untaken edges grey and dashed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from iotfsm.diagrams.cli import main as diagram_main
from iotfsm.fsm import Connected, Stepper
from iotfsm.machines import campaign, log_level
from iotfsm.machines.examples import CAMPAIGN_PLANS
from iotfsm.machines.feature import DeviceKey
from iotfsm.testing.coverage import CoverageFileError, TransitionCoverage, load, recording

KEY = DeviceKey("P", "d1")


def test_steps_of_machines_built_while_recording_are_counted() -> None:
    before = Stepper(log_level.PLATFORM, key=KEY)
    with recording() as coverage:
        s = Stepper(log_level.PLATFORM, key=KEY)
        s.step(log_level.SetLogLevel(3))
        s.step(log_level.SetLogLevel(3))
        s.step(log_level.SetLogLevel(9))
        mutant = attrs.evolve(log_level.PLATFORM)
        Stepper(mutant, key=KEY).step(log_level.GetLogLevel("P-1"))
    before.step(log_level.GetLogLevel("P-1"))
    Stepper(log_level.PLATFORM, key=KEY).step(log_level.GetLogLevel("P-1"))
    (row,) = coverage.report()
    assert row.name == "log_level.platform"
    assert sorted(str(e) for e in row.taken) == [
        "assigned --SetLogLevel [valid_level]--> assigned",
        "assigned --SetLogLevel--> assigned",
        "default --SetLogLevel [valid_level]--> assigned",
    ]
    assert row.percent == pytest.approx(50.0)
    assert coverage.counts["log_level.platform"][(1, "assigned")] == 1
    assert s.trace[0].dest == "assigned"  # the stepper's own tracer still runs


def test_the_coverage_file_round_trips_and_bad_files_say_how_to_make_one(tmp_path: Path) -> None:
    with recording() as coverage:
        Stepper(log_level.DEVICE, key=KEY).step(Connected())
    path = tmp_path / "cov.json"
    coverage.save(path)
    assert load(path) == {"log_level.device": frozenset({(0, "offline")})}
    path.write_text('{"format": 99}')
    with pytest.raises(CoverageFileError, match="format 99, expected 1"):
        load(path)
    path.write_text("not json")
    with pytest.raises(CoverageFileError, match="pytest --iotfsm-coverage --iotfsm-coverage-file"):
        load(path)
    assert isinstance(TransitionCoverage().report(), list)


SUITE = """
from iotfsm.fsm import Stepper
from iotfsm.machines import log_level
from iotfsm.machines.feature import DeviceKey

def test_platform():
    s = Stepper(log_level.PLATFORM, key=DeviceKey("P", "d"))
    s.step(log_level.GetLogLevel("P-1"))
    s.step(log_level.SetLogLevel(2))
"""


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest on SUITE with the iotfsm plugin only. The other installed plugins (schemathesis,
    anyio, hypothesis, timeout) take 1-2 s of CPU to import in every run and play no part here;
    the entry point that loads iotfsm's plugin by itself is the one this suite runs under."""
    (tmp_path / "test_suite.py").write_text(SUITE)
    argv = ["-q", "-p", "no:cacheprovider", "-p", "iotfsm.testing.pytest_plugin"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *argv, *args, "test_suite.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_pytest_prints_the_table_and_fails_under_the_threshold(tmp_path: Path) -> None:
    out = tmp_path / "cov.json"
    low = _run(
        tmp_path, "--iotfsm-coverage", "--iotfsm-coverage-min=30", f"--iotfsm-coverage-file={out}"
    )
    assert low.returncode == 0, low.stdout + low.stderr
    assert re.search(r"log_level\.platform\s+6\s+2\s+33\.3%", low.stdout)
    assert "  log_level.platform: assigned --SetLogLevel--> assigned" in low.stdout
    assert json.loads(out.read_text())["machines"]["log_level.platform"] == [
        [0, "default", 1],
        [1, "default", 1],
    ]
    high = _run(tmp_path, "--iotfsm-coverage", "--iotfsm-coverage-min=90")
    assert high.returncode == 1
    assert "transition coverage 33.3% is under --iotfsm-coverage-min=90" in high.stdout
    plain = _run(tmp_path)
    assert plain.returncode == 0 and "iotfsm transition coverage" not in plain.stdout


def test_the_diagram_draws_untaken_edges_grey_and_dashed(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    with recording() as coverage:
        s = Stepper(log_level.PLATFORM, key=KEY)
        s.step(log_level.GetLogLevel("P-1"))
    path = tmp_path / "cov.json"
    coverage.save(path)
    argv = ["log_level", "--role", "platform", "--format", "dot", "-o", "-"]
    assert diagram_main([*argv, "--coverage", str(path)]) == 0
    dot = capsysbinary.readouterr().out.decode()
    assert "tests took 1 of 6 edges" in dot
    edges = [line for line in dot.splitlines() if "->" in line and "label=" in line]
    dashed = [e for e in edges if "style=dashed" in e and "#6c757d" in e]
    # SetLogLevel's edge default -> assigned was never taken, nor anything in `assigned`;
    # the loop on `default` carries GetLogLevel, which was
    assert any("default -> assigned" in e for e in dashed)
    assert any("assigned -> assigned" in e for e in dashed)
    assert not any("default -> default" in e for e in dashed)
    assert diagram_main([*argv]) == 0
    assert "style=dashed" not in capsysbinary.readouterr().out.decode()
    assert diagram_main(["--all", "-o", str(tmp_path), "--coverage", str(path)]) == 2
    path.write_text("{}")
    assert diagram_main([*argv, "--coverage", str(path)]) == 1


def test_a_platform_level_machine_is_drawn_with_its_coverage_too(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    with recording() as coverage:
        Stepper(campaign.SPEC, key="c-1").step(campaign.Launch(CAMPAIGN_PLANS[0]))
    path = tmp_path / "cov.json"
    coverage.save(path)
    assert diagram_main(["campaign", "--format", "dot", "-o", "-", "--coverage", str(path)]) == 0
    dot = capsysbinary.readouterr().out.decode()
    assert "campaign: tests took 1 of 60 edges" in dot
    edges = [line for line in dot.splitlines() if "->" in line and "label=" in line]
    dashed = [e for e in edges if "style=dashed" in e and "#6c757d" in e]
    assert any("scheduled -> running" in e for e in dashed)  # timer:begin never fired
    assert not any("scheduled -> scheduled" in e and "Launch" in e for e in dashed)
    assert len(dashed) < len(edges)
