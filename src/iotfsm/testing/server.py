"""What the private test servers (Mosquitto, RabbitMQ, PostgreSQL) share: a temp directory of
their own, free ports on 127.0.0.1, a wait until the server accepts connections that fails with
the tail of its log, and a stop that cleans up even when the owner forgets.

Each controller is a context manager: `__enter__` starts the server (and cleans up if that fails),
`__exit__` and `close()` stop it and remove every file. The cleanup runs from a `weakref.finalize`
holding only what it needs (never the controller), so a forgotten server is still stopped when
the controller is garbage collected or the interpreter exits.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

LOCALHOST = "127.0.0.1"
_C = TypeVar("_C", bound="ServerController")


def free_port(host: str = LOCALHOST) -> int:
    """A port that was free a moment ago, chosen below the kernel's ephemeral range.

    Ports from `bind(0)` come from the ephemeral range, the same range the kernel draws local ports
    for outgoing connections from. A client retrying against a stopped broker on such a port can
    then be handed that very port as its own local port and connect to itself (TCP self-connect),
    and a restarted broker can find its port taken by a client. Below the range neither happens.
    Racy by nature still; `Mosquitto.start` picks again if the first start finds the port taken.
    """
    low, _high = _ephemeral_range()
    candidates = range(10000, low) if low > 11000 else range(0)
    rng = random.SystemRandom()
    for _ in range(50):
        if not candidates:
            break
        port = rng.choice(candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        found: int = sock.getsockname()[1]
        return found


def free_ports(count: int, host: str = LOCALHOST) -> list[int]:
    """`count` different free ports (see `free_port`)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535  # the IANA range, used by BSDs and macOS


def end_process(
    popen: subprocess.Popen[bytes] | None,
    sig: signal.Signals = signal.SIGTERM,
    timeout: float = 5.0,
    *,
    group: bool = False,
) -> None:
    """Send `sig` and wait up to `timeout`, then SIGKILL. `group`: the process leads a session
    of its own (start_new_session) and its whole group is ended, helpers it started included."""
    if popen is None:
        return

    def send(s: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(popen.pid, s)
            else:
                popen.send_signal(s)

    if popen.poll() is None:
        send(sig)
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            popen.wait()
    if group:
        send(signal.SIGKILL)  # stragglers of the group, if any


class ServerController:
    """The shared part of a private test server; subclasses start the server in `start()`.

    `start_error` is the error a failed start raises, `what` names the server in its messages,
    `log_files()` lists where the server writes (its log and console output)."""

    start_error: type[Exception] = RuntimeError

    def __init__(self, *, prefix: str, startup_timeout: float) -> None:
        self.host = LOCALHOST
        self.startup_timeout = startup_timeout
        self.directory = Path(tempfile.mkdtemp(prefix=prefix))
        remove = functools.partial(shutil.rmtree, self.directory, ignore_errors=True)
        self._finalizer = weakref.finalize(self, remove)

    def _clean_up_with(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` (which must not hold the controller) instead of only removing the
        directory when the controller is closed, collected, or the interpreter exits."""
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, cleanup)

    @property
    def what(self) -> str:
        return type(self).__name__

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the server and remove every file. Safe to call twice."""
        self._finalizer()

    def __enter__(self: _C) -> _C:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- logs ---

    def log_files(self) -> Sequence[Path]:
        return ()

    def log_text(self) -> str:
        """The server's log files and console output, for assertions and failure messages."""
        parts = []
        for path in self.log_files():
            try:
                parts.append(path.read_text(errors="replace"))
            except FileNotFoundError:
                continue
        return "".join(parts)

    def log_tail(self, lines: int = 30) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return "\n".join(tail) if tail else "(no server log)"

    # --- readiness ---

    def wait_accepting(
        self,
        ports: Sequence[int],
        deadline: float,
        process: subprocess.Popen[bytes] | None,
        on_failure: Callable[[], None],
    ) -> None:
        """Return once each of `ports` accepts a TCP connection. If `process` exits first or
        `deadline` (monotonic) passes, call `on_failure` (end what was started) and raise
        `start_error` with the exit code or the ports, and the server's log tail."""
        pending = list(ports)
        while pending:
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                on_failure()
                raise self.start_error(
                    f"{self.what} exited during startup (exit code {code}); log:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                on_failure()
                raise self.start_error(
                    f"{self.what} did not accept connections on {self.host}:{pending[0]} within "
                    f"{self.startup_timeout:.1f}s; log:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, pending[0]), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.01)  # a port opens once: nothing to wait on but the next try
                continue
            pending.pop(0)


__all__ = [
    "LOCALHOST",
    "ServerController",
    "end_process",
    "free_port",
    "free_ports",
]
