"""An MQTT broker inside the process: device and platform runtimes meet here in tests and demos.

It keeps what the runtimes can observe of a real broker (topic matching with `+`, `#` and
`$`-topics, shared subscriptions, QoS 0/1, clean sessions that lose subscriptions on a disconnect)
and drops what they cannot (sockets, acks, retained messages). Faults are injected by rule, never
by chance unless a seeded `random.Random` is given, so a failing test fails the same way each run.

Delivery is a trampoline: the first thread to publish while the broker is idle delivers the queue
until it is empty; any publish made meanwhile (a handler replying, another thread) only enqueues.
A reply therefore never recurses into its sender, messages go out in FIFO order, and handlers never
run on two threads at once. Handlers are called without the broker's lock held, so they may publish,
subscribe, or cut connections freely.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import attrs

from iotfsm.adapters.mqtt.topic_filter import (
    FilterIndex,
    compile_filter,
    split_shared,
    validate_filter,
    validate_topic,
)
from iotfsm.adapters.transport import ConnectionHandler, MessageHandler, TransportError
from iotfsm.fsm.clock import Clock, Scheduler

logger = logging.getLogger(__name__)

_QOS_LEVELS = (0, 1)


class Delivery(NamedTuple):
    """One message handed to one client, as kept in `MemoryBroker.record`."""

    client_id: str
    topic: str
    payload: bytes


@attrs.frozen
class BrokerStats:
    """Counters a test can assert on, taken as one consistent snapshot."""

    published: int
    """Publishes accepted from connected clients."""
    delivered: int
    """Messages handed to a client's handler; a duplicated message counts twice."""
    dropped: int
    """Messages lost on the way: Drop and Disconnect faults, a client gone offline before its
    message arrived, held or queued messages of a client that disconnected, QoS 0 published while
    the sender was offline."""
    unrouted: int
    """Published messages no subscription matched (not a loss: MQTT discards them too)."""


# Faults -----------------------------------------------------------------------------------------


def _check_fault_filter(_: object, __: object, topic_filter: str) -> None:
    validate_filter(topic_filter)
    if split_shared(topic_filter)[0] is not None:
        raise ValueError(
            f"fault filter {topic_filter!r}: faults match topics, not subscriptions; "
            "drop the $share/{group}/ prefix"
        )


def _check_times(_: object, __: object, times: int | None) -> None:
    if times is not None and times < 1:
        raise ValueError(f"times must be None (every matching message) or at least 1, not {times}")


def _check_probability(_: object, __: object, probability: float) -> None:
    if not 0.0 < probability <= 1.0:
        raise ValueError(f"probability must be in (0, 1], not {probability}")


def _check_after(_: object, __: object, after: int) -> None:
    if after < 0:
        raise ValueError(f"after counts deliveries let through first; it cannot be {after}")


def _check_seconds(_: object, __: object, seconds: float) -> None:
    if seconds < 0:
        raise ValueError(f"a delay cannot be negative; got {seconds} seconds")


@attrs.frozen
class _Rule:
    """What every fault shares: which deliveries it hits, and how many of them.

    A fault applies per delivery (one message to one client): `topic_filter` is matched against
    the topic, `client_id` (if given) against the receiving client, `message_type` (if given)
    against the `type` field of the JSON payload, because features share topics and a test wants
    to hit, say, `update_firmware` and not the `report_version_rsp` on the same topic. The first
    `after` matching deliveries go through untouched, so a test can hit the third progress report
    rather than the first. `times=None` hits every matching delivery after those. With
    `probability` < 1 a matching delivery is hit only if the broker's seeded `rng` says so; only
    hits use up `times`.
    """

    topic_filter: str = attrs.field(validator=_check_fault_filter)
    times: int | None = attrs.field(default=1, kw_only=True, validator=_check_times)
    client_id: str | None = attrs.field(default=None, kw_only=True)
    probability: float = attrs.field(default=1.0, kw_only=True, validator=_check_probability)
    message_type: str | None = attrs.field(default=None, kw_only=True)
    after: int = attrs.field(default=0, kw_only=True, validator=_check_after)


@attrs.frozen
class Drop(_Rule):
    """The message never reaches the client: a lost QoS 0 packet, or a QoS 1 retry that gave up."""


