"""MqttTransport against a real Mosquitto: round trips, `$`-topics, broker death, TLS, limits,
shared subscriptions, clean stop. Each test owns its broker, so a kill in one cannot hurt another."""

from __future__ import annotations

import logging
import random
import threading
import time

import attrs
import pytest
from mqtt_fixtures import (
    ClientFactory,
    LogWatcher,
    Recorder,
    fast_settings,
    mosquitto_broker,
    mosquitto_tls_broker,
    mqtt_clients,
    transport_log,
    unique_client_id,
    unstarted_mosquitto_broker,
)

from iotfsm.adapters.identity.credentials import DeviceCredentials
from iotfsm.adapters.limits import MAX_PAYLOAD_BYTES, MAX_TOPIC_BYTES
from iotfsm.adapters.mqtt.transport import (
    MqttSettings,
    MqttTransport,
    TlsSettings,
    backoff_delay,
    settings_from_url,
)
from iotfsm.adapters.transport import Transport, TransportError
from iotfsm.testing.mosquitto import Mosquitto

__all__ = [  # the imported fixtures, used as test parameters (keeps ruff from calling them unused)
    "mosquitto_broker",
    "mosquitto_tls_broker",
    "mqtt_clients",
    "transport_log",
    "unstarted_mosquitto_broker",
]


def _paho_threads(client_ids: list[str]) -> list[threading.Thread]:
    names = {f"paho-mqtt-client-{client_id}" for client_id in client_ids}
    return [thread for thread in threading.enumerate() if thread.name in names]


# --- without a broker -----------------------------------------------------------------------------


def test_mqtt_transport_satisfies_the_transport_protocol() -> None:
    transport: Transport = MqttTransport(
        MqttSettings(host="127.0.0.1", port=1, client_id="protocol-check")
    )
    assert not transport.connected


def test_backoff_doubles_caps_and_jitters_downwards() -> None:
    rng = random.Random(7)
    delays = [
        backoff_delay(attempt, minimum=0.5, maximum=8.0, jitter=0.0, rng=rng)
        for attempt in range(8)
    ]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    jittered = [backoff_delay(3, minimum=0.5, maximum=8.0, jitter=0.5, rng=rng) for _ in range(200)]
    assert all(2.0 <= delay <= 4.0 for delay in jittered)
    assert len(set(jittered)) > 150  # spread, not a constant
    assert backoff_delay(10_000, minimum=1.0, maximum=60.0, jitter=0.0, rng=rng) == 60.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"keepalive": 901}, "keepalive"),
        ({"keepalive": -1}, "keepalive"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"host": ""}, "host"),
        ({"client_id": ""}, "client_id"),
        ({"backoff_min": 0}, "backoff_min"),
        ({"backoff_min": 5.0, "backoff_max": 1.0}, "backoff_max"),
        ({"backoff_jitter": 1.5}, "backoff_jitter"),
        ({"protocol": "3.1"}, "protocol"),
        ({"max_inflight_messages": 151}, "150"),
        ({"password": "secret"}, "username"),
    ],
)
def test_settings_refuse_bad_values(overrides: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"host": "127.0.0.1", "port": 1883, "client_id": "c"}
    values.update(overrides)
    with pytest.raises(ValueError, match=message):
        MqttSettings(**values)  # type: ignore[arg-type]


def test_settings_accept_the_keepalive_range_and_hide_the_password() -> None:
    for keepalive in (0, 900):
        MqttSettings(host="h", port=1883, client_id="c", keepalive=keepalive)
    settings = MqttSettings(host="h", port=1883, client_id="c", username="u", password="hunter2")
    assert "hunter2" not in repr(settings)
    transport = MqttTransport(settings)
    assert "hunter2" not in repr(transport)


