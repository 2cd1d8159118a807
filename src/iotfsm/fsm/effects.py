"""What a machine asks the world to do. Plain frozen data; a runtime carries it out.

Machines return effects instead of doing I/O, which is what lets a test step a machine by hand and
compare the effects exactly, and lets one machine run over a memory broker or a real one.
"""

from __future__ import annotations

import logging

import attrs

from .events import Event


class Effect:
    """Marker base of all effects. Features add their own (e.g. "apply this log level")."""

    __slots__ = ()


@attrs.frozen
class Publish(Effect):
    """Send `message` to the peer role of the same feature, on the session's own topic.

    The machine does not name the topic: the runtime derives it from the session's identity and the
    feature's topic pair, so sessions never carry topic strings around.
    """

    message: Event
    qos: int = 0


@attrs.frozen
class SetTimer(Effect):
    """Arm (or re-arm) timer `name` to fire `delay` seconds from now.

    Actions return it with generation 0; the engine stamps the session's next generation number on
    it before the runtime sees it. Re-arming a name replaces the earlier timer of that name.
    """

    name: str
    delay: float
    generation: int = 0


@attrs.frozen
class CancelTimer(Effect):
    """Disarm timer `name`. The engine emits it itself for timers armed in a state being left."""

    name: str


@attrs.frozen
class Log(Effect):
    """A line for the library's log, e.g. why an input was ignored. Keeps machines free of I/O."""

    level: int
    text: str

    @classmethod
    def warning(cls, text: str) -> Log:
        return cls(logging.WARNING, text)

    @classmethod
    def info(cls, text: str) -> Log:
        return cls(logging.INFO, text)
