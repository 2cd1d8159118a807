"""Paths through a device machine and a platform machine together: each one a real exchange.

    for path in paired_paths(ota.FEATURE):
        run_paired(path, ota.FEATURE)      # both runtimes over the memory broker

The planner searches like `paths`, over pairs of sessions. An outside event goes to one role (a
platform command, a transfer outcome, a burn result, or a timer of either role, earliest first);
every message a step publishes is encoded, decoded and stepped into the other role the way two
runtimes on the memory broker pass it (each runtime runs its own steps to completion, a message
for a runtime that is stepping waits in its queue). Effects the role facades turn into messages
(an offer with a signed URL) go through the feature's bridges. Messages are never invented: the
device sees an offer only when the platform made one.

`run_paired` replays a path on a device `Runtime` and a platform `Runtime` over a real
`MemoryBroker` on a manual clock, and checks both sessions' states after every step. The device
starts connected (a runtime connects when it starts); Disconnected and Connected steps cut and
restore its connection on the broker (messages to it are lost meanwhile, its QoS 1 messages wait
for the reconnect). A step may lose the first message it causes (a `Drop` fault on the broker),
which is how replies that never come, and the timeouts and retries after them, enter paths.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any

import attrs

from ..adapters.codec import Codec
from ..adapters.mqtt.memory_broker import Drop, MemoryBroker
from ..adapters.runtime import EffectHandler, Runtime
from ..fsm.clock import ManualClock
from ..fsm.effects import CancelTimer, Effect, Log, Publish, SetTimer
from ..fsm.events import TIMER_PREFIX, Connected, Disconnected, Event, TimerFired
from ..fsm.examples import Examples
from ..fsm.machine import Machine
from ..fsm.session import Session
from ..fsm.trace import StepRecord
from ..machines.feature import ROLES, DeviceKey, Feature, Role, inbound_direction
from ..machines.messages import Message, RawMessage
from .pair import START
from .paths import Edge, Limits, PlanError, copy_context, edge_of, edges, next_now, search, trail

CONNECTION = frozenset({Connected.trigger, Disconnected.trigger})


def _peer(role: Role) -> Role:
    return "platform" if role == "device" else "device"


@attrs.frozen
class PairedStep:
    role: Role
    """Who gets the outside event."""
    event: Event
    now: float
    device: str
    platform: str
    """The states of both sessions once every message the event caused has been stepped."""
    taken: tuple[tuple[Role, Edge], ...]
    """Every edge the event and the messages it caused took, in order."""
    lossy: bool = False
    """The first message the event caused was lost on the way (a dropped packet)."""
    contexts: tuple[Any, Any] = attrs.field(default=(None, None), eq=False, repr=False)
    """Copies of the (device, platform) contexts after the step: what each session must hold,
    so a lost update (a level the platform forgot to push) fails even when no state changes."""


@attrs.frozen
class PairedPath:
    feature: str
    key: DeviceKey
    start: tuple[str, str]
    """(device, platform) states after the device connected."""
    steps: tuple[PairedStep, ...]

    @property
    def name(self) -> str:
        parts = [
            f"{s.role[0]}.{s.event.trigger.replace(TIMER_PREFIX, 't.')}{'~' if s.lossy else ''}"
            for s in self.steps
        ]
        last = self.steps[-1] if self.steps else None
        end = f"{last.device}|{last.platform}" if last else "|".join(self.start)
        return "-".join(parts or ["connect"]) + f"->{end}"

    def describe(self) -> str:
        lines = [f"paired path through {self.feature}, from {self.start}:"]
        for i, s in enumerate(self.steps):
            states = f"{s.device} | {s.platform}"
            lost = " (its first message lost)" if s.lossy else ""
            at = s.now - START
            lines.append(f"  {i}. {s.role} <- {s.event!r}{lost} at +{at:g} s -> {states}")
        return "\n".join(lines)


@attrs.frozen
class PairedPlan:
    paths: tuple[PairedPath, ...]
    targets: frozenset[tuple[Role, Edge]]
    covered: frozenset[tuple[Role, Edge]]

    @property
    def uncovered(self) -> frozenset[tuple[Role, Edge]]:
        return self.targets - self.covered


class _World:
    """Both sessions and the clock: one node of the search (copied, never shared)."""

    __slots__ = ("depth", "now", "online", "outbox", "parent", "sessions", "step")

    def __init__(self, sessions: dict[Role, Session], now: float) -> None:
        self.sessions, self.now = sessions, now
        self.parent: _World | None = None
        self.step: PairedStep | None = None
        self.depth = 0
        self.online = True
        """Whether the device is connected; messages to an offline device are lost."""
        self.outbox: list[Message] = []
        """QoS 1 messages the offline device published: the broker sends them on reconnect."""

    def copy(self) -> _World:
        clone: dict[Role, Session] = {}
        for role, s in self.sessions.items():
            c = Session(s.machine, s.key, s.state, copy_context(s.ctx))
            c.timers, c.gen = (dict(s.timers) if s.timers else None), s.gen
            clone[role] = c
        world = _World(clone, self.now)
        world.online, world.outbox = self.online, list(self.outbox)
        return world

    def key(self) -> Hashable:
        sessions = tuple(
            (s.state, repr(s.ctx), tuple(sorted(s.timers or ()))) for s in self.sessions.values()
        )
        return (sessions, self.online, repr(self.outbox))

    def steps(self) -> tuple[PairedStep, ...]:
        return trail(self)


class _Exchange:
    """Two runtimes' trampolines in miniature: what `Runtime.post` and the broker do."""

    def __init__(self, feature: Feature, bridges: Mapping[type[Effect], Callable[[Any], Any]]):
        self.feature = feature
        self.codec = Codec([feature])
        self.bridges = bridges
        self.machines: dict[Role, Machine[Any]] = {}
        self.records: list[tuple[Role, StepRecord]] = []
        self.losable = 0
        """Messages the last run could have lost (0: running it lossy changes nothing)."""
        for role in ROLES:
            machine: Machine[Any] = Machine(feature.spec(role))
            machine.tracer = lambda r, role=role: self.records.append((role, r))
            self.machines[role] = machine

    def run(
        self, world: _World, role: Role, event: Event, lossy: bool = False
    ) -> list[tuple[Role, Edge]]:
        self.records.clear()
        self.losable = 0
        lose = [lossy]
        queues: dict[Role, deque[Event]] = {"device": deque(), "platform": deque()}
        draining: dict[Role, bool] = {"device": False, "platform": False}

        def post(to: Role, ev: Event) -> None:
            if draining[to]:
                queues[to].append(ev)
                return
            draining[to] = True
            step(to, ev)
            while queues[to]:
                step(to, queues[to].popleft())
            draining[to] = False

        def deliver(sender: Role, message: Message, qos: int = 1) -> None:
            if sender == "device" and not world.online:
                if qos > 0:  # what paho and the memory broker do while offline
                    world.outbox.append(message)
                return
            self.losable += 1
            if lose[0]:
                lose[0] = False
                return
            if sender == "platform" and not world.online:
                return
            direction = inbound_direction(_peer(sender))
            _, decoded = self.codec.decode_any(
                [self.feature.name], direction, self.codec.encode(message)
            )
            if isinstance(message, RawMessage) and message.SUFFIX:
                # the value the topic carries after the device (RRPC's processId), as the
                # runtime puts it back from the topic
                carried: dict[str, Any] = {message.SUFFIX: getattr(message, message.SUFFIX)}
                decoded = attrs.evolve(decoded, **carried)
            post(_peer(sender), decoded)

        def step(to: Role, ev: Event) -> None:
            session = world.sessions[to]
            for effect in self.machines[to].step(session, ev, world.now) or ():
                if type(effect) is Publish:
                    deliver(to, effect.message, effect.qos)  # type: ignore[arg-type]
                bridge = self.bridges.get(type(effect))
                if bridge is not None:
                    for message in bridge(effect):
                        deliver(to, message)

        if type(event) is Disconnected:
            world.online = False
        if type(event) is Connected:
            world.online = True
            outbox, world.outbox = world.outbox, []
            for message in outbox:
                deliver("device", message)
        post(role, event)
        taken: list[tuple[Role, Edge]] = []
        for who, record in self.records:
            edge = edge_of(self.feature.spec(who), record)
            if edge is not None:
                taken.append((who, edge))
        return taken