def test_settings_from_url() -> None:
    plain = settings_from_url("mqtt://broker.example", client_id="c")
    assert (plain.host, plain.port, plain.tls) == ("broker.example", 1883, None)
    secure = settings_from_url("mqtts://broker.example", client_id="c", ca_file="/ca.pem")
    assert secure.port == 8883
    assert secure.tls == TlsSettings(ca_file="/ca.pem")
    explicit = settings_from_url("mqtt://127.0.0.1:11883/", client_id="c", protocol="5")
    assert (explicit.port, explicit.protocol) == (11883, "5")
    assert settings_from_url("mqtt://[::1]:1884", client_id="c").host == "::1"

    device = DeviceCredentials("S3EUVBRJLB", "test_device", "vX6PQqazsGsMyf5SMfs6OA6y")
    derived = settings_from_url("mqtts://S3EUVBRJLB.iotcloud.tencentdevices.com", device=device)
    assert derived.client_id == "S3EUVBRJLBtest_device"
    assert derived.username is not None and derived.password is not None
    assert device.verify_password(derived.username, derived.password)
    assert derived.password not in repr(derived)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://broker:1883", "unsupported"),
        ("mqtt://user:pw@broker:1883", "credentials"),
        ("mqtt://broker:1883/path", "just scheme"),
        ("mqtt://broker:1883?x=1", "just scheme"),
        ("mqtt://:1883", "no host"),
        ("mqtt://broker:99999", "port"),
    ],
)
def test_settings_from_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings_from_url(url, client_id="c")


def test_settings_from_url_refuses_ambiguous_arguments() -> None:
    device = DeviceCredentials("S3EUVBRJLB", "test_device", "vX6PQqazsGsMyf5SMfs6OA6y")
    with pytest.raises(ValueError, match="either device"):
        settings_from_url("mqtt://b", device=device, client_id="c")
    with pytest.raises(ValueError, match="client id"):
        settings_from_url("mqtt://b")
    with pytest.raises(ValueError, match="mqtts"):
        settings_from_url("mqtt://b", client_id="c", ca_file="/ca.pem")


def test_tls_files_are_checked_when_the_transport_is_made() -> None:
    settings = MqttSettings(
        host="127.0.0.1", port=8883, client_id="c", tls=TlsSettings(ca_file="/nonexistent/ca.pem")
    )
    with pytest.raises(ValueError, match="ca_file"):
        MqttTransport(settings)
    with pytest.raises(ValueError, match="certfile"):
        TlsSettings(keyfile="/k.pem")


