"""Compile a declaration into one shared `transitions.Machine` and step sessions through it.

Why the lean subclasses: `transitions` stores the declaration's tables (states, events, transitions
per source state) and dispatches with `machine.events[trigger].trigger(session, ...)`. Its stock
`Event.trigger` builds an EventData, resolves callbacks and logs at every stage; measured here at
~30 us per state change, twice the whole step budget. `_BoundEvent` and `_BoundTransition` keep
the library's tables and its first-passing-guard semantics, and call the declared guard and
action directly. One Machine per declaration, `model=None`: sessions are never added as models.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic, TypeVar, cast

import transitions

from .effects import CancelTimer, Effect, SetTimer
from .events import Event, TimerFired
from .session import Session
from .spec import MachineSpec, On
from .trace import StepRecord, Tracer

C = TypeVar("C")
_NONE: list[Any] = []
"""No transitions from a state (shared, never changed: not a new list per ignored event)."""


class _BoundTransition(transitions.Transition):
    """A transitions.Transition that carries the declared `On`, its guard and its action (which
    `_BoundEvent.dispatch` runs)."""

    def __init__(self, source: str, dest: str | None, *args: Any, binding: On) -> None:
        super().__init__(source, dest, *args)  # type: ignore[arg-type]  # None: internal
        self.binding = binding
        self.guard = binding.guard
        self.action = binding.action


class _BoundEvent(transitions.core.Event):
    """Dispatch without EventData: the first transition from this state whose guard passes."""

    def trigger(self, model: Any, *args: Any, **kwargs: Any) -> On | None:  # type: ignore[override]
        """The declared transition that fired, or None: traces and coverage name the very edge,
        which (source, trigger, dest) alone cannot when guards split one trigger."""
        return self.dispatch(model, args[0], args[1], args[2])

    def dispatch(self, session: Session, event: Event, now: float, out: list[Effect]) -> On | None:
        """`trigger` without packing its arguments: what `Machine.step` calls. The first
        transition whose guard passes fires (its destination, then its action's effects into
        `out`), inline: one call less per transition tried."""
        bound: list[_BoundTransition] = self.transitions.get(session.state, _NONE)
        for transition in bound:
            guard = transition.guard
            if guard is not None and not guard(session.ctx, event):
                continue
            if transition.dest is not None:
                session.state = transition.dest
            action = transition.action
            if action is not None:
                produced = action(session.ctx, event, now)
                if produced:
                    out.extend(produced)
            return transition.binding
        return None


class _CompiledMachine(transitions.Machine):
    event_cls = _BoundEvent
    transition_cls = _BoundTransition


def _compile(spec: MachineSpec[Any]) -> _CompiledMachine:
    """The declaration's tables; read-only once built, so runtimes on any thread share them."""
    compiled = _CompiledMachine(
        model=None,
        states=list(spec.state_names),
        initial=spec.initial,
        auto_transitions=False,
        ignore_invalid_triggers=True,
        name=spec.name,
    )
    for src, binding in spec.expanded():
        compiled.add_transition(binding.trigger_name, src, binding.dest, binding=binding)
    return compiled


class Machine(Generic[C]):
    """A compiled declaration, shared by every session of that (feature, role).

    `step` is the only way a session changes: it dispatches the event, returns the effects, stamps
    timer generations, cancels the timers of a state being left, and records the step if traced.
    """

    def __init__(self, spec: MachineSpec[C], tracer: Tracer | None = None) -> None:
        self.spec = spec
        self.tracer = tracer
        if spec.compiled is None:
            # once per declaration, kept on it: 10-30 ms of `transitions` bookkeeping that every
            # runtime paid again (a restart, each device of a fleet in one process)
            object.__setattr__(spec, "compiled", _compile(spec))
        self.compiled: _CompiledMachine = spec.compiled
        self._events: dict[str, _BoundEvent] = cast(
            dict[str, _BoundEvent], dict(self.compiled.events)
        )
        self._initial = spec.initial

    def new_session(self, key: Any, ctx: C | None = None) -> Session:
        """A session in the initial state with a fresh context built from its key."""
        return Session(self, key, self._initial, self.spec.context(key) if ctx is None else ctx)

    def accepts(self, session: Session, event: Event) -> bool:
        """Whether any transition is bound to this event's trigger in the session's state."""
        ev = self._events.get(event.trigger)
        return ev is not None and bool(ev.transitions.get(session.state))

    def step(self, session: Session, event: Event, now: float = 0.0) -> list[Effect] | None:
        """Apply one event. Returns the effects, or None when nothing fired (state unchanged).

        A `TimerFired` whose generation is not the one armed under that name is stale and ignored.
        """
        if type(event) is TimerFired:
            timers = session.timers
            armed = timers.get(event.name) if timers else None
            if armed is None or armed[0] != event.generation:
                return self._record(session, event, session.state, None)
            del timers[event.name]  # type: ignore[union-attr]
        ev = self._events.get(event.trigger)
        source = session.state
        out: list[Effect] = []
        fired = None if ev is None else ev.dispatch(session, event, now, out)
        if fired is None:
            return self._record(session, event, source, None)
        if session.state != source and session.timers:
            cancels: list[Effect] = [CancelTimer(name) for name in session.timers]
            session.timers = None
            out[:0] = cancels
        if out:
            self._stamp_timers(session, out, now)
        if self.tracer is None:  # the common case: no record to build, no call to make
            return out
        return self._record(session, event, source, out, fired)

    def _stamp_timers(self, session: Session, out: list[Effect], now: float) -> None:
        for i, effect in enumerate(out):
            kind = type(effect)
            if kind is SetTimer:
                session.gen += 1
                if session.timers is None:
                    session.timers = {}
                session.timers[effect.name] = (session.gen, now + effect.delay)  # type: ignore[attr-defined]
                out[i] = SetTimer(effect.name, effect.delay, session.gen)  # type: ignore[attr-defined]
            elif kind is CancelTimer and session.timers:
                session.timers.pop(effect.name, None)  # type: ignore[attr-defined]
                if not session.timers:
                    session.timers = None

    def _record(
        self,
        session: Session,
        event: Event,
        source: str,
        out: list[Effect] | None,
        fired: On | None = None,
    ) -> list[Effect] | None:
        if self.tracer is not None:
            self.tracer(
                StepRecord(
                    self.spec.name,
                    session.key,
                    source,
                    event.trigger,
                    session.state,
                    tuple(out or ()),
                    out is not None,
                    fired,
                )
            )
        return out


def run(
    machine: Machine[Any], session: Session, events: Iterable[Event], now: float = 0.0
) -> list[Effect]:
    """Step several events in order and collect every effect (ignored events add nothing)."""
    collected: list[Effect] = []
    for event in events:
        collected.extend(machine.step(session, event, now) or ())
    return collected
