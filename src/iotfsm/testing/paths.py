"""Paths through a declared machine that together take every transition: tests from the declaration.

    for path in paths(ota.DEVICE):
        run_path(path, ota.DEVICE)          # or against your own handlers: see run_path

The planner searches breadth first over real sessions (state, context, armed timers), stepping the
declaration's own example events (`iotfsm.fsm.examples`) and firing armed timers in deadline
order, so every path is executable: each step is an event the machine accepts, with the state and
the effects the declaration produces after it. Each target (a transition, a pair of consecutive
transitions, or a guard outcome) is reached by a shortest path; the longest ones are kept first
and a target already taken on a kept path needs no path of its own.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar

import attrs

from ..fsm.effects import Effect
from ..fsm.events import TIMER_PREFIX, Event, TimerFired
from ..fsm.examples import Examples
from ..fsm.machine import Machine
from ..fsm.session import Session
from ..fsm.spec import MachineSpec, On
from ..fsm.trace import StepRecord

Cover = Literal["transitions", "pairs", "guards"]


class PlanError(ValueError):
    """The planner cannot plan for this declaration; the message says what to pass."""


@attrs.frozen
class Edge:
    """One transition from one source state: what coverage counts and diagrams draw."""

    machine: str
    source: str
    index: int
    """Position of the `On` in the declaration's `transitions`."""
    trigger: str
    dest: str
    """The state after it (the source itself for an internal transition)."""
    guard: str = ""

    def __str__(self) -> str:
        guard = f" [{self.guard}]" if self.guard else ""
        return f"{self.source} --{self.trigger}{guard}--> {self.dest}"


def _guard_name(on: On) -> str:
    return "" if on.guard is None else getattr(on.guard, "__name__", "guard").lstrip("_")


def edges(spec: MachineSpec[Any]) -> list[Edge]:
    """Every (source, transition) edge of `spec`, `ANY_STATE` spelled out, in dispatch order."""
    return [_edge(spec, src, on) for src, on in spec.expanded()]


def _index(spec: MachineSpec[Any], on: On) -> int:
    return next(i for i, t in enumerate(spec.transitions) if t is on)


def _edge(spec: MachineSpec[Any], source: str, on: On) -> Edge:
    return Edge(
        spec.name, source, _index(spec, on), on.trigger_name, on.dest or source, _guard_name(on)
    )


def edge_of(spec: MachineSpec[Any], record: StepRecord) -> Edge | None:
    """The edge a traced step took, or None when nothing fired."""
    if record.transition is None:
        return None
    return _edge(spec, record.source, record.transition)


@attrs.frozen
class Step:
    event: Event
    state: str
    """The state expected after the event."""
    effects: tuple[Effect, ...]
    """The effects expected from the event (timer generations stamped)."""
    edge: Edge
    now: float
    """The clock when the event is stepped: a timer fires at its deadline."""


@attrs.frozen
class Path:
    machine: str
    key: Any
    steps: tuple[Step, ...]
    context: Any = None
    """The context the path starts from; None for the declaration's own (a device set up
    otherwise, e.g. with a firmware key, starts from one of `Examples.starts`)."""

    @property
    def events(self) -> list[Event]:
        return [s.event for s in self.steps]

    @property
    def edges(self) -> list[Edge]:
        return [s.edge for s in self.steps]

    @property
    def name(self) -> str:
        """A test id: the triggers in order and the state it ends in."""
        if not self.steps:
            return "empty"
        triggers = "-".join(s.event.trigger.replace(TIMER_PREFIX, "t.") for s in self.steps)
        return f"{triggers}->{self.steps[-1].state}"

    def __len__(self) -> int:
        return len(self.steps)

    def prefix(self, n: int) -> Path:
        return attrs.evolve(self, steps=self.steps[:n])

    def describe(self) -> str:
        """One line per step, for a failure message a person can replay by hand."""
        lines = [f"path through {self.machine} ({len(self.steps)} steps):"]
        lines += [f"  {i}. {s.event!r} at {s.now:g} -> {s.state}" for i, s in enumerate(self.steps)]
        return "\n".join(lines)


@attrs.frozen
class Plan:
    paths: tuple[Path, ...]
    targets: frozenset[Hashable]
    covered: frozenset[Hashable]

    @property
    def uncovered(self) -> frozenset[Hashable]:
        """Targets no path reached within the search bounds (infeasible pairs, or a gap in the
        examples)."""
        return self.targets - self.covered


# ---- the search ---------------------------------------------------------------------------


