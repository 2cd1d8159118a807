"""One test per declaration rule: each broken declaration is refused with a message naming a fix."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from iotfsm.fsm import ANY_STATE, DeclarationError, Event, MachineSpec, On, State, timer


@attrs.frozen
class Ping(Event):
    pass


@attrs.frozen
class Pong(Event):
    pass


@attrs.define
class Ctx:
    n: int = 0


def build(states: list[State], transitions: list[On], inbound: Any = (Ping,)) -> MachineSpec[Ctx]:
    return MachineSpec(
        name="toy",
        states=states,
        transitions=transitions,
        context=lambda key: Ctx(),
        context_type=Ctx,
        inbound=inbound,
    )


def a_guard(ctx: Ctx, event: Event) -> bool:
    return True


def test_a_sound_declaration_is_accepted() -> None:
    spec = build(
        [State("a", initial=True), State("b"), State("done", final=True)],
        [On(Ping, "a", "b"), On(Ping, "b", "done", guard=a_guard), On(Ping, "b", "a")],
    )
    assert spec.initial == "a"
    assert spec.final_states == {"done"}


def test_no_initial_state() -> None:
    with pytest.raises(DeclarationError, match=r"exactly one initial state.*none"):
        build([State("a"), State("b")], [On(Ping, "a", "b"), On(Ping, "b", "a")])


def test_two_initial_states() -> None:
    with pytest.raises(DeclarationError, match=r"exactly one initial state.*\['a', 'b'\]"):
        build([State("a", initial=True), State("b", initial=True)], [On(Ping, ANY_STATE, "a")])


def test_duplicate_state() -> None:
    with pytest.raises(DeclarationError, match="duplicate state"):
        build([State("a", initial=True), State("a")], [On(Ping, "a", "a")])


def test_unreachable_state() -> None:
    with pytest.raises(DeclarationError, match=r"unreachable state: \['island'\]"):
        build(
            [State("a", initial=True), State("island")],
            [On(Ping, "a", "a"), On(Ping, "island", "a")],
        )


def test_trap_state() -> None:
    with pytest.raises(DeclarationError, match=r"trap state: \['stuck'\].*mark final=True"):
        build([State("a", initial=True), State("stuck")], [On(Ping, "a", "stuck")])


def test_inbound_message_not_handled() -> None:
    with pytest.raises(DeclarationError, match=r"inbound message not handled: \['Pong'\]"):
        build([State("a", initial=True)], [On(Ping, "a", None)], inbound=(Ping, Pong))


def test_trigger_bound_twice_unguarded() -> None:
    with pytest.raises(DeclarationError, match="trigger bound twice: Ping in state 'a'"):
        build(
            [State("a", initial=True), State("b")],
            [On(Ping, "a", "b"), On(Ping, "a", "a"), On(Ping, "b", "a")],
        )


def test_trigger_bound_twice_with_the_same_guard() -> None:
    with pytest.raises(DeclarationError, match="trigger bound twice"):
        build(
            [State("a", initial=True), State("b")],
            [
                On(Ping, "a", "b", guard=a_guard),
                On(Ping, "a", "a", guard=a_guard),
                On(Ping, "b", "a"),
            ],
        )


def test_trigger_bound_twice_through_any_state() -> None:
    with pytest.raises(DeclarationError, match="trigger bound twice: Ping in state 'a'"):
        build([State("a", initial=True)], [On(Ping, ANY_STATE, "a"), On(Ping, "a", None)])


def test_unknown_states_in_transitions() -> None:
    with pytest.raises(DeclarationError, match="undeclared 'nowhere'"):
        build([State("a", initial=True)], [On(Ping, "a", "nowhere")])
    with pytest.raises(DeclarationError, match="starts in undeclared 'ghost'"):
        build([State("a", initial=True)], [On(Ping, "a", None), On(Pong, "ghost", "a")])


def test_final_state_with_a_way_out() -> None:
    with pytest.raises(DeclarationError, match="final state has a way out"):
        build(
            [State("a", initial=True), State("end", final=True)],
            [On(Ping, "a", "end"), On(Pong, "end", "a")],
        )


def test_unnamed_timer() -> None:
    with pytest.raises(DeclarationError, match="unnamed timer"):
        build([State("a", initial=True)], [On(Ping, "a", None), On(timer(""), "a", None)])


def test_guarded_alternatives_are_fine() -> None:
    def other(ctx: Ctx, event: Event) -> bool:
        return False

    build(
        [State("a", initial=True), State("b")],
        [
            On(Ping, "a", "b", guard=a_guard),
            On(Ping, "a", "a", guard=other),
            On(Ping, "a", None),
            On(Ping, "b", "a"),
        ],
    )
