"""Batched socket I/O for paho-mqtt's network loop: few large reads, one `send` per loop pass.

Why. Stock paho 2.2 pays system calls per packet, not per byte. For each inbound packet it runs
one `select` and three `recv`s (command byte, remaining-length byte, body). For each outbound
packet (a reply publish, a PUBACK) it makes its own `send`, plus, when the packet was queued on
the network thread itself, a wake-up byte on its socketpair that makes the next `select` return
at once and costs another `recv`. On a platform that answers most reports, that per-packet cost
was about a third of the network thread (bench/RESULTS.md, "MQTT throughput").

What `BatchedIOClient` changes, by overriding the private paho methods named, and nothing else:

- Reads (`_sock_recv`, `_packet_read`, `loop_read`). One pass of `loop_read` reads up to
  `READ_SIZE` bytes with one `recv` into a `ReadBuffer` and handles every packet that is complete
  in it before it returns to `select`: a whole buffered PUBLISH goes straight to the decoder
  below, another whole packet to paho's handler in one piece, anything else (a packet cut at
  the end of the buffer) through paho's own incremental reader, served from the buffer. After the
  pass's one large read, a packet cut at the end of the buffer is finished with reads of exactly
  the size it still needs, so the buffer is empty whenever `loop_read` returns. `select` (and,
  under TLS, the SSL socket's own `pending()`, which paho's loop already consults) thus stays a
  true readiness test. The buffer belongs to one socket object: a new socket (every reconnect)
  gets a new buffer, so no byte of an old connection is ever read on a new one.
- Writes (`_packet_write`). Every queued packet (up to `WRITE_BATCH` bytes) goes out in one
  `send`. A partial send leaves the rest at the head of paho's queue (`want_write()` stays true);
  `BlockingIOError` and TLS WantRead/WantWrite put the whole batch back untouched, so a retry
  starts with the same bytes, as OpenSSL requires. A QoS 0 publish is reported published
  (`on_publish`, `MQTTMessageInfo`) only once `send` has taken its last byte, as in paho. A
  DISCONNECT is never batched: paho's own `_packet_write` sends it and closes the connection.
- Wake-ups (`_packet_queue`). A packet queued on the network thread during `loop_read` (a reply
  published from `on_message`, a PUBACK) is queued without the socketpair byte: `loop_read`
  writes everything queued before it returns. Packets queued by any other thread wake the loop
  as before.
- Decoding (`_handle_publish`). An MQTT 3.1.1 PUBLISH at QoS 0 or 1 is decoded with a few
  slices instead of paho's `decode_publish`, which builds and compiles a new `struct` format
  string for every message (the lengths are in the format). Fields, types, PUBACK and the
  packets refused as malformed are the same (tests/test_paho_io.py compares the two); QoS 2 and
  MQTT 5 (properties) go to paho's own handler.
- Dispatch (`_handle_on_message`). Until `message_callback_add` is first called, a message goes
  straight to `on_message`: paho would decode its topic and match it against an empty set of
  per-topic callbacks first. Errors in `on_message` are logged or raised as paho does.
- `publish_untracked`, for callers that only want the result code (MqttTransport): at QoS 0 no
  `MQTTMessageInfo` is made, which saves a `threading.Condition` per reply. QoS 1 is `publish`.

Measured with bench/mqtt.py (bench/RESULTS.md, "Transport: batched paho I/O"): a platform that
answers 70 % of the reports went from about 40 % to 87-119 % of a stock-paho subscriber's
message rate (medians of 5 rounds, 2.6-3.3x its own rate), and paho's select + read + write
share of its network thread from ~49 % to ~17 %. A bare subscriber on this client drains 5-6x
the messages per second of one on stock paho.

These are private paho methods. `check_internals` verifies at construction that what this module
relies on exists with the expected shape; when it does not (a paho release that reorganised its
loop), the client logs a warning and behaves as stock paho. pyproject.toml pins the paho-mqtt
versions this was verified against.
"""

from __future__ import annotations

import collections
import functools
import inspect
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

if TYPE_CHECKING:
    from paho.mqtt.client import _InPacket, _OutPacket

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
"""Bytes asked of the socket by the one large read of a `loop_read` pass."""

WRITE_BATCH = 64 * 1024
"""A batch stops growing once it holds this many bytes (a single larger packet goes alone)."""

DISCONNECT_WAIT = 5.0
"""Seconds `disconnect` waits for a read pass to finish (a handler that blocks for longer only
delays nothing more: the DISCONNECT is queued anyway)."""

