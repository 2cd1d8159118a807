"""A session is one device's progress through one machine: a state name, a context and its timers.

Sessions are tiny `__slots__` objects because a platform holds one per device and feature (100,000
and more in one process). The compiled machine is shared; nothing per-session is allocated until it
is needed (`timers` stays None while no timer is armed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .machine import Machine


class Session:
    __slots__ = ("ctx", "gen", "key", "machine", "state", "timers")

    machine: Machine[Any]
    key: Any
    state: str
    ctx: Any
    timers: dict[str, tuple[int, float]] | None
    """Armed timers: name -> (generation, deadline)."""
    gen: int
    """The last timer generation stamped; generations never repeat within a session."""

    def __init__(self, machine: Machine[Any], key: Any, state: str, ctx: Any) -> None:
        self.machine = machine
        self.key = key
        self.state = state
        self.ctx = ctx
        self.timers = None
        self.gen = 0

    def __repr__(self) -> str:
        return f"<Session {self.machine.spec.name} {self.key!r} in {self.state!r}>"
