"""The log-level machines stepped by hand: no broker, a manual clock, every effect exact."""

from __future__ import annotations

import logging

from iotfsm.fsm import CancelTimer, Connected, Disconnected, Log, Publish, SetTimer, Stepper
from iotfsm.machines.log_level import (
    DEVICE,
    PLATFORM,
    ApplyLogLevel,
    DeviceKey,
    GetLogLevel,
    LogLevelReply,
    SetLogLevel,
    python_level,
)

KEY = DeviceKey("P1", "dev-1")


def test_device_asks_on_connect_and_applies_the_reply() -> None:
    s = Stepper(DEVICE, key=KEY)
    assert s.state == "offline"
    assert s.step(Connected()) == [Publish(GetLogLevel("P1-1"), 0), SetTimer("reply", 5.0, 1)]
    assert s.state == "asking"
    s.clock.advance(1.0)
    assert s.step(LogLevelReply("P1-1", 4, 0, 1619599073)) == [
        CancelTimer("reply"),
        ApplyLogLevel(4),
    ]
    assert (s.state, s.ctx.level) == ("listening", 4)
    assert s.advance(60.0) == []  # the cancelled reply timer is stale when it comes due


def test_device_retries_with_backoff_then_listens() -> None:
    s = Stepper(DEVICE, key=KEY)
    s.step(Connected())
    assert s.advance(5.0) == [Publish(GetLogLevel("P1-2"), 0), SetTimer("reply", 10.0, 2)]
    assert s.advance(10.0) == [Publish(GetLogLevel("P1-3"), 0), SetTimer("reply", 20.0, 3)]
    assert s.advance(20.0) == [
        Log.warning("no log level reply after 3 asks; no level yet, listening for pushes")
    ]
    assert s.state == "listening"
    # a push still lands
    assert s.step(LogLevelReply("P1-push-1", 2)) == [ApplyLogLevel(2)]


def test_device_reconnect_asks_again_and_a_late_timer_never_fires_into_it() -> None:
    s = Stepper(DEVICE, key=KEY)
    s.step(Connected())
    assert s.step(Disconnected()) == [CancelTimer("reply")]
    assert s.state == "offline"
    assert s.step(Connected()) == [Publish(GetLogLevel("P1-2"), 0), SetTimer("reply", 5.0, 2)]
    # generation 1 comes due at t=5 and is dropped; generation 2 at t=5 too, and it is live
    fired = s.advance(5.0)
    assert fired == [Publish(GetLogLevel("P1-3"), 0), SetTimer("reply", 10.0, 3)]
    stale = [r for r in s.trace if r.trigger == "timer:reply" and not r.handled]
    assert len(stale) == 1


def test_device_ignores_malformed_levels_with_a_warning() -> None:
    s = Stepper(DEVICE, key=KEY)
    s.step(Connected())
    s.step(LogLevelReply("P1-1", 3))
    assert s.step(LogLevelReply("P1-1", 7)) == [
        Log.warning("ignored a log level message: log_level 7 is outside 0-4; keeping level 3")
    ]
    assert s.step(LogLevelReply("P1-1", 1, result=5)) == [
        Log.warning("ignored a log level message: the platform answered result 5; keeping level 3")
    ]
    assert (s.state, s.ctx.level) == ("listening", 3)


def test_platform_answers_every_ask_and_pushes_changes() -> None:
    s = Stepper(PLATFORM, key=KEY, start=1_700_000_000.0)
    assert s.step(GetLogLevel("P1-1")) == [Publish(LogLevelReply("P1-1", 0, 0, 1_700_000_000), 0)]
    assert s.state == "default"
    assert s.step(SetLogLevel(4)) == [Publish(LogLevelReply("P1-push-1", 4, 0, 1_700_000_000), 0)]
    assert s.state == "assigned"
    s.clock.advance(30)
    assert s.step(GetLogLevel("P1-2")) == [Publish(LogLevelReply("P1-2", 4, 0, 1_700_000_030), 0)]
    assert s.step(SetLogLevel(9)) == [Log.warning("refused log level 9: levels are 0-4; keeping 4")]
    assert s.ctx.level == 4


def test_python_levels() -> None:
    assert [python_level(n) for n in range(1, 5)] == [
        logging.ERROR,
        logging.WARNING,
        logging.INFO,
        logging.DEBUG,
    ]
    assert python_level(0) > logging.CRITICAL
