"""Mosquitto enforcing identity and topics with client certificates and a generated ACL.

The broker is configured by the generator `iotfsm broker-config mosquitto` uses (SecureMosquitto).
Every attack of issue 15 that a broker can stop is run by a device holding a valid certificate of
its own against another device's topics, and the effect is asserted, not the broker's answer:
MQTT 3.1.1 gives a denied publish a normal PUBACK, so what counts is that the victim never hears
it and that platform state, device state and files stay as they were. Each forgery is first seen
denied in the broker's log (the broker has handled it), then the valid flows that follow on the
same connections show that nothing of the forgery arrived before them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import pytest
from mosquitto_secure_helpers import connack_code
from mqtt_fixtures import ClientFactory, mqtt_clients

from iotfsm.adapters.connect import MqttOptions
from iotfsm.adapters.identity.certificates import IssuedCertificate, PlatformCA
from iotfsm.adapters.identity.registry import device_topics
from iotfsm.adapters.mqtt.mosquitto_config import (
    PLATFORM_USERNAME,
    acl_text,
    hash_password,
    platform_password,
)
from iotfsm.adapters.mqtt.transport import MqttSettings, MqttTransport, settings_from_url
from iotfsm.commands.mosquitto_broker import cert_devices
from iotfsm.commands.registry import open_registry
from iotfsm.device import Device
from iotfsm.machines.feature import DeviceKey
from iotfsm.platform import Platform
from iotfsm.testing.mosquitto import SecureMosquitto
from iotfsm.testing.waiting import wait_for

__all__ = ["mqtt_clients"]

PRODUCT = "S3EUVBRJLB"
VICTIM = DeviceKey(PRODUCT, "victim")
ATTACKER = DeviceKey(PRODUCT, "attacker")
IDLE = DeviceKey(PRODUCT, "idle")
"""Registered, never started: the device whose OTA forged reports tried to complete."""


class CountingServer:
    """An HTTP server on 127.0.0.1 that serves an image and counts who asked: the forged offer's
    source, which must never be reached."""

    def __init__(self, body: bytes) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/evil.bin"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def evil_server() -> Iterator[CountingServer]:
    server = CountingServer(b"\x00" * 4096)
    try:
        yield server
    finally:
        server.close()


def device_options(broker: SecureMosquitto, cert: IssuedCertificate) -> MqttOptions:
    return MqttOptions(
        ca_file=broker.ca_file,
        certfile=cert.cert_file,
        keyfile=cert.key_file,
        backoff_min=0.05,
        backoff_max=0.3,
    )


def attacker_settings(broker: SecureMosquitto, cert: IssuedCertificate) -> MqttSettings:
    """The attacker device's own login: its client id and its certificate."""
    return settings_from_url(
        broker.url,
        client_id=f"{ATTACKER.product}{ATTACKER.device}",
        ca_file=broker.ca_file,
        certfile=cert.cert_file,
        keyfile=cert.key_file,
    )


def platform_transport(broker: SecureMosquitto, data_dir: Path) -> MqttTransport:
    settings = settings_from_url(
        broker.platform_url,
        client_id="iotfsm-platform-test",
        username=PLATFORM_USERNAME,
        password=platform_password(data_dir),
        ca_file=broker.ca_file,
    )
    return MqttTransport(attrs.evolve(settings, backoff_min=0.05, backoff_max=0.3))


def registered(data_dir: Path, *keys: DeviceKey) -> list[DeviceKey]:
    """Register `keys` as certificate devices; the devices the broker lets in, read back from
    the registry as `iotfsm broker-config mosquitto` reads them."""
    registry, store = open_registry(data_dir, None)
    try:
        for key in keys:
            registry.add(key.product, key.device, "cert")
        return cert_devices(registry)
    finally:
        store.close()


def forged(topic: str, doc: dict[str, Any]) -> tuple[str, bytes]:
    return topic, json.dumps(doc).encode()


_DENIED = re.compile(r"Denied PUBLISH from S3EUVBRJLBattacker \(d0, q1, r0, m\d+, '([^']+)'")


def denied(broker: SecureMosquitto) -> list[str]:
    """The attacker's publishes the broker has refused so far, by topic."""
    return sorted(_DENIED.findall(broker.log_text()))