class _Node:
    __slots__ = ("ctx", "depth", "gen", "last", "now", "parent", "state", "step", "timers")

    depth: int

    def __init__(
        self,
        *,
        state: str,
        ctx: Any,
        timers: dict[str, tuple[int, float]] | None,
        gen: int,
        now: float,
        parent: _Node | None,
        step: Step | None,
    ) -> None:
        self.state, self.ctx, self.timers, self.gen, self.now = state, ctx, timers, gen, now
        self.parent, self.step = parent, step
        self.depth = 0 if parent is None else parent.depth + 1
        self.last = None if step is None else step.edge

    def steps(self) -> tuple[Step, ...]:
        return trail(self)


def trail(node: Any) -> tuple[Any, ...]:
    """The steps from the search's root to `node`, following `parent` links (root has no step)."""
    out: list[Any] = []
    while node is not None and node.step is not None:
        out.append(node.step)
        node = node.parent
    return tuple(reversed(out))


_ATOMIC: frozenset[type] = frozenset({int, float, str, bytes, bool, type(None), complex})
_FIELDS: dict[type, tuple[str, ...] | None] = {}


def _field_names(cls: type) -> tuple[str, ...] | None:
    names = _FIELDS.get(cls, ())
    if names == ():
        names = tuple(f.name for f in attrs.fields(cls)) if attrs.has(cls) else None
        _FIELDS[cls] = names
    return names


