"""pytest fixtures for code built on iotfsm; registered as a pytest plugin when iotfsm is installed.

    def test_my_device_app(iotfsm_pair):
        device = iotfsm_pair.device("dev-1").start()
        iotfsm_pair.platform.set_log_level(iotfsm_pair.product, "dev-1", 4)
        assert device.log_level == 4

Fixtures: `iotfsm_clock` (a ManualClock), `iotfsm_broker` (a MemoryBroker on that clock, recording
deliveries), `iotfsm_pair` (a Platform and devices on both), `mosquitto` (a real Mosquitto on a
free port, stopped afterwards; a missing binary fails the test rather than skipping it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..adapters.memory_broker import MemoryBroker
from ..fsm.clock import ManualClock
from .mosquitto import Mosquitto
from .pair import START, Pair


@pytest.fixture
def iotfsm_clock() -> ManualClock:
    """A clock that moves only when the test advances it."""
    return ManualClock(START)


@pytest.fixture
def iotfsm_broker(iotfsm_clock: ManualClock) -> MemoryBroker:
    """The embedded MQTT broker on `iotfsm_clock`, recording every delivery (`.record`)."""
    return MemoryBroker(scheduler=iotfsm_clock, record=True)


@pytest.fixture
def iotfsm_pair(tmp_path: Path) -> Iterator[Pair]:
    """A started Platform plus `.device(name)` factories, over a memory broker and manual clock."""
    with Pair(tmp_path / "iotfsm") as pair:
        yield pair


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A real Mosquitto of this test's own on a free 127.0.0.1 port (`.url`), stopped after."""
    with Mosquitto() as broker:
        yield broker