def test_qos_2_and_over_limit_messages_raise_before_any_io() -> None:
    transport = MqttTransport(MqttSettings(host="127.0.0.1", port=1, client_id="limits"))
    with pytest.raises(TransportError, match="QoS 2"):
        transport.publish("a/b", b"{}", qos=2)
    with pytest.raises(TransportError, match="QoS 2"):
        transport.subscribe("a/b", qos=2)
    long_topic = "$ota/report/" + "x" * (MAX_TOPIC_BYTES - len("$ota/report/") + 1)
    assert len(long_topic) == MAX_TOPIC_BYTES + 1
    with pytest.raises(
        TransportError, match=rf"{MAX_TOPIC_BYTES + 1} bytes.*at most {MAX_TOPIC_BYTES}"
    ):
        transport.publish(long_topic, b"{}")
    # The limit counts UTF-8 bytes, not characters.
    with pytest.raises(TransportError, match=f"at most {MAX_TOPIC_BYTES}"):
        transport.publish("t/" + "é" * (MAX_TOPIC_BYTES // 2), b"{}")
    with pytest.raises(TransportError, match=r"16385 bytes.*16384"):
        transport.publish("a/b", b"x" * (MAX_PAYLOAD_BYTES + 1), qos=1)
    with pytest.raises(TransportError, match="wildcard"):
        transport.publish("a/+", b"{}")
    with pytest.raises(TransportError):
        transport.subscribe("a/#/b")
    with pytest.raises(TransportError, match="bytes"):
        transport.publish("a/b", "text")  # type: ignore[arg-type]
    with pytest.raises(TransportError, match="start"):
        transport.publish("a/b", b"{}")


def test_start_needs_handlers_and_happens_once() -> None:
    transport = MqttTransport(MqttSettings(host="127.0.0.1", port=1, client_id="once"))
    with pytest.raises(TransportError, match="set_handlers"):
        transport.start()
    transport.stop()  # never started: nothing to do
    transport.stop()
    with pytest.raises(TransportError, match="already started"):
        transport.start()
    with pytest.raises(TransportError, match="stopped"):
        transport.subscribe("a/b")


# --- against Mosquitto ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
@pytest.mark.parametrize("qos", [0, 1])
def test_round_trip_between_two_transports(
    mosquitto_broker: Mosquitto, mqtt_clients: ClientFactory, qos: int, protocol: str
) -> None:
    # One filter remembered before start (sent on connect), one added while connected.
    subscriber = mqtt_clients(
        fast_settings(mosquitto_broker, unique_client_id("sub"), protocol=protocol),
        subscribe=[("iotfsm/early/+", qos)],
    )
    publisher = mqtt_clients(fast_settings(mosquitto_broker, unique_client_id("pub")))
    publisher.transport.publish("iotfsm/early/1", b"early", qos)
    subscriber.recorder.wait_messages(1)
    # The broker handles one connection's packets in order: a message the subscriber sends itself
    # right after SUBSCRIBE meets the new subscription, with no race against the SUBACK.
    subscriber.transport.subscribe("iotfsm/late/#", qos)
    subscriber.transport.publish("iotfsm/late/a/b", b"late", qos)
    subscriber.recorder.wait_messages(2)
    assert subscriber.recorder.messages[0] == ("iotfsm/early/1", b"early")
    assert ("iotfsm/late/a/b", b"late") in subscriber.recorder.messages
    assert subscriber.recorder.connection_events == [True]
    assert subscriber.transport.connected and publisher.transport.connected


def test_messages_at_the_limits_are_delivered(
    mosquitto_broker: Mosquitto, mqtt_clients: ClientFactory
) -> None:
    topic = "$ota/report/" + "x" * (MAX_TOPIC_BYTES - len("$ota/report/"))
    assert len(topic.encode()) == MAX_TOPIC_BYTES
    payload = bytes(range(256)) * (MAX_PAYLOAD_BYTES // 256)
    assert len(payload) == MAX_PAYLOAD_BYTES
    subscriber = mqtt_clients(
        fast_settings(mosquitto_broker, unique_client_id("sub")), subscribe=[(topic, 1)]
    )
    publisher = mqtt_clients(fast_settings(mosquitto_broker, unique_client_id("pub")))
    publisher.transport.publish(topic, payload, qos=1)
    subscriber.recorder.wait_messages(1)
    assert subscriber.recorder.messages == [(topic, payload)]


def test_dollar_topics_need_explicit_wildcards(
    mosquitto_broker: Mosquitto, mqtt_clients: ClientFactory
) -> None:
    # What a platform does (PROTOCOL.md): `#` and a leading `+` never match `$`-topics.
    platform = mqtt_clients(
        fast_settings(mosquitto_broker, unique_client_id("platform")),
        subscribe=[("$ota/report/+/+", 1), ("#", 1), ("+/report/+/+", 1)],
    )
    device = mqtt_clients(fast_settings(mosquitto_broker, "S3EUVBRJLBdev1"))
    device.transport.publish("$ota/report/S3EUVBRJLB/dev1", b'{"type":"report_version"}', qos=1)
    device.transport.publish("plain/marker", b"marker", qos=1)
    platform.recorder.wait_messages(2)
    assert platform.recorder.messages == [
        ("$ota/report/S3EUVBRJLB/dev1", b'{"type":"report_version"}'),
        ("plain/marker", b"marker"),
    ]


def test_broker_killed_and_restarted_both_clients_recover(
    mosquitto_broker: Mosquitto, mqtt_clients: ClientFactory
) -> None:
    platform = mqtt_clients(
        fast_settings(mosquitto_broker, unique_client_id("platform")),
        subscribe=[("$ota/report/+/+", 1)],
    )
    device = mqtt_clients(
        fast_settings(mosquitto_broker, "S3EUVBRJLBdev1"),
        subscribe=[("$ota/update/S3EUVBRJLB/dev1", 1)],
    )
    mosquitto_broker.kill()
    platform.recorder.wait_disconnected()
    device.recorder.wait_disconnected()
    assert not platform.transport.connected and not device.transport.connected

    mosquitto_broker.start()  # same port; the new broker knows no subscriptions
    platform.recorder.wait_connected(2)
    device.recorder.wait_connected(2)
    assert platform.recorder.connection_events == [True, False, True]
    assert device.recorder.connection_events == [True, False, True]

    # on_connection(True) came after the SUBACKs, so a message sent now must arrive both ways.
    device.transport.publish("$ota/report/S3EUVBRJLB/dev1", b"report", qos=1)
    platform.transport.publish("$ota/update/S3EUVBRJLB/dev1", b"update", qos=1)
    platform.recorder.wait_messages(1)
    device.recorder.wait_messages(1)
    assert platform.recorder.messages == [("$ota/report/S3EUVBRJLB/dev1", b"report")]
    assert device.recorder.messages == [("$ota/update/S3EUVBRJLB/dev1", b"update")]


def test_qos1_waits_for_the_reconnect_and_qos0_is_dropped(
    mosquitto_broker: Mosquitto, mqtt_clients: ClientFactory
) -> None:
    subscriber = mqtt_clients(
        fast_settings(mosquitto_broker, unique_client_id("sub")), subscribe=[("queue/+", 1)]
    )
    # The publisher comes back a whole second after the loss, the subscriber within ~0.2 s, so
    # the subscriber has resubscribed by the time the queued message is sent.
    publisher = mqtt_clients(
        fast_settings(
            mosquitto_broker,
            unique_client_id("pub"),
            backoff_min=1.0,
            backoff_max=1.0,
            backoff_jitter=0.0,
        )
    )
    mosquitto_broker.kill()
    publisher.recorder.wait_disconnected()
    publisher.transport.publish("queue/qos0", b"dropped", qos=0)
    publisher.transport.publish("queue/qos1", b"kept", qos=1)
    mosquitto_broker.start()
    subscriber.recorder.wait_connected(2)
    assert not publisher.transport.connected, "publisher came back too early for this test"
    publisher.recorder.wait_connected(2)
    subscriber.recorder.wait_messages(1)
    publisher.transport.publish("queue/marker", b"marker", qos=1)
    subscriber.recorder.wait_messages(2)
    assert subscriber.recorder.messages == [("queue/qos1", b"kept"), ("queue/marker", b"marker")]


def test_client_started_before_the_broker_connects_when_it_comes_up(
    unstarted_mosquitto_broker: Mosquitto, mqtt_clients: ClientFactory, transport_log: LogWatcher
) -> None:
    broker = unstarted_mosquitto_broker
    early = mqtt_clients(
        fast_settings(broker, unique_client_id("early")),
        subscribe=[("boot/+", 1)],
        wait_connected=False,
    )
    # A couple of refused attempts, each logged with its reason and the next wait.
    transport_log.wait_for(logging.WARNING, "Connection refused", count=2)
    assert early.recorder.connection_events == []
    broker.start()
    early.recorder.wait_connected()
    late = mqtt_clients(fast_settings(broker, unique_client_id("late")))
    late.transport.publish("boot/1", b"hello", qos=1)
    early.recorder.wait_messages(1)
    assert early.recorder.messages == [("boot/1", b"hello")]
    assert early.recorder.connection_events == [True]


def test_tls_with_the_right_ca(
    mosquitto_tls_broker: Mosquitto, mqtt_clients: ClientFactory
) -> None:
    broker = mosquitto_tls_broker
    assert broker.tls_port is not None
    tls = TlsSettings(ca_file=broker.ca_file)
    subscriber = mqtt_clients(
        fast_settings(broker, unique_client_id("tls-sub"), port=broker.tls_port, tls=tls),
        subscribe=[("secure/+", 1)],
    )
    # `localhost` is in the certificate's subjectAltName too.
    publisher = mqtt_clients(
        fast_settings(
            broker, unique_client_id("tls-pub"), host="localhost", port=broker.tls_port, tls=tls
        )
    )
    publisher.transport.publish("secure/1", b"sealed", qos=1)
    subscriber.recorder.wait_messages(1)
    assert subscriber.recorder.messages == [("secure/1", b"sealed")]
    url_settings = settings_from_url(broker.tls_url, client_id="x", ca_file=broker.ca_file)
    assert url_settings.tls == tls and url_settings.port == broker.tls_port


def test_tls_refuses_a_server_certificate_from_another_ca(
    mosquitto_tls_broker: Mosquitto, mqtt_clients: ClientFactory, transport_log: LogWatcher
) -> None:
    broker = mosquitto_tls_broker
    assert broker.tls_port is not None
    stranger = broker.make_unrelated_ca()
    client = mqtt_clients(
        fast_settings(
            broker,
            unique_client_id("wrong-ca"),
            port=broker.tls_port,
            tls=TlsSettings(ca_file=stranger.cert_file),
        ),
        subscribe=[("secure/+", 1)],
        wait_connected=False,
    )
    # It keeps trying (the broker could get a proper certificate) and each refusal is an error.
    transport_log.wait_for(logging.ERROR, "certificate verify failed", count=2)
    assert client.recorder.connection_events == []
    assert not client.transport.connected
    assert "New client connected" not in broker.log_text()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_shared_subscription_splits_a_stream(
    mosquitto_broker: Mosquitto, mqtt_clients: ClientFactory, protocol: str
) -> None:
    # Mosquitto honours `$share/` from MQTT 3.1.1 clients as well as from MQTT 5 ones.
    both = threading.Condition()
    workers = [
        mqtt_clients(
            fast_settings(mosquitto_broker, unique_client_id(f"worker{i}"), protocol=protocol),
            subscribe=[("$share/g/ota/report/+/+", 1)],
            recorder=Recorder(both),
        )
        for i in range(2)
    ]
    publisher = mqtt_clients(fast_settings(mosquitto_broker, unique_client_id("pub")))
    sent = {f"{i:03d}".encode() for i in range(200)}
    for i, payload in enumerate(sorted(sent)):
        publisher.transport.publish(f"ota/report/S3EUVBRJLB/dev{i % 7}", payload, qos=1)
    workers[0].recorder.wait_for(
        lambda: sum(len(w.recorder.messages) for w in workers) >= len(sent),
        "200 messages across both workers",
    )
    received = [payload for worker in workers for payload in worker.recorder.payloads()]
    assert len(received) == len(sent), "a message was handled twice"
    assert set(received) == sent, "a message was lost"
    assert all(worker.recorder.messages for worker in workers), "one worker got nothing"


def test_mosquitto_never_delivers_dollar_topics_to_shared_subscriptions(
    mosquitto_broker: Mosquitto, mqtt_clients: ClientFactory
) -> None:
    """Documents a broker limitation, not our code: Mosquitto files `$share/g/$ota/...` under the
    non-`$` topic tree, so Tencent's `$`-topics never reach a shared subscriber. If this starts
    failing, Mosquitto fixed it and the platform can spread `$ota/report/+/+` over workers."""
    shared = mqtt_clients(
        fast_settings(mosquitto_broker, unique_client_id("shared"), protocol="5"),
        subscribe=[("$share/g/$ota/report/+/+", 1)],
    )
    plain = mqtt_clients(
        fast_settings(mosquitto_broker, unique_client_id("plain")),
        subscribe=[("$ota/report/+/+", 1)],
    )
    publisher = mqtt_clients(fast_settings(mosquitto_broker, unique_client_id("pub")))
    for i in range(5):
        publisher.transport.publish(f"$ota/report/S3EUVBRJLB/dev{i}", b"r", qos=1)
    plain.recorder.wait_messages(5)
    # Anything routed to the shared client was queued before the message it now sends itself
    # (the broker handles its SUBSCRIBE and PUBLISH in order), so when that one arrives, the
    # others would have too.
    shared.transport.subscribe("sync/shared", 1)
    shared.transport.publish("sync/shared", b"sync", qos=1)
    shared.recorder.wait_messages(1)
    assert {topic for topic, _ in shared.recorder.messages} == {"sync/shared"}


def test_handler_exceptions_are_logged_and_do_not_break_the_connection(
    mosquitto_broker: Mosquitto, mqtt_clients: ClientFactory, transport_log: LogWatcher
) -> None:
    subscriber = mqtt_clients(
        fast_settings(mosquitto_broker, unique_client_id("sub")), subscribe=[("boom/+", 1)]
    )
    original = subscriber.recorder.on_message

    def explode_first(topic: str, payload: bytes) -> None:
        original(topic, payload)
        if payload == b"1":
            raise RuntimeError("handler bug")

    subscriber.transport.set_handlers(explode_first, subscriber.recorder.on_connection)
    publisher = mqtt_clients(fast_settings(mosquitto_broker, unique_client_id("pub")))
    publisher.transport.publish("boom/a", b"1", qos=1)
    publisher.transport.publish("boom/a", b"2", qos=1)
    subscriber.recorder.wait_messages(2)
    transport_log.wait_for(logging.ERROR, "message handler failed")
    assert subscriber.recorder.payloads() == [b"1", b"2"]
    assert subscriber.recorder.connection_events == [True]


def test_stop_is_idempotent_quick_and_leaves_no_paho_thread(
    mosquitto_broker: Mosquitto, unstarted_mosquitto_broker: Mosquitto, mqtt_clients: ClientFactory
) -> None:
    connected = mqtt_clients(
        fast_settings(mosquitto_broker, unique_client_id("connected")), subscribe=[("x/+", 1)]
    )
    # This one is somewhere in its retry loop against a broker that is not running.
    retrying = mqtt_clients(
        fast_settings(unstarted_mosquitto_broker, unique_client_id("retrying")),
        wait_connected=False,
    )
    ids = [connected.transport.settings.client_id, retrying.transport.settings.client_id]
    assert len(_paho_threads(ids)) == 2
    before = time.monotonic()
    for client in (connected, retrying):
        client.transport.stop()
        client.transport.stop()
    assert time.monotonic() - before < 1.5
    assert _paho_threads(ids) == []
    assert connected.recorder.connection_events == [True, False]
    assert retrying.recorder.connection_events == []
    with pytest.raises(TransportError, match="stopped"):
        connected.transport.publish("x/1", b"late", qos=1)
    with pytest.raises(TransportError, match="already started"):
        connected.transport.start()


def test_stop_from_inside_a_handler(mosquitto_broker: Mosquitto) -> None:
    stopped = threading.Event()
    transport = MqttTransport(fast_settings(mosquitto_broker, unique_client_id("self-stop")))

    def on_connection(up: bool) -> None:
        if up:
            transport.stop()  # on the network thread: must not deadlock joining itself
            stopped.set()

    transport.set_handlers(lambda _t, _p: None, on_connection)
    transport.start()
    assert stopped.wait(5)
    transport.stop()  # from the test thread: joins what is left
    assert _paho_threads([transport.settings.client_id]) == []


def test_settings_evolve_keeps_validation() -> None:
    settings = MqttSettings(host="h", port=1883, client_id="c")
    with pytest.raises(ValueError, match="keepalive"):
        attrs.evolve(settings, keepalive=1000)


def test_both_receive_paths_hand_the_runtime_text_topics_and_drop_invalid_utf8(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The batched client's receiver (topic bytes) and paho's on_message (MQTTMessage) must
    deliver alike; a topic that is not UTF-8 never reaches the handler."""
    import paho.mqtt.client as paho

    transport = MqttTransport(settings_from_url("mqtt://127.0.0.1:1", client_id="utf8"))
    got: list[tuple[str, bytes]] = []
    transport.set_handlers(lambda topic, payload: got.append((topic, payload)), lambda up: None)
    transport._handle_publish("$ota/report/P1/d\u00e9v".encode(), b"{}")
    message = paho.MQTTMessage(0, "$ota/report/P1/d\u00e9v".encode())
    message.payload = b"{}"
    transport._handle_message(transport._client, None, message)
    assert got == [("$ota/report/P1/d\u00e9v", b"{}")] * 2
    with caplog.at_level(logging.WARNING):
        transport._handle_publish(b"$ota/report/P1/\xff", b"{}")
        bad = paho.MQTTMessage(0, b"$ota/report/P1/\xff")
        transport._handle_message(transport._client, None, bad)
    assert len(got) == 2
    assert sum("not valid UTF-8" in r.getMessage() for r in caplog.records) == 2