def _triggers(feature: Feature, role: Role, state: str) -> list[str]:
    inbound = frozenset(m.trigger for m in feature.spec(role).inbound)
    out: list[str] = []
    for src, on in feature.spec(role).expanded():
        t = on.trigger_name
        outside = t not in inbound and t not in CONNECTION and not t.startswith(TIMER_PREFIX)
        if src == state and outside and t not in out:
            out.append(t)
    return out


def _next_timer(world: _World) -> tuple[Role, TimerFired, float] | None:
    due: list[tuple[float, int, Role, str, int]] = []
    for n, role in enumerate(ROLES):
        for name, (gen, deadline) in (world.sessions[role].timers or {}).items():
            due.append((deadline, n, role, name, gen))
    if not due:
        return None
    deadline, _, role, name, gen = min(due)
    return role, TimerFired(name, gen), max(world.now, deadline)


def paired_plan(
    feature: Feature,
    examples: Mapping[Role, Examples] | None = None,
    bridges: Mapping[type[Effect], Callable[[Any], Any]] | None = None,
    *,
    max_depth: int = 14,
    max_nodes: int = 5_000,
    patience: int = 1_000,
) -> PairedPlan:
    """Paired paths that together take every edge of both roles reachable by real exchanges."""
    from ..machines.examples import BRIDGES, examples_for

    found: dict[Role, Examples] = {}
    for role in ROLES:
        given = (examples or {}).get(role) or examples_for(feature.spec(role))
        if given is None:
            raise PlanError(f"no example events for {feature.spec(role).name!r}; pass examples=")
        found[role] = given
    key = found["device"].key
    exchange = _Exchange(feature, BRIDGES.get(feature.name, {}) if bridges is None else bridges)
    root = _World({r: exchange.machines[r].new_session(key) for r in ROLES}, START)
    exchange.run(root, "device", Connected())
    targets = frozenset((r, e) for r in ROLES for e in edges(feature.spec(r)))

    def expand(node: _World) -> Iterator[tuple[_World, Iterable[Hashable]]]:
        moves: list[tuple[Role, Event, float]] = []
        timers = (t for x in node.sessions.values() for t in (x.timers or {}).values())
        at = next_now(node.now, timers)
        for role in ROLES:
            session = node.sessions[role]
            for trigger in _triggers(feature, role, session.state):
                moves += [(role, e, at) for e in found[role].candidates(trigger, session.ctx)]
        moves.append(("device", Disconnected() if node.online else Connected(), at))
        timer = _next_timer(node)
        if timer is not None:
            moves.append(timer)
        for (role, event, now), lossy in ((m, lossy) for m in moves for lossy in (False, True)):
            if lossy and not exchange.losable:
                continue  # the move sent nothing to lose: its lossy run is the same world again
            child = node.copy()
            child.now = now
            taken = exchange.run(child, role, event, lossy)
            if not taken:
                continue
            states = (child.sessions["device"].state, child.sessions["platform"].state)
            child.parent, child.depth = node, node.depth + 1
            # no copy needed: a world in the search is never stepped again (its children are
            # stepped on copies), so these contexts stay as they are after this step
            contexts = tuple(child.sessions[r].ctx for r in ROLES)
            child.step = PairedStep(role, event, now, *states, tuple(taken), lossy, contexts)
            yield child, taken

    best = search(root, expand, _World.key, targets, Limits(max_depth, max_nodes, patience))
    start = (root.sessions["device"].state, root.sessions["platform"].state)
    return _select(feature.name, key, start, targets, best)