PublishReceiver = Callable[[bytes, bytes], None]


class _NoSuchError(Exception):
    """Stands in for an exception class a paho release lacks (and is never raised)."""


def _malformed_packet_error() -> type[Exception] | None:
    try:
        from paho.mqtt.exception import MalformedPacket  # paho >= 2.2
    except ImportError:
        return None
    return MalformedPacket


_MALFORMED: type[Exception] = _malformed_packet_error() or _NoSuchError

_PUBLISH = 0x30
_DISCONNECT = 0xE0
"""MQTT fixed-header packet types (upper nibble), from the MQTT specification."""

_METHODS: dict[str, tuple[str, ...]] = {
    # name -> parameter names, as in paho 2.2
    "_sock_recv": ("self", "bufsize"),
    "_sock_send": ("self", "buf"),
    "_packet_read": ("self",),
    "_packet_handle": ("self",),
    "_packet_write": ("self",),
    "_packet_queue": ("self", "command", "packet", "mid", "qos", "info"),
    "_loop_rc_handle": ("self", "rc"),
    "_call_socket_register_write": ("self",),
    "_easy_log": ("self", "level", "fmt", "args"),
    "_handle_on_message": ("self", "message"),
    "_handle_publish": ("self",),
    "_send_puback": ("self", "mid"),
    "_send_publish": (
        "self",
        "mid",
        "topic",
        "payload",
        "qos",
        "retain",
        "dup",
        "info",
        "properties",
    ),
    "_mid_generate": ("self",),
    "_raise_for_invalid_topic": ("topic",),
    "loop_read": ("self", "max_packets"),
    "loop_write": ("self",),
    "message_callback_add": ("self", "sub", "callback"),
}
_ATTRIBUTES = (
    "_sock",
    "_in_packet",
    "_msgtime_mutex",
    "_last_bytes_received",
    "_callback_mutex",
    "_in_callback_mutex",
    "_callback_api_version",
    "_userdata",
    "suppress_exceptions",
    "on_publish",
    "on_message",
    "on_log",
    "_logger",
    "_protocol",
    "_manual_ack",
)


def check_internals(client: paho.Client) -> list[str]:
    """What this module needs from paho and `client` lacks: empty when batching is safe."""
    # keyed by the methods themselves, so a patched or reloaded paho is looked at afresh
    missing = list(_class_problems(tuple(getattr(paho.Client, name, None) for name in _METHODS)))
    missing += [f"Client.{name}" for name in _ATTRIBUTES if not hasattr(client, name)]
    if not isinstance(getattr(client, "_out_packet", None), collections.deque):
        missing.append("Client._out_packet (a deque)")
    return missing


@functools.cache
def _class_problems(_methods: tuple[object, ...]) -> tuple[str, ...]:
    """The part of `check_internals` that depends on the paho release only: looked at once per
    process (signatures are slow to inspect; a fleet simulator makes thousands of clients)."""
    missing = []
    for name, parameters in _METHODS.items():
        method = getattr(paho.Client, name, None)
        if not callable(method):
            missing.append(f"Client.{name}()")
            continue
        found = tuple(inspect.signature(method).parameters)
        if found != parameters:
            missing.append(f"Client.{name}{parameters} (found {found})")
    if _MALFORMED is _NoSuchError:
        missing.append("paho.mqtt.exception.MalformedPacket")
    if tuple(inspect.signature(paho.MQTTMessage).parameters) != ("mid", "topic"):
        missing.append("MQTTMessage(mid, topic)")
    if not callable(getattr(paho.MQTTMessageInfo, "_set_as_published", None)):
        missing.append("MQTTMessageInfo._set_as_published()")
    return tuple(missing)


