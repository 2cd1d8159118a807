"""Batched paho I/O (adapters/mqtt/paho_io.py) inside MqttTransport, against a real Mosquitto: backlogs
drained in 64 KiB reads, coalesced PUBACKs the broker accepts, TLS, a broker killed mid-stream,
and the fallback to stock paho."""

from __future__ import annotations

import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import paho.mqtt.client as paho
import pytest
from mqtt_fixtures import (
    ClientFactory,
    Recorder,
    fast_settings,
    mosquitto_tls_broker,
    mqtt_clients,
    unique_client_id,
)
from paho.mqtt.enums import CallbackAPIVersion

from iotfsm.adapters.limits import MAX_PAYLOAD_BYTES
from iotfsm.adapters.mqtt.paho_io import READ_SIZE, BatchedIOClient
from iotfsm.adapters.mqtt.transport import MqttTransport, TlsSettings
from iotfsm.testing.mosquitto import Mosquitto, MosquittoNotFoundError

__all__ = ["mosquitto_tls_broker", "mqtt_clients"]

BACKLOG_CONFIG = "\n".join(
    # Offline persistent sessions keep every message, QoS 0 included, and the whole backlog
    # flows at once on reconnect (as in bench/mqtt.py).
    ["queue_qos0_messages true", "max_queued_messages 0", "max_inflight_messages 0"]
)


@pytest.fixture
def backlog_broker() -> Iterator[Mosquitto]:
    try:
        broker = Mosquitto(extra_config=BACKLOG_CONFIG)
    except MosquittoNotFoundError as error:
        pytest.fail(str(error), pytrace=False)
    with broker:
        yield broker


def _paho_client(broker: Mosquitto) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique_client_id("raw"))
    client.max_inflight_messages_set(0)  # unlimited: QoS 0 cannot overtake queued QoS 1
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def publish_all(broker: Mosquitto, items: Sequence[tuple[str, bytes, int]]) -> None:
    """Publish with a plain paho client and return once the broker has every message."""
    client = _paho_client(broker)
    try:
        infos = [client.publish(topic, payload, qos) for topic, payload, qos in items]
        fence = client.publish("fence/done", b"", 1)
        fence.wait_for_publish(30)
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


