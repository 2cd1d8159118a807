"""The platform's broker-auth listener: RabbitMQ's HTTP auth backend asks it about every login.

RabbitMQ (`auth_backends.1.authn = http`, see `iotfsm.adapters.amqp.rabbitmq_config`) POSTs a
form to `/auth/user`, `/auth/vhost`, `/auth/resource` and `/auth/topic` and reads a 200 answer
whose body is `allow` or `deny` (for `user`, `allow` may be followed by tags such as
`administrator`; the platform hands out none: no login here may use the management UI). What
each question means and how it is answered lives in `broker_policy`; this module is only the
HTTP edge.

It is a listener of its own, on 127.0.0.1 by default, never the public file service: devices have
no business asking it whether a password is right. It is bounded: a fixed number of worker
threads take accepted connections from a short queue. A connection that finds the queue full
is read by the accept thread itself, with a short timeout (`OVERLOAD_TIMEOUT`): a login
(`/auth/user`) is then answered `deny` without a look at the registry (`shed` counts them;
RabbitMQ refuses the login and the device tries again later, which is what an overloaded check
should do), and every other question (vhost, resource, topic: checks of a connection that is
already in) is decided as usual. Those must never fail for load: on RabbitMQ 3.10 a failed check
on the MQTT plugin's QoS 1 channel closes that channel under a connection that stays open, and
every later QoS 1 publish of the device is lost without a word (`rabbitmq_config`). The accept
thread answering them itself is backpressure, not loss: accepting slows down to the rate of
answering, and the kernel's backlog (`LISTEN_BACKLOG`) holds the rest.
Each connection answers one request and closes (HTTP/1.0), so a keep-alive connection never ties up
a worker, and a slow or silent client is cut after a few seconds. Hostile input (no or huge
Content-Length, a body that is not a form, repeated or undecodable fields, a huge username) is
answered `deny`, never with an exception.
"""

from __future__ import annotations

import logging
import queue
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs

from ...machines import all_features
from ..amqp.rabbitmq_config import AUTH_PATH_PREFIX
from ..connect import MqttOptions
from ..identity.broker_account import BrokerAccount, platform_account
from ..identity.broker_policy import KINDS, BrokerPolicy, DeviceDirectory
from ..identity.registry import device_topics

log = logging.getLogger(__name__)

MAX_BODY = 4096
"""Far above what RabbitMQ sends (a 100-character username gives a ~400-byte topic form)."""
MAX_FIELDS = 16
DEFAULT_WORKERS = 4
DEFAULT_QUEUE = 64
REQUEST_TIMEOUT = 5.0
LISTEN_BACKLOG = 1024
"""Connections the kernel holds before the accept thread takes them. RabbitMQ opens one per
check, hundreds at once when a fleet reconnects; with a short backlog the kernel drops the
surplus SYNs, the node's connect times out (`auth_http.connection_timeout`) and the check
fails, which on an established connection loses messages (`rabbitmq_config`). The bounded
queue behind the accept thread (`pending`) is where logins are shed."""
OVERLOAD_TIMEOUT = 0.5
"""Seconds the accept thread waits for a request it reads itself (the queue being full): a
slow or silent client cannot hold the listener for longer than this."""


def parse_form(body: bytes) -> dict[str, str] | None:
    """The fields of an `application/x-www-form-urlencoded` body, or None when it is not one
    (undecodable, too many fields, a field given twice: ambiguous input is refused)."""
    try:
        text = body.decode("ascii")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except ValueError:  # UnicodeDecodeError is one
        return None
    fields = dict(pairs)
    if len(fields) != len(pairs) or any("\x00" in k or "\x00" in v for k, v in pairs):
        return None
    return fields


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    timeout = REQUEST_TIMEOUT
    server: _Server

    def do_POST(self) -> None:
        length_text = self.headers.get("Content-Length", "")
        if not length_text.isdigit() or int(length_text) > MAX_BODY:
            self._answer(False, status=413 if length_text.isdigit() else 411)
            return
        self._handle(urlsplit(self.path).path, self.rfile.read(int(length_text)))

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self._handle(parts.path, parts.query.encode("latin-1", "replace"))

    overloaded = False
    """Read by the accept thread because the queue was full: logins are shed."""

    def _handle(self, path: str, body: bytes) -> None:
        kind = path[len(AUTH_PATH_PREFIX) :] if path.startswith(AUTH_PATH_PREFIX) else ""
        if kind not in KINDS:
            self._answer(False, status=404)
            return
        if self.overloaded and kind == "user":
            self.server.shed += 1
            self._answer(False)
            return
        fields = parse_form(body)
        allowed = fields is not None and self.server.policy.decide(kind, fields)
        self._answer(allowed)

    def _answer(self, allowed: bool, status: int = 200) -> None:
        body = b"allow" if allowed else b"deny"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("broker auth %s: " + format, self.address_string(), *args)


