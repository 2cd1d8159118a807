"""Step records observed without slowing the runtime: a ring of recent steps, live subscribers,
and when each device was last heard from.

The runtime calls its machines' tracers on whichever thread steps; the feed's tracer must cost
next to nothing there. It appends the raw record to a bounded ring (`deque(maxlen)`) and to each
matching subscriber's bounded buffer; a subscriber whose buffer is full loses the record and
counts it (the runtime never waits for a slow reader). The conversion to JSON happens on the
reader's side. A subscriber is woken through its event loop only when its buffer goes from empty
to non-empty, so a burst of steps costs one wake-up, not one per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Literal

import attrs

from ..fsm.machine import Machine
from ..fsm.trace import StepRecord, Tracer
from ..machines import DeviceKey
from ..machines.feature import Feature, inbound_direction
from .models import StepEvent

RING = 2000
BUFFER = 1000

Entry = tuple[int, float, str, StepRecord]
"""(sequence number, wall time, machine name, record)."""


DEVICE_SUFFIX = ".device"
"""How a device machine's name ends (`ota.device`): its steps have the device role."""


def role_of(machine: str) -> Literal["platform", "device"]:
    return "device" if machine.endswith(DEVICE_SUFFIX) else "platform"


@attrs.frozen
class StepFilter:
    machine: str | None = None
    product: str | None = None
    device: str | None = None
    handled_only: bool = False
    role: str | None = None

    def matches(self, machine: str, record: StepRecord) -> bool:
        if self.machine is not None and machine != self.machine:
            return False
        if self.role is not None and role_of(machine) != self.role:
            return False
        if self.handled_only and not record.handled:
            return False
        if self.product is None and self.device is None:
            return True
        key = record.key
        if not isinstance(key, DeviceKey):
            return False
        return self.product in (None, key.product) and self.device in (None, key.device)


class Subscriber:
    """One live reader: a bounded buffer, a drop counter and a way to wake its loop."""

    def __init__(self, feed: StepFeed, wanted: StepFilter, loop: asyncio.AbstractEventLoop):
        self._feed = feed
        self.wanted = wanted
        self.buffer: deque[Entry] = deque()
        self.dropped = 0
        self._loop = loop
        self._ready = asyncio.Event()

    def offer(self, entry: Entry) -> None:
        """Runtime thread: keep the entry if there is room, else count it lost."""
        if len(self.buffer) >= BUFFER:
            self.dropped += 1
            self._feed.dropped += 1
            return
        was_empty = not self.buffer
        self.buffer.append(entry)
        if was_empty:
            with contextlib.suppress(RuntimeError):  # a closed loop: the reader is gone
                self._loop.call_soon_threadsafe(self._ready.set)

    async def wait(self, timeout: float) -> None:
        """Until something is buffered or `timeout` seconds pass."""
        if self.buffer:
            return
        self._ready.clear()
        if self.buffer:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)

    def take(self) -> tuple[list[Entry], int]:
        """What was buffered, and how many were lost since the last take."""
        taken = []
        while self.buffer:
            taken.append(self.buffer.popleft())
        lost, self.dropped = self.dropped, 0
        return taken, lost

    def close(self) -> None:
        self._feed.unsubscribe(self)


class StepFeed:
    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._seq = itertools.count(1)
        self.ring: deque[Entry] = deque(maxlen=RING)
        self._subscribers: tuple[Subscriber, ...] = ()
        self._lock = threading.Lock()
        self.dropped = 0
        """Records lost by slow subscribers, in total."""

    def observe(self, machine: str, record: StepRecord, at: float | None = None) -> None:
        entry = (next(self._seq), self._now() if at is None else at, machine, record)
        self.ring.append(entry)
        if self._subscribers:
            self.offer(machine, record, entry)

    def offer(self, machine: str, record: StepRecord, entry: Entry) -> None:
        for sub in self._subscribers:  # a tuple swapped whole: no lock on the hot path
            if sub.wanted.matches(machine, record):
                sub.offer(entry)

    def subscribe(self, wanted: StepFilter, loop: asyncio.AbstractEventLoop) -> Subscriber:
        sub = Subscriber(self, wanted, loop)
        with self._lock:
            self._subscribers = (*self._subscribers, sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not sub)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def recent(self, wanted: StepFilter, limit: int, after: int = 0) -> list[StepEvent]:
        """The newest `limit` matching steps still in the ring (after seq `after`), oldest first."""
        found = [e for e in list(self.ring) if e[0] > after and wanted.matches(e[2], e[3])]
        return [step_event(e) for e in found[-limit:]] if limit > 0 else []


def step_event(entry: Entry) -> StepEvent:
    seq, at, machine, r = entry
    key = r.key
    device = isinstance(key, DeviceKey)
    return StepEvent(
        seq,
        round(at, 6),
        machine,
        role_of(machine),
        key.product if device else None,
        key.device if device else None,
        None if device else str(key),
        r.source,
        r.trigger,
        r.dest,
        r.handled,
        [type(e).__name__ for e in r.effects],
    )


class LastSeen:
    """When each device last sent a message that reached a session (this process, since start)."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self.times: dict[DeviceKey, float] = {}

    def get(self, key: DeviceKey) -> float | None:
        return self.times.get(key)

    def note(self, key: DeviceKey) -> None:
        self.times[key] = self._now()


def inbound_triggers(features: Iterable[Feature]) -> dict[str, frozenset[str]]:
    """Per feature, the triggers that are messages from devices (a step on one = a sign of life)."""
    direction = inbound_direction("platform")
    return {f.name: frozenset(m.__name__ for m in f.messages(direction)) for f in features}


class Taps:
    """The feed's tracers chained onto machines (after any tracer they had) and taken off again."""

    def __init__(self) -> None:
        self._installed: list[tuple[Machine[Any], Tracer | None]] = []

    def install(self, machine: Machine[Any], tracer: Tracer) -> None:
        before = machine.tracer
        self._installed.append((machine, before))
        if before is None:
            machine.tracer = tracer
        else:

            def both(record: StepRecord) -> None:
                before(record)
                tracer(record)

            machine.tracer = both

    def remove(self) -> None:
        for machine, before in reversed(self._installed):
            machine.tracer = before
        self._installed.clear()


def device_tracer(feed: StepFeed, seen: LastSeen, machine: str, triggers: frozenset[str]) -> Tracer:
    """The tracer of one feature's machine: the step into the feed, and a device message's
    time into `seen`. Everything is bound up front: this runs on every step of the runtime."""
    times = seen.times
    now = feed._now
    counter = feed._seq
    append = feed.ring.append
    offer = feed.offer

    def trace(record: StepRecord) -> None:
        at = now()
        if record.trigger in triggers:
            times[record.key] = at
        entry = (next(counter), at, machine, record)
        append(entry)
        if feed._subscribers:
            offer(machine, record, entry)

    return trace
