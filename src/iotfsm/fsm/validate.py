"""The rules a declaration must satisfy before it may run, each with a message that says the fix.

Checked once when a `MachineSpec` is built, so a mistake in a feature module fails at import in
every test rather than at 3 a.m. on a device whose session wandered into a trap state.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from .events import TIMER_PREFIX

if TYPE_CHECKING:
    from .spec import MachineSpec, On

ANY_STATE = "*"
"""Source of a transition that applies in every non-final state (e.g. a reconnect)."""


class DeclarationError(ValueError):
    """A machine declaration breaks a rule; the message names the machine, the rule and the fix."""


def validate(spec: MachineSpec[Any]) -> None:
    """Raise DeclarationError for the first rule the declaration breaks."""
    initial = _one_initial_state(spec)
    _known_states(spec)
    pairs = spec.expanded()
    outgoing: dict[str, set[str]] = defaultdict(set)
    for src, t in pairs:
        outgoing[src].add(t.dest or src)
    _all_reachable(spec, initial, outgoing)
    _no_traps(spec, outgoing)
    _inbound_handled(spec)
    _bound_once(spec, pairs)


def _fail(spec: MachineSpec[Any], rule: str, detail: str) -> None:
    raise DeclarationError(f"machine {spec.name!r}: {rule}: {detail}")


def _one_initial_state(spec: MachineSpec[Any]) -> str:
    names = [s.name for s in spec.states]
    if not names:
        _fail(spec, "no states", "declare at least one State")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        _fail(spec, "duplicate state", f"{dupes} declared more than once; declare each once")
    initial = [s for s in spec.states if s.initial]
    if len(initial) != 1:
        found = [s.name for s in initial] or "none"
        _fail(spec, "exactly one initial state", f"found {found}; mark one State(initial=True)")
    if initial[0].final:
        _fail(spec, "initial state is final", f"{initial[0].name!r} cannot be both")
    return initial[0].name


def _known_states(spec: MachineSpec[Any]) -> None:
    known = set(spec.state_names)
    final = spec.final_states
    for t in spec.transitions:
        for src in t.source:
            if src != ANY_STATE and src not in known:
                _fail(spec, "unknown state", f"{t.trigger_name} starts in undeclared {src!r}")
            if src in final:
                _fail(
                    spec,
                    "final state has a way out",
                    f"{src!r} is final but {t.trigger_name} leaves it; drop final=True or the edge",
                )
        if t.dest is not None and t.dest not in known:
            _fail(spec, "unknown state", f"{t.trigger_name} goes to undeclared {t.dest!r}")
        if t.trigger_name == TIMER_PREFIX:
            _fail(spec, "unnamed timer", "use timer('name') to bind a timer trigger")


def _all_reachable(spec: MachineSpec[Any], initial: str, outgoing: dict[str, set[str]]) -> None:
    reachable = {initial}
    frontier = [initial]
    while frontier:
        for nxt in outgoing[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    unreachable = [n for n in spec.state_names if n not in reachable]
    if unreachable:
        _fail(
            spec,
            "unreachable state",
            f"{unreachable} cannot be reached from {initial!r}; add a way in or drop it",
        )


def _no_traps(spec: MachineSpec[Any], outgoing: dict[str, set[str]]) -> None:
    final = spec.final_states
    traps = [n for n in spec.state_names if n not in final and not outgoing[n]]
    if traps:
        _fail(
            spec,
            "trap state",
            f"{traps} have no way out; add a message, outcome or timer edge, or mark final=True",
        )


def _inbound_handled(spec: MachineSpec[Any]) -> None:
    handled = {t.trigger_name for t in spec.transitions}
    unhandled = [m.trigger for m in spec.inbound if m.trigger not in handled]
    if unhandled:
        _fail(
            spec,
            "inbound message not handled",
            f"{unhandled} can arrive for this role but no transition reacts to it",
        )


def _bound_once(spec: MachineSpec[Any], pairs: list[tuple[str, On]]) -> None:
    bindings: dict[tuple[str, str], list[On]] = defaultdict(list)
    for src, t in pairs:
        bindings[(src, t.trigger_name)].append(t)
    for (src, trig), ts in bindings.items():
        guards = [id(t.guard) for t in ts if t.guard is not None]
        shadowed = any(t.guard is None for t in ts[:-1])
        if shadowed or len(set(guards)) < len(guards):
            _fail(
                spec,
                "trigger bound twice",
                f"{trig} in state {src!r} has {len(ts)} bindings and a later one can never fire;"
                " give each a distinct guard and put the unguarded one last",
            )
