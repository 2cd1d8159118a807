"""An HTTP/1.1 server whose threads and waits are bounded, for `http.server` request handlers.

`ThreadingHTTPServer` starts a thread per connection and keeps it while the client is idle or
sends its request one byte at a time: 2,000 slow connections made 1,523 threads, and with a
listen backlog of 5 the kernel dropped 351 more (issue 16.3). Here:

- one selector thread accepts connections and holds every connection that is waiting for a
  request head (fresh, or idle between keep-alive requests), at the cost of a socket and a small
  buffer each, no thread;
- a request whose head is complete (`\\r\\n\\r\\n`) goes to a fixed pool of worker threads, which
  runs the blocking handler (streaming a file, hashing an upload) and gives a kept-alive
  connection back to the selector;
- a connection is closed when it sends nothing for `idle_timeout` seconds, or when a request
  head is not complete `header_timeout` seconds after its first byte (a slowloris is cut, 408);
  a head larger than `max_header_bytes` gets 431;
- the listen backlog is `backlog` (1024 by default), capped by the kernel's somaxconn.

Why a pool behind a selector, rather than asyncio: the handlers are blocking code that streams
files, fsyncs and calls platform callbacks; a pool runs them unchanged, and the selector is the
only place where the number of clients matters. A slow reader of a download or a slow uploader
still holds one worker for its transfer (bounded by the socket timeout the handler sets): size
`workers` for the transfers that may run at once, not for the clients that are connected.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, cast

logger = logging.getLogger(__name__)

DEFAULT_WORKERS = 16
DEFAULT_BACKLOG = 1024
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_CONNECTIONS = 10_000
_SWEEP_INTERVAL = 0.1
"""How often deadlines are checked: a sweep looks at every waiting connection, so it runs on a
clock, not on every readable socket (2,000 slow clients make thousands of events a second)."""
_RECV = 64 * 1024
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
_SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def listen_backlog(wanted: int = DEFAULT_BACKLOG) -> int:
    """`wanted`, capped by the kernel's somaxconn (which would cap it silently anyway)."""
    try:
        limit = int(_SOMAXCONN.read_text().strip())
    except (OSError, ValueError):
        limit = socket.SOMAXCONN
    return max(1, min(wanted, limit))


class SocketReader:
    """The `rfile` of a pooled request: bytes already read by the selector come first, then the
    socket. Whatever the handler leaves unread (a pipelined next request) goes back with the
    connection, which a buffered `makefile()` reader would swallow."""

    def __init__(self, sock: socket.socket, data: bytes | bytearray = b"") -> None:
        self._sock = sock
        self._buffer = bytearray(data)

    def _fill(self) -> bool:
        chunk = self._sock.recv(_RECV)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def readline(self, limit: int = -1) -> bytes:
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0 and (limit < 0 or end < limit):
                return self._take(end + 1)
            if limit >= 0 and len(self._buffer) >= limit:
                return self._take(limit)
            start = len(self._buffer)
            if not self._fill():
                return self._take(len(self._buffer))

    def read(self, size: int = -1) -> bytes:
        """`size` bytes, fewer only at end of stream (the semantics of a buffered file)."""
        if size < 0:
            while self._fill():
                pass
            return self._take(len(self._buffer))
        while len(self._buffer) < size:
            if not self._fill():
                break
        return self._take(min(size, len(self._buffer)))

    def _take(self, count: int) -> bytes:
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def leftover(self) -> bytes:
        return self._take(len(self._buffer))

    def close(self) -> None:
        """The socket belongs to the server, not to the handler."""