@attrs.frozen
class Duplicate(_Rule):
    """The client gets the message twice in a row, as after a QoS 1 redelivery."""


@attrs.frozen
class Reorder(_Rule):
    """The message is held and handed over right after the next message to the same client."""


@attrs.frozen
class Delay(_Rule):
    """The message is handed over when the broker's scheduler calls back, `seconds` from now;
    messages published meanwhile overtake it."""

    seconds: float = attrs.field(validator=_check_seconds)


@attrs.frozen
class Disconnect(_Rule):
    """The receiving client loses its connection instead of getting the message.

    It stays offline until `broker.reconnect(client_id)`, or for `reconnect_after` seconds on the
    broker's scheduler, the way a real client reconnects after a backoff.
    """

    reconnect_after: float | None = attrs.field(default=None, kw_only=True)


Fault = Drop | Duplicate | Reorder | Delay | Disconnect


@attrs.define
class _ActiveFault:
    fault: Fault
    hits: Callable[[str], bool]
    remaining: int | None
    passed: int = 0
    """Matching deliveries let through so far, up to `fault.after`."""


def _message_type(payload: bytes) -> str | None:
    """The `type` of a JSON message, or None for anything else (faults by type never hit it)."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    kind = doc.get("type") if isinstance(doc, dict) else None
    return kind if isinstance(kind, str) else None


# Messages in flight -----------------------------------------------------------------------------


class _Message(NamedTuple):
    """A publish waiting to be routed; faults apply when it is."""

    topic: str
    payload: bytes
    qos: int


class _Handover(NamedTuple):
    """A message routed to one connection; `generation` ties it to that connection, so a message
    routed before a reconnect is lost like on a clean session."""

    transport: MemoryTransport
    generation: int
    topic: str
    payload: bytes
    qos: int


@attrs.define(eq=False)
class _SharedGroup:
    members: dict[MemoryTransport, int] = attrs.Factory(dict)
    turn: int = 0

    def pick(self) -> tuple[MemoryTransport, int]:
        """Round robin over the members in the order they subscribed."""
        members = list(self.members.items())
        chosen = members[self.turn % len(members)]
        self.turn += 1
        return chosen


# The broker -------------------------------------------------------------------------------------


class MemoryBroker:
    """The embedded broker: `connect(client_id)` hands out transports bound to it.

    `scheduler` (and a `clock` for its time base, unless the scheduler has `now()` itself, like
    `ManualClock`) is only needed for `Delay` and `Disconnect(reconnect_after=...)`. `rng` is only
    needed for faults with a probability below 1. `record=True` keeps every delivery in `record`.
    """

    def __init__(
        self,
        scheduler: Scheduler | None = None,
        *,
        clock: Clock | None = None,
        record: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._now = clock.now if clock is not None else _time_base(scheduler)
        self._rng = rng
        self._lock = threading.Lock()
        self._queue: deque[_Message | _Handover] = deque()
        self._delivering = False
        self._owners: dict[str, MemoryTransport] = {}
        self._subscribers: FilterIndex[MemoryTransport, int] = FilterIndex()
        self._shared: FilterIndex[str, _SharedGroup] = FilterIndex()
        self._faults: list[_ActiveFault] = []
        self._held: dict[MemoryTransport, list[_Handover]] = {}
        self._order = itertools.count()
        self._published = 0
        self._delivered = 0
        self._dropped = 0
        self._unrouted = 0
        self.record: list[Delivery] | None = [] if record else None

    # Public API ---------------------------------------------------------------------------------

    def connect(self, client_id: str) -> MemoryTransport:
        """A transport for `client_id`; it goes online on `start()`.

        Starting a second transport with the same id takes the session over and disconnects the
        first, as an MQTT broker does when a device restarts.
        """
        if not client_id:
            raise ValueError("a client id is needed: faults and disconnect() address clients by it")
        return MemoryTransport(self, client_id, next(self._order))

    def inject(self, fault: Fault) -> None:
        """Arm a fault; faults are tried in injection order and at most one hits a delivery."""
        needs_time = isinstance(fault, Delay) or (
            isinstance(fault, Disconnect) and fault.reconnect_after is not None
        )
        if needs_time and self._scheduler is None:
            raise ValueError(
                f"{type(fault).__name__} needs a scheduler to act later: build the broker with "
                "MemoryBroker(scheduler=ManualClock()) (iotfsm.fsm.clock) and advance that clock"
            )
        if needs_time and self._now is None:
            raise ValueError(
                f"{type(fault).__name__} needs the scheduler's time base: pass clock=... to "
                "MemoryBroker, since this scheduler has no now()"
            )
        if fault.probability < 1.0 and self._rng is None:
            raise ValueError(
                "a fault with probability < 1 needs a seeded generator, so runs are repeatable: "
                "MemoryBroker(rng=random.Random(seed))"
            )
        hits = compile_filter(fault.topic_filter)
        with self._lock:
            self._faults.append(_ActiveFault(fault, hits, fault.times))

    @property
    def armed(self) -> list[Fault]:
        """The faults not used up yet, in injection order (a test can check that each fault it
        injected did hit something)."""
        with self._lock:
            return [active.fault for active in self._faults]

    def clear_faults(self) -> None:
        """Disarm all faults; messages already held or delayed by one are still in flight."""
        with self._lock:
            self._faults.clear()

    def disconnect(self, client_id: str) -> None:
        """Cut a client's connection as a network failure would; it stays started, not connected."""
        transport = self._owner(client_id)
        with self._lock:
            was_connected = self._go_offline(transport)
        if was_connected:
            transport._notify(connected=False)

    def reconnect(self, client_id: str) -> None:
        """Bring a client cut by `disconnect` or a `Disconnect` fault back online."""
        self._go_online(self._owner(client_id))

    @property
    def stats(self) -> BrokerStats:
        with self._lock:
            return BrokerStats(self._published, self._delivered, self._dropped, self._unrouted)

    # Connection state ---------------------------------------------------------------------------

    def _owner(self, client_id: str) -> MemoryTransport:
        with self._lock:
            transport = self._owners.get(client_id)
        if transport is None:
            raise ValueError(
                f"no started client {client_id!r} on this broker; start its transport first"
            )
        return transport

    def _go_online(self, transport: MemoryTransport) -> None:
        """Connect, take the client id over, re-apply remembered subscriptions, flush the outbox.

        The subscriptions are back before `on_connection(True)` runs, as the Transport protocol
        promises, and before the outbox goes out, so replies to it are not missed.
        """
        with self._lock:
            if not transport._started or transport._connected:
                return
            previous = self._owners.get(transport.client_id)
            kicked = None
            if previous is not None and previous is not transport and self._go_offline(previous):
                kicked = previous
            self._owners[transport.client_id] = transport
            transport._connected = True
            transport._generation += 1
            for topic_filter, qos in transport._subscriptions.items():
                self._add_subscription(transport, topic_filter, qos)
            outbox, transport._outbox = transport._outbox, []
        if kicked is not None:
            kicked._notify(connected=False)
        for message in outbox:
            self._publish(transport, message)
        transport._notify(connected=True)

    def _go_offline(self, transport: MemoryTransport) -> bool:
        """Under the lock: a clean session forgets the client's subscriptions and in-flight
        messages. Returns whether it was connected, so the caller knows to notify it."""
        if not transport._connected:
            return False
        transport._connected = False
        for topic_filter in transport._subscriptions:
            group, inner = split_shared(topic_filter)
            if group is None:
                self._subscribers.discard(inner, transport)
                continue
            shared = self._shared.get(inner, group)
            if shared is not None:
                shared.members.pop(transport, None)
                if not shared.members:
                    self._shared.discard(inner, group)
        self._dropped += len(self._held.pop(transport, ()))
        return True

    def _add_subscription(self, transport: MemoryTransport, topic_filter: str, qos: int) -> None:
        """Under the lock."""
        group, inner = split_shared(topic_filter)
        if group is None:
            self._subscribers.set(inner, transport, qos)
            return
        shared = self._shared.get(inner, group)
        if shared is None:
            shared = _SharedGroup()
            self._shared.set(inner, group, shared)
        shared.members[transport] = qos

    def _subscribe(self, transport: MemoryTransport, topic_filter: str, qos: int) -> None:
        with self._lock:
            transport._subscriptions[topic_filter] = qos
            if transport._connected:
                self._add_subscription(transport, topic_filter, qos)

    def _start(self, transport: MemoryTransport) -> None:
        with self._lock:
            if transport._started:
                return
            transport._started = True
        self._go_online(transport)

    def _stop(self, transport: MemoryTransport) -> None:
        with self._lock:
            if not transport._started:
                return
            transport._started = False
            self._dropped += len(transport._outbox)
            transport._outbox = []
            was_connected = self._go_offline(transport)
            if self._owners.get(transport.client_id) is transport:
                del self._owners[transport.client_id]
        if was_connected:
            transport._notify(connected=False)

    # Delivery -----------------------------------------------------------------------------------

    def _publish(self, sender: MemoryTransport, message: _Message) -> None:
        with self._lock:
            if not sender._started:
                raise TransportError(
                    f"client {sender.client_id!r} is not started; call start() before publish()"
                )
            if not sender._connected:
                # What paho does while offline: QoS 1 waits for the reconnect, QoS 0 is lost.
                if message.qos > 0:
                    sender._outbox.append(message)
                else:
                    self._dropped += 1
                return
            self._published += 1
            self._queue.append(message)
            if self._delivering:
                return
            self._delivering = True
        self._drain()

    def _enqueue(self, item: _Message | _Handover) -> None:
        with self._lock:
            self._queue.append(item)
            if self._delivering:
                return
            self._delivering = True
        self._drain()

    def _drain(self) -> None:
        """Deliver until the queue is empty; only one thread at a time runs this."""
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        self._delivering = False
                        return
                    item = self._queue.popleft()
                    if isinstance(item, _Handover):  # came back from a Delay: faults are done
                        plan: list[tuple[_Handover, Fault | None]] = [(item, None)]
                    elif self._faults:
                        plan = [(h, self._take_fault(h)) for h in self._route(item)]
                    else:
                        plan = [(h, None) for h in self._route(item)]
                for handover, fault in plan:
                    self._apply(handover, fault)
        except BaseException:
            with self._lock:
                self._delivering = False
            raise

    def _route(self, message: _Message) -> list[_Handover]:
        """Under the lock: one handover per subscribed client, at the highest QoS among its
        matching filters (as mosquitto does), in connect order; plus one member per shared group."""
        best: dict[MemoryTransport, int] = {}
        for transport, qos in self._subscribers.match(message.topic):
            if best.get(transport, -1) < qos:
                best[transport] = qos
        targets = list(best.items())
        if len(targets) > 1:
            targets.sort(key=lambda pair: pair[0]._order)
        if self._shared:
            targets.extend(group.pick() for _, group in self._shared.match(message.topic))
        handovers = [
            _Handover(t, t._generation, message.topic, message.payload, min(message.qos, qos))
            for t, qos in targets
        ]
        if not handovers:
            self._unrouted += 1
        return handovers

    def _take_fault(self, handover: _Handover) -> Fault | None:
        """Under the lock: the first armed fault that hits this delivery, used up by one."""
        kind: str | None = None
        parsed = False
        for active in self._faults:
            fault = active.fault
            if fault.client_id is not None and fault.client_id != handover.transport.client_id:
                continue
            if not active.hits(handover.topic):
                continue
            if fault.message_type is not None:
                if not parsed:
                    kind, parsed = _message_type(handover.payload), True
                if kind != fault.message_type:
                    continue
            if active.passed < fault.after:
                active.passed += 1
                continue
            chance = fault.probability
            if chance < 1.0 and self._rng is not None and self._rng.random() >= chance:
                continue
            if active.remaining is not None:
                active.remaining -= 1
                if active.remaining == 0:
                    self._faults.remove(active)
            return fault
        return None

    def _apply(self, handover: _Handover, fault: Fault | None) -> None:
        match fault:
            case None:
                self._hand_over(handover)
            case Drop():
                with self._lock:
                    self._dropped += 1
            case Duplicate():
                self._hand_over(handover)
                self._hand_over(handover)
            case Reorder():
                with self._lock:
                    self._held.setdefault(handover.transport, []).append(handover)
            case Delay(seconds=seconds):
                self._call_later(seconds, partial(self._enqueue, handover))
            case Disconnect(reconnect_after=reconnect_after):
                transport = handover.transport
                with self._lock:
                    self._dropped += 1
                    was_connected = (
                        transport._generation == handover.generation and self._go_offline(transport)
                    )
                if was_connected:
                    transport._notify(connected=False)
                    if reconnect_after is not None:
                        self._call_later(reconnect_after, partial(self._go_online, transport))

    def _call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        assert self._scheduler is not None and self._now is not None  # checked by inject()
        self._scheduler.call_at(self._now() + seconds, callback)

    def _hand_over(self, handover: _Handover) -> None:
        """Call the client's handler, unless its connection is gone; then release what a
        Reorder fault held back for it."""
        transport = handover.transport
        with self._lock:
            live = transport._connected and transport._generation == handover.generation
            if not live:
                self._dropped += 1
                return
            self._delivered += 1
            if self.record is not None:
                self.record.append(Delivery(transport.client_id, handover.topic, handover.payload))
            handler = transport._on_message
        if handler is not None:
            try:
                handler(handover.topic, handover.payload)
            except Exception:
                logger.exception(
                    "message handler of client %r failed on topic %r; delivery goes on",
                    transport.client_id,
                    handover.topic,
                )
        if not self._held:  # the common case, read without the lock: only faults fill it
            return
        with self._lock:
            held = self._held.pop(transport, ())
        for late in held:
            self._hand_over(late)


