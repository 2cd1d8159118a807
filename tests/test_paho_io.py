"""Batched paho I/O (adapters/mqtt/paho_io.py) on a socketpair, without a broker: packets cut at every
byte, bursts larger than the read buffer, partial and refused sends, TLS retry rules, wake-ups,
and the fallback to stock paho when its internals are not what this module expects."""

from __future__ import annotations

import itertools
import logging
import random
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from iotfsm.adapters.mqtt.paho_io import READ_SIZE, WRITE_BATCH, BatchedIOClient, ReadBuffer


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 127, value >> 7
        out.append(byte | (128 if value else 0))
        if not value:
            return bytes(out)


def publish_packet(topic: str, payload: bytes, qos: int, mid: int) -> bytes:
    name = topic.encode()
    body = struct.pack("!H", len(name)) + name + (struct.pack("!H", mid) if qos else b"") + payload
    return bytes([0x30 | qos << 1]) + _varint(len(body)) + body


def puback(mid: int) -> bytes:
    return struct.pack("!BBH", 0x40, 2, mid)


class ScriptedSocket:
    """One end of a socketpair that records what paho asks of it; `send_limit` caps each send
    (a partial send) and `send_errors` are raised by the next sends (after recording them)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recv_sizes: list[int] = []
        self.attempts: list[bytes] = []
        self.send_limit: int | None = None
        self.send_errors: list[BaseException] = []

    def recv(self, size: int) -> bytes:
        self.recv_sizes.append(size)
        return self.sock.recv(size)

    def send(self, data: bytes) -> int:
        data = bytes(data)
        self.attempts.append(data)
        if self.send_errors:
            raise self.send_errors.pop(0)
        return self.sock.send(data if self.send_limit is None else data[: self.send_limit])

    def fileno(self) -> int:
        return self.sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def close(self) -> None:
        self.sock.close()


class Harness:
    """A BatchedIOClient whose socket is one end of a socketpair; the test is the broker."""

    def __init__(self, client_class: type[paho.Client] = BatchedIOClient) -> None:
        ours, self.broker = socket.socketpair()
        ours.setblocking(False)
        self.broker.settimeout(5)
        self.sock = ScriptedSocket(ours)
        # Typed as the batched client; a stock one (client_class=paho.Client) is only driven
        # through methods both have.
        self.client = cast(
            BatchedIOClient, client_class(CallbackAPIVersion.VERSION2, client_id="unit")
        )
        self.client._sock = self.sock  # type: ignore[assignment]
        # The external-loop API: queued packets wait for loop_write instead of being written at
        # once, so a test decides when a batch goes out.
        self.client.on_socket_register_write = lambda *_: None
        self.messages: list[tuple[str, bytes, int]] = []
        self.raw: list[tuple[Any, ...]] = []
        self.published: list[int] = []

        def on_message(_c: paho.Client, _u: Any, m: paho.MQTTMessage) -> None:
            self.raw.append((m._topic, m.payload, type(m.payload), m.qos, m.mid, m.dup, m.retain))
            self.messages.append((m._topic.decode("utf-8", "replace"), bytes(m.payload), m.qos))

        self.client.on_message = on_message
        self.client.on_publish = lambda _c, _u, mid, _rc, _p: self.published.append(mid)

    def feed(self, data: bytes) -> None:
        self.broker.sendall(data)

    def read_all(self) -> None:
        """loop_read until the socket has nothing more for it."""
        assert self.client.loop_read() == paho.MQTT_ERR_SUCCESS
        while _readable(self.sock.sock):
            assert self.client.loop_read() == paho.MQTT_ERR_SUCCESS

    def received(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.broker.recv(size - len(data))
            assert chunk, "the client closed the connection"
            data += chunk
        return data

    def available(self) -> bytes:
        """Whatever the client has sent and the test has not read yet."""
        data = b""
        while _readable(self.broker):
            data += self.broker.recv(1 << 20)
        return data

    def close(self) -> None:
        self.sock.close()
        self.broker.close()


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


def _burst(count: int, seed: int) -> list[tuple[str, bytes, int, int]]:
    """(topic, payload, qos, mid): sizes whose remaining length takes 1, 2 or 3 bytes."""
    rng = random.Random(seed)
    items = []
    for n in range(count):
        size = rng.choice([0, 5, 90, 130, 700, 3000, 20_000])
        payload = bytes(rng.randrange(256) for _ in range(min(size, 64))) * (size // 64 + 1)
        items.append((f"t/{n}", payload[:size], rng.choice([0, 1]), n + 1))
    return items


# --- ReadBuffer ------------------------------------------------------------------------------


def test_read_buffer_serves_small_reads_from_one_recv() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        scripted = ScriptedSocket(ours)
        buffer = ReadBuffer(scripted)
        theirs.sendall(b"abcdefgh")
        buffer.refills = 1
        assert [buffer.recv(1), buffer.recv(2), buffer.recv(10)] == [b"a", b"bc", b"defgh"]
        assert scripted.recv_sizes == [READ_SIZE]
        assert buffer.buffered() == 0 and buffer.refills == 0
        # Without refills left an empty buffer passes reads through at their exact size.
        theirs.sendall(b"xyz")
        assert buffer.recv(2) == b"xy"
        assert scripted.recv_sizes == [READ_SIZE, 2]


def test_read_buffer_hands_out_whole_packets_only() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        buffer = ReadBuffer(ours)
        first, second = publish_packet("a", b"x" * 200, 0, 0), publish_packet("b", b"y", 1, 7)
        theirs.sendall(first + second[:3])
        buffer.refills = 1
        assert buffer.recv(0) == b"" and buffer.buffered() == len(first) + 3
        # At a packet boundary (where paho's reader calls it): the whole first packet.
        assert buffer.packet() == (0x30, len(first) - 3, first[3:])
        assert buffer.packet() is None  # the second is cut: nothing consumed
        assert buffer.buffered() == 3
        assert buffer.recv(3) == second[:3]
        # A fifth length byte is a protocol error paho must report: not a packet here.
        theirs.sendall(b"\x30\xff\xff\xff\xff\x01" + b"z" * 10)
        buffer.refills = 1
        assert buffer.recv(0) == b""
        assert buffer.packet() is None and buffer.buffered() == 16


# --- reads -----------------------------------------------------------------------------------


def test_a_packet_cut_at_every_byte_is_read_whole() -> None:
    items = [("a/1", b"x" * 200, 1, 1), ("b", b"", 0, 0), ("c/2", b"0123", 1, 2)]
    stream = b"".join(publish_packet(*item) for item in items)
    expected = [(topic, payload, qos) for topic, payload, qos, _ in items]
    for cut in range(1, len(stream)):
        h = Harness()
        try:
            h.feed(stream[:cut])
            h.read_all()
            h.feed(stream[cut:])
            h.read_all()
            assert h.messages == expected, f"cut at byte {cut}"
            assert h.received(8) == puback(1) + puback(2)
        finally:
            h.close()


def test_a_burst_larger_than_the_buffer_in_random_pieces(harness: Harness) -> None:
    items = _burst(400, seed=7)
    stream = b"".join(publish_packet(*item) for item in items)
    assert len(stream) > 10 * READ_SIZE
    rng = random.Random(11)
    passes = 0
    pos = 0
    while pos < len(stream):
        step = rng.choice([1, 2, 3, 500, 9_000, READ_SIZE - 1, READ_SIZE + 3, 100_000])
        harness.feed(stream[pos : pos + step])
        pos += step
        harness.read_all()
        passes += 1
    assert harness.messages == [(t, p, q) for t, p, q, _ in items]
    acks = [puback(mid) for _, _, qos, mid in items if qos == 1]
    assert harness.received(4 * len(acks)) == b"".join(acks)
    # Stock paho makes three recv calls per packet (and more for large bodies).
    assert len(harness.sock.recv_sizes) < len(items)
    # PUBACKs leave once per read pass, not once each.
    assert len(harness.sock.attempts) < len(acks) / 2


def test_a_packet_larger_than_the_read_buffer(harness: Harness) -> None:
    big = bytes(range(256)) * 1000  # 256,000 bytes
    data = publish_packet("big", big, 1, 9) + publish_packet("small", b"s", 0, 0)
    feeder = threading.Thread(target=harness.feed, args=(data,))
    feeder.start()  # more than a socketpair holds: fed while the client reads
    deadline = time.monotonic() + 5
    while len(harness.messages) < 2 and time.monotonic() < deadline:
        if _readable(harness.sock.sock):
            harness.read_all()
    feeder.join()
    assert harness.messages == [("big", big, 1), ("small", b"s", 0)]
    assert harness.received(4) == puback(9)


def test_replies_from_on_message_need_no_wake_up_but_other_threads_do(harness: Harness) -> None:
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    client = harness.client
    client._sockpairR, client._sockpairW = wake_r, wake_w  # as loop_start sets them up
    try:

        def answer(c: paho.Client, _u: Any, m: paho.MQTTMessage) -> None:
            c.publish("re/" + m.topic, m.payload, 0)

        client.on_message = answer
        harness.feed(publish_packet("q1", b"1", 1, 1) + publish_packet("q2", b"2", 0, 0))
        harness.read_all()
        # PUBACK and both replies were written by the read pass, in one send.
        expected = (
            publish_packet("re/q1", b"1", 0, 0) + puback(1) + publish_packet("re/q2", b"2", 0, 0)
        )
        assert harness.received(len(expected)) == expected
        assert len(harness.sock.attempts) == 1
        assert not _readable(wake_r), "a publish on the reading thread wrote a wake-up byte"
        # Outside loop_read (another thread, say) the loop must still be woken.
        client.publish("other", b"3", 0)
        assert _readable(wake_r)
    finally:
        client._sockpairR = client._sockpairW = None
        wake_r.close()
        wake_w.close()


def test_a_disconnect_from_another_thread_waits_for_the_pubacks_of_the_read_pass(
    harness: Harness,
) -> None:
    """Another thread stops the client while a read pass is handling its messages (it saw
    the first one): the PUBACKs of the whole pass go out before the DISCONNECT, so the broker
    has nothing to deliver again to the next session of a persistent client."""
    client = harness.client
    stopper: list[threading.Thread] = []

    def stop_when_seen(_c: paho.Client, _u: Any, m: paho.MQTTMessage) -> None:
        if not stopper:
            stopper.append(threading.Thread(target=client.disconnect))
            stopper[0].start()
            time.sleep(0.1)  # the other thread is in disconnect() now

    client.on_message = stop_when_seen
    harness.feed(publish_packet("q1", b"1", 1, 1) + publish_packet("q2", b"2", 1, 2))
    assert client.loop_read() == paho.MQTT_ERR_SUCCESS
    stopper[0].join(timeout=10)
    client.loop_write()
    wire = b""
    while _readable(harness.broker):
        chunk = harness.broker.recv(1 << 16)
        if not chunk:  # the client closed after its DISCONNECT
            break
        wire += chunk
    assert wire.startswith(puback(1) + puback(2)), wire
    assert wire.endswith(b"\xe0\x00")  # DISCONNECT, after them


# --- writes ----------------------------------------------------------------------------------


def test_partial_sends_complete_each_qos0_publish_only_when_all_of_it_is_out(
    harness: Harness,
) -> None:
    client = harness.client
    infos = [client.publish(f"out/{n}", bytes([n]) * (n * 7), 0) for n in range(60)]
    packets = [publish_packet(f"out/{n}", bytes([n]) * (n * 7), 0, 0) for n in range(60)]
    mids = [info.mid for info in infos]
    assert harness.sock.attempts == [] and client.want_write()
    harness.sock.send_limit = 97
    rng = random.Random(3)
    out = b""
    while client.want_write():
        if rng.random() < 0.2:
            harness.sock.send_errors.append(BlockingIOError())
        assert client.loop_write() == paho.MQTT_ERR_SUCCESS
        out += harness.available()
        ends = itertools.accumulate(len(packet) for packet in packets)
        done = sum(end <= len(out) for end in ends)
        assert harness.published == mids[:done]
        assert [info.is_published() for info in infos] == [n < done for n in range(60)]
    assert out == b"".join(packets)
    assert harness.published == mids


def test_a_refused_tls_write_is_retried_with_the_same_bytes_first(harness: Harness) -> None:
    registered: list[object] = []
    client = harness.client
    client.on_socket_register_write = lambda _c, _u, sock: registered.append(sock)
    client.publish("a", b"1", 0)
    client.publish("b", b"2", 0)
    harness.sock.send_errors.append(ssl.SSLWantWriteError())
    assert client.loop_write() == paho.MQTT_ERR_SUCCESS
    assert client.want_write() and harness.published == [] and registered
    client.publish("c", b"3", 0)
    assert client.loop_write() == paho.MQTT_ERR_SUCCESS
    first, second = harness.sock.attempts
    assert second.startswith(first) and len(second) > len(first)
    expected = b"".join(
        publish_packet(t, p, 0, 0) for t, p in [("a", b"1"), ("b", b"2"), ("c", b"3")]
    )
    assert harness.received(len(expected)) == expected
    assert harness.published == [1, 2, 3] and not client.want_write()


def test_batches_are_bounded(harness: Harness) -> None:
    client = harness.client
    for n in range(8):
        client.publish(f"big/{n}", b"x" * 20_000, 0)
    assert client.loop_write() == paho.MQTT_ERR_SUCCESS
    sizes = [len(a) for a in harness.sock.attempts]
    assert len(sizes) > 1 and max(sizes) < WRITE_BATCH + 20_100
    assert sum(sizes) == 8 * len(publish_packet("big/0", b"x" * 20_000, 0, 0))


# --- dispatch and untracked publishes ---


def test_on_message_directly_until_a_topic_callback_is_added(harness: Harness) -> None:
    client = harness.client
    harness.feed(publish_packet("x/1", b"a", 0, 0))
    harness.read_all()
    by_topic: list[bytes] = []
    client.message_callback_add("x/+", lambda _c, _u, m: by_topic.append(bytes(m.payload)))
    harness.feed(publish_packet("x/2", b"b", 0, 0) + publish_packet("y", b"c", 0, 0))
    harness.read_all()
    # paho's rule: a message with a matching topic callback does not go to on_message.
    assert harness.messages == [("x/1", b"a", 0), ("y", b"c", 0)]
    assert by_topic == [b"b"]


def test_a_publish_receiver_takes_whole_packets_without_a_message_object(
    harness: Harness,
) -> None:
    client = harness.client
    got: list[tuple[bytes, bytes]] = []
    client.on_publish_received = lambda topic, payload: got.append((topic, payload))
    # the first packet of a pass comes through paho's incremental reader (on_message); the
    # rest of the read is whole in the buffer and goes to the receiver
    packets = [publish_packet(f"t/{n}", b"p%d" % n, n % 2, n + 1) for n in range(6)]
    harness.feed(b"".join(packets))
    harness.read_all()
    everything = [(t.encode(), p) for t, p, _ in harness.messages] + got
    assert sorted(everything) == sorted((f"t/{n}".encode(), b"p%d" % n) for n in range(6))
    assert len(got) >= 4
    assert all(type(topic) is bytes and type(payload) is bytes for topic, payload in got)
    # the QoS 1 ones were acknowledged whichever way they went
    assert harness.received(4 * 3) == puback(2) + puback(4) + puback(6)
    # per-topic callbacks need paho's dispatch: the receiver steps aside
    by_topic: list[bytes] = []
    client.message_callback_add("x/+", lambda _c, _u, m: by_topic.append(bytes(m.payload)))
    got.clear()
    harness.feed(b"".join(publish_packet("x/1", b"%d" % n, 0, 0) for n in range(4)))
    harness.read_all()
    assert got == []
    assert by_topic == [b"0", b"1", b"2", b"3"]


def test_a_failing_publish_receiver_is_logged_or_raised_as_on_message_is(
    harness: Harness,
) -> None:
    client = harness.client
    logged: list[str] = []
    client.on_log = lambda _c, _u, _level, text: logged.append(text)

    def boom(_topic: bytes, _payload: bytes) -> None:
        raise RuntimeError("boom")

    client.on_publish_received = boom
    client.suppress_exceptions = True
    harness.feed(b"".join(publish_packet("a", b"%d" % n, 1, n + 1) for n in range(3)))
    harness.read_all()
    assert any("boom" in text for text in logged)
    assert harness.received(12) == puback(1) + puback(2) + puback(3)


def test_a_failing_on_message_is_logged_or_raised_as_paho_does(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    client = harness.client
    logged: list[str] = []
    client.on_log = lambda _c, _u, _level, text: logged.append(text)

    def boom(_c: paho.Client, _u: Any, _m: paho.MQTTMessage) -> None:
        raise RuntimeError("boom")

    client.on_message = boom
    client.suppress_exceptions = True
    harness.feed(publish_packet("a", b"1", 1, 1))
    harness.read_all()
    assert any("boom" in text for text in logged)
    assert harness.received(4) == puback(1)  # the message still counts as handled
    client.suppress_exceptions = False
    harness.feed(publish_packet("b", b"2", 0, 0))
    with pytest.raises(RuntimeError, match="boom"):
        client.loop_read()


def test_untracked_publishes_write_what_publish_writes(harness: Harness) -> None:
    client = harness.client
    assert client.publish_untracked("q0", b"zero", 0) == paho.MQTT_ERR_SUCCESS
    assert client.publish_untracked("q1", b"one", 1) == paho.MQTT_ERR_SUCCESS
    assert list(client._out_messages) == [2]  # QoS 1 is paho's publish: kept until its PUBACK
    with pytest.raises(ValueError, match="wildcards"):
        client.publish_untracked("a/#", b"", 0)
    assert client.loop_write() == paho.MQTT_ERR_SUCCESS
    expected = publish_packet("q0", b"zero", 0, 0) + publish_packet("q1", b"one", 1, 2)
    assert harness.received(len(expected)) == expected
    assert harness.published == [1]  # on_publish for the QoS 0 one; QoS 1 waits for its PUBACK
    client._sock = None
    assert client.publish_untracked("q0", b"late", 0) == paho.MQTT_ERR_NO_CONN
    client._sock = harness.sock  # type: ignore[assignment]


WELL_FORMED = [
    publish_packet("a/b", b"payload", 0, 0),
    bytes([0x3B]) + publish_packet("dup-retain", b"x", 1, 300)[1:],  # DUP, QoS 1, RETAIN
    publish_packet("empty", b"", 1, 65535),
    publish_packet("q2", b"two", 2, 9),  # QoS 2: paho's own handler (PUBREC)
    b"\x30\x05\x00\x02\xff\xfeX",  # a topic that is not UTF-8
]
MALFORMED = [
    b"\x30\x01\x00",  # no room for the topic length
    b"\x30\x02\x00\x00",  # empty topic (MQTT 3.1.1)
    b"\x30\x03\x00\x05a",  # topic longer than the packet
    b"\x32\x03\x00\x01a",  # QoS 1 without a message id
    b"\x32\x04\x00\x01ab",  # QoS 1 with half a message id
]


def _outcome(client_class: type[paho.Client], stream: bytes) -> tuple[Any, ...]:
    h = Harness(client_class)
    try:
        h.feed(stream)
        codes = [h.client.loop_read()]
        while h.client._sock is not None and _readable(h.sock.sock):
            codes.append(h.client.loop_read())
        if h.client._sock is not None:
            h.client.loop_write()
            h.sock.sock.shutdown(socket.SHUT_WR)
        # (after a protocol error paho has closed its end already)
        written = b"".join(iter(lambda: h.broker.recv(65536), b""))
        return codes[-1], h.raw, written
    finally:
        h.close()


@pytest.mark.parametrize("bad", MALFORMED)
def test_publish_decoding_matches_paho(bad: bytes) -> None:
    good = b"".join(WELL_FORMED)
    stock = _outcome(paho.Client, good)
    # The QoS 2 message waits for its PUBREL; the others are delivered, PUBACK/PUBREC written.
    assert stock[0] == paho.MQTT_ERR_SUCCESS and len(stock[1]) == len(WELL_FORMED) - 1
    assert stock[2] == puback(300) + puback(65535) + b"\x50\x02\x00\x09"
    assert _outcome(BatchedIOClient, good) == stock
    # A malformed packet first (paho's incremental reader) and after a good one (whole-packet path).
    for stream in (bad, WELL_FORMED[0] + bad):
        stock = _outcome(paho.Client, stream)
        assert stock[0] == paho.MQTT_ERR_PROTOCOL
        assert _outcome(BatchedIOClient, stream) == stock


# --- fallback --------------------------------------------------------------------------------


def test_unexpected_paho_internals_fall_back_to_stock_paho(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = paho.Client._sock_recv

    def changed(self: paho.Client, size: int, flags: int = 0) -> bytes:
        return original(self, size)

    monkeypatch.setattr(paho.Client, "_sock_recv", changed)
    with caplog.at_level(logging.WARNING, logger="iotfsm.adapters.mqtt.paho_io"):
        h = Harness()
    try:
        assert not h.client.batched_io
        assert "Client._sock_recv" in caplog.text and "stock" in caplog.text
        h.feed(publish_packet("a", b"xyz", 1, 5) + publish_packet("b", b"", 1, 6))
        h.read_all()
        h.client.loop_write()  # paho's loop writes when select says the socket is writable
        assert h.messages == [("a", b"xyz", 1), ("b", b"", 1)]
        assert h.received(8) == puback(5) + puback(6)
        # paho's own reader: command byte, length byte, body, packet by packet.
        assert h.sock.recv_sizes[:3] == [1, 1, 8]
    finally:
        h.close()


def test_a_new_socket_never_sees_bytes_buffered_from_the_old_one(harness: Harness) -> None:
    # A protocol error ends a connection with packets still buffered behind the bad one.
    bad = b"\x00\x00"  # packet type 0 is reserved
    harness.feed(publish_packet("a", b"1", 0, 0) + bad + publish_packet("stale", b"s", 0, 0))
    assert harness.client.loop_read() == paho.MQTT_ERR_PROTOCOL
    assert harness.client._sock is None
    assert harness.messages == [("a", b"1", 0)]
    fresh = Harness()
    try:
        harness.client._sock = fresh.sock  # type: ignore[assignment]  # what reconnect does
        fresh.feed(publish_packet("b", b"2", 0, 0))
        assert harness.client.loop_read() == paho.MQTT_ERR_SUCCESS
        assert harness.messages == [("a", b"1", 0), ("b", b"2", 0)]
    finally:
        harness.client._sock = None
        fresh.close()