class _OverloadHandler(_Handler):
    """A request the accept thread reads itself: a short timeout, and logins shed."""

    overloaded = True
    timeout = OVERLOAD_TIMEOUT


class _Server(socketserver.TCPServer):
    """Accepts on one thread, hands connections to a fixed pool through a bounded queue."""

    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self, address: tuple[str, int], policy: BrokerPolicy, workers: int, pending: int
    ) -> None:
        self.policy = policy
        self.shed = 0
        """Logins answered `deny` unasked because the queue was full."""
        self.overloaded = 0
        """Requests the accept thread read itself because the queue was full."""
        self.pending: queue.Queue[tuple[socket.socket, Any] | None] = queue.Queue(pending)
        self.workers = [
            threading.Thread(target=self._work, name=f"broker-auth-{n}", daemon=True)
            for n in range(workers)
        ]
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            self.pending.put_nowait((request, client_address))
        except queue.Full:
            self.overloaded += 1
            if self.overloaded % 100 == 1:
                log.warning(
                    "broker auth: %d checks waiting; the accept thread answers (logins shed: %d)",
                    self.pending.qsize(),
                    self.shed,
                )
            try:
                _OverloadHandler(request, client_address, self)
            except Exception:
                log.debug("broker auth: request from %s failed", client_address, exc_info=True)
            finally:
                self.shutdown_request(request)

    def _work(self) -> None:
        while True:
            item = self.pending.get()
            if item is None:
                return
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:
                log.debug("broker auth: request from %s failed", client_address, exc_info=True)
            finally:
                self.shutdown_request(request)


class BrokerAuthServer:
    """`BrokerAuthServer(policy, host, port).start()`; `url` is what RabbitMQ's config names."""

    def __init__(
        self,
        policy: BrokerPolicy,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        workers: int = DEFAULT_WORKERS,
        pending: int = DEFAULT_QUEUE,
    ) -> None:
        if workers < 1 or pending < 1:
            raise ValueError("the broker auth listener needs at least one worker and queue slot")
        self.policy = policy
        self._server = _Server((host, port), policy, workers, pending)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def shed(self) -> int:
        """How many logins were answered deny unasked because the listener was full (checks
        of connections already in are always decided)."""
        return self._server.shed

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> BrokerAuthServer:
        for worker in self._server.workers:
            worker.start()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="broker-auth", daemon=True
        )
        self._thread.start()
        log.info("broker auth endpoints on %s%s{%s}", self.url, AUTH_PATH_PREFIX, ",".join(KINDS))
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
            for _ in self._server.workers:
                self._server.pending.put(None)
            for worker in self._server.workers:
                worker.join(timeout=REQUEST_TIMEOUT + 1)
        self._server.server_close()

    def __enter__(self) -> BrokerAuthServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def platform_broker_auth(
    registry: DeviceDirectory,
    address: tuple[str, int],
    data_dir: Path,
    account: BrokerAccount | None,
    mqtt: MqttOptions | None,
) -> tuple[BrokerAuthServer, MqttOptions]:
    """The listener a platform serves for its broker, and its MQTT options with the login the
    listener lets in: `account`, else the operator's own MQTT login (`mqtt.username` and
    password), else `iotfsm-platform` with a password generated into `data_dir`."""
    options = mqtt or MqttOptions()
    if account is None and options.username is not None and options.password is not None:
        account = BrokerAccount(options.username, options.password)
    account = account or platform_account(data_dir)
    options = attrs.evolve(options, username=account.username, password=account.password)
    server = BrokerAuthServer(
        BrokerPolicy(registry, account, all_features(), device_topics), *address
    )
    return server, options