class MemoryTransport:
    """One client's connection to a `MemoryBroker`; implements the Transport protocol.

    It remembers its subscriptions so that they come back on every reconnect, the way the paho
    transport re-subscribes, because the broker forgets them with each clean session.
    """

    def __init__(self, broker: MemoryBroker, client_id: str, order: int) -> None:
        self._broker = broker
        self.client_id = client_id
        self._order = order
        self._on_message: MessageHandler | None = None
        self._on_connection: ConnectionHandler | None = None
        self._subscriptions: dict[str, int] = {}
        self._outbox: list[_Message] = []
        self._started = False
        self._connected = False
        self._generation = 0

    def __repr__(self) -> str:
        state = "connected" if self._connected else "started" if self._started else "stopped"
        return f"<MemoryTransport {self.client_id!r} {state}>"

    def set_handlers(self, on_message: MessageHandler, on_connection: ConnectionHandler) -> None:
        self._on_message = on_message
        self._on_connection = on_connection

    def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        _check_qos(qos)
        try:
            validate_filter(topic_filter)
        except ValueError as error:
            raise TransportError(str(error)) from error
        self._broker._subscribe(self, topic_filter, qos)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        _check_qos(qos)
        try:
            validate_topic(topic)
        except ValueError as error:
            raise TransportError(str(error)) from error
        if not isinstance(payload, bytes):
            if not isinstance(payload, bytearray | memoryview):
                raise TransportError(
                    f"payload must be bytes, not {type(payload).__name__}; encode it first"
                )
            payload = bytes(payload)
        self._broker._publish(self, _Message(topic, payload, qos))

    def start(self) -> None:
        if self._on_message is None:
            raise TransportError(
                f"client {self.client_id!r}: call set_handlers() before start(), "
                "or messages would have nowhere to go"
            )
        self._broker._start(self)

    def stop(self) -> None:
        self._broker._stop(self)

    @property
    def connected(self) -> bool:
        return self._connected

    def _notify(self, *, connected: bool) -> None:
        handler = self._on_connection
        if handler is None:
            return
        try:
            handler(connected)
        except Exception:
            logger.exception("connection handler of client %r failed", self.client_id)


def _time_base(scheduler: Scheduler | None) -> Callable[[], float] | None:
    """The Scheduler protocol carries no clock, but the usual schedulers do: `ManualClock` is its
    own clock and `ThreadScheduler` has a `clock`. Duck typing spares callers from passing both."""
    for owner in (scheduler, getattr(scheduler, "clock", None)):
        now = getattr(owner, "now", None)
        if callable(now):
            return now  # type: ignore[no-any-return]
    return None


def _check_qos(qos: int) -> None:
    if qos not in _QOS_LEVELS:
        raise TransportError(
            f"QoS {qos} is not supported; use 0 or 1 (Tencent IoT Hub has no QoS 2)"
        )