def forgeries(evil_url: str) -> list[tuple[str, bytes]]:
    """The issue's attacks, each on a topic that is not the attacker's."""
    image = b"\x00" * 4096
    offer = {"type": "update_firmware", "file_size": len(image), "url": evil_url}
    done = {"state": "done", "result_code": "0", "result_msg": ""}
    upload = {"type": "create_upload_task", "size": 5, "name": "forged.bin"}
    return [
        forged(  # make the victim download, burn and adopt an image from anywhere
            "$ota/update/S3EUVBRJLB/victim",
            {**offer, "md5sum": hashlib.md5(image).hexdigest(), "version": "6.6.6"},
        ),
        forged(  # a config the victim would apply and save
            "$config/operation/result/S3EUVBRJLB/victim",
            {"type": "push", "result": 0, "payload": {"mode": "evil"}},
        ),
        forged(  # the platform would record the idle device's OTA as done
            "$ota/report/S3EUVBRJLB/idle",
            {"type": "report_progress", "report": {"progress": done, "version": "2.0"}},
        ),
        forged(
            "$ota/report/S3EUVBRJLB/idle", {"type": "report_version", "report": {"version": "2.0"}}
        ),
        forged(  # an answer to an RRPC call made to the victim
            "$rrpc/txd/S3EUVBRJLB/victim/1", {"answer": "forged"}
        ),
        forged(  # an RRPC request the victim would run
            "$rrpc/rxd/S3EUVBRJLB/victim/2", {"command": "reboot"}
        ),
        forged(  # a file stored as the victim's upload
            "$resource/up/service/S3EUVBRJLB/victim",
            {**upload, "md5sum": hashlib.md5(b"forge").hexdigest()},
        ),
    ]


def test_acl_gives_each_device_exactly_its_own_topics() -> None:
    text = acl_text([VICTIM, ATTACKER])
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in text.split("\n\n")[1:]}
    for key in (VICTIM, ATTACKER):
        publish, subscribe = device_topics(key)
        assert sorted(blocks[f"user {key.product}/{key.device}"]) == sorted(
            [f"topic write {t}" for t in publish] + [f"topic read {t}" for t in subscribe]
        )
    # log, ota, resource (one pair for two), config, shadow, rrpc; broadcast only comes down
    assert (len(publish), len(subscribe)) == (6, 7)
    assert "topic read $ota/report/+/+" in text and "topic write $ota/update/+/+" in text
    # RRPC: any processId of its own topics; the platform's filters have a level more
    assert "topic write $rrpc/txd/S3EUVBRJLB/victim/+" in text
    assert "topic read $rrpc/rxd/S3EUVBRJLB/victim/+" in text
    assert "topic read $rrpc/txd/+/+/+" in text and "topic write $rrpc/rxd/+/+/+" in text
    assert all(line.split(" ", 2)[2:] != [""] for line in text.splitlines() if line)
    assert "#" not in text.replace("# written", "")


def test_password_hash_is_mosquittos_format() -> None:
    scheme, iterations, salt, digest = hash_password("s3cret", iterations=101).split("$")[1:]
    assert (scheme, iterations) == ("7", "101")
    assert base64.b64decode(digest) == hashlib.pbkdf2_hmac(
        "sha512", b"s3cret", base64.b64decode(salt), 101
    )


def test_logins_the_broker_refuses(tmp_path: Path) -> None:
    data = tmp_path / "platform"
    with SecureMosquitto(data, [VICTIM]) as broker:
        ca = PlatformCA.in_data_dir(data)
        cert = ca.issue_device(VICTIM, tmp_path / "certs")
        pair = (cert.cert_file, cert.key_file)
        stranger = PlatformCA(tmp_path / "other-ca").ensure()
        foreign = stranger.issue_device(VICTIM, tmp_path / "foreign")
        assert connack_code(broker.port, broker.ca_file, cert=pair, client_id="x") == 0
        # no certificate, a certificate from another CA: the TLS handshake fails
        assert connack_code(broker.port, broker.ca_file, username="S3EUVBRJLB/victim") is None
        assert (
            connack_code(broker.port, broker.ca_file, cert=(foreign.cert_file, foreign.key_file))
            is None
        )
        # the platform listener: only the platform's password
        password = platform_password(data)
        user = PLATFORM_USERNAME
        assert (
            connack_code(broker.platform_port, broker.ca_file, username=user, password=password)
            == 0
        )
        assert (
            connack_code(broker.platform_port, broker.ca_file, username=user, password="guess") == 5
        )
        assert connack_code(broker.platform_port, broker.ca_file) == 5
        assert connack_code(broker.platform_port, broker.ca_file, username="S3EUVBRJLB/victim") == 5


