"""What every long-running command shares: one-line errors, signals, JSON-lines events."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, TextIO

from ..fsm.trace import StepRecord


class CommandError(Exception):
    """A problem the user can fix; the command prints its message on one line and exits 1."""


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so a command can stop gracefully."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


class JsonLines:
    """`--events jsonl`: one JSON object per state change, flushed at once for pipes."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self._lock = threading.Lock()

    def step(self, record: StepRecord) -> None:
        if not record.handled or record.source == record.dest:
            return
        self.write(
            {
                "event": "state",
                "machine": record.machine,
                "product": record.key[0],
                "device": record.key[1],
                "from": record.source,
                "trigger": record.trigger,
                "to": record.dest,
            }
        )

    def write(self, doc: dict[str, Any]) -> None:
        line = json.dumps({"time": round(time.time(), 3), **doc}, separators=(",", ":"))
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()
