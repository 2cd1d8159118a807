"""Declarations: a machine is data (states, transitions, guards, actions), checked when it is built.

A feature module declares one `MachineSpec` per role. Nothing here runs a machine; `Machine`
compiles a spec into a shared `transitions.Machine` and steps sessions through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import attrs

from .effects import Effect
from .events import Event
from .validate import ANY_STATE, DeclarationError, validate

__all__ = ["ANY_STATE", "Action", "DeclarationError", "Guard", "MachineSpec", "On", "State"]

C = TypeVar("C")

Guard = Callable[[Any, Any], bool]
"""`guard(ctx, event) -> bool`: may this transition fire? Pure, no side effects."""

Action = Callable[[Any, Any, float], "Iterable[Effect] | None"]
"""`action(ctx, event, now) -> effects`: update the context in place and say what should happen.
No I/O: everything the outside world must do is returned as effects."""


@attrs.frozen
class State:
    """One state. `final` states end a session's work: they need no way out and have none."""

    name: str
    initial: bool = False
    final: bool = False
    doc: str = ""


def _trigger_name(trigger: type[Event] | str) -> str:
    return trigger if isinstance(trigger, str) else trigger.trigger


def _sources(source: str | Sequence[str]) -> tuple[str, ...]:
    return (source,) if isinstance(source, str) else tuple(source)


def _states(states: Iterable[State]) -> tuple[State, ...]:
    return tuple(states)


def _transitions(transitions: Iterable[On]) -> tuple[On, ...]:
    return tuple(transitions)


def _events(events: Iterable[type[Event]]) -> tuple[type[Event], ...]:
    return tuple(events)


@attrs.frozen
class On:
    """A transition: on `trigger` in `source`, if `guard`, go to `dest` and run `action`.

    `trigger` is an event class (its name is the trigger) or a string such as `timer("reply")`.
    `dest=None` is an internal transition: the state stays, timers keep running.
    Several transitions may share a (state, trigger) pair; the first whose guard passes fires.
    """

    trigger: str = attrs.field(converter=_trigger_name)
    source: tuple[str, ...] = attrs.field(converter=_sources)
    dest: str | None = None
    guard: Guard | None = None
    action: Action | None = None
    label: str = ""
    """Shown on diagrams in place of the action's name when set."""

    @property
    def trigger_name(self) -> str:
        return self.trigger


@attrs.frozen(eq=False)
class MachineSpec(Generic[C]):
    """One role of one feature. Validated on construction: a broken declaration never runs.

    `inbound` lists the message classes this role receives; each must be handled somewhere.
    `context` builds a fresh context for a new session from the session's key.
    `version` goes into snapshots; bump it when states or the context change incompatibly.
    """

    name: str
    states: tuple[State, ...] = attrs.field(converter=_states)
    transitions: tuple[On, ...] = attrs.field(converter=_transitions)
    context: Callable[[Any], C]
    context_type: type[C]
    inbound: tuple[type[Event], ...] = attrs.field(default=(), converter=_events)
    version: int = 1
    doc: str = ""
    compiled: Any = attrs.field(default=None, init=False, repr=False)
    """The `transitions` tables compiled from this declaration, set by the first `fsm.Machine`
    built on it and shared by every later one (each runtime builds its own Machines)."""

    def __attrs_post_init__(self) -> None:
        validate(self)

    @property
    def initial(self) -> str:
        return next(s.name for s in self.states if s.initial)

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states)

    @property
    def final_states(self) -> frozenset[str]:
        return frozenset(s.name for s in self.states if s.final)

    def expanded(self) -> list[tuple[str, On]]:
        """Every (source, transition) pair, `ANY_STATE` spelled out over the non-final states."""
        pairs: list[tuple[str, On]] = []
        for t in self.transitions:
            for src in t.source:
                if src == ANY_STATE:
                    pairs.extend((s.name, t) for s in self.states if not s.final)
                else:
                    pairs.append((src, t))
        return pairs