def test_attacks_refused_by_mosquitto_while_a_valid_device_works(
    tmp_path: Path, evil_server: CountingServer, mqtt_clients: ClientFactory
) -> None:
    data = tmp_path / "platform"
    broker = SecureMosquitto(data, registered(data, VICTIM, ATTACKER, IDLE))
    broker.start()
    ca = PlatformCA.in_data_dir(data)
    certs = {key: ca.issue_device(key, tmp_path / "certs") for key in (VICTIM, ATTACKER)}
    applied: list[dict[str, Any]] = []
    burned: list[str] = []
    uploaded: list[tuple[str, bool, int, str]] = []
    platform = Platform(platform_transport(broker, data), data_dir=data)
    victim = Device(
        VICTIM.product,
        VICTIM.device,
        broker=broker.url,
        state_dir=tmp_path / "victim",
        version="1.0",
        mqtt=device_options(broker, certs[VICTIM]),
        burn=lambda image, version: burned.append(version),
        on_config=applied.append,
        on_upload_finished=lambda *a: uploaded.append(a),
    )
    # the attacker also listens to everything it can name: its subscriptions are granted (3.1.1
    # has no per-topic refusal Mosquitto uses here) but nothing of another device is delivered
    attacker = mqtt_clients(
        attacker_settings(broker, certs[ATTACKER]),
        subscribe=[
            ("$ota/#", 1),
            ("$config/#", 1),
            ("$resource/#", 1),
            ("$log/#", 1),
            ("$rrpc/#", 1),
        ],
    )
    try:
        platform.start()
        wait_for("the platform to connect", lambda: platform.runtime.transport.connected)
        platform.set_config(PRODUCT, {"mode": "eco"})
        victim.start()
        wait_for("the victim's first config", lambda: applied == [{"mode": "eco"}])
        platform.deploy_firmware(PRODUCT, [IDLE.device], "2.0", b"idle image")

        attacks = forgeries(evil_server.url)
        wanted = sorted(topic for topic, _ in attacks)
        for topic, payload in attacks:
            attacker.transport.publish(topic, payload, qos=1)
        wait_for("the broker to deny every forgery", lambda: denied(broker) == wanted)

        # the valid device, on the same broker and the same connections: OTA, upload, config push
        platform.deploy_firmware(PRODUCT, [VICTIM.device], "2.0", b"real image 2.0")
        wait_for("the real OTA", lambda: victim.version == "2.0", timeout=30)
        source = tmp_path / "capture.bin"
        source.write_bytes(b"captured data" * 1000)
        victim.upload(source, "capture.bin")
        wait_for("the upload", lambda: bool(uploaded), timeout=30)
        platform.set_config(PRODUCT, {"mode": "turbo"})
        wait_for("the config push", lambda: applied[-1] == {"mode": "turbo"})

        assert burned == ["2.0"] and evil_server.requests == []
        assert applied == [{"mode": "eco"}, {"mode": "turbo"}]
        assert victim.config == {"mode": "turbo"}
        assert uploaded == [("capture.bin", True, 0, "done")]
        assert [u.name for u in platform.uploads(PRODUCT, VICTIM.device)] == ["capture.bin"]
        idle = platform.firmware_status(PRODUCT, IDLE.device)
        assert (idle.state, idle.reported) == ("offered", "")
        # nothing addressed to the victim or the idle device reached the attacker
        others = [t for t, _ in attacker.recorder.messages if not t.endswith("/attacker")]
        assert others == []

    finally:
        victim.stop()
        platform.stop()
        broker.close()


def test_revoked_device_is_cut_off_after_a_reload_without_restart(
    tmp_path: Path, mqtt_clients: ClientFactory
) -> None:
    data = tmp_path / "platform"
    with SecureMosquitto(data, registered(data, VICTIM, ATTACKER)) as broker:
        ca = PlatformCA.in_data_dir(data)
        certs = {key: ca.issue_device(key, tmp_path / "certs") for key in (VICTIM, ATTACKER)}
        attacker = mqtt_clients(attacker_settings(broker, certs[ATTACKER]))
        own = "$ota/report/S3EUVBRJLB/attacker"
        attacker.transport.publish(own, b'{"type":"report_version"}', qos=1)
        wait_for("its own report accepted", lambda: f"m1, '{own}'" in broker.log_text())
        own_rrpc = "$rrpc/txd/S3EUVBRJLB/attacker/5"  # an answer on any processId of its own
        attacker.transport.publish(own_rrpc, b"ok", qos=1)
        wait_for("its own RRPC answer accepted", lambda: f"m2, '{own_rrpc}'" in broker.log_text())
        assert denied(broker) == []

        # disabled or removed: ACL without it, certificate revoked, SIGHUP, no restart
        ca.revoke_device(ATTACKER)
        broker.update_access([VICTIM])
        attacker.transport.publish(own, b'{"type":"report_version"}', qos=1)
        wait_for("its open connection to lose its own topics", lambda: denied(broker) == [own])
        attacker_cert = (certs[ATTACKER].cert_file, certs[ATTACKER].key_file)
        assert connack_code(broker.port, broker.ca_file, cert=attacker_cert) is None
        victim_cert = (certs[VICTIM].cert_file, certs[VICTIM].key_file)
        assert connack_code(broker.port, broker.ca_file, cert=victim_cert, client_id="v") == 0
        assert len(re.findall(r"mosquitto version \S+ starting", broker.log_text())) == 1


