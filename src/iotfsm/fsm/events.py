"""What a machine reacts to: messages, effect outcomes, timers, connection changes, commands.

Every event class names its own trigger (the class name), so dispatch is one attribute read and a
declaration refers to the class itself rather than to a string that could drift from it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs


class Event:
    """Base of everything that can be stepped into a machine.

    Subclasses are usually frozen attrs classes. `trigger` is set to the class name when the
    class is created; a subclass may define `trigger` itself (as `TimerFired` does) to vary it.
    """

    __slots__ = ()
    trigger: ClassVar[str] = "Event"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "trigger" not in cls.__dict__:
            cls.trigger = cls.__name__


TIMER_PREFIX = "timer:"


def timer(name: str) -> str:
    """The trigger a declaration binds to react when timer `name` fires."""
    return TIMER_PREFIX + name


@attrs.frozen
class TimerFired(Event):
    """A timer armed by `SetTimer(name, delay)` has come due.

    `generation` is the number the engine stamped on that `SetTimer`; the engine drops a firing
    whose generation is not the one currently armed, so a late timer never fires into a newer state.
    """

    name: str
    generation: int

    @property
    def trigger(self) -> str:  # type: ignore[override]
        return TIMER_PREFIX + self.name


@attrs.frozen
class Connected(Event):
    """The transport is (again) connected and subscribed: devices ask for what they need now."""


@attrs.frozen
class Disconnected(Event):
    """The transport lost its connection. Machines may ignore it; outgoing messages are lost."""
