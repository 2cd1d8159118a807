"""Step a machine by hand in a test: no broker, no threads, a manual clock, exact effects.

s = Stepper(log_level.DEVICE_SPEC, key=DeviceKey("P", "d1"))
assert s.step(Connected()) == [Publish(GetLogLevel("P-1"), 0), SetTimer("reply", 5.0, 1)]
s.advance(5.0)   # jumps the clock; returns the effects of timers that came due
"""

from __future__ import annotations

from functools import partial
from typing import Any

from .clock import ManualClock
from .effects import Effect, SetTimer
from .events import Event, TimerFired
from .machine import Machine
from .spec import MachineSpec
from .trace import StepRecord


class StepIgnoredError(AssertionError):
    """`Stepper.step` was told the event must fire but no transition did."""


class Stepper:
    def __init__(self, spec: MachineSpec[Any], key: Any = None, start: float = 0.0) -> None:
        self.trace: list[StepRecord] = []
        self._fired: list[Effect] = []
        self.machine: Machine[Any] = Machine(spec, tracer=self.trace.append)
        self.clock = ManualClock(start)
        self.session = self.machine.new_session(key)

    @property
    def state(self) -> str:
        return self.session.state

    @property
    def ctx(self) -> Any:
        return self.session.ctx

    def step(self, event: Event, *, must_fire: bool = True) -> list[Effect]:
        """Step one event at the clock's time; with `must_fire`, an ignored event is an error."""
        out = self.machine.step(self.session, event, self.clock.now())
        if out is None:
            if must_fire:
                state = self.session.state
                raise StepIgnoredError(f"{event.trigger} was ignored in state {state!r}")
            return []
        for effect in out:
            if isinstance(effect, SetTimer):
                fired = TimerFired(effect.name, effect.generation)
                self.clock.call_at(self.clock.now() + effect.delay, partial(self._fire, fired))
        return out

    def advance(self, seconds: float) -> list[Effect]:
        """Move the clock; every live timer that comes due is stepped. Returns their effects."""
        self._fired = []
        self.clock.advance(seconds)
        return self._fired

    def _fire(self, event: TimerFired) -> None:
        self._fired.extend(self.step(event, must_fire=False))