class SocketWriter(io.BufferedIOBase):
    """The `wfile` of a pooled request: every write is a `sendall`, so nothing waits in a buffer
    when the handler returns."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._sock.sendall(view)
        return view.nbytes


class _Connection:
    __slots__ = ("address", "buffer", "first_byte", "sock", "waiting_since")

    def __init__(self, sock: socket.socket, address: Any, data: bytes, now: float) -> None:
        self.sock = sock
        self.address = address
        self.buffer = bytearray(data)
        self.waiting_since = now
        self.first_byte: float | None = now if data else None

    def head_complete(self) -> bool:
        return any(end in self.buffer for end in _HEAD_ENDS)

    def not_http(self) -> bool:
        """The request cannot be HTTP: it starts with a byte no method starts with (a TLS
        ClientHello starts with 0x16). Answered 400 at once rather than at the header timeout."""
        start = self.buffer.lstrip(b"\r\n")
        return bool(start) and not 0x41 <= start[0] <= 0x5A  # methods are upper-case tokens


class PooledRequestHandler(BaseHTTPRequestHandler):
    """A `BaseHTTPRequestHandler` that handles one request per call and leaves the socket open:
    the server decides whether the connection waits for another request or closes."""

    server: BoundedHTTPServer  # type: ignore[assignment]

    def setup(self) -> None:
        sock, reader = self.request
        self.connection = sock
        self.rfile = reader
        self.wfile = SocketWriter(sock)

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        """Nothing to flush (writes are sendall) and the socket is the server's."""


