"""The runtime binds declared machines to a transport, a clock and the application.

One runtime plays one role. It parses inbound topics, decodes payloads, finds (or creates) the
session, steps it, and carries out the effects: publishes, timers, log lines, and feature effects
handed to the application's handlers. Bad input is logged and counted, never raised into a
transport thread and never allowed to change a session.

Steps run to completion one at a time per runtime: whoever posts an event while no step is running
drains the queue (a trampoline), and a post made while a step runs, from the same thread or another,
only enqueues. Over the memory broker that makes a device and a platform in one thread fully
deterministic; over MQTT the network and timer threads simply take turns.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import attrs
import cattrs

from ..fsm.clock import Clock, ManualClock, RealClock, Scheduler
from ..fsm.effects import CancelTimer, Effect, Log, Publish, SetTimer
from ..fsm.events import Connected, Disconnected, Event, TimerFired
from ..fsm.machine import Machine
from ..fsm.session import Session
from ..fsm.snapshot import Probe, SnapshotError, change_probe, restore, snapshot
from ..fsm.trace import Tracer
from ..machines.feature import DeviceKey, Feature, Role, inbound_direction, outbound_direction
from ..machines.messages import Message, RawMessage
from .codec import Codec, DecodeError, Decoder
from .limits import remember
from .scheduler import ThreadScheduler
from .store.session_store import SessionStore
from .topics import Route, TopicError, Topics, check_key
from .transport import Transport, TransportError

log = logging.getLogger(__name__)

EffectHandler = Callable[[DeviceKey, Any], None]
"""Carries out one feature effect (e.g. ApplyLogLevel) for the session `key`."""


class Runtime:
    _drainer: int | None = None
    """The thread running this runtime's steps right now, if any (`stepping_here`)."""
    router: Callable[[str, DeviceKey, Event], bool] | None = None
    """Asked first by `post`: True means it took the event elsewhere (a worker pool sends it to
    the worker that owns the session's partition), so this runtime does not step it."""

    def __init__(
        self,
        role: Role,
        transport: Transport,
        features: Iterable[Feature],
        *,
        identity: DeviceKey | None = None,
        products: Sequence[str] | None = None,
        share_group: str | None = None,
        clock: Clock | None = None,
        scheduler: Scheduler | None = None,
        handlers: Mapping[type[Effect] | tuple[str, type[Effect]], EffectHandler] | None = None,
        tracer: Tracer | None = None,
        store: SessionStore | None = None,
        admit: Callable[[DeviceKey], bool] | None = None,
    ) -> None:
        """`admit(key)` (a platform's registry) decides whether a device's message is stepped
        at all: one it refuses is dropped before it is decoded, so it gets no session, no
        answer and no URL, and invented names cannot grow the session table."""
        if role == "device":
            if identity is None:
                raise ValueError("a device runtime needs its identity (DeviceKey)")
            check_key(identity)
        self.role: Role = role
        self.identity = identity
        self.transport = transport
        self.features = {f.name: f for f in features}
        self.clock: Clock = clock or RealClock()
        self.scheduler: Scheduler = scheduler or _scheduler_for(self.clock)
        self.codec = Codec(self.features.values())
        self.topics = Topics(self.features.values())
        self._products = products
        self._share_group = share_group
        """Platform workers with the same group split the messages between them (MQTT 5 shared
        subscriptions; note Mosquitto never delivers `$` topics to shared subscriptions)."""
        self.machines = {name: Machine(f.spec(role), tracer) for name, f in self.features.items()}
        self.sessions: dict[str, dict[DeviceKey, Session]] = {name: {} for name in self.features}
        self._inbound = inbound_direction(role)
        self._outbound = outbound_direction(role)
        self._handlers: dict[type[Effect], Callable[[str, Session, Any], None]] = {
            Publish: self._publish,
            SetTimer: self._set_timer,
            CancelTimer: _nothing,
            Log: self._log,
        }
        self._feature_handlers: dict[
            tuple[str, type[Effect]], Callable[[str, Session, Any], None]
        ] = {}
        self._init_per_message_state()
        self._install(handlers or {})
        self.store = store
        self._admit = admit
        self.restorable: Callable[[DeviceKey], bool] | None = admit
        """Which stored sessions `start` restores (default: those `admit` admits); one it
        refuses is deleted from the store, so sessions of invented names do not come back."""
        self._converter = cattrs.Converter()
        self.contexts: dict[str, Callable[[DeviceKey], Any]] = {}
        """Per feature, a context factory that replaces the declaration's for new sessions
        (server code seeding product-wide settings, e.g. a default log level)."""
        self.on_session_created: Callable[[str, DeviceKey], None] | None = None
        """Called once for each session the runtime creates (not for restored ones)."""
        self._queue: deque[tuple[str, DeviceKey, Event]] = deque()
        self._lock = threading.Lock()
        self._timer_lock = threading.Lock()
        self._scheduled: dict[tuple[str, str], dict[DeviceKey, float]] = {}
        """(feature, timer name) -> session key -> deadline of its one pending scheduler entry."""
        self._draining = False
        self._stopped = False
        """After `stop` events are dropped: a scheduler shared with other runtimes (a test's
        manual clock) still holds this runtime's timers, and a transfer or burn thread may still
        report; a stopped role must not step, publish, start transfers or write its store."""
        self.rejected = 0
        """Inbound messages dropped as malformed, misrouted or not ours."""
        self.refused = 0
        """Inbound messages dropped because `admit` refused their device."""
        self.ignored = 0
        """Events that no transition accepted in the session's state."""
        self.steps = 0
        """Events stepped so far (a cheap sign of activity for drivers that wait for quiet)."""

    def _init_per_message_state(self) -> None:
        """What the per-message path keeps so that it does no work a step did not ask for."""
        self._own = tuple(self._handlers.values())
        """The runtime's own effect handlers (before `_install`), none touches the store."""
        self._probes: dict[str, Probe | None] = {
            name: change_probe(f.spec(self.role)) for name, f in self.features.items()
        }
        """Per feature, how to tell that a step left a session as it was (no snapshot then)."""
        self._dirty: dict[tuple[str, DeviceKey], Session] = {}
        """Sessions stepped since their last snapshot: saved once per drain (see `_flush`)."""
        self._names: dict[tuple[Feature, ...], tuple[str, ...]] = {}
        """A topic's features -> their names, as the codec takes them (one tuple per topic
        table entry, not a list per message)."""
        self._routes: dict[str, tuple[Route, Decoder]] = {}
        """Recent inbound topics of admitted devices -> `_route`'s answer: parsing and checking
        a topic costs more than the rest of routing; bounded by `limits.remember`."""
        self._replies: dict[tuple[str, DeviceKey], str] = {}
        """(feature, device) -> its outbound topic (not a suffixed one), as `_routes`."""

    def _install(
        self, handlers: Mapping[type[Effect] | tuple[str, type[Effect]], EffectHandler]
    ) -> None:
        for kind, handler in handlers.items():
            # a (feature, effect type) key serves only that feature: two features may share an
            # effect type (CancelTransfer) yet need different executors
            if isinstance(kind, tuple):
                self._feature_handlers[kind] = partial(_call_with_key, handler)
            else:
                self._handlers[kind] = partial(_call_with_key, handler)

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe, create the device's sessions, connect. `Connected` follows the connection."""
        with self._lock:
            self._stopped = False
        self.transport.set_handlers(self.on_message, self.on_connection)
        if self.store is not None:
            self._restore_all(self.store)
        if self.identity is not None:
            for name in self.features:
                self.session(name, self.identity)
        for topic_filter in self.topics.filters(
            self.role, device=self.identity, products=self._products
        ):
            shared = self._share_group
            self.transport.subscribe(
                f"$share/{shared}/{topic_filter}" if shared else topic_filter, 1
            )
        self.transport.start()

    def _restore_all(self, store: SessionStore) -> None:
        dropped = 0
        for feature, key, doc in store.load():
            if self.restorable is not None and not self.restorable(key):
                store.delete_session(feature, key)
                dropped += 1
                continue
            if feature not in self.machines:
                log.warning("stored session of unknown feature %r skipped", feature)
                continue
            try:
                session = restore(self.machines[feature], key, doc, self._converter)
            except SnapshotError as exc:
                log.warning("stored %s session of %s/%s skipped: %s", feature, *key, exc)
                continue
            self.adopt(feature, session)
        if dropped:
            store.commit()
            log.warning("dropped %d stored sessions of devices not in the registry", dropped)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._queue.clear()
        self.transport.stop()
        if self.store is not None:
            self.store.commit()
        stop = getattr(self.scheduler, "stop", None)
        if callable(stop) and isinstance(self.scheduler, ThreadScheduler):
            stop()

    # ---- sessions ---------------------------------------------------------------------------

    def session(self, feature: str, key: DeviceKey) -> Session:
        """The session of `key` for `feature`, created in its initial state on first use."""
        sessions = self.sessions[feature]
        session = sessions.get(key)
        if session is None:
            factory = self.contexts.get(feature)
            context = factory(key) if factory is not None else None
            session = sessions[key] = self.machines[feature].new_session(key, context)
            if self.on_session_created is not None:
                self.on_session_created(feature, key)
        return session

    def all_sessions(self) -> Iterator[tuple[str, Session]]:
        """Every session of every feature; a copy, so another thread may add sessions meanwhile."""
        for feature, sessions in list(self.sessions.items()):
            for session in list(sessions.values()):
                yield feature, session

    def forget(self, key: DeviceKey) -> None:
        """Drop every session of a device, in memory and in the store (it left the registry);
        a timer still pending for it finds no session and does nothing."""
        with self._lock:
            self._queue = deque(item for item in self._queue if item[1] != key)
        for feature, sessions in self.sessions.items():
            self._dirty.pop((feature, key), None)
            if sessions.pop(key, None) is not None and self.store is not None:
                self.store.delete_session(feature, key)
        if self.store is not None:
            self.store.commit()

    def adopt(self, feature: str, session: Session) -> None:
        """Install a restored session and re-arm its timers (past deadlines fire at once)."""
        self.sessions[feature][session.key] = session
        for name, (generation, deadline) in (session.timers or {}).items():
            self.scheduler.call_at(
                deadline, partial(self.post, feature, session.key, TimerFired(name, generation))
            )

    @property
    def idle(self) -> bool:
        """No step is running and none is queued (tests wait for this before moving a clock)."""
        with self._lock:
            return not self._draining and not self._queue

    @property
    def stepping_here(self) -> bool:
        """Whether the calling thread is the one running this runtime's steps (an effect
        handler or a tracer): code that waits for a later step must not wait there."""
        return self._draining and self._drainer == threading.get_ident()

    # ---- events -----------------------------------------------------------------------------

    def post(self, feature: str, key: DeviceKey, event: Event) -> None:
        """Queue an event for a session and, unless a step is already running, run the queue."""
        if self.router is not None and self.router(feature, key, event):
            return
        with self._lock:
            if self._stopped:
                log.debug("%s %s/%s: %s after stop, dropped", feature, *key, event.trigger)
                return
            if self._draining:
                self._queue.append((feature, key, event))
                return
            self._draining = True
            self._drainer = threading.get_ident()
            first = not self._queue  # else an interrupted drain left events: keep the order
            if not first:
                self._queue.append((feature, key, event))
        try:
            if first:  # the common case: step it without a trip through the queue
                self._step(feature, key, event)
            while True:
                with self._lock:
                    if not self._queue or self._stopped:
                        self._draining = False
                        self._drainer = None
                        break
                    item = self._queue.popleft()
                self._step(*item)
        except BaseException:
            with self._lock:
                self._draining = False
                self._drainer = None
            self._flush()
            raise
        if self.store is not None:
            self._flush()
            if not self._stopped:
                self.store.commit()

    def _flush(self) -> None:
        """Snapshot every session stepped in this drain into the store, once each: a session
        stepped twice is saved once, in its last state, just before the commit that made the
        per-step saves durable anyway. Sessions forgotten meanwhile are skipped."""
        dirty, store = self._dirty, self.store
        if store is None:
            return
        while dirty:
            (feature, key), session = dirty.popitem()
            if self.sessions[feature].get(key) is session:
                store.save(feature, key, snapshot(session, self._converter))

    def _step(self, feature: str, key: DeviceKey, event: Event) -> None:
        self.steps += 1
        session = self.sessions[feature].get(key)
        created = session is None
        if session is None:
            session = self.session(feature, key)
        store = self.store
        probe = self._probes[feature] if store is not None and not created else None
        before = probe(session) if probe is not None else None
        try:
            effects = self.machines[feature].step(session, event, self.clock.now())
        except Exception:
            log.exception("%s %s/%s: step on %s failed", feature, *key, event.trigger)
            return
        if effects is None:
            self.ignored += 1
            log.debug("%s %s/%s: ignored %s in %s", feature, *key, event.trigger, session.state)
            return
        if store is not None and (probe is None or created or probe(session) != before):
            self._dirty[(feature, key)] = session
        handlers, feature_handlers = self._handlers, self._feature_handlers
        for effect in effects:
            kind = type(effect)
            handler = handlers.get(kind)
            if feature_handlers:
                handler = feature_handlers.get((feature, kind), handler)
            if store is not None and handler not in self._own:
                # the application's handler may write the store (a record, a commit): the
                # sessions stepped so far go first, as when every step saved its own snapshot
                self._flush()
            if handler is None:
                log.error("%s: no handler for effect %r; pass one in handlers=", feature, effect)
                continue
            try:
                handler(feature, session, effect)
            except Exception:
                log.exception("%s %s/%s: effect %r failed", feature, *key, effect)

    # ---- transport callbacks ----------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        routes = self._routes
        known = routes.get(topic)
        try:
            route, decode = self._route(topic) if known is None else known
            if self._admit is not None and not self._admit(route.key):
                self.refused += 1
                return
            if known is None:  # only topics of admitted devices: invented names cannot churn it
                remember(routes, topic, (route, decode))
            feature, message = decode(payload)
            if route.suffix and isinstance(message, RawMessage):
                # the topic's value after the device (RRPC's processId) goes into the message
                changes: dict[str, Any] = {message.SUFFIX: route.suffix}
                message = attrs.evolve(message, **changes)
        except (TopicError, DecodeError) as exc:
            self.rejected += 1
            log.warning("dropped a message on %r: %s", topic, exc)
            return
        self.post(feature, route.key, message)

    def _route(self, topic: str) -> tuple[Route, Decoder]:
        """Where an inbound topic leads, and the codec's decoder for its payloads; TopicError
        for a topic this runtime does not receive."""
        route = self.topics.parse(topic)
        if route.direction != self._inbound:
            raise TopicError(f"a {self.role} does not receive {route.direction} topics")
        if self.identity is not None and route.key != self.identity:
            raise TopicError(f"not a topic of this device ({'/'.join(self.identity)})")
        names = self._names.get(route.features)
        if names is None:
            names = self._names[route.features] = tuple(f.name for f in route.features)
        return route, self.codec.decoder(names, route.direction)

    def on_connection(self, up: bool) -> None:
        if self.identity is None:
            log.info("platform transport %s", "connected" if up else "disconnected")
            return
        event: Event = Connected() if up else Disconnected()
        for feature in self.features:
            self.post(feature, self.identity, event)

    # ---- effects ----------------------------------------------------------------------------

    def publish(self, feature: str, key: DeviceKey, message: Message, qos: int = 0) -> None:
        """Send `message` on the session's outbound topic; for effect handlers that build a
        message from outside data (e.g. a freshly signed URL). A lost connection is logged."""
        suffix = ""
        if isinstance(message, RawMessage) and message.SUFFIX:
            suffix = getattr(message, message.SUFFIX)
        topic = None if suffix else self._replies.get((feature, key))
        if topic is None:
            topic = self.topics.topic(feature, self._outbound, key, suffix)
            if not suffix:
                remember(self._replies, (feature, key), topic)
        try:
            self.transport.publish(topic, self.codec.encode(message), qos)
        except TransportError as exc:
            log.warning("%s: could not publish %s to %s: %s", feature, message.TYPE, topic, exc)

    def _publish(self, feature: str, session: Session, effect: Publish) -> None:
        message = effect.message
        if not isinstance(message, Message):
            raise TypeError(f"Publish needs a wire Message, got {type(message).__name__}")
        self.publish(feature, session.key, message, effect.qos)

    def _set_timer(self, feature: str, session: Session, effect: SetTimer) -> None:
        # the deadline the engine recorded at step time, not now + delay: effects may run a moment
        # after the step, and a clock that moved meanwhile must not push the timer later
        armed = (session.timers or {}).get(effect.name)
        if armed is not None and armed[0] == effect.generation:
            deadline = armed[1]
        else:
            deadline = self.clock.now() + effect.delay
        # One scheduler entry per (feature, session, timer name). Machines re-arm a timer on
        # every report ("silence", "stall"); an entry per SetTimer kept each stale deadline in the
        # heap until it came due. A re-arm no earlier than the pending entry adds nothing: that
        # entry looks at the session's armed deadline when it runs and waits again if it moved.
        with self._timer_lock:
            pending = self._scheduled.setdefault((feature, effect.name), {})
            scheduled = pending.get(session.key)
            if scheduled is not None and scheduled <= deadline:
                return
            pending[session.key] = deadline
        self.scheduler.call_at(
            deadline, _TimerDue(self, feature, session.key, effect.name, deadline)
        )

    def _timer_due(self, feature: str, key: DeviceKey, name: str, deadline: float) -> None:
        with self._timer_lock:
            pending = self._scheduled[(feature, name)]
            if pending.get(key) != deadline:
                return  # an earlier entry for the same timer took over
            del pending[key]
        session = self.sessions[feature].get(key)
        timers = session.timers if session is not None else None
        armed = timers.get(name) if timers else None
        if armed is None:
            return  # cancelled, or its state was left
        generation, at = armed
        if at > deadline:  # re-armed meanwhile: wait for the later deadline
            with self._timer_lock:
                if key in pending:
                    return
                pending[key] = at
            self.scheduler.call_at(at, _TimerDue(self, feature, key, name, at))
            return
        self.post(feature, key, TimerFired(name, generation))

    def _log(self, feature: str, session: Session, effect: Log) -> None:
        log.log(effect.level, "%s %s/%s: %s", feature, *session.key, effect.text)


class _TimerDue:
    """A scheduler entry: a small slotted callable, where a partial with a bound method, its
    argument tuple and keyword dict costs about four times the memory per pending timer."""

    __slots__ = ("deadline", "feature", "key", "name", "runtime")

    def __init__(
        self, runtime: Runtime, feature: str, key: DeviceKey, name: str, deadline: float
    ) -> None:
        self.runtime = runtime
        self.feature = feature
        self.key = key
        self.name = name
        self.deadline = deadline

    def __call__(self) -> None:
        self.runtime._timer_due(self.feature, self.key, self.name, self.deadline)


def _scheduler_for(clock: Clock) -> Scheduler:
    """A clock that schedules too (ManualClock) drives its own timers; otherwise a thread does."""
    if isinstance(clock, ManualClock):
        return clock
    return ThreadScheduler(clock)


def _nothing(feature: str, session: Session, effect: Any) -> None:
    """Cancelled timers need no work: the engine ignores their stale generation when they fire."""


def _call_with_key(handler: EffectHandler, feature: str, session: Session, effect: Any) -> None:
    handler(session.key, effect)
