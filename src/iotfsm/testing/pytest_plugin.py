"""pytest fixtures for code built on iotfsm; registered as a pytest plugin when iotfsm is installed.

    def test_my_device_app(iotfsm_pair):
        device = iotfsm_pair.device("dev-1").start()
        iotfsm_pair.platform.set_log_level(iotfsm_pair.product, "dev-1", 4)
        assert device.log_level == 4

Fixtures: `iotfsm_clock` (a ManualClock), `iotfsm_broker` (a MemoryBroker on that clock, recording
deliveries), `iotfsm_pair` (a Platform and devices on both), `mosquitto` (a real Mosquitto on a
free port, stopped afterwards; a missing binary fails the test rather than skipping it).

`pytest --iotfsm-coverage` prints which transitions of each machine the tests took (see
`iotfsm.testing.coverage`); `--iotfsm-coverage-min PERCENT` fails the run under that share, and
`--iotfsm-coverage-file FILE` saves the edges for `iotfsm diagram --coverage FILE`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported where used: every pytest run loads this plugin, few use all of it
    from ..adapters.mqtt.memory_broker import MemoryBroker
    from ..fsm.clock import ManualClock
    from .coverage import MachineCoverage, TransitionCoverage
    from .mosquitto import Mosquitto
    from .pair import Pair


@pytest.fixture
def iotfsm_clock() -> ManualClock:
    """A clock that moves only when the test advances it."""
    from ..fsm.clock import ManualClock
    from .pair import START

    return ManualClock(START)


@pytest.fixture
def iotfsm_broker(iotfsm_clock: ManualClock) -> MemoryBroker:
    """The embedded MQTT broker on `iotfsm_clock`, recording every delivery (`.record`)."""
    from ..adapters.mqtt.memory_broker import MemoryBroker

    return MemoryBroker(scheduler=iotfsm_clock, record=True)


@pytest.fixture
def iotfsm_pair(tmp_path: Path) -> Iterator[Pair]:
    """A started Platform plus `.device(name)` factories, over a memory broker and manual clock."""
    from .pair import Pair

    with Pair(tmp_path / "iotfsm") as pair:
        yield pair


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A real Mosquitto of this test's own on a free 127.0.0.1 port (`.url`), stopped after."""
    from .mosquitto import Mosquitto

    with Mosquitto() as broker:
        yield broker


# ---- transition coverage: pytest --iotfsm-coverage ------------------------------------------

COVERAGE_KEY: pytest.StashKey[TransitionCoverage] = pytest.StashKey()
RECORDING_KEY: pytest.StashKey[contextlib.ExitStack] = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("iotfsm", "iotfsm transition coverage")
    group.addoption(
        "--iotfsm-coverage",
        action="store_true",
        help="record which transitions of each iotfsm machine the tests take; print a table",
    )
    group.addoption(
        "--iotfsm-coverage-min",
        type=float,
        default=None,
        metavar="PERCENT",
        help="with --iotfsm-coverage: fail the run when fewer transitions were taken",
    )
    group.addoption(
        "--iotfsm-coverage-file",
        default=None,
        metavar="FILE",
        help="with --iotfsm-coverage: save the taken edges as JSON for iotfsm diagram --coverage",
    )


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("iotfsm_coverage", False):
        return
    from .coverage import recording

    stack = contextlib.ExitStack()
    config.stash[COVERAGE_KEY] = stack.enter_context(recording())
    config.stash[RECORDING_KEY] = stack


def pytest_unconfigure(config: pytest.Config) -> None:
    stack = config.stash.get(RECORDING_KEY, None)
    if stack is not None:
        stack.close()


def _total(rows: list[MachineCoverage]) -> float:
    edges = sum(len(r.edges) for r in rows)
    return 100.0 if not edges else 100.0 * sum(len(r.taken) for r in rows) / edges


WORKER_OUTPUT = "iotfsm_coverage"
"""The key under which a pytest-xdist worker hands its coverage to the controller."""


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist, on the controller: add what a finished worker recorded (the controller
    runs no test itself, so its table is the sum of its workers')."""
    coverage = node.config.stash.get(COVERAGE_KEY, None)
    exported = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT)
    if coverage is not None and exported:
        coverage.merge(exported)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    coverage = config.stash.get(COVERAGE_KEY, None)
    if coverage is None:
        return
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: the controller reports
        workeroutput[WORKER_OUTPUT] = coverage.export()
        return
    path = config.getoption("iotfsm_coverage_file")
    if path:
        coverage.save(Path(path))
    minimum = config.getoption("iotfsm_coverage_min")
    if minimum is not None and _total(coverage.report()) < minimum and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    coverage = config.stash.get(COVERAGE_KEY, None)
    if coverage is None or hasattr(config, "workeroutput"):
        return
    rows = coverage.report()
    write = terminalreporter.write_line
    terminalreporter.section("iotfsm transition coverage")
    width = max([len(r.name) for r in rows] + [len("TOTAL")])
    write(f"{'machine':<{width}}  edges  taken  cover")
    for r in rows:
        write(f"{r.name:<{width}}  {len(r.edges):5}  {len(r.taken):5}  {r.percent:5.1f}%")
    total = _total(rows)
    edges = sum(len(r.edges) for r in rows)
    taken = sum(len(r.taken) for r in rows)
    write(f"{'TOTAL':<{width}}  {edges:5}  {taken:5}  {total:5.1f}%")
    untaken = [(r.name, e) for r in rows for e in r.untaken]
    if untaken:
        write("untaken edges:")
        for name, edge in untaken:
            write(f"  {name}: {edge}")
    minimum = config.getoption("iotfsm_coverage_min")
    if minimum is not None and total < minimum:
        write(f"FAIL: transition coverage {total:.1f}% is under --iotfsm-coverage-min={minimum:g}")
