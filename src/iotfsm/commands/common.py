"""What every long-running command shares: one-line errors, signals, JSON-lines events."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from ..adapters.connect import MqttOptions
from ..fsm.trace import StepRecord

STORE_DAMAGED = 3
"""Exit code when the platform store is damaged: not 1 (any CommandError) nor 2 (argparse's usage
errors), so a supervisor can stop restarting a platform that cannot start on its store."""


class CommandError(Exception):
    """A problem the user can fix; the command prints its message on one line and exits with
    `exit_code` (1 unless a more telling one is given)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_ca(path: Path | None) -> MqttOptions:
    """MQTT options for an agent: a CA file that must exist, and a patient reconnect."""
    if path is not None and not path.is_file():
        raise CommandError(f"--tls-ca {path}: no such file")
    return MqttOptions(ca_file=path, backoff_min=0.5, backoff_max=30.0)


def wait_connected(
    connected: Callable[[], bool], stop: threading.Event, timeout: float, broker: str
) -> bool:
    """Wait for the first connection; False if a signal came first. Raises CommandError when
    the broker cannot be reached in time (an agent started against a wrong URL says so)."""
    waited = 0.0
    while not connected():
        if stop.wait(0.05):
            # Connected within the last poll, before the signal was seen: that counts as
            # started (a fast OTA can be over, and the agent told to stop, within 50 ms).
            return connected()
        waited += 0.05
        if waited >= timeout:
            raise CommandError(f"cannot reach the broker at {broker} within {timeout:g} s")
    return True


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