class BoundedHTTPServer:
    """Serves `handler` (a `PooledRequestHandler` subclass) on `address`; see the module doc."""

    def __init__(
        self,
        address: tuple[str, int],
        handler: Callable[..., PooledRequestHandler],
        *,
        workers: int = DEFAULT_WORKERS,
        backlog: int = DEFAULT_BACKLOG,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        name: str = "iotfsm-http",
    ) -> None:
        for label, value in (
            ("workers", workers),
            ("backlog", backlog),
            ("max_header_bytes", max_header_bytes),
            ("max_connections", max_connections),
        ):
            if value < 1:
                raise ValueError(f"{label} must be at least 1, got {value}")
        if header_timeout <= 0 or idle_timeout <= 0:
            raise ValueError(
                f"header_timeout and idle_timeout must be positive, got "
                f"{header_timeout} and {idle_timeout}"
            )
        self._handler = handler
        self.workers = workers
        self.backlog = listen_backlog(backlog)
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.max_header_bytes = max_header_bytes
        self.max_connections = max_connections
        self._name = name
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._listener = socket.create_server(address, family=family, backlog=self.backlog)
        self._listener.setblocking(False)
        self.server_address: tuple[str, int] = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._returned: deque[_Connection] = deque()
        self._busy: set[socket.socket] = set()
        self._waiting: dict[socket.socket, _Connection] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._running = False
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._accept_paused_until = 0.0

    # Lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"{self._name}-worker")
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close waiting connections, cut busy ones and join every thread."""
        self._running = False
        self._wake()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            busy = list(self._busy)
        for sock in busy:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        with self._lock:
            returned = list(self._returned)
            self._returned.clear()
        for conn in [*self._waiting.values(), *returned]:
            conn.sock.close()
        self._waiting.clear()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def connections(self) -> int:
        """Connections held now: waiting in the selector or served by a worker."""
        with self._lock:
            return len(self._waiting) + len(self._busy) + len(self._returned)

    # The selector thread ------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _loop(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        listening = True
        next_sweep = time.monotonic() + _SWEEP_INTERVAL
        try:
            while self._running:
                for key, _ in selector.select(timeout=_SWEEP_INTERVAL):
                    if key.fileobj is self._listener:
                        if not self._accept(selector):
                            selector.unregister(self._listener)
                            listening = False
                    elif key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    else:
                        self._readable(selector, cast(socket.socket, key.fileobj))
                self._take_returned(selector)
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + _SWEEP_INTERVAL
                    self._sweep(selector, now)
                    if not listening and now >= self._accept_paused_until:
                        selector.register(self._listener, selectors.EVENT_READ)
                        listening = True
        finally:
            selector.close()

    def _accept(self, selector: selectors.BaseSelector) -> bool:
        """Accept what is queued; False when out of file descriptors (paused for a moment, or
        the listener would be readable in a busy loop)."""
        for _ in range(256):
            try:
                sock, address = self._listener.accept()
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    logger.warning("http: cannot accept more connections now: %s", exc)
                    self._accept_paused_until = time.monotonic() + 0.5
                    return False
                logger.debug("http: accept failed: %s", exc)
                return True
            if self.connections >= self.max_connections:
                logger.warning("http: %d connections held, refusing %s", self.connections, address)
                sock.close()
                continue
            self._wait(selector, _Connection(sock, address, b"", time.monotonic()))
        return True

    def _wait(self, selector: selectors.BaseSelector, conn: _Connection) -> None:
        conn.sock.setblocking(False)
        with self._lock:
            self._waiting[conn.sock] = conn
        selector.register(conn.sock, selectors.EVENT_READ)
        if conn.head_complete():
            self._dispatch(selector, conn)

    def _readable(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        conn = self._waiting.get(sock)
        if conn is None:
            return
        try:
            chunk = sock.recv(_RECV)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(selector, conn)
            return
        if conn.first_byte is None:
            conn.first_byte = time.monotonic()
        conn.buffer += chunk
        if conn.not_http():
            self._refuse(selector, conn, 400, "Bad Request")
        elif conn.head_complete():
            self._dispatch(selector, conn)
        elif len(conn.buffer) > self.max_header_bytes:
            self._refuse(selector, conn, 431, "Request Header Fields Too Large")

    def _sweep(self, selector: selectors.BaseSelector, now: float) -> None:
        for conn in list(self._waiting.values()):
            if conn.first_byte is not None:
                if now - conn.first_byte > self.header_timeout:
                    logger.info(
                        "http: %s sent no complete request head in %g s: cut",
                        conn.address[0],
                        self.header_timeout,
                    )
                    self._refuse(selector, conn, 408, "Request Timeout")
            elif now - conn.waiting_since > self.idle_timeout:
                logger.debug("http: %s idle for %g s: closed", conn.address[0], self.idle_timeout)
                self._close(selector, conn)

    def _refuse(
        self, selector: selectors.BaseSelector, conn: _Connection, status: int, reason: str
    ) -> None:
        body = f"{status} {reason}\n".encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(OSError):
            conn.sock.send(head + body)  # best effort: the socket is non-blocking
        self._close(selector, conn)

    def _forget(self, selector: selectors.BaseSelector, conn: _Connection) -> None:
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn.sock)
        with self._lock:
            self._waiting.pop(conn.sock, None)

    def _close(self, selector: selectors.BaseSelector, conn: _Connection) -> None:
        self._forget(selector, conn)
        conn.sock.close()

    def _dispatch(self, selector: selectors.BaseSelector, conn: _Connection) -> None:
        self._forget(selector, conn)
        assert self._pool is not None
        with self._lock:
            self._busy.add(conn.sock)
        try:
            self._pool.submit(self._serve, conn)
        except RuntimeError:  # the pool is shutting down
            with self._lock:
                self._busy.discard(conn.sock)
            conn.sock.close()

    def _take_returned(self, selector: selectors.BaseSelector) -> None:
        while True:
            with self._lock:
                if not self._returned:
                    return
                conn = self._returned.popleft()
            self._wait(selector, conn)

    # Worker threads -----------------------------------------------------------------------------

    def _serve(self, conn: _Connection) -> None:
        sock = conn.sock
        keep = False
        try:
            sock.setblocking(True)
            reader = SocketReader(sock, conn.buffer)
            handler = self._handler((sock, reader), conn.address, self)
            keep = not handler.close_connection and self._running
            if keep:
                now = time.monotonic()
                conn = _Connection(sock, conn.address, reader.leftover(), now)
        except (ConnectionError, TimeoutError) as exc:
            logger.debug("http: %s went away: %s", conn.address, exc)
        except Exception:
            logger.exception("http: unhandled error while serving %s", conn.address)
        finally:
            with self._lock:
                self._busy.discard(sock)
                if keep:
                    self._returned.append(conn)
            if keep:
                self._wake()
            else:
                with contextlib.suppress(OSError):
                    sock.close()


__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_WORKERS",
    "BoundedHTTPServer",
    "PooledRequestHandler",
    "SocketReader",
    "SocketWriter",
    "listen_backlog",
]
