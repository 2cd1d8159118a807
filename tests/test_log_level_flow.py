"""A device runtime and a platform runtime agree on log levels over the memory broker."""

from __future__ import annotations

import logging

from iotfsm.adapters.mqtt.memory_broker import Delivery, Drop, MemoryBroker
from iotfsm.adapters.runtime import Runtime
from iotfsm.fsm import ManualClock
from iotfsm.machines.log_level import FEATURE, ApplyLogLevel, DeviceKey, SetLogLevel, python_level

A = DeviceKey("P1", "dev-a")
B = DeviceKey("P1", "dev-b")


class World:
    def __init__(self) -> None:
        self.clock = ManualClock(1_700_000_000.0)
        self.broker = MemoryBroker(scheduler=self.clock, record=True)
        self.platform = Runtime(
            "platform", self.broker.connect("platform"), [FEATURE], clock=self.clock
        )
        self.platform.start()

    @property
    def record(self) -> list[Delivery]:
        assert self.broker.record is not None
        return self.broker.record

    def device(self, key: DeviceKey, logger: logging.Logger) -> Runtime:
        def apply(_: DeviceKey, effect: ApplyLogLevel) -> None:
            logger.setLevel(python_level(effect.level))

        runtime = Runtime(
            "device",
            self.broker.connect(key.product + key.device),
            [FEATURE],
            identity=key,
            clock=self.clock,
            handlers={ApplyLogLevel: apply},
        )
        runtime.start()
        return runtime

    def set_level(self, key: DeviceKey, level: int) -> None:
        self.platform.post("log_level", key, SetLogLevel(level))


def fresh_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(f"tests.app.{name}")
    logger.setLevel(logging.NOTSET)
    return logger


def test_platform_sets_a_level_and_only_that_device_follows() -> None:
    w = World()
    log_a, log_b = fresh_logger("a"), fresh_logger("b")
    dev_a, dev_b = w.device(A, log_a), w.device(B, log_b)
    # both asked on connect and were answered the default, 0 (upload nothing)
    assert log_a.level == log_b.level == python_level(0)
    assert dev_a.session("log_level", A).state == "listening"

    before = len(w.record)
    w.set_level(A, 4)
    assert log_a.level == logging.DEBUG
    assert log_b.level == python_level(0)
    pushed = w.record[before:]
    assert [d[1] for d in pushed] == ["$log/operation/result/P1/dev-a"]

    # the device restarts with a fresh logger, asks, and gets 4 again
    dev_a.stop()
    log_a2 = fresh_logger("a2")
    dev_a = w.device(A, log_a2)
    assert log_a2.level == logging.DEBUG
    assert log_b.level == python_level(0)
    assert w.platform.rejected == dev_a.rejected == dev_b.rejected == 0


def test_a_device_offline_during_the_change_gets_it_when_it_next_asks() -> None:
    w = World()
    log_a = fresh_logger("c")
    dev_a = w.device(A, log_a)
    w.broker.disconnect(dev_a.transport.client_id)  # type: ignore[attr-defined]
    w.set_level(A, 2)  # the push is lost: the device is offline
    assert log_a.level == python_level(0)
    assert dev_a.session("log_level", A).state == "offline"
    w.broker.reconnect(dev_a.transport.client_id)  # type: ignore[attr-defined]
    assert log_a.level == logging.WARNING


def test_a_lost_reply_is_retried_by_the_timer() -> None:
    w = World()
    w.broker.inject(Drop("$log/operation/result/P1/dev-a", times=1))
    log_a = fresh_logger("d")
    dev_a = w.device(A, log_a)
    assert dev_a.session("log_level", A).state == "asking"
    w.clock.advance(5.0)
    assert dev_a.session("log_level", A).state == "listening"
    assert log_a.level == python_level(0)


def test_other_devices_topics_and_garbage_are_rejected_without_state_change(caplog: object) -> None:
    w = World()
    log_a = fresh_logger("e")
    dev_a = w.device(A, log_a)
    w.set_level(A, 3)
    session = dev_a.session("log_level", A)
    snapshot_before = (session.state, session.ctx.level)
    dev_a.on_message(
        "$log/operation/result/P1/dev-b",
        b'{"type":"get_log_level","clientToken":"x","log_level":1}',
    )
    dev_a.on_message(
        "$log/operation/result/P1/dev-a",
        b'{"type":"get_log_level","clientToken":"x","log_level":"one"}',
    )
    dev_a.on_message("$log/operation/result/P1/dev-a", b"not json")
    dev_a.on_message("$log/operation/P1/dev-a", b'{"type":"get_log_level","clientToken":"x"}')
    assert dev_a.rejected == 4
    assert (session.state, session.ctx.level) == snapshot_before
    assert log_a.level == logging.INFO