class ReadBuffer:
    """Serves many small reads from few large `recv`s on one socket.

    `refills` is how many large reads may still be made; with none left, an empty buffer passes
    each read through at its exact size, so the buffer only ever drains.
    """

    __slots__ = ("_data", "_pos", "refills", "sock")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self._data = b""
        self._pos = 0
        self.refills = 0

    def buffered(self) -> int:
        return len(self._data) - self._pos

    def packet(self) -> tuple[int, int, bytes] | None:
        """(command byte, remaining length, body) of the next packet if the buffer holds all of
        it, else None (and nothing consumed): a cut packet, or a length field paho must refuse."""
        data = self._data
        pos = self._pos
        end = len(data)
        index = pos + 1
        length = 0
        shift = 0
        while True:
            if index >= end or shift > 21:
                return None
            byte = data[index]
            index += 1
            length |= (byte & 127) << shift
            shift += 7
            if not byte & 128:
                break
        stop = index + length
        if stop > end:
            return None
        if stop == end:
            self._data = b""
            self._pos = 0
        else:
            self._pos = stop
        return data[pos], length, data[index:stop]

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes, from the buffer first. Socket errors (BlockingIOError, TLS
        WantRead/WantWrite, resets) come straight from the socket, with the buffer empty."""
        data = self._data
        pos = self._pos
        if pos < len(data):
            end = pos + size
            if end >= len(data):
                self._data = b""
                self._pos = 0
                return data[pos:] if pos else data
            self._pos = end
            return data[pos:end]
        if self.refills <= 0:
            return bytes(self.sock.recv(size))
        self.refills -= 1
        data = bytes(self.sock.recv(max(size, READ_SIZE)))
        if len(data) <= size:
            return bytes(data)
        self._data = data
        self._pos = size
        return data[:size]


class BatchedIOClient(paho.Client):
    """paho's `Client` with batched reads, coalesced writes and no self wake-ups (module doc).
    `batched_io` says whether it is in effect or the client fell back to stock paho."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._iotfsm_buffer: ReadBuffer | None = None
        self._iotfsm_reader = 0
        """Ident of the thread inside `loop_read`, 0 outside: its packets need no wake-up."""
        self._iotfsm_pass = threading.Lock()
        """Held by a read pass from its first packet until what it queued is handed to the
        socket: `disconnect` from another thread waits for it (`disconnect`)."""
        self._iotfsm_topic_callbacks = False
        """Whether `message_callback_add` was ever called: then paho dispatches by topic."""
        self.on_publish_received: PublishReceiver | None = None
        """Takes (topic bytes, payload) of each QoS 0/1 MQTT 3.1.1 message read whole from the
        buffer, in place of `on_message`: no `MQTTMessage` is built, whose constructor makes an
        `MQTTMessageInfo` with a `threading.Condition` that a received message never uses. Not
        used once per-topic callbacks exist; other messages (MQTT 5, QoS 2, a packet cut at the
        end of a read) still come to `on_message`, so a transport sets both."""
        missing = check_internals(self)
        self.batched_io = not missing
        if missing:
            log.warning(
                "paho-mqtt %s lacks what batched socket I/O relies on (%s): using paho's stock, "
                "slower loop; pin paho-mqtt to the range in iotfsm's pyproject.toml to get it back",
                paho_version,
                ", ".join(missing),
            )

    # --- reads ---

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self.batched_io:
            return super()._sock_recv(bufsize)
        sock = self._sock
        if sock is None:
            raise ConnectionError("self._sock is None")
        buffer = self._iotfsm_buffer
        if buffer is None or buffer.sock is not sock:
            buffer = self._iotfsm_buffer = ReadBuffer(sock)
        try:
            return buffer.recv(bufsize)
        except ssl.SSLWantReadError as err:
            raise BlockingIOError() from err
        except ssl.SSLWantWriteError as err:
            self._call_socket_register_write()
            raise BlockingIOError() from err

    def _packet_read(self) -> MQTTErrorCode:
        # Fast path: a whole packet in the buffer is handed to paho's handler in one piece.
        # Anything else (the pass's first packet, a packet cut at the end of the buffer) goes
        # through paho's incremental reader, which reads through `_sock_recv` above.
        buffer = self._iotfsm_buffer
        if (
            not self.batched_io
            or buffer is None
            or buffer.sock is not self._sock
            or self._in_packet["command"]
        ):
            return super()._packet_read()
        frame = buffer.packet()
        if frame is None:
            return super()._packet_read()
        command, length, body = frame
        try:
            if command & 0xF0 == _PUBLISH and not command & 0x04 and self._protocol != paho.MQTTv5:
                # The common case, without paho's packet record and dispatch.
                return self._publish_received(command, body)
            # paho's handlers decode bytes and bytearrays alike; no copy into a bytearray.
            self._in_packet = _in_packet(command, length, body)
            rc = self._packet_handle()
        except _MALFORMED as exc:
            self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = _in_packet(0, 0, bytearray())
        return rc

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Handle every packet of one large read (stock paho: one packet per call), then write
        what handling them queued. `max_packets` is ignored, as paho 2.x itself ignores it."""
        if not self.batched_io:
            return super().loop_read(max_packets)
        sock = self._sock
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        buffer = self._iotfsm_buffer
        if buffer is None or buffer.sock is not sock:
            buffer = self._iotfsm_buffer = ReadBuffer(sock)
        buffer.refills = 1
        with self._iotfsm_pass:
            self._iotfsm_reader = threading.get_ident()
            try:
                while True:
                    rc = self._packet_read()
                    if rc > 0:
                        return self._loop_rc_handle(rc)
                    if rc == MQTTErrorCode.MQTT_ERR_AGAIN or self._sock is not sock:
                        break
                    if not buffer.refills and not buffer.buffered():
                        break
            finally:
                self._iotfsm_reader = 0
                buffer.refills = 0
                # Once per pass rather than per packet, for the packets of the fast path above.
                with self._msgtime_mutex:
                    self._last_bytes_received = time.monotonic()
            if self._sock is sock and self._out_packet:
                return self.loop_write()
            return MQTTErrorCode.MQTT_ERR_SUCCESS

    def disconnect(self, *args: Any, **kwargs: Any) -> MQTTErrorCode:
        """paho's `disconnect`, queued after the read pass in progress: a pass queues the
        PUBACKs of the messages it handled as it goes and writes them at its end, so a
        DISCONNECT queued meanwhile by another thread (a handler's caller that saw the last
        message and stopped) went out first and the broker delivered those messages again to
        the next session. From inside a pass (a handler that stops) it is queued at once."""
        if not self.batched_io or self._iotfsm_reader == threading.get_ident():
            return super().disconnect(*args, **kwargs)
        waited = self._iotfsm_pass.acquire(timeout=DISCONNECT_WAIT)
        try:
            return super().disconnect(*args, **kwargs)
        finally:
            if waited:
                self._iotfsm_pass.release()

    # --- dispatch ---

    def _handle_publish(self) -> MQTTErrorCode:
        packet = self._in_packet
        header = packet["command"]
        if not self.batched_io or header & 0x04 or self._protocol == paho.MQTTv5:
            return super()._handle_publish()  # QoS 2 (or 3, invalid), MQTT 5 properties
        return self._publish_received(header, packet["packet"])

    def _publish_received(self, header: int, body: bytes | bytearray) -> MQTTErrorCode:
        """paho's `_handle_publish` for MQTT 3.1.1 at QoS 0/1, whose `decode_publish` builds and
        compiles a `struct` format string per message; the same packets are refused alike."""
        qos = (header & 0x06) >> 1
        size = len(body)
        if size < 2:
            raise _MALFORMED("PUBLISH too short for a topic length")
        start = 2 + (body[0] << 8 | body[1])
        if start == 2 or start > size:
            raise _MALFORMED("PUBLISH topic empty or longer than the packet")
        mid = 0
        if qos:
            if start + 2 > size:
                raise _MALFORMED("PUBLISH too short for a message id")
            mid = body[start] << 8 | body[start + 1]
        topic = bytes(body[2:start])
        payload = bytes(body[start + 2 * qos :])
        if self.on_log is not None or self._logger is not None:
            self._easy_log(
                paho.MQTT_LOG_DEBUG,
                "Received PUBLISH (d%d, q%d, r%d, m%d), '%s', ...  (%d bytes)",
                bool(header & 0x08),
                qos,
                bool(header & 0x01),
                mid,
                topic.decode("utf-8", "backslashreplace"),
                len(payload),
            )
        receiver = self.on_publish_received
        if receiver is not None and not self._iotfsm_topic_callbacks:
            self._deliver(receiver, topic, payload)
        else:
            message = paho.MQTTMessage(mid, topic)
            message.dup = bool(header & 0x08)
            message.qos = qos
            message.retain = bool(header & 0x01)
            message.payload = payload
            message.timestamp = time.monotonic()
            self._handle_on_message(message)
        if qos == 0 or self._manual_ack:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._send_puback(mid)

    def _deliver(self, receiver: PublishReceiver, topic: bytes, payload: bytes) -> None:
        with self._in_callback_mutex:
            try:
                receiver(topic, payload)
            except Exception as err:
                self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def message_callback_add(self, sub: str, callback: paho.CallbackOnMessage) -> None:
        self._iotfsm_topic_callbacks = True
        super().message_callback_add(sub, callback)

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        if not self.batched_io or self._iotfsm_topic_callbacks:
            super()._handle_on_message(message)
            return
        # No per-topic callbacks: straight to on_message, without paho decoding the topic and
        # matching it against an empty set of filters for every message.
        with self._callback_mutex:
            on_message: Any = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    # --- writes ---

    def publish_untracked(self, topic: str, payload: bytes, qos: int) -> MQTTErrorCode:
        """`publish` for a caller that only wants the result code. At QoS 0 it skips the
        `MQTTMessageInfo` (with a `threading.Condition` in it) that nobody would wait on;
        `on_publish` is still called once the packet is written."""
        if qos or not self.batched_io:
            return self.publish(topic, payload, qos).rc
        topic_bytes = topic.encode("utf-8")
        self._raise_for_invalid_topic(topic_bytes)
        return self._send_publish(self._mid_generate(), topic_bytes, payload, 0, False, False)

    def _packet_queue(
        self,
        command: int,
        packet: bytes | bytearray,
        mid: int,
        qos: int,
        info: paho.MQTTMessageInfo | None = None,
    ) -> MQTTErrorCode:
        if not self.batched_io or self._iotfsm_reader != threading.get_ident():
            return super()._packet_queue(command, packet, mid, qos, info)
        # On the network thread inside loop_read, which writes before it returns: no wake-up.
        self._out_packet.append(
            {
                "command": command,
                "mid": mid,
                "qos": qos,
                "pos": 0,
                "to_process": len(packet),
                "packet": packet,
                "info": info,
            }
        )
        self._call_socket_register_write()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_write(self) -> MQTTErrorCode:
        if not self.batched_io:
            return super()._packet_write()
        out = self._out_packet
        while out:
            if out[0]["command"] & 0xF0 == _DISCONNECT:
                # Rare, and it ends the connection: paho's own code sends it and closes.
                return super()._packet_write()
            batch: list[_OutPacket] = []
            size = 0
            while out and size < WRITE_BATCH and out[0]["command"] & 0xF0 != _DISCONNECT:
                packet = out.popleft()
                batch.append(packet)
                size += packet["to_process"]
            try:
                sent = self._sock_send(_joined(batch))
            except (AttributeError, ValueError):
                out.extendleft(reversed(batch))
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            except BlockingIOError:
                out.extendleft(reversed(batch))
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                out.extendleft(reversed(batch))
                self._easy_log(paho.MQTT_LOG_ERR, "failed to send on socket: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            for index, packet in enumerate(batch):
                if sent < packet["to_process"]:
                    packet["pos"] += sent
                    packet["to_process"] -= sent
                    out.extendleft(reversed(batch[index:]))
                    return MQTTErrorCode.MQTT_ERR_AGAIN
                sent -= packet["to_process"]
                packet["pos"] += packet["to_process"]
                packet["to_process"] = 0
                if packet["command"] & 0xF0 == _PUBLISH and packet["qos"] == 0:
                    self._published(packet)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _published(self, packet: _OutPacket) -> None:
        """What paho's `_packet_write` does once a QoS 0 PUBLISH is written."""
        with self._callback_mutex:
            on_publish: Any = self.on_publish
        if on_publish is not None:
            with self._in_callback_mutex:
                try:
                    if self._callback_api_version == CallbackAPIVersion.VERSION1:
                        on_publish(self, self._userdata, packet["mid"])
                    else:
                        on_publish(
                            self,
                            self._userdata,
                            packet["mid"],
                            ReasonCode(PacketTypes.PUBACK),
                            Properties(PacketTypes.PUBACK),  # type: ignore[no-untyped-call]
                        )
                except Exception as err:
                    self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_publish: %s", err)
                    if not self.suppress_exceptions:
                        raise
        info = packet["info"]
        if info is not None:
            info._set_as_published()


def _in_packet(command: int, length: int, body: bytes | bytearray) -> _InPacket:
    """paho's record of the packet being read, as `_packet_read` leaves it for the handlers."""
    return {
        "command": command,
        "have_remaining": 1 if command else 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": length,
        "packet": body,  # type: ignore[typeddict-item]
        "to_process": 0,
        "pos": 0,
    }


def _joined(batch: list[_OutPacket]) -> bytes | bytearray:
    if len(batch) == 1:
        packet = batch[0]
        return packet["packet"][packet["pos"] :] if packet["pos"] else packet["packet"]
    return b"".join(memoryview(p["packet"])[p["pos"] :] if p["pos"] else p["packet"] for p in batch)
