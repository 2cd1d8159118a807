"""A real-time scheduler: one thread, one heap, for every timer of a runtime.

Timers only ever post an event back into their runtime, so the callbacks are tiny; one thread serves
100k sessions. Cancelled timers are not removed: the engine ignores a firing whose generation is
stale, which is cheaper than bookkeeping here.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable

from ..fsm.clock import Clock, RealClock

log = logging.getLogger(__name__)


class ThreadScheduler:
    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or RealClock()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def call_at(self, deadline: float, callback: Callable[[], None]) -> None:
        with self._cond:
            if self._stopped:
                return
            entry = (deadline, next(self._order), callback)
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="iotfsm-timers", daemon=True)
                self._thread.start()
            if self._heap[0] is entry:
                # only a new earliest deadline shortens the thread's wait; waking it for every
                # later one costs a thread switch per timer armed
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    wait = self._heap[0][0] - self.clock.now() if self._heap else None
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopped:
                    return
                _, _, callback = heapq.heappop(self._heap)
            try:
                callback()
            except Exception:
                log.exception("timer callback failed")

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
