"""The Transport interface on paho-mqtt 2.x, for devices (Tencent IoT Hub) and platforms alike.

A runtime above this module only sees `publish`, `subscribe` and two callbacks, so everything that
makes a long-lived MQTT connection dependable lives here:

- Reconnecting. One paho network thread runs from `start` to `stop` and retries on its own, after a
  failed first connect (the broker may not be up yet) as well as after a lost connection. Waits grow
  exponentially from `backoff_min` to `backoff_max` and are shortened by a random fraction
  (`backoff_jitter`), so that the thousands of devices a broker restart disconnects at once do not
  come back in lock step. A successful CONNACK resets the backoff.
- Resubscribing. The transport remembers every filter it was asked for and subscribes all of them
  again after every (re)connect, because a clean session starts with none. `on_connection(True)`
  comes only once the broker has acknowledged them all, so a runtime that publishes a request in
  that callback cannot miss the reply; `on_connection(False)` follows only a `True`: they alternate.
- Limits. Tencent IoT Hub accepts QoS 0 and 1, topics up to 128 bytes and packets up to 16 KB; a
  message over a limit raises TransportError here rather than being dropped by the platform later.
- Publishing while disconnected: QoS 0 messages are dropped (logged at debug), because they are
  progress-style messages whose next copy supersedes them. QoS 1 messages are kept by paho and sent
  after the reconnect, up to `max_queued_messages`; beyond that `publish` raises TransportError.
  Messages still queued at `stop` are discarded.

Handlers run on the paho network thread. An exception from a handler is logged and swallowed: a bug
in one message's handling must not take the connection down. Messages on filters acknowledged
early may arrive before `on_connection(True)`; `stop` reports `on_connection(False)` if connected.

Shared subscriptions (`$share/{group}/{filter}`) are passed through. MQTT 5 defines them; Mosquitto
also honours them from MQTT 3.1.1 clients. Mosquitto (seen with 2.0.11) never delivers a `$`-topic
such as `$ota/report/...` to a shared subscription, because it files every shared filter under the
non-`$` topic tree: a platform on Mosquitto cannot spread Tencent's `$`-topics over workers so.

Passwords never reach a log or a repr.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import random
import socket
import ssl
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from iotfsm.adapters.identity.credentials import DeviceCredentials
from iotfsm.adapters.mqtt.paho_io import BatchedIOClient
from iotfsm.adapters.mqtt.topic_filter import validate_filter, validate_topic
from iotfsm.adapters.transport import ConnectionHandler, MessageHandler, TransportError

from ..limits import MAX_PAYLOAD_BYTES, MAX_TOPIC_BYTES, remember

log = logging.getLogger(__name__)


MAX_KEEPALIVE = 900
"""Tencent IoT Hub accepts keepalive intervals of 0 to 900 seconds."""

MAX_INFLIGHT = 150
"""Tencent IoT Hub allows at most 150 unacknowledged QoS 1 messages per connection."""

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
_SUBSCRIBE_BATCH = 32
"""Filters per SUBSCRIBE packet when resubscribing: one packet for a device's handful of topics,
several small ones for a platform with many, so no single packet grows without bound."""

MqttProtocol = Literal["3.1.1", "5"]
PathLike = str | os.PathLike[str]


# --- settings -----------------------------------------------------------------------------------


def _non_empty(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"MqttSettings.{attribute.name} must be a non-empty string")


def _port(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"MqttSettings.{attribute.name} must be a TCP port 1-65535, not {value!r}")


def _keepalive(_instance: object, _attribute: object, value: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= MAX_KEEPALIVE:
        raise ValueError(
            f"keepalive must be whole seconds from 0 to {MAX_KEEPALIVE} (Tencent IoT Hub's range), "
            f"not {value!r}"
        )


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"MqttSettings.{attribute.name} must be a positive number of seconds")


def _fraction(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"MqttSettings.{attribute.name} must be between 0 and 1, not {value!r}")


def _protocol(_instance: object, _attribute: object, value: str) -> None:
    if value not in ("3.1.1", "5"):
        raise ValueError(f"protocol must be '3.1.1' or '5', not {value!r}")


def _inflight(_instance: object, _attribute: object, value: int) -> None:
    if not isinstance(value, int) or not 1 <= value <= MAX_INFLIGHT:
        raise ValueError(
            f"max_inflight_messages must be 1-{MAX_INFLIGHT} (Tencent IoT Hub's limit on "
            f"unacknowledged QoS 1 messages), not {value!r}"
        )


def _queued(_instance: object, _attribute: object, value: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"max_queued_messages must be >= 0 (0 = unbounded), not {value!r}")


@attrs.frozen(kw_only=True)
class TlsSettings:
    """TLS towards the broker. The server certificate is always verified, including its host name:
    there is deliberately no switch to turn that off.

    `ca_file=None` trusts the system's CA store; Tencent's SDKs ship the CA for their brokers, which
    is then given here. `certfile`/`keyfile` add a client certificate (certificate-based devices).
    """

    ca_file: PathLike | None = None
    certfile: PathLike | None = None
    keyfile: PathLike | None = None

    def __attrs_post_init__(self) -> None:
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("TlsSettings.keyfile needs certfile: give the client certificate too")

    def ssl_context(self) -> ssl.SSLContext:
        """A client context with verification on; raises ValueError naming the unreadable file."""
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH,
                cafile=None if self.ca_file is None else os.fspath(self.ca_file),
            )
            if self.certfile is not None:
                context.load_cert_chain(
                    os.fspath(self.certfile),
                    None if self.keyfile is None else os.fspath(self.keyfile),
                )
        except (OSError, ssl.SSLError) as error:
            raise ValueError(
                f"cannot load TLS files (ca_file={self.ca_file!r}, certfile={self.certfile!r}, "
                f"keyfile={self.keyfile!r}): {error}"
            ) from error
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        return context


@attrs.frozen(kw_only=True)
class MqttSettings:
    """Everything needed to reach one broker. Explicit values only: no environment lookups, so a
    settings object says exactly what a transport will do."""

    host: str = attrs.field(validator=_non_empty)
    port: int = attrs.field(validator=_port)
    client_id: str = attrs.field(validator=_non_empty)
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    tls: TlsSettings | None = None
    keepalive: int = attrs.field(default=60, validator=_keepalive)
    protocol: MqttProtocol = attrs.field(default="3.1.1", validator=_protocol)
    clean_session: bool = True
    """MQTT 3.1.1 clean session / MQTT 5 clean start. The transport resubscribes either way."""
    session_expiry: int = attrs.field(default=86_400, validator=_positive)
    """MQTT 5 with `clean_session` off: seconds the broker keeps the session (and queues QoS 1
    messages for it) after a disconnect; MQTT 5 drops it at once unless told. 3.1.1 keeps a
    persistent session until the broker's own limit."""
    backoff_min: float = attrs.field(default=1.0, validator=_positive)
    backoff_max: float = attrs.field(default=60.0, validator=_positive)
    backoff_jitter: float = attrs.field(default=0.5, validator=_fraction)
    """Each wait is shortened by a random fraction up to this much of itself."""
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    max_inflight_messages: int = attrs.field(default=20, validator=_inflight)
    max_queued_messages: int = attrs.field(default=1000, validator=_queued)
    """QoS 1 messages kept while disconnected (and in flight); 0 means unbounded."""

    def __attrs_post_init__(self) -> None:
        if self.backoff_max < self.backoff_min:
            raise ValueError(
                f"backoff_max ({self.backoff_max}) must be >= backoff_min ({self.backoff_min})"
            )
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username: MQTT 3.1.1 cannot send one alone")

    @property
    def address(self) -> str:
        """`mqtt(s)://host:port`, for log messages (never carries credentials)."""
        scheme = "mqtts" if self.tls is not None else "mqtt"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def settings_from_url(
    url: str,
    *,
    client_id: str | None = None,
    username: str | None = None,
    password: str | None = None,
    device: DeviceCredentials | None = None,
    ca_file: PathLike | None = None,
    certfile: PathLike | None = None,
    keyfile: PathLike | None = None,
    protocol: MqttProtocol = "3.1.1",
    keepalive: int = 60,
) -> MqttSettings:
    """Settings from `mqtt://host[:1883]` or `mqtts://host[:8883]`.

    Credentials are never read from the URL (URLs end up in logs and shell histories): give
    `client_id`/`username`/`password`, or `device` to derive all three from a device key. Other
    settings (backoff, queue sizes) can be changed with `attrs.evolve`.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(
            f"unsupported broker URL {url!r}: use mqtt://host:port or mqtts://host:port"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "put no credentials in the broker URL; pass username=/password= or device= instead"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL {url!r} must be just scheme://host[:port]")
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r} has no host")
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"broker URL {url!r} has an invalid port") from error
    tls_wanted = parts.scheme == "mqtts"
    if not tls_wanted and (ca_file is not None or certfile is not None or keyfile is not None):
        raise ValueError("TLS files were given for a plain mqtt:// URL; use mqtts:// for TLS")
    if device is not None:
        if client_id is not None or username is not None or password is not None:
            raise ValueError("give either device= or client_id/username/password, not both")
        login = device.login()
        client_id, username, password = login.client_id, login.username, login.password
    if client_id is None:
        raise ValueError("a client id is needed: pass client_id= or device=")
    return MqttSettings(
        host=parts.hostname,
        port=port if port is not None else (DEFAULT_TLS_PORT if tls_wanted else DEFAULT_PORT),
        client_id=client_id,
        username=username,
        password=password,
        tls=TlsSettings(ca_file=ca_file, certfile=certfile, keyfile=keyfile)
        if tls_wanted
        else None,
        protocol=protocol,
        keepalive=keepalive,
    )


def backoff_delay(
    attempt: int, *, minimum: float, maximum: float, jitter: float, rng: random.Random
) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based): `minimum * 2**attempt`, capped
    at `maximum`, minus a random share of up to `jitter` of itself."""
    base = maximum if attempt >= 64 else min(maximum, minimum * 2.0**attempt)
    return base * (1.0 - jitter * rng.random())


