"""One worker of the platform pool: partitions consumed over AMQP, stepped, committed, then acked.

The worker is the runtime's transport (`Transport`): the runtime publishes through it and gets
uplinks from it, and nothing else in the runtime changes. Everything happens on one loop thread
that owns the pika connection (pika, not aio-pika: the runtime is thread-based, and a
`BlockingConnection` driven by one thread fits it without an event loop beside the runtime's):

- deliveries from the partition queues this worker holds leases on (`leases`) are stepped at once;
- timers of the runtime run on the same thread (`LoopScheduler`), and a post from any other thread
  (server code, the campaign runner, the file service) is sent as a signed command through the
  session's partition (`commands`), so each session is stepped by one thread of one worker;
- after each batch (what `process_data_events` delivered, gathered for up to 5 ms, plus timers)
  the worker commits the batch's snapshots to PostgreSQL in one transaction, then, per partition,
  publishes the answers the batch made to `amq.topic` and acks the batch's deliveries in one
  broker transaction (`tx.select` on the partition's channel): answers and acks go together or
  not at all. Nothing is acked or answered that is not committed.

Exactly once across a crash. Killed before the commit: nothing of the batch is durable or
answered, its deliveries were not acked, and the next owner steps them from the last committed
snapshots. Killed between the commit and the broker transaction: the deliveries come back flagged
`redelivered`, and none of their answers went out. The commit holds, per uplink stream (routing
key), an uplink mark: for each message of the batch its digest and the answers its step made
(written in the snapshots' transaction, `PostgresStore.mark`). A redelivery whose digest is
marked is not stepped again, so it is not counted twice; its recorded answers are published with
its ack, in one broker transaction, so it is answered exactly once. After the broker transaction
nothing is redelivered. A verbatim repeat of a device's message of the same batch that arrives
redelivered is taken for the one that was stepped; the protocol's reports repeat nothing a second
copy would add. (Commands from other threads travel as deliveries too.) Answers made by timers
have no delivery behind them: they go out after the commit without a transaction, and a crash in
between loses them (the device repeats its report, or the timer's state re-offers).

Taking a partition over: the worker takes the lease, loads the sessions of the devices whose
streams the partition carried (`uplink_marks`) from PostgreSQL, re-arms their timers, then
consumes (a single-active-consumer standby until the previous owner's channel is gone). Giving one
up: stop stepping it, commit and ack what was stepped, close the channel (the broker requeues the
rest, in order), forget its sessions, unlock. Losing the broker or the lease connection: drop
every partition, and whatever was not committed (the next owner steps it again), then reconnect.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import cattrs
import pika
import pika.exceptions

from ...fsm.clock import Clock, RealClock
from ...fsm.events import Event, TimerFired
from ...fsm.snapshot import SnapshotError, restore
from ...machines.feature import DeviceKey
from ..runtime import Runtime
from ..store.postgres import PostgresStore
from ..topics import TopicError
from ..transport import ConnectionHandler, MessageHandler, TransportError
from .commands import CommandCodec, CommandError
from .leases import LeaseLostError, Leases
from .routing import routing_key
from .topology import COMMAND_TYPE, EXCHANGE, QueueType, declare, queue_name, topic_of

log = logging.getLogger(__name__)
trace = logging.getLogger("iotfsm.pool.deliveries")
"""One DEBUG line per delivery (what was done with it) and per settled batch: off unless asked
for (`iotfsm --log iotfsm.pool.deliveries=debug platform ...`), to follow a lost message."""

SIGNATURE_HEADER = "iotfsm-signature"
BATCH_WINDOW = 0.005
"""Seconds a batch may keep gathering deliveries that are already waiting, before its commit."""
BATCH_MAX = 1000


@attrs.frozen
class PoolSettings:
    """How a worker reaches RabbitMQ and shares the fleet with the others."""

    url: str
    """amqp://HOST:PORT/VHOST (no password: it comes with `password`)."""
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    partitions: int = 16
    queue_type: QueueType = "quorum"
    prefetch: int = 200
    """Unacked deliveries per partition: a batch's upper bound, and the backlog a dead worker
    hands back."""
    rebalance_every: float = 0.5
    backoff: float = 1.0
    """Seconds before the first reconnect of an outage; doubled after each failed one..."""
    backoff_max: float = 15.0
    """...up to this: a worker never gives up (PostgreSQL or the broker may come back after a
    restart or failover), but an outage of hours costs a try every `backoff_max` seconds."""
    heartbeat: int = 30


