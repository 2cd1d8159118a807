"""Time as an input: machines never read the time themselves.

Everything that depends on time (timer deadlines, progress cadence, timestamps in replies) receives
`now` from a clock that the runtime owns. Tests use `ManualClock` and advance it by hand, so nothing
sleeps and every run is the same; production uses `RealClock` plus a scheduler thread.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """Seconds as a float. Wall-clock based so that deadlines survive a restart in a snapshot."""

    def now(self) -> float: ...


class Scheduler(Protocol):
    """Runs a callback at (or soon after) a deadline on the same time base as its clock."""

    def call_at(self, deadline: float, callback: Callable[[], None]) -> None: ...


class RealClock:
    """The system's wall clock (`time.time`), because snapshots carry absolute deadlines."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when a test says so, and the scheduler that goes with it.

    `advance` runs every callback whose deadline has come, in deadline order (ties in the order they
    were scheduled), with `now()` equal to that deadline while the callback runs. Callbacks may
    schedule more callbacks; those run too if they fall inside the advanced span. Thread-safe:
    transfer threads arm timers while a test advances; callbacks run without the lock held.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def call_at(self, deadline: float, callback: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._heap, (deadline, next(self._order), callback))

    def advance(self, seconds: float) -> int:
        """Move time forward, firing what falls due. Returns how many callbacks ran."""
        if seconds < 0:
            raise ValueError(f"a manual clock only moves forward; got {seconds} seconds")
        target = self._now + seconds
        fired = 0
        while True:
            with self._lock:
                if not self._heap or self._heap[0][0] > target:
                    break
                deadline, _, callback = heapq.heappop(self._heap)
                self._now = max(self._now, deadline)
            callback()
            fired += 1
        self._now = target
        return fired

    def next_deadline(self) -> float | None:
        """The earliest pending deadline, so a test can jump straight to it."""
        with self._lock:
            return self._heap[0][0] if self._heap else None

    def pending(self) -> int:
        with self._lock:
            return len(self._heap)
