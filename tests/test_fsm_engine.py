"""Engine semantics: dispatch, guards, internal transitions, timers and generations, snapshots."""

from __future__ import annotations

import json
from collections.abc import Iterable

import attrs
import pytest

from iotfsm.fsm import (
    ANY_STATE,
    CancelTimer,
    Effect,
    Event,
    Log,
    Machine,
    MachineSpec,
    On,
    SetTimer,
    SnapshotError,
    State,
    StepIgnoredError,
    Stepper,
    StepRecord,
    TimerFired,
    restore,
    snapshot,
    timer,
)


@attrs.frozen
class Go(Event):
    n: int = 1


@attrs.frozen
class Reset(Event):
    pass


@attrs.define
class Ctx:
    total: int = 0
    retries: int = 0


def add(ctx: Ctx, event: Go, now: float) -> Iterable[Effect]:
    ctx.total += event.n
    return (SetTimer("idle", 10.0),)


def small(ctx: Ctx, event: Go) -> bool:
    return event.n < 100


def retry(ctx: Ctx, event: Event, now: float) -> Iterable[Effect]:
    ctx.retries += 1
    return (Log.info(f"retry {ctx.retries} at {now}"), SetTimer("idle", 10.0))


def may_retry(ctx: Ctx, event: Event) -> bool:
    return ctx.retries < 2


SPEC = MachineSpec(
    name="counter",
    version=3,
    states=[State("idle", initial=True), State("counting"), State("stopped", final=True)],
    transitions=[
        On(Go, ("idle", "counting"), "counting", guard=small, action=add),
        On(Go, "counting", None, action=lambda ctx, ev, now: (Log.warning("too big"),)),
        On(timer("idle"), "counting", "counting", guard=may_retry, action=retry),
        On(timer("idle"), "counting", "stopped"),
        On(Reset, ANY_STATE, "idle"),
    ],
    context=lambda key: Ctx(),
    context_type=Ctx,
    inbound=[Go],
)


def test_steps_change_state_and_return_effects_with_stamped_generations() -> None:
    s = Stepper(SPEC, key="k")
    assert s.step(Go(2)) == [SetTimer("idle", 10.0, 1)]
    assert (s.state, s.ctx.total) == ("counting", 2)
    # a self transition keeps the state: the new arm replaces the old one, no cancel
    assert s.step(Go(3)) == [SetTimer("idle", 10.0, 2)]
    assert s.session.timers == {"idle": (2, 10.0)}


def test_guard_refusal_falls_through_to_the_next_binding() -> None:
    s = Stepper(SPEC)
    s.step(Go(1))
    assert s.step(Go(500)) == [Log.warning("too big")]
    assert s.ctx.total == 1


def test_ignored_event_changes_nothing() -> None:
    s = Stepper(SPEC)
    assert s.machine.step(s.session, Go(500)) is None  # guard refuses, no other binding in idle
    assert s.state == "idle"
    with pytest.raises(StepIgnoredError, match="Go was ignored in state 'idle'"):
        s.step(Go(500))


def test_timers_fire_in_order_and_late_generations_are_stale() -> None:
    s = Stepper(SPEC)
    s.step(Go(1))
    s.step(Go(1))  # re-arm: generation 2 supersedes 1
    fired = s.advance(10.0)
    assert fired == [Log.info("retry 1 at 10.0"), SetTimer("idle", 10.0, 3)]
    assert s.advance(10.0) == [Log.info("retry 2 at 20.0"), SetTimer("idle", 10.0, 4)]
    assert s.advance(10.0) == []  # third expiry: gives up, no effects
    assert s.state == "stopped"
    stale = [r for r in s.trace if r.trigger == "timer:idle" and not r.handled]
    assert len(stale) == 1  # the superseded generation 1 fired and was dropped


def test_leaving_a_state_cancels_its_timers() -> None:
    s = Stepper(SPEC)
    s.step(Go(1))
    assert s.step(Reset()) == [CancelTimer("idle")]
    assert s.session.timers is None
    assert s.machine.step(s.session, TimerFired("idle", 1)) is None
    assert s.state == "idle"


def test_trace_records_every_step() -> None:
    s = Stepper(SPEC, key=("P", "d"))
    s.step(Go(1))
    s.step(Go(900))
    assert s.trace[0] == StepRecord(
        "counter", ("P", "d"), "idle", "Go", "counting", (SetTimer("idle", 10.0, 1),), True
    )
    assert s.trace[1].dest == "counting" and s.trace[1].effects == (Log.warning("too big"),)


def test_snapshot_round_trips_through_json_without_replaying() -> None:
    s = Stepper(SPEC, key="k")
    s.step(Go(5))
    doc = json.loads(json.dumps(snapshot(s.session)))
    assert doc == {
        "format": 1,
        "machine": "counter",
        "version": 3,
        "state": "counting",
        "context": {"total": 5, "retries": 0},
        "timers": {"idle": [1, 10.0]},
        "gen": 1,
    }
    machine = Machine(SPEC)
    again = restore(machine, "k", doc)
    assert (again.state, again.ctx, again.timers, again.gen) == (
        "counting",
        Ctx(5, 0),
        {"idle": (1, 10.0)},
        1,
    )
    # the restored timer generation is live: its firing is handled, an older one is not
    assert machine.step(again, TimerFired("idle", 0)) is None
    assert machine.step(again, TimerFired("idle", 1), 10.0) == [
        Log.info("retry 1 at 10.0"),
        SetTimer("idle", 10.0, 2),
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "does not fit 'counter' v3"),
        ({"machine": "other"}, "does not fit"),
        ({"state": "flying"}, "not a state"),
        ({"context": {"total": "x"}}, "malformed context"),
        ({"timers": {"idle": [9, 1.0]}}, "newer than"),
        ({"format": 7}, "format"),
    ],
)
def test_restore_refuses_incompatible_snapshots(change: dict[str, object], message: str) -> None:
    s = Stepper(SPEC)
    s.step(Go(1))
    doc = {**snapshot(s.session), **change}
    with pytest.raises(SnapshotError, match=message):
        restore(Machine(SPEC), "k", doc)


def test_one_compiled_machine_is_shared_by_sessions() -> None:
    machine = Machine(SPEC)
    a, b = machine.new_session("a"), machine.new_session("b")
    machine.step(a, Go(1))
    assert (a.state, b.state) == ("counting", "idle")
    assert machine.compiled.models == []  # no session was ever added as a transitions model
    assert not hasattr(a, "__dict__")