class LoopScheduler:
    """The runtime's timers, run by the worker's loop thread between batches."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._heap, (deadline, next(self._order), callback))

    def next_deadline(self) -> float | None:
        with self._lock:
            return self._heap[0][0] if self._heap else None

    def run_due(self) -> int:
        now = self.clock.now()
        ran = 0
        while True:
            with self._lock:
                if not self._heap or self._heap[0][0] > now:
                    return ran
                _, _, callback = heapq.heappop(self._heap)
            try:
                callback()
            except Exception:
                log.exception("timer callback failed")
            ran += 1


class PoolWorker:
    """`Transport` of a pool runtime; `bind(runtime)` before the runtime starts."""

    def __init__(
        self,
        settings: PoolSettings,
        store: PostgresStore,
        dsn: str,
        codec: CommandCodec,
        *,
        clock: Clock | None = None,
        on_leader: Callable[[bool], None] | None = None,
        name: str = "iotfsm-pool",
    ) -> None:
        self.settings = settings
        self.store = store
        self.codec = codec
        self.clock = clock or RealClock()
        self.scheduler = LoopScheduler(self.clock)
        self.leases = Leases(dsn, settings.partitions)
        self.on_leader = on_leader
        self.name = name
        self._runtime: Runtime | None = None
        self._on_message: MessageHandler | None = None
        self._on_connection: ConnectionHandler | None = None
        self._filters: list[str] = []
        self._converter = cattrs.Converter()
        self._thread: threading.Thread | None = None
        self._loop_ident: int | None = None
        self._stop = threading.Event()
        self._calls: deque[Callable[[], None]] = deque()
        self._connection: Any = None
        self._channel: Any = None
        self._channels: dict[int, Any] = {}
        self._active: set[int] = set()
        self._owner: dict[tuple[str, DeviceKey], int] = {}
        """(feature, device) -> the partition its session came from, for the sessions held."""
        self._features_of: dict[str, tuple[str, ...]] = {}
        self._unacked: dict[int, int] = {}
        """partition -> highest delivery tag stepped and not acked yet."""
        self._outbox: dict[int | None, list[tuple[str, bytes, int]]] = {}
        """Answers not published yet, by the partition whose delivery made them (None: a timer
        or a command from elsewhere); published in that partition's channel transaction."""
        self._current: int | None = None
        """The partition of the delivery being stepped, while it is."""
        self.delivered = 0
        """Deliveries stepped (uplinks and commands)."""
        self.duplicates = 0
        """Redeliveries recognised as stepped already, acked without a step."""
        self.rejected = 0
        """Commands refused (bad signature, malformed)."""
        self.published = 0
        self.takeovers = 0

    # ---- wiring -----------------------------------------------------------------------------

    def bind(self, runtime: Runtime) -> None:
        """Make `runtime` step on this worker's loop: its timers, and its posts from elsewhere
        routed through the session's partition."""
        self._runtime = runtime
        runtime.scheduler = self.scheduler
        runtime.router = self._route

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("PoolWorker.bind(runtime) was not called")
        return self._runtime

    def owned(self) -> set[int]:
        """The partitions this worker consumes now."""
        return set(self._active)

    # ---- Transport --------------------------------------------------------------------------

    def set_handlers(self, on_message: MessageHandler, on_connection: ConnectionHandler) -> None:
        self._on_message = on_message
        self._on_connection = on_connection

    def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        """The runtime's uplink filters become bindings of `amq.topic` to the hash exchange."""
        if topic_filter.startswith("$share/"):
            raise TransportError("a pool partitions by itself; give it no share group")
        self._filters.append(topic_filter)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        if qos not in (0, 1):
            raise TransportError(f"QoS {qos} is not supported (0 or 1)")
        item = (routing_key(topic), payload, qos)
        if threading.get_ident() == self._loop_ident:
            self._outbox.setdefault(self._current, []).append(item)
        else:
            self._call_soon(partial(self._outbox.setdefault(None, []).append, item))

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    @property
    def connected(self) -> bool:
        connection = self._connection
        return connection is not None and bool(connection.is_open)

    # ---- routing ----------------------------------------------------------------------------

    def _route(self, feature: str, key: DeviceKey, event: Event) -> bool:
        if threading.get_ident() == self._loop_ident:
            if self._owner.get((feature, key)) in self._active:
                return False  # ours, on our thread: step it here
            if isinstance(event, TimerFired):
                return True  # the timer of a session this worker gave up: its owner has it
        self._call_soon(partial(self._send_command, feature, key, event))
        return True

    def _send_command(self, feature: str, key: DeviceKey, event: Event) -> None:
        try:
            topic = self.runtime.topics.topic(feature, "up", key)
        except (TopicError, KeyError) as exc:
            log.error("%s %s/%s: %s cannot be routed: %s", feature, *key, event.trigger, exc)
            return
        body, signature = self.codec.encode(feature, key, event)
        properties = pika.BasicProperties(
            type=COMMAND_TYPE, headers={SIGNATURE_HEADER: signature}, delivery_mode=2
        )
        self._channel.basic_publish(EXCHANGE, routing_key(topic), body, properties)

    def _call_soon(self, call: Callable[[], None]) -> None:
        self._calls.append(call)
        self._wake()

    def _wake(self) -> None:
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(_nothing)
            except Exception:  # closed meanwhile: the loop looks at the queue anyway
                log.debug("wake-up of a closed connection", exc_info=True)

    # ---- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        """Connect, serve, and after a failure give everything up and try again, for as long as
        the worker runs. An outage is logged once, as a warning, when it begins (each further
        failed try only at DEBUG, with a growing pause) and once more when it ends: a worker
        whose database is gone for good keeps retrying, quietly, until it is stopped."""
        self._loop_ident = threading.get_ident()
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self._connect()
                    if failures:
                        log.warning("%s: back after %d failed tries", self.name, failures)
                        failures = 0
                    self._serve()
                except (pika.exceptions.AMQPError, LeaseLostError, OSError) as exc:
                    failures += 1
                    pause = min(
                        self.settings.backoff * 2 ** min(failures - 1, 16),
                        self.settings.backoff_max,
                    )
                    log.log(
                        logging.WARNING if failures == 1 else logging.DEBUG,
                        "%s: %s: %s; partitions given up, trying again (every %g s at most)",
                        self.name,
                        type(exc).__name__,
                        exc,
                        self.settings.backoff_max,
                    )
                    self._drop_everything()
                    self._stop.wait(pause)
        finally:
            self._leave()

    def _connect(self) -> None:
        self.leases.join()
        params = pika.URLParameters(self.settings.url)
        params.heartbeat = self.settings.heartbeat
        params.blocked_connection_timeout = 60
        if self.settings.username is not None:
            params.credentials = pika.PlainCredentials(
                self.settings.username, self.settings.password or ""
            )
        self._connection = pika.BlockingConnection(params)
        self._channel = self._connection.channel()
        declare(self._channel, self.settings.partitions, self._filters, self.settings.queue_type)
        log.info(
            "%s: connected to %s (member %d)",
            self.name,
            _safe(self.settings.url),
            self.leases.member,
        )
        if self._on_connection is not None:
            self._on_connection(True)

    def _serve(self) -> None:
        next_balance = 0.0
        while not self._stop.is_set():
            now = self.clock.now()
            if now >= next_balance:
                self._rebalance()
                next_balance = now + self.settings.rebalance_every
            wait = min(0.05, max(0.0, next_balance - now))
            deadline = self.scheduler.next_deadline()
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            if self._calls:
                wait = 0.0
            self._connection.process_data_events(time_limit=wait)
            self._gather()
            while self._calls:
                self._calls.popleft()()
            self.scheduler.run_due()
            self._settle()

    def _gather(self) -> None:
        """Let a batch that has begun grow for up to `BATCH_WINDOW` (or `BATCH_MAX` deliveries):
        its commit, broker transactions and acks are paid once for all of it."""
        if not self._unacked:
            return
        began, count = time.monotonic(), self.delivered
        while self.delivered - count < BATCH_MAX and time.monotonic() - began < BATCH_WINDOW:
            before = self.delivered + self.duplicates
            self._connection.process_data_events(time_limit=0)
            if self.delivered + self.duplicates == before:
                break

    def _settle(self) -> bool:
        """Commit the batch, then publish its answers, then ack its deliveries. False (nothing
        published or acked, all kept for the next try) when the commit failed."""
        if not self._unacked and not self._outbox:
            return True
        self.store.commit()
        if self.store.pending:
            return False
        for partition, items in self._outbox.items():
            channel = self._channels.get(partition) if partition is not None else None
            # in a partition's transaction the frames are only queued (`_queued`): its
            # tx_commit below writes them all at once; elsewhere each publish is sent now
            publish = _queued(channel).basic_publish if channel else self._channel.basic_publish
            for key, payload, qos in items:
                publish("amq.topic", key, payload, PERSISTENT if qos else TRANSIENT)
            self.published += len(items)
        for partition, tag in self._unacked.items():
            _queued(self._channels[partition]).basic_ack(delivery_tag=tag, multiple=True)
        # a partition's answers and acks in one broker transaction: both or neither
        for partition in {p for p in self._outbox if p is not None} | set(self._unacked):
            channel = self._channels.get(partition)
            if channel is not None:
                channel.tx_commit()
        if trace.isEnabledFor(logging.DEBUG):
            trace.debug(
                "%s: settled: %s acked, %d answers published",
                self.name,
                ", ".join(f"p{p} to #{tag}" for p, tag in sorted(self._unacked.items())) or "none",
                sum(len(items) for items in self._outbox.values()),
            )
        self._outbox.clear()
        self._unacked.clear()
        return True

    # ---- deliveries -------------------------------------------------------------------------

    def _on_delivery(
        self, partition: int, _channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        if partition not in self._active:
            self._trace(partition, method, body, "not ours any more: requeued by the close")
            return  # being given up: the channel's close requeues it
        self._unacked[partition] = method.delivery_tag
        key_text = str(method.routing_key)
        digest = hashlib.sha256(key_text.encode() + b"\0" + body).hexdigest()[:32]
        command = None
        if properties.type == COMMAND_TYPE:
            try:
                command = self.codec.decode(body, (properties.headers or {}).get(SIGNATURE_HEADER))
            except CommandError as exc:
                self.rejected += 1
                log.warning("%s: dropped a command on %r: %s", self.name, key_text[:80], exc)
                self._trace(partition, method, body, "command refused")
                return
            key = command.key
            features: tuple[str, ...] = (command.feature,)
        else:
            topic = topic_of(key_text)
            try:
                route = self.runtime.topics.parse(topic)
            except TopicError:
                if self._on_message is not None:
                    self._on_message(topic, body)  # the runtime logs and counts it
                self._trace(partition, method, body, "not a topic of ours")
                return
            key, features = route.key, tuple(f.name for f in route.features)
        for feature in features:
            self._owner[(feature, key)] = partition
        if method.redelivered and self._replayed(partition, method, body, digest, (features, key)):
            return
        self.store.mark(key_text, key, partition, digest, [])
        self.delivered += 1
        outbox = self._outbox.setdefault(partition, [])
        before = len(outbox)
        self._current = partition
        try:
            if command is not None:
                self.runtime.post(command.feature, command.key, command.event)
            elif self._on_message is not None:
                self._on_message(topic, body)
        finally:
            self._current = None
        made = [(k, p.decode("latin-1"), q) for k, p, q in outbox[before:]]
        if made:
            self.store.mark(key_text, key, partition, digest, made)
        self._trace(partition, method, body, f"stepped: {len(made)} answers")

    def _replayed(
        self,
        partition: int,
        method: Any,
        body: bytes,
        digest: str,
        sessions: tuple[tuple[str, ...], DeviceKey],
    ) -> bool:
        """A redelivery that was stepped and committed already (its ack and answers were
        lost): its recorded answers go out with its ack, and it is not stepped again."""
        key_text = str(method.routing_key)
        answers = self.store.marked_answers(key_text, digest)
        if answers is None:
            return False
        features, key = sessions
        self.duplicates += 1
        log.info(
            "%s: a redelivered message on %s was stepped and committed already:"
            " acked with its %d recorded answers, not stepped again",
            self.name,
            key_text[:80],
            len(answers),
        )
        replay = [(k, p.encode("latin-1"), q) for k, p, q in answers]
        self._outbox.setdefault(partition, []).extend(replay)
        self._reload(features, key)
        self._trace(partition, method, body, f"duplicate: {len(replay)} answers replayed")
        return True

    def _trace(self, partition: int, method: Any, body: bytes, what: str) -> None:
        if trace.isEnabledFor(logging.DEBUG):
            trace.debug(
                "%s: p%d #%d%s %s %s: %s",
                self.name,
                partition,
                method.delivery_tag,
                " redelivered" if method.redelivered else "",
                str(method.routing_key)[:80],
                hashlib.sha256(body).hexdigest()[:8],
                what,
            )

    def _reload(self, features: tuple[str, ...], key: DeviceKey) -> None:
        """After a duplicate, take the committed snapshots again: the previous owner's last
        commit may have landed after this worker loaded the partition."""
        runtime = self.runtime
        for feature, doc in self.store.device_sessions(key, features):
            try:
                session = restore(runtime.machines[feature], key, doc, self._converter)
            except (SnapshotError, KeyError) as exc:
                log.warning("stored %s session of %s/%s skipped: %s", feature, *key, exc)
                continue
            runtime.adopt(feature, session)

    # ---- partitions -------------------------------------------------------------------------

    def _rebalance(self) -> None:
        share = self.leases.share()
        held = sorted(self.leases.held)
        if len(held) > share:
            for partition in held[share:]:
                self._give(partition)
        elif len(held) < share:
            count = self.settings.partitions
            start = self.leases.member % count
            for n in range(count):
                partition = (start + n) % count
                if len(self.leases.held) >= share:
                    break
                if partition not in self.leases.held and self.leases.take(partition):
                    self._take(partition)
        was = self.leases.leader
        if self.leases.lead() != was and self.on_leader is not None:
            self.on_leader(self.leases.leader)

    def _take(self, partition: int) -> None:
        runtime = self.runtime
        loaded = 0
        seen: set[tuple[str, DeviceKey]] = set()
        for key_text, feature, key, doc in self.store.partition_sessions(partition):
            if feature not in self._stream_features(key_text) or (feature, key) in seen:
                continue
            seen.add((feature, key))
            if runtime.restorable is not None and not runtime.restorable(key):
                continue
            try:
                session = restore(runtime.machines[feature], key, doc, self._converter)
            except (SnapshotError, KeyError) as exc:
                log.warning("stored %s session of %s/%s skipped: %s", feature, *key, exc)
                continue
            self._owner[(feature, key)] = partition
            runtime.adopt(feature, session)
            loaded += 1
        channel = self._connection.channel()
        channel.tx_select()
        channel.basic_qos(prefetch_count=self.settings.prefetch)
        channel.basic_consume(
            queue_name(partition), on_message_callback=partial(self._on_delivery, partition)
        )
        self._channels[partition] = channel
        self._active.add(partition)
        self.takeovers += 1
        log.info("%s: took partition %d (%d sessions loaded)", self.name, partition, loaded)

    def _give(self, partition: int) -> None:
        self._active.discard(partition)
        if not self._settle():
            raise LeaseLostError("the store cannot be written; giving every partition up")
        channel = self._channels.pop(partition, None)
        if channel is not None and channel.is_open:
            channel.close()
        self._forget(partition)
        self.leases.give(partition)
        log.info("%s: gave partition %d up", self.name, partition)

    def _forget(self, partition: int) -> None:
        sessions = self.runtime.sessions
        for (feature, key), owner in list(self._owner.items()):
            if owner == partition:
                sessions[feature].pop(key, None)
                del self._owner[(feature, key)]

    def _stream_features(self, key_text: str) -> tuple[str, ...]:
        found = self._features_of.get(key_text)
        if found is None:
            try:
                route = self.runtime.topics.parse(topic_of(key_text))
                found = tuple(f.name for f in route.features)
            except TopicError:
                found = ()
            self._features_of[key_text] = found
        return found

    def _drop_everything(self) -> None:
        """After losing the broker or the leases: nothing held, nothing pending."""
        dropped = self.store.discard_pending()
        answers = sum(len(items) for items in self._outbox.values())
        if dropped or answers:
            log.warning(
                "%s: %d uncommitted changes and %d answers dropped; the next owner steps their"
                " messages again",
                self.name,
                dropped,
                answers,
            )
        self._outbox.clear()
        self._unacked.clear()
        for partition in list(self._active):
            self._forget(partition)
        self._active.clear()
        self._channels.clear()
        was_leader = self.leases.leader
        self.leases.close()
        if was_leader and self.on_leader is not None:
            self.on_leader(False)
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:
                log.debug("closing a broken connection failed", exc_info=True)
        if self._on_connection is not None:
            self._on_connection(False)

    def _leave(self) -> None:
        """A clean stop: hand every partition over with what was stepped committed and acked."""
        try:
            if self._connection is not None and self._connection.is_open:
                for partition in sorted(self._active):
                    self._give(partition)
                self._settle()
        except (pika.exceptions.AMQPError, LeaseLostError, OSError) as exc:
            log.warning("%s: stopping: %s", self.name, exc)
        self._drop_everything()


PERSISTENT = pika.BasicProperties(delivery_mode=2)
TRANSIENT = pika.BasicProperties(delivery_mode=1)


def _queued(channel: Any) -> Any:
    """The pika channel under a `BlockingChannel`, whose publishes and acks are only queued on
    the connection. `BlockingChannel.basic_publish` and `basic_ack` each flush the socket (a
    send and a poll per answer, the worker's largest cost per message after the store's);
    inside a broker transaction nothing needs to leave before `tx_commit`, which flushes what
    was queued, in order, before its own frame."""
    return channel._impl


def _nothing() -> None:
    """Wakes the loop's `process_data_events`; the work itself is in the worker's queue."""


def _safe(url: str) -> str:
    """The URL without a password, for logs."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, userinfo = head.partition("://")
    return f"{scheme}://{userinfo.split(':')[0]}@{tail}"