def _cert_devices_now(data_dir: Path, change: str, key: DeviceKey) -> list[DeviceKey]:
    """`iotfsm registry disable|enable` on the data directory, then the devices the broker
    lets in, as `iotfsm broker-config mosquitto --reload` reads them."""
    registry, store = open_registry(data_dir, None)
    try:
        getattr(registry, change)(key.product, key.device)
        return cert_devices(registry)
    finally:
        store.close()


def test_a_disabled_device_loses_its_topics_and_re_enabled_gets_them_back_without_restart(
    tmp_path: Path, mqtt_clients: ClientFactory
) -> None:
    """Disabled (not removed): its certificate stays valid, the ACL without it takes its own
    topics away on the open connection; enabled again, the same connection may use them once
    more. Two SIGHUPs, one broker start."""
    data = tmp_path / "platform"
    with SecureMosquitto(data, registered(data, VICTIM, ATTACKER)) as broker:
        cert = PlatformCA.in_data_dir(data).issue_device(ATTACKER, tmp_path / "certs")
        device = mqtt_clients(attacker_settings(broker, cert))
        own = "$ota/report/S3EUVBRJLB/attacker"

        def received(mid: int) -> bool:
            return f"Received PUBLISH from S3EUVBRJLBattacker (d0, q1, r0, m{mid}, '{own}'" in (
                broker.log_text()
            )

        device.transport.publish(own, b'{"type":"report_version"}', qos=1)
        wait_for("its own report accepted", lambda: received(1))
        broker.update_access(_cert_devices_now(data, "disable", ATTACKER))
        device.transport.publish(own, b'{"type":"report_version"}', qos=1)
        wait_for("the disabled device's report denied", lambda: denied(broker) == [own])
        broker.update_access(_cert_devices_now(data, "enable", ATTACKER))  # waits for it
        device.transport.publish(own, b'{"type":"report_version"}', qos=1)
        wait_for("the re-enabled device's report accepted", lambda: received(3))
        assert denied(broker) == [own]
        assert len(re.findall(r"mosquitto version \S+ starting", broker.log_text())) == 1


def test_why_per_device_blocks_and_not_patterns(
    tmp_path: Path, mqtt_clients: ClientFactory
) -> None:
    """What the ACL design rests on, measured on the installed Mosquitto: a `%u` pattern does
    substitute a username with `/` (so `{product}/{device}` patterns would work), but a user
    block cannot take a pattern's grant away, so a disabled device would keep its topics."""
    data = tmp_path / "platform"
    with SecureMosquitto(data, registered(data, VICTIM, ATTACKER)) as broker:
        assert broker.files is not None
        cert = PlatformCA.in_data_dir(data).issue_device(ATTACKER, tmp_path / "certs")
        patterns = "pattern write $ota/report/%u\npattern read $ota/update/%u\n"
        broker.files.acl.write_text(patterns + "\nuser S3EUVBRJLB/attacker\ntopic deny #\n")
        broker.reload()
        attacker = mqtt_clients(attacker_settings(broker, cert))
        for topic in ("$ota/report/S3EUVBRJLB/victim", "$ota/report/S3EUVBRJLB/attacker"):
            attacker.transport.publish(topic, b"{}", qos=1)
        received = "Received PUBLISH from S3EUVBRJLBattacker (d0, q1, r0, m2, '$ota/report/S3EUVBRJLB/attacker'"
        wait_for("the pattern's grant", lambda: received in broker.log_text())
        assert denied(broker) == ["$ota/report/S3EUVBRJLB/victim"]  # %u held {product}/{device}