def _select(
    name: str,
    key: DeviceKey,
    start: tuple[str, str],
    targets: frozenset[tuple[Role, Edge]],
    best: Mapping[Hashable, _World],
) -> PairedPlan:
    covered: set[tuple[Role, Edge]] = set()
    chosen: list[PairedPath] = []
    for target, world in sorted(best.items(), key=lambda kv: -kv[1].depth):
        if target in covered:
            continue
        steps = world.steps()
        chosen.append(PairedPath(name, key, start, steps))
        covered.update(t for s in steps for t in s.taken)
    return PairedPlan(tuple(chosen), targets, frozenset(t for t in best if t in targets))


def paired_paths(feature: Feature) -> list[PairedPath]:
    """Shortest paired paths that together take every edge real exchanges can reach."""
    return list(paired_plan(feature).paths)


class PairedPathError(AssertionError):
    def __init__(self, path: PairedPath, index: int, detail: str) -> None:
        self.path, self.index = path, index
        super().__init__(f"step {index}: {detail}\n{path.describe()}")


def run_paired(
    path: PairedPath,
    feature: Feature,
    *,
    handlers: Mapping[tuple[Role, type[Effect]], EffectHandler] | None = None,
    bridges: Mapping[type[Effect], Callable[[Any], Any]] | None = None,
) -> tuple[Runtime, Runtime]:
    """Replay `path` on a device and a platform `Runtime` over the memory broker; fail at the
    first step after which either session is not in the planned state. `handlers` add your
    code for effects of a role (a burn step, a delivery callback). Returns both runtimes."""
    from ..machines.examples import BRIDGES

    bridges = BRIDGES.get(feature.name, {}) if bridges is None else bridges
    clock = ManualClock(START)
    broker = MemoryBroker(scheduler=clock)
    key = path.key
    runtimes: dict[Role, Runtime] = {}
    device_id = f"{key.product}{key.device}"

    def bridged(role: Role, kind: type[Effect]) -> EffectHandler:
        def publish(k: DeviceKey, effect: Any) -> None:
            for message in bridges[kind](effect):
                runtimes[role].publish(feature.name, k, message, 1)

        return publish

    for role in ("platform", "device"):
        own: dict[Any, EffectHandler] = {}
        for kind in bridges:
            own[kind] = bridged(role, kind)
        for (who, kind), handler in (handlers or {}).items():
            if who == role:
                own[kind] = handler
        for kind in _effect_types():
            own.setdefault(kind, _ignore)
        transport = broker.connect(device_id if role == "device" else "iotfsm-platform")
        runtimes[role] = Runtime(
            role,
            transport,
            [feature],
            identity=key if role == "device" else None,
            products=[key.product] if role == "platform" else None,
            clock=clock,
            handlers=own,
        )
    runtimes["platform"].start()
    runtimes["device"].start()

    def states() -> tuple[str, str]:
        return (
            runtimes["device"].session(feature.name, key).state,
            runtimes["platform"].session(feature.name, key).state,
        )

    if states() != path.start:
        raise PairedPathError(path, -1, f"after connecting: {states()}, expected {path.start}")
    lossy_filter = feature.up_topic.split("/", 1)[0] + "/#"
    for i, step in enumerate(path.steps):
        if step.lossy:
            broker.inject(Drop(lossy_filter, times=1))
        clock.advance(step.now - clock.now())  # a timer step fires here
        if isinstance(step.event, Disconnected):
            broker.disconnect(device_id)
        elif isinstance(step.event, Connected):
            broker.reconnect(device_id)
        elif not isinstance(step.event, TimerFired):
            runtimes[step.role].post(feature.name, key, step.event)
        broker.clear_faults()
        if states() != (step.device, step.platform):
            expected = (step.device, step.platform)
            raise PairedPathError(path, i, f"states {states()}, expected {expected}")
        for role, ctx in zip(ROLES, step.contexts, strict=True):
            held = runtimes[role].session(feature.name, key).ctx
            if ctx is not None and held != ctx:
                raise PairedPathError(path, i, f"{role} context {held!r}, expected {ctx!r}")
    for runtime in runtimes.values():
        runtime.stop()
    return runtimes["device"], runtimes["platform"]


def _ignore(key: DeviceKey, effect: Any) -> None:
    """An effect with no code of the user's here (a download the path reports the outcome of)."""


def _effect_types() -> set[type[Effect]]:
    """Every declared effect type beyond the runtime's own, so that a path's downloads, burns
    and notices have a (silent) handler unless the caller gave one."""
    found: set[type[Effect]] = set()
    todo = list(Effect.__subclasses__())
    while todo:
        kind = todo.pop()
        todo.extend(kind.__subclasses__())
        if kind not in (Publish, SetTimer, CancelTimer, Log):
            found.add(kind)
    return found