# --- the transport ------------------------------------------------------------------------------


class _Life(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _ClosingSSLSocket(ssl.SSLSocket):
    """paho 2.2 does not close the socket when the TLS handshake fails (a wrong CA, say), which
    leaks one socket per retry until the garbage collector finds it. This one closes itself."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class _PahoClient(BatchedIOClient):
    """paho's client with batched socket I/O (`paho_io`) and one hook on `reconnect` (a
    public method paho's loop calls for every attempt): it reports why an attempt failed (paho's
    own callback does not say) and refuses new attempts once the transport is stopping."""

    def __init__(
        self,
        *,
        client_id: str,
        protocol: MQTTProtocolVersion,
        clean_session: bool | None,
        may_connect: Callable[[], bool],
        attempt_failed: Callable[[OSError], None],
    ) -> None:
        super().__init__(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=protocol,
            reconnect_on_failure=True,
        )
        self._iotfsm_may_connect = may_connect
        self._iotfsm_attempt_failed = attempt_failed

    def reconnect(self) -> MQTTErrorCode:
        if not self._iotfsm_may_connect():
            raise ConnectionAbortedError("the transport is stopping")
        try:
            return super().reconnect()
        except OSError as error:
            self._iotfsm_attempt_failed(error)
            raise


class MqttTransport:
    """Transport over a real MQTT broker; one instance is one client connection (see module doc).

    `start` returns at once; the connection comes up in the background and `on_connection(True)`
    says when it is usable. A stopped transport cannot be started again: make a new one.
    """

    def __init__(self, settings: MqttSettings, *, rng: random.Random | None = None) -> None:
        self._settings = settings
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._checked_topics: dict[str, bool] = {}
        """Topics `publish` has checked and found good (`limits.remember`)."""
        self._life = _Life.NEW
        self._on_message: MessageHandler | None = None
        self._on_connection: ConnectionHandler | None = None
        self._filters: dict[str, int] = {}
        self._link_up = False  # CONNACK accepted on the current connection
        self._ready = False  # ... and every remembered filter acknowledged: announced True
        self._pending_subacks: set[int] = set()
        self._sub_requests: dict[int, tuple[str, ...]] = {}
        self._attempt = 0
        self._last_error: OSError | None = None
        self._network_thread: threading.Thread | None = None
        ssl_context = settings.tls.ssl_context() if settings.tls is not None else None
        self._client = self._make_client(ssl_context)

    def __repr__(self) -> str:
        state = "connected" if self._ready else self._life.value
        return f"<MqttTransport {self._settings.client_id!r} {self._settings.address} {state}>"

    @property
    def settings(self) -> MqttSettings:
        return self._settings

    # --- Transport interface ---

    def set_handlers(self, on_message: MessageHandler, on_connection: ConnectionHandler) -> None:
        with self._lock:
            self._on_message = on_message
            self._on_connection = on_connection

    def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        """Remember the filter (for every reconnect) and subscribe now if connected."""
        _check_qos(qos)
        try:
            validate_filter(topic_filter)
        except ValueError as error:
            raise TransportError(str(error)) from error
        with self._lock:
            if self._life in (_Life.STOPPING, _Life.STOPPED):
                raise TransportError("this MqttTransport is stopped; create a new one to subscribe")
            self._filters[topic_filter] = qos
            if not self._link_up:
                return  # sent with the others on the next connect
            # Under the lock so that the SUBACK (handled on the network thread, which takes the
            # lock too) finds the filter and can name it if the broker refuses.
            rc, mid = self._client.subscribe(topic_filter, qos)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                self._sub_requests[mid] = (topic_filter,)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """Send now, or (QoS 1 only) queue until the next connection; see the module doc."""
        _check_qos(qos)
        checked = self._checked_topics
        if topic not in checked:  # a platform answers on the same few topics again and again
            _check_topic(topic)
            remember(checked, topic, True)
        if not isinstance(payload, bytes | bytearray):
            raise TransportError(
                f"payload must be bytes, not {type(payload).__name__}; encode it first"
            )
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise TransportError(
                f"payload of {len(payload)} bytes for {topic!r} is over Tencent IoT Hub's "
                f"{MAX_PAYLOAD_BYTES}-byte limit; move bulk data to an HTTP transfer"
            )
        with self._lock:
            if self._life is not _Life.RUNNING:
                raise TransportError(
                    f"cannot publish to {topic!r}: the transport is {self._life.value} "
                    "(publish between start() and stop())"
                )
            link_up = self._link_up
        if qos == 0 and not link_up:
            log.debug("not connected: dropping QoS 0 message for %s", topic)
            return
        rc = self._client.publish_untracked(topic, bytes(payload), qos)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            if qos == 0:
                log.debug("connection lost: dropping QoS 0 message for %s", topic)
            else:
                log.debug("not connected: QoS 1 message for %s queued until reconnect", topic)
            return
        if rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise TransportError(
                f"cannot queue a message for {topic!r}: {self._settings.max_queued_messages} QoS 1 "
                f"messages already wait for {self._settings.address}; is the broker reachable?"
            )
        raise TransportError(f"publish to {topic!r} failed: {paho.error_string(rc)}")

    def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        with self._lock:
            if self._life is not _Life.NEW:
                raise TransportError(
                    f"this MqttTransport was already started ({self._life.value}); "
                    "create a new one to connect again"
                )
            if self._on_message is None or self._on_connection is None:
                raise TransportError(
                    "call set_handlers() before start(), or messages would have nowhere to go"
                )
            self._life = _Life.RUNNING
        settings = self._settings
        if settings.protocol == "5":
            self._client.connect_async(
                settings.host,
                settings.port,
                settings.keepalive,
                clean_start=settings.clean_session,
                properties=_session_expiry(settings),
            )
        else:
            self._client.connect_async(settings.host, settings.port, settings.keepalive)
        self._client.loop_start()
        # Keep hold of paho's thread so stop() can always join it (paho forgets it when it ends).
        thread = getattr(self._client, "_thread", None)
        if isinstance(thread, threading.Thread):
            self._network_thread = thread
        log.info("connecting to %s as %r", settings.address, settings.client_id)

    def stop(self) -> None:
        """Disconnect and end the network thread. Idempotent.

        Waits for the thread unless called from a handler (that is, on the network thread itself),
        in which case the thread ends right after the handler returns. If it is waiting to retry,
        the thread notices within a second.
        """
        with self._lock:
            if self._life is _Life.NEW:
                self._life = _Life.STOPPED
                return
            first_call = self._life is _Life.RUNNING
            if first_call:
                self._life = _Life.STOPPING
        if first_call:
            # Sends DISCONNECT when connected; otherwise marks the client disconnected so that
            # paho's retry loop ends instead of trying again.
            self._client.disconnect()
        with contextlib.suppress(AttributeError):
            # paho's loop_stop checks its thread, then joins it; if the thread ends on its own
            # (after the DISCONNECT above) in between, it calls join on None. Joined below.
            self._client.loop_stop()
        thread = self._network_thread
        if thread is not None and thread is not threading.current_thread():
            # loop_stop cannot join a thread that paho already let go of; make sure it is gone.
            thread.join()
        with self._lock:
            self._life = _Life.STOPPED
            self._link_up = False
            self._ready = False
        if first_call:
            log.info("stopped %s client %r", self._settings.address, self._settings.client_id)

    @property
    def connected(self) -> bool:
        """True between `on_connection(True)` and `on_connection(False)`."""
        return self._ready

    def __enter__(self) -> MqttTransport:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- paho wiring ---

    def _make_client(self, ssl_context: ssl.SSLContext | None) -> _PahoClient:
        settings = self._settings
        v5 = settings.protocol == "5"
        client = _PahoClient(
            client_id=settings.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else settings.clean_session,
            may_connect=self._may_connect,
            attempt_failed=self._attempt_failed,
        )
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if ssl_context is not None:
            ssl_context.sslsocket_class = _ClosingSSLSocket
            client.tls_set_context(ssl_context)
        client.connect_timeout = settings.connect_timeout
        client.max_inflight_messages_set(settings.max_inflight_messages)
        client.max_queued_messages_set(settings.max_queued_messages)
        # Handlers are wrapped already; this keeps paho's own callback errors from ending its loop.
        client.suppress_exceptions = True
        client.on_socket_open = _disable_nagle
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        client.on_publish_received = self._handle_publish
        return client

    def _may_connect(self) -> bool:
        # Called on the network thread before every attempt: a second way to know that thread.
        self._network_thread = threading.current_thread()
        return self._life is _Life.RUNNING

    def _attempt_failed(self, error: OSError) -> None:
        with self._lock:
            self._last_error = error

    def _schedule_retry(self) -> float:
        """Pick the wait before the next attempt and hand it to paho's retry loop. Called just
        before paho waits (on_connect_fail, on_disconnect), so that each wait gets fresh jitter."""
        with self._lock:
            attempt = self._attempt
            self._attempt += 1
        settings = self._settings
        delay = backoff_delay(
            attempt,
            minimum=settings.backoff_min,
            maximum=settings.backoff_max,
            jitter=settings.backoff_jitter,
            rng=self._rng,
        )
        # paho annotates the delays as int but computes with them as numbers; sub-second
        # delays keep tests fast.
        self._client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]
        return delay

    def _handle_connect(
        self,
        client: paho.Client,
        _userdata: Any,
        _flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        settings = self._settings
        if reason_code.is_failure:
            log.error(
                "%s refused the connection of %r: %s%s",
                settings.address,
                settings.client_id,
                reason_code,
                "; check the client id, username and password (device key)"
                if reason_code.value in (0x85, 0x86, 0x87, 0x8C)
                else "",
            )
            return  # paho closes the socket; on_disconnect schedules the retry
        with self._lock:
            stopping = self._life is not _Life.RUNNING
            filters = [] if stopping else list(self._filters.items())
            if not stopping:
                self._attempt = 0
                self._link_up = True
                self._pending_subacks.clear()
                self._sub_requests.clear()
                for start in range(0, len(filters), _SUBSCRIBE_BATCH):
                    batch = filters[start : start + _SUBSCRIBE_BATCH]
                    rc, mid = client.subscribe(batch)
                    if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                        self._pending_subacks.add(mid)
                        self._sub_requests[mid] = tuple(name for name, _ in batch)
            # Nothing to wait for: usable right away.
            announce = not stopping and not filters
            if announce:
                self._ready = True
        if stopping:
            # An attempt that was already under way when stop() came: close it politely.
            client.disconnect()
            return
        log.info(
            "connected to %s as %r; resubscribing %d filter(s)",
            settings.address,
            settings.client_id,
            len(filters),
        )
        if announce:
            self._notify_connection(True)

    def _handle_subscribe(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        announce = False
        with self._lock:
            names = self._sub_requests.pop(mid, ())
            if mid in self._pending_subacks:
                self._pending_subacks.discard(mid)
                if (
                    not self._pending_subacks
                    and self._link_up
                    and not self._ready
                    and self._life is _Life.RUNNING
                ):
                    self._ready = announce = True
        for index, code in enumerate(reason_codes):
            if code.is_failure:
                name = names[index] if index < len(names) else f"(SUBSCRIBE mid {mid})"
                log.error(
                    "%s refused the subscription to %r: %s; check the topic permissions",
                    self._settings.address,
                    name,
                    code,
                )
        if announce:
            self._notify_connection(True)

    def _handle_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self._lock:
            was_ready = self._ready
            was_up = self._link_up
            self._ready = False
            self._link_up = False
            self._pending_subacks.clear()
            self._sub_requests.clear()
            running = self._life is _Life.RUNNING
        if running:
            delay = self._schedule_retry()
            log.warning(
                "%s %s (%s); reconnecting in %.2f s",
                "lost the connection to" if was_up else "no session with",
                self._settings.address,
                reason_code,
                delay,
            )
        else:
            log.debug("disconnected from %s", self._settings.address)
        if was_ready:
            self._notify_connection(False)

    def _handle_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        with self._lock:
            error, self._last_error = self._last_error, None
            running = self._life is _Life.RUNNING
        if not running:
            return
        delay = self._schedule_retry()
        if isinstance(error, ssl.SSLError):
            log.error(
                "TLS with %s failed: %s; check TlsSettings.ca_file and the broker's certificate "
                "(retrying in %.2f s)",
                self._settings.address,
                error,
                delay,
            )
        else:
            log.warning(
                "cannot connect to %s: %s; retrying in %.2f s",
                self._settings.address,
                error if error is not None else "unknown error",
                delay,
            )

    def _handle_message(
        self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage
    ) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            log.warning("dropping a message whose topic is not valid UTF-8")
            return
        self._deliver(topic, bytes(message.payload))

    def _handle_publish(self, topic_bytes: bytes, payload: bytes) -> None:
        """The batched client's fast path: the same as `_handle_message`, without a message."""
        try:
            topic = topic_bytes.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("dropping a message whose topic is not valid UTF-8")
            return
        self._deliver(topic, payload)

    def _deliver(self, topic: str, payload: bytes) -> None:
        handler = self._on_message
        if handler is None:
            return
        try:
            handler(topic, payload)
        except Exception:
            log.exception("message handler failed for a message on %s", topic)

    def _notify_connection(self, up: bool) -> None:
        handler = self._on_connection
        if handler is None:
            return
        try:
            handler(up)
        except Exception:
            log.exception("connection handler failed (connected=%s)", up)


def _disable_nagle(_client: paho.Client, _userdata: Any, sock: Any) -> None:
    """MQTT packets are small and often answer one another (PUBLISH, PUBACK, the reply); with
    Nagle's algorithm each one may wait for the previous one's delayed ACK, tens of ms a hop."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        log.debug("could not set TCP_NODELAY on %r", sock)


def _session_expiry(settings: MqttSettings) -> Properties | None:
    if settings.clean_session:
        return None
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = settings.session_expiry
    return properties


def _check_topic(topic: str) -> None:
    try:
        validate_topic(topic)
    except ValueError as error:
        raise TransportError(str(error)) from error
    topic_bytes = len(topic.encode("utf-8"))
    if topic_bytes > MAX_TOPIC_BYTES:
        raise TransportError(
            f"topic {topic!r} is {topic_bytes} bytes; Tencent IoT Hub accepts at most "
            f"{MAX_TOPIC_BYTES} (use a shorter product id or device name)"
        )


def _check_qos(qos: int) -> None:
    if qos not in (0, 1) or isinstance(qos, bool):
        raise TransportError(
            f"QoS {qos!r} is not supported; use 0 or 1 (Tencent IoT Hub has no QoS 2)"
        )