def _burst(count: int, seed: int, prefix: str = "burst") -> list[tuple[str, bytes, int]]:
    rng = random.Random(seed)
    items = []
    for n in range(count):
        size = rng.choice([2, 40, 150, 600, 3000, MAX_PAYLOAD_BYTES - 1, MAX_PAYLOAD_BYTES])
        body = f"{prefix}-{n}:".encode()
        items.append((f"{prefix}/{n % 7}", (body * (size // len(body) + 1))[:size], n % 2))
    return items


def _client(transport: MqttTransport) -> BatchedIOClient:
    client = transport._client
    assert isinstance(client, BatchedIOClient)
    return client


def _count_sends(client: BatchedIOClient) -> list[int]:
    """Wrap this client's `_sock_send`; the list gets each send's size."""
    sizes: list[int] = []
    original = client._sock_send

    def counted(buf: bytes | bytearray) -> int:
        sizes.append(len(buf))
        return original(buf)

    client._sock_send = counted  # type: ignore[method-assign]
    return sizes


def _open_session(mqtt_clients: ClientFactory, broker: Mosquitto, client_id: str) -> None:
    """Create a persistent session subscribed to `burst/+` (QoS 1) and leave it offline."""
    settings = fast_settings(broker, client_id, clean_session=False)
    session = mqtt_clients(settings, subscribe=[("burst/+", 1)])
    session.transport.stop()


def test_a_backlog_drains_in_large_reads_with_every_puback_accepted(
    backlog_broker: Mosquitto, mqtt_clients: ClientFactory
) -> None:
    client_id = unique_client_id("drain")
    _open_session(mqtt_clients, backlog_broker, client_id)
    items = _burst(1500, seed=5)
    assert sum(len(p) for _, p, _ in items) > 50 * READ_SIZE
    publish_all(backlog_broker, items)

    settings = fast_settings(backlog_broker, client_id, clean_session=False)
    drain = mqtt_clients(settings, subscribe=[("burst/+", 1)], start=False)
    client = _client(drain.transport)
    assert client.batched_io
    sends = _count_sends(client)
    drain.transport.start()
    drain.recorder.wait_messages(len(items), timeout=30)
    assert drain.recorder.messages == [(t, p) for t, p, _ in items]
    acks = sum(qos for _, _, qos in items)
    # One send per read pass at most (plus CONNECT/SUBSCRIBE), not one per PUBACK as in paho.
    # (~110 sends for 750 PUBACKs here: a 64 KiB read holds a dozen of these messages.)
    assert len(sends) < acks / 2, f"{len(sends)} sends for {acks} PUBACKs"
    drain.transport.stop()

    # Every PUBACK reached the broker: the resumed session holds nothing to deliver again.
    again = mqtt_clients(settings, subscribe=[("burst/+", 1)])
    publish_all(backlog_broker, [("burst/fence", b"fence", 1)])
    again.recorder.wait_messages(1)
    time.sleep(0.2)
    assert again.recorder.messages == [("burst/fence", b"fence")]


def test_a_payload_larger_than_the_read_buffer_between_small_ones(
    backlog_broker: Mosquitto, mqtt_clients: ClientFactory
) -> None:
    # Tencent caps what we publish (16 KB); what arrives from a broker is not ours to cap.
    sub = mqtt_clients(
        fast_settings(backlog_broker, unique_client_id("big")), subscribe=[("big/+", 1)]
    )
    big = bytes(range(256)) * 1024
    items = [
        ("big/a", b"a", 0),
        ("big/b", big, 1),
        ("big/c", b"c" * 100, 1),
        ("big/d", big[:READ_SIZE], 0),
    ]
    publish_all(backlog_broker, items)
    sub.recorder.wait_messages(len(items))
    assert sub.recorder.messages == [(t, p) for t, p, _ in items]


def test_tls_replies_from_the_handler(
    mosquitto_tls_broker: Mosquitto, mqtt_clients: ClientFactory
) -> None:
    broker = mosquitto_tls_broker
    assert broker.tls_port is not None
    tls = TlsSettings(ca_file=broker.ca_file)
    holder: list[MqttTransport] = []

    def answer(topic: str, payload: bytes) -> None:
        holder[0].publish("rsp/" + topic.split("/")[1], payload[::-1], 0)

    server = mqtt_clients(
        fast_settings(broker, unique_client_id("tls-server"), port=broker.tls_port, tls=tls),
        subscribe=[("req/+", 1)],
        start=False,
    )
    holder.append(server.transport)
    server.transport.set_handlers(answer, server.recorder.on_connection)
    server.transport.start()
    server.recorder.wait_connected()
    device = mqtt_clients(
        fast_settings(broker, unique_client_id("tls-device"), port=broker.tls_port, tls=tls),
        subscribe=[("rsp/+", 0)],
    )
    requests = [(f"req/{n}", f"question {n} ".encode() * (n % 50 + 1)) for n in range(600)]
    for topic, payload in requests:
        device.transport.publish(topic, payload, 1)
    device.recorder.wait_messages(len(requests), timeout=30)
    assert sorted(device.recorder.messages) == sorted(
        ("rsp/" + t.split("/")[1], p[::-1]) for t, p in requests
    )
    buffer = _client(server.transport)._iotfsm_buffer
    assert buffer is not None and isinstance(buffer.sock, ssl.SSLSocket)


def test_broker_killed_mid_stream_leaves_no_stale_bytes(
    backlog_broker: Mosquitto, mqtt_clients: ClientFactory
) -> None:
    seen = threading.Event()
    recorder = Recorder()

    def slow(topic: str, payload: bytes) -> None:
        recorder.on_message(topic, payload)
        seen.set()
        time.sleep(0.002)  # a slow consumer: the read buffer always holds more than one packet

    sub = mqtt_clients(
        fast_settings(backlog_broker, unique_client_id("killed")),
        subscribe=[("burst/+", 1)],
        start=False,
        recorder=recorder,
    )
    sub.transport.set_handlers(slow, recorder.on_connection)
    sub.transport.start()
    recorder.wait_connected()
    client = _client(sub.transport)
    first_socket = client._sock
    before = _burst(2000, seed=1, prefix="burst")
    publisher = threading.Thread(target=publish_all, args=(backlog_broker, before))
    publisher.start()
    recorder.wait_messages(100, timeout=30)
    buffer = client._iotfsm_buffer
    assert buffer is not None and buffer.sock is first_socket
    backlog_broker.kill()
    publisher.join()
    recorder.wait_disconnected()
    received_before = len(recorder.messages)
    assert received_before < len(before), "the stream had ended before the broker was killed"

    backlog_broker.start()
    recorder.wait_connected(2, timeout=10)
    after = _burst(300, seed=2, prefix="again")
    after = [("burst/" + t.split("/")[1], p, q) for t, p, q in after]
    publish_all(backlog_broker, after)
    recorder.wait_messages(received_before + len(after), timeout=30)
    time.sleep(0.2)
    sent_before = {(t, p) for t, p, _ in before}
    messages = recorder.messages
    assert all(m in sent_before for m in messages[:received_before])
    assert messages[received_before:] == [(t, p) for t, p, _ in after]
    buffer = client._iotfsm_buffer
    assert client._sock is not first_socket and buffer is not None and buffer.sock is client._sock


def test_stock_paho_loop_when_internals_differ(
    monkeypatch: pytest.MonkeyPatch, backlog_broker: Mosquitto, mqtt_clients: ClientFactory
) -> None:
    original: Callable[..., Any] = paho.Client._packet_queue

    def changed(self: paho.Client, *args: Any, priority: int = 0) -> Any:
        return original(self, *args)

    monkeypatch.setattr(paho.Client, "_packet_queue", changed)
    sub = mqtt_clients(
        fast_settings(backlog_broker, unique_client_id("stock")), subscribe=[("burst/+", 1)]
    )
    assert not _client(sub.transport).batched_io
    assert _client(sub.transport)._iotfsm_buffer is None
    items = _burst(200, seed=3)
    publish_all(backlog_broker, items)
    sub.recorder.wait_messages(len(items), timeout=30)
    assert sub.recorder.messages == [(t, p) for t, p, _ in items]
    assert _client(sub.transport)._iotfsm_buffer is None  # paho's own reader did the reading