def copy_context(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """`copy.deepcopy(value)` for session contexts, several times faster: the planners copy
    a context for every candidate step, and deepcopy's generic protocol (reduce, getstate,
    setstate per attrs object) was most of their time. Plain lists, dicts, tuples, sets and
    attrs instances are copied here, shared objects staying shared as with deepcopy; anything
    else goes to deepcopy itself."""
    cls = type(value)
    if cls in _ATOMIC:
        return value
    if memo is None:
        memo = {}
    found = memo.get(id(value))
    if found is not None:
        return found
    if cls is tuple:
        return tuple(copy_context(v, memo) for v in value)
    if cls is list:
        out: Any = []
        memo[id(value)] = out
        out.extend(copy_context(v, memo) for v in value)
        return out
    if cls is dict:
        out = {}
        memo[id(value)] = out
        for k, v in value.items():
            out[copy_context(k, memo)] = copy_context(v, memo)
        return out
    if cls is set:
        out = {copy_context(v, memo) for v in value}
        memo[id(value)] = out
        return out
    names = _field_names(cls)
    if names is None:
        return copy.deepcopy(value, memo)
    out = object.__new__(cls)
    memo[id(value)] = out
    for name in names:
        object.__setattr__(out, name, copy_context(getattr(value, name), memo))
    return out


def _session(machine: Machine[Any], key: Any, node: _Node) -> Session:
    session = Session(machine, key, node.state, copy_context(node.ctx))
    session.timers = dict(node.timers) if node.timers else None
    session.gen = node.gen
    return session


STEP_GAP = 1.0
"""Seconds between two outside events on a path, so that rate limits (progress reported at
most once a second) let reports through; never so far that an armed timer would come due."""


def next_now(now: float, timers: Iterable[tuple[int, float]]) -> float:
    """When the next outside event happens: STEP_GAP later, unless an armed timer (generation,
    deadline) would come due first; then at once."""
    later = now + STEP_GAP
    if any(deadline <= later for _, deadline in timers):
        return now
    return later


def _candidates(
    examples: Examples, node: _Node, triggers: Sequence[str]
) -> list[tuple[Event, float]]:
    out: list[tuple[Event, float]] = []
    at = next_now(node.now, (node.timers or {}).values())
    for trigger in triggers:
        if not trigger.startswith(TIMER_PREFIX):
            out.extend((e, at) for e in examples.candidates(trigger, node.ctx))
    if node.timers:
        # only the earliest timer may fire: a runtime's clock would fire it before any later one
        name, (generation, deadline) = min(node.timers.items(), key=lambda kv: kv[1][1])
        out.append((TimerFired(name, generation), max(node.now, deadline)))
    return out


def _targets(spec: MachineSpec[Any], cover: Cover) -> set[Hashable]:
    all_edges = edges(spec)
    if cover == "transitions":
        return set(all_edges)
    if cover == "guards":
        return {(e, True) for e in all_edges} | {(e, False) for e in all_edges if e.guard}
    return set(all_edges) | {(a, b) for a in all_edges for b in all_edges if b.source == a.dest}


def _refused_guards(spec: MachineSpec[Any], node: _Node, event: Event) -> list[Edge]:
    """The guarded edges whose guard was asked and said no before one fired (guards are pure)."""
    refused: list[Edge] = []
    for src, on in spec.expanded():
        if src != node.state or on.trigger_name != event.trigger:
            continue
        if on.guard is None or on.guard(node.ctx, event):
            break
        refused.append(_edge(spec, src, on))
    return refused


def _reached(
    spec: MachineSpec[Any], cover: Cover, node: _Node, child: _Node, event: Event
) -> list[Hashable]:
    edge = child.last
    assert edge is not None
    if cover == "transitions":
        return [edge]
    if cover == "guards":
        return [(edge, True), *((e, False) for e in _refused_guards(spec, node, event))]
    return [edge] if node.last is None else [edge, (node.last, edge)]


def _key(node: _Node, cover: Cover) -> Hashable:
    # timer names, not deadlines: a session that differs only in how long its timers have to
    # run is the same for coverage, and counting it twice makes the search space explode
    timers = tuple(sorted(node.timers or ()))
    last = node.last if cover == "pairs" else None
    return (node.state, repr(node.ctx), timers, last)


@attrs.frozen
class Limits:
    """Where a search stops short of every target: the path length, the sessions kept, and
    `patience` sessions in a row that reached nothing new (what is left is most likely dead:
    a guard that no session reaching that state can pass)."""

    max_depth: int = 16
    max_nodes: int = 20_000
    patience: int = 3_000


N = TypeVar("N", bound="_Searchable")


class _Searchable(Protocol):
    depth: int


def search(
    root: N,
    expand: Callable[[N], Iterable[tuple[N, Iterable[Hashable]]]],
    key: Callable[[N], Hashable],
    targets: Collection[Hashable],
    limits: Limits,
) -> dict[Hashable, N]:
    """Breadth first from `root`: for each target, the first (so a shallowest) node reaching
    it. `expand` gives a node's children with the targets each reached; `key` merges nodes
    that are the same for the search."""
    best: dict[Hashable, N] = {}
    seen = {key(root)}
    queue = deque([root])
    fruitless = 0
    while queue and len(best) < len(targets) and len(seen) < limits.max_nodes:
        if fruitless >= limits.patience:
            break
        node = queue.popleft()
        fruitless += 1
        if node.depth >= limits.max_depth:
            continue
        for child, reached in expand(node):
            for target in reached:
                if target in targets and target not in best:
                    best[target] = child
                    fruitless = 0
            k = key(child)
            if k not in seen:
                seen.add(k)
                queue.append(child)
    return best


def plan(
    spec: MachineSpec[Any],
    examples: Examples | None = None,
    *,
    cover: Cover = "transitions",
    max_depth: int = 16,
    max_nodes: int = 20_000,
    patience: int = 3_000,
) -> Plan:
    """Plan paths from the initial state that together reach every target of `cover`.

    `examples` default to the ones `iotfsm.machines.examples` declares for a machine of the
    same name. The search stops when every target is reached, or after `max_depth` steps or
    `max_nodes` sessions, or once `patience` sessions in a row reached nothing new (what is
    left is most likely dead: a guard no session reaching that state can pass); then
    `Plan.uncovered` names what was not reached.
    """
    examples = _examples(spec, examples)
    machine: Machine[Any] = Machine(spec)
    records: list[StepRecord] = []
    machine.tracer = records.append
    triggers: dict[str, list[str]] = {}
    for src, on in spec.expanded():
        names = triggers.setdefault(src, [])
        if on.trigger_name not in names:
            names.append(on.trigger_name)
    targets = _targets(spec, cover)
    starts = [None, *(start(examples.key) for start in examples.starts)]

    def expand(node: _Node) -> Iterator[tuple[_Node, Iterable[Hashable]]]:
        for event, now in _candidates(examples, node, triggers.get(node.state, [])):
            session = _session(machine, examples.key, node)
            records.clear()
            out = machine.step(session, event, now)
            fired = edge_of(spec, records[-1]) if records else None
            if out is None or fired is None:
                continue
            step = Step(event, session.state, tuple(out), fired, now)
            child = _Node(
                state=session.state,
                ctx=session.ctx,
                timers=session.timers,
                gen=session.gen,
                now=now,
                parent=node,
                step=step,
            )
            yield child, _reached(spec, cover, node, child, event)

    limits = Limits(max_depth, max_nodes, patience)
    best: dict[Hashable, tuple[_Node, Any]] = {}
    for start in starts:
        root = _Node(
            state=spec.initial,
            ctx=spec.context(examples.key) if start is None else copy_context(start),
            timers=None,
            gen=0,
            now=0.0,
            parent=None,
            step=None,
        )
        found = search(root, expand, lambda n: _key(n, cover), targets, limits)
        for target, node in found.items():
            if target not in best or node.depth < best[target][0].depth:
                best[target] = (node, start)
    return _select(spec.name, examples.key, targets, best, cover)


def _select(
    name: str,
    key: Any,
    targets: set[Hashable],
    best: Mapping[Hashable, tuple[_Node, Any]],
    cover: Cover,
) -> Plan:
    covered: set[Hashable] = set()
    chosen: list[Path] = []
    for target, (node, start) in sorted(best.items(), key=lambda kv: -kv[1][0].depth):
        if target in covered:
            continue
        steps = node.steps()
        chosen.append(Path(name, key, steps, start))
        prev: Step | None = None
        for step in steps:
            covered.add(step.edge)
            covered.add((step.edge, True))
            if prev is not None:
                covered.add((prev.edge, step.edge))
            prev = step
        covered.add(target)
    return Plan(tuple(chosen), frozenset(targets), frozenset(best))


def _examples(spec: MachineSpec[Any], examples: Examples | None) -> Examples:
    if examples is not None:
        return examples
    from ..machines.examples import examples_for

    found = examples_for(spec)
    if found is None:
        raise PlanError(
            f"no example events are declared for machine {spec.name!r}; pass"
            " examples=Examples(spec, key, {trigger: ctx -> events, ...})"
        )
    return found


def paths(
    spec: MachineSpec[Any], examples: Examples | None = None, *, cover: Cover = "transitions"
) -> list[Path]:
    """Shortest executable paths that together take every transition of `spec` (or every pair
    of consecutive transitions, or every guard outcome, with `cover`)."""
    return list(plan(spec, examples, cover=cover).paths)


# ---- running a path -----------------------------------------------------------------------


class PathError(AssertionError):
    """A path's step did not do what the declaration says; carries the path and the step."""

    def __init__(self, path: Path, index: int, detail: str) -> None:
        self.path, self.index = path, index
        super().__init__(f"step {index} ({path.steps[index].event!r}): {detail}\n{path.describe()}")


EffectHandler = Callable[[Effect], None]


def run_path(
    path: Path,
    spec: MachineSpec[Any] | Machine[Any],
    *,
    handlers: Mapping[type[Effect], EffectHandler] | None = None,
    check_effects: bool = True,
) -> Session:
    """Step `path` through `spec` (the declaration under test: your own, or a changed copy) and
    fail at the first step whose state or effects differ from the planned ones.

    `handlers` receive the effects of their type as each step produces them: your application's
    code (a burn step, a config applier) runs on the path's effects and any exception it raises
    fails the step. Returns the session at the end.
    """
    machine = spec if isinstance(spec, Machine) else Machine(spec)
    start = None if path.context is None else copy_context(path.context)
    session = machine.new_session(path.key, start)
    for i, step in enumerate(path.steps):
        out = machine.step(session, step.event, step.now)
        if out is None:
            detail = f"ignored in state {session.state!r}, expected {step.state!r}"
            raise PathError(path, i, detail)
        if session.state != step.state:
            raise PathError(path, i, f"went to {session.state!r}, expected {step.state!r}")
        if check_effects and tuple(out) != step.effects:
            raise PathError(path, i, f"effects {out!r}, expected {list(step.effects)!r}")
        for effect in out:
            handler = (handlers or {}).get(type(effect))
            if handler is not None:
                try:
                    handler(effect)
                except Exception as exc:
                    raise PathError(path, i, f"handler for {effect!r} raised {exc!r}") from exc
    return session


def replay(
    spec: MachineSpec[Any], key: Any, events: Iterable[Event], context: Any = None
) -> Path | None:
    """The path `events` make through `spec` from its initial state, with the states and effects
    the declaration gives them; None when one is ignored. A `TimerFired` is re-stamped with the
    generation armed now (and fires at its deadline), so a path with steps removed stays valid."""
    machine: Machine[Any] = Machine(spec)
    records: list[StepRecord] = []
    machine.tracer = records.append
    session = machine.new_session(key, None if context is None else copy_context(context))
    now = 0.0
    steps: list[Step] = []
    for given in events:
        event = given
        now = next_now(now, (session.timers or {}).values())
        if isinstance(given, TimerFired):
            armed = (session.timers or {}).get(given.name)
            if armed is None:
                return None
            event, now = TimerFired(given.name, armed[0]), max(now, armed[1])
        out = machine.step(session, event, now)
        fired = edge_of(spec, records[-1]) if records else None
        if out is None or fired is None:
            return None
        steps.append(Step(event, session.state, tuple(out), fired, now))
    return Path(spec.name, key, tuple(steps), context)


def shrink(path: Path, fails: Callable[[Path], bool], spec: MachineSpec[Any]) -> Path:
    """The shortest path found that still `fails`: first the shortest failing prefix, then
    single steps dropped while the rest stays executable on `spec` and still fails."""
    best = path
    for n in range(1, len(path)):
        if fails(path.prefix(n)):
            best = path.prefix(n)
            break
    improved = True
    while improved:
        improved = False
        for i in range(len(best)):
            events = best.events[:i] + best.events[i + 1 :]
            candidate = replay(spec, best.key, events, best.context)
            if candidate is not None and fails(candidate):
                best, improved = candidate, True
                break
    return best
