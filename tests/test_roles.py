"""The role facades used the way an application would."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from iotfsm.adapters.mqtt.memory_broker import MemoryBroker
from iotfsm.adapters.topics import TopicError
from iotfsm.device import Device
from iotfsm.fsm import ManualClock, StepRecord
from iotfsm.platform import Platform, SessionStatus


def test_device_and_platform_agree_on_a_level(tmp_path: Path) -> None:
    clock = ManualClock(1_700_000_000.0)
    broker = MemoryBroker(scheduler=clock)
    steps: list[StepRecord] = []
    applied: list[int] = []
    logger = logging.getLogger("tests.roles.app")
    with Platform(broker, clock=clock) as platform:
        platform.register_device("P1", "d1")
        with Device(
            "P1",
            "d1",
            broker=broker,
            state_dir=tmp_path / "d1",
            logger=logger,
            on_log_level=applied.append,
            on_step=steps.append,
            clock=clock,
        ) as device:
            assert device.connected
            assert device.state("log_level") == "listening"
            platform.set_log_level("P1", "d1", 3)
            assert (device.log_level, logger.level, applied) == (3, logging.INFO, [0, 3])
            assert platform.log_level("P1", "d1") == 3
            assert SessionStatus("log_level", "P1", "d1", "assigned") in platform.status()
            assert [s.dest for s in steps if s.machine == "log_level.device"] == [
                "asking",
                "listening",
                "listening",
            ]
    assert not device.connected


def test_bad_calls_are_clear_errors(tmp_path: Path) -> None:
    broker = MemoryBroker()
    platform = Platform(broker)
    with pytest.raises(ValueError, match="log level 9 must be 0"):
        platform.set_log_level("P1", "d1", 9)
    with pytest.raises(TopicError, match="device name"):
        platform.set_log_level("P1", "../etc", 1)
    with pytest.raises(TopicError, match="product id"):
        Device("P-1", "d1", broker=broker, state_dir=tmp_path)
    device = Device("P1", "d1", broker=broker, state_dir=tmp_path)
    with pytest.raises(KeyError, match="unknown feature 'firmware'"):
        device.state("firmware")
