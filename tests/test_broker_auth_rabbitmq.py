"""RabbitMQ 3.10's MQTT plugin with its HTTP auth backend pointed at the platform's policy.

Every assertion here is about what the real node does (the session's private node from
rabbitmq_fixtures): which logins it lets in, which subscriptions and publishes it refuses, and
how it refuses them. Observed on 3.10.8: a refused login gets CONNACK 4 ("bad user name or
password", paho's reason code 134); a
refused SUBSCRIBE or PUBLISH closes the client's connection (no SUBACK failure code, no PUBACK),
and nothing of a refused publish reaches any subscriber.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from rabbitmq_fixtures import RabbitNode

from iotfsm.adapters.http.broker_auth import BrokerAuthServer
from iotfsm.adapters.identity.broker_account import BrokerAccount
from iotfsm.adapters.identity.broker_policy import BrokerPolicy
from iotfsm.adapters.identity.credentials import DeviceCredentials
from iotfsm.adapters.identity.registry import ProductSecrets, Registry, device_topics
from iotfsm.adapters.store.session_store import MemoryStore
from iotfsm.machines import all_features
from iotfsm.machines.feature import DeviceKey

WAIT = 20.0
PRODUCT = "PROD1"
DEV_A = DeviceKey(PRODUCT, "dev:a_1-x")
DEV_B = DeviceKey(PRODUCT, "dev-b")
ACCOUNT = BrokerAccount("iotfsm-platform", "platform-secret-password")


class Probe:
    """A bare paho client: what the broker answered, each event kept in order."""

    def __init__(
        self, node: RabbitNode, client_id: str, username: str | None, password: str | None
    ):
        self.events: list[tuple[object, ...]] = []
        self.condition = threading.Condition()
        self._stopper: threading.Thread | None = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self._add("connack", rc.value)
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p: self._add("closed")
        self.client.on_subscribe = lambda _c, _u, mid, rcs, _p: self._add(
            "suback", tuple(r.value for r in rcs)
        )
        self.client.on_publish = lambda _c, _u, mid, _rc, _p: self._add("puback", mid)
        self.client.on_message = lambda _c, _u, m: self._add("message", m.topic, m.payload)
        self.client.connect_async(node.broker.host, node.broker.port)
        self.client.loop_start()

    def _add(self, *event: object) -> None:
        with self.condition:
            self.events.append(event)
            self.condition.notify_all()

    def wait(self, predicate: Callable[[list[tuple[object, ...]]], bool], what: str) -> None:
        with self.condition:
            if not self.condition.wait_for(lambda: predicate(self.events), WAIT):
                raise AssertionError(f"timed out waiting for {what}; events {self.events}")

    def first(self, kind: str) -> tuple[object, ...]:
        self.wait(lambda ev: any(e[0] == kind for e in ev), kind)
        return next(e for e in self.events if e[0] == kind)

    def messages(self) -> list[tuple[object, ...]]:
        with self.condition:
            return [e[1:] for e in self.events if e[0] == "message"]

    def stop(self) -> None:
        """Disconnect at once, and end the network thread without waiting for it: a probe the
        broker refused or closed sleeps in 1 s steps waiting to reconnect, and waiting for each
        in turn cost a second a probe. The thread exits at its next step, never reconnecting;
        `join()` waits for it."""
        self.client.reconnect_delay_set(60, 120)  # no reconnect storm while stopping
        self.client.disconnect()
        if self._stopper is None:
            self._stopper = threading.Thread(target=self.client.loop_stop, daemon=True)
            self._stopper.start()

    def join(self) -> None:
        self.stop()
        assert self._stopper is not None
        self._stopper.join()


def stop_all(probes: list[Probe]) -> None:
    """Stop every probe, then wait for them all: about a second in all, not one each."""
    for probe in probes:
        probe.stop()
    for probe in probes:
        probe.join()


def make_registry(directory: Path) -> Registry:
    """A registry with DEV_A and DEV_B (key devices, keys derived from the product secret)."""
    registry = Registry(MemoryStore(), ProductSecrets(directory))
    registry.secrets.ensure(PRODUCT)
    registry.add(*DEV_A)
    registry.add(*DEV_B)
    return registry


@pytest.fixture
def directory(tmp_path: Path) -> Registry:
    return make_registry(tmp_path / "secrets")


@pytest.fixture
def auth(rabbitmq_node: RabbitNode, directory: Registry) -> Iterator[BrokerAuthServer]:
    policy = BrokerPolicy(directory, ACCOUNT, all_features(), device_topics)
    host, port = rabbitmq_node.auth_address
    with BrokerAuthServer(policy, host, port) as server:
        yield server


@pytest.fixture
def probes(rabbitmq_node: RabbitNode) -> Iterator[Callable[..., Probe]]:
    made: list[Probe] = []

    def make(client_id: str, username: str | None = None, password: str | None = None) -> Probe:
        probe = Probe(rabbitmq_node, client_id, username, password)
        made.append(probe)
        return probe

    yield make
    stop_all(made)


def _device(
    probes: Callable[..., Probe],
    registry: Registry,
    key: DeviceKey,
    psk_of: DeviceKey | None = None,
    **login: object,
) -> Probe:
    """A device logging in with Tencent key credentials made with the key of `psk_of` (its own
    by default; any key for a device the registry does not know)."""
    signer = psk_of or key
    psk = registry.device_psk(*signer) if registry.get(*signer) else "c2VjcmV0LWtleS0xMjM0NQ=="
    creds = DeviceCredentials(key.product, key.device, psk)
    username = creds.username(expiry=login.get("expiry"))  # type: ignore[arg-type]
    password = creds.password(username, login.get("algorithm", "hmacsha256"))  # type: ignore[arg-type]
    return probes(login.get("client_id", creds.client_id()), username, password)


def _platform(probes: Callable[..., Probe]) -> Probe:
    platform = probes("iotfsm-platform-test", ACCOUNT.username, ACCOUNT.password)
    assert platform.first("connack") == ("connack", 0)
    platform.client.subscribe([("$ota/report/+/+", 1), ("$config/operation/+/+", 1)])
    assert platform.first("suback") == ("suback", (1, 1))
    return platform


def test_own_topics_pass_and_others_are_refused_by_the_node(
    auth: BrokerAuthServer, probes: Callable[..., Probe], directory: Registry
) -> None:
    platform = _platform(probes)
    device = _device(probes, directory, DEV_A)
    assert device.first("connack") == ("connack", 0)
    device.client.subscribe(f"$ota/update/{PRODUCT}/{DEV_A.device}", 1)
    assert device.first("suback") == ("suback", (1,))
    device.client.publish(f"$ota/report/{PRODUCT}/{DEV_A.device}", b"own", qos=1)
    device.first("puback")
    platform.wait(
        lambda ev: ("message", f"$ota/report/{PRODUCT}/{DEV_A.device}", b"own") in ev,
        "the device's own report",
    )
    # the platform may publish any device's downlink
    platform.client.publish(f"$ota/update/{PRODUCT}/{DEV_A.device}", b"offer", qos=1)
    device.wait(
        lambda ev: ("message", f"$ota/update/{PRODUCT}/{DEV_A.device}", b"offer") in ev,
        "the platform's downlink",
    )

    forger = _device(probes, directory, DEV_B)
    assert forger.first("connack") == ("connack", 0)
    forger.client.publish(f"$ota/report/{PRODUCT}/{DEV_A.device}", b"forged", qos=1)
    forger.first("closed")  # 3.10 closes the connection on a refused publish
    assert ("puback",) not in [e[:1] for e in forger.events]

    spy = _device(probes, directory, DEV_B)
    spy.first("connack")
    spy.client.subscribe(f"$ota/update/{PRODUCT}/{DEV_A.device}", 1)
    spy.first("closed")  # ... and on a refused subscription
    assert not any(e[0] == "suback" for e in spy.events)

    # a topic spelled with dots has dev-b's uplink as its routing key: refused just the same
    dotted = _device(probes, directory, DEV_A)
    dotted.first("connack")
    dotted.client.publish(f"$ota.report.{PRODUCT}.{DEV_B.device}", b"dots", qos=1)
    dotted.first("closed")

    # a marker after the forgeries: had a forged report got through, it would be seen first
    device.client.publish(f"$ota/report/{PRODUCT}/{DEV_A.device}", b"marker", qos=1)
    platform.wait(
        lambda ev: ("message", f"$ota/report/{PRODUCT}/{DEV_A.device}", b"marker") in ev,
        "the marker",
    )
    assert [m[1] for m in platform.messages()] == [b"own", b"marker"]
    assert auth.policy.decisions[("topic", False)] >= 2


def test_rrpc_topics_carry_any_process_id_of_the_device_only(
    auth: BrokerAuthServer, probes: Callable[..., Probe], directory: Registry
) -> None:
    platform = probes("iotfsm-platform-rrpc", ACCOUNT.username, ACCOUNT.password)
    assert platform.first("connack") == ("connack", 0)
    platform.client.subscribe("$rrpc/txd/+/+/+", 1)
    assert platform.first("suback") == ("suback", (1,))
    device = _device(probes, directory, DEV_A)
    assert device.first("connack") == ("connack", 0)
    device.client.subscribe(f"$rrpc/rxd/{PRODUCT}/{DEV_A.device}/+", 1)
    assert device.first("suback") == ("suback", (1,))
    request = f"$rrpc/rxd/{PRODUCT}/{DEV_A.device}/469"
    platform.client.publish(request, b"closed", qos=1)
    device.wait(lambda ev: ("message", request, b"closed") in ev, "the request")
    answer = f"$rrpc/txd/{PRODUCT}/{DEV_A.device}/469"
    device.client.publish(answer, b"ok", qos=1)
    platform.wait(lambda ev: ("message", answer, b"ok") in ev, "the answer")

    forger = _device(probes, directory, DEV_B)
    assert forger.first("connack") == ("connack", 0)
    forger.client.publish(answer, b"forged", qos=1)  # an answer to a call made to dev-a
    forger.first("closed")
    device.client.publish(answer.replace("469", "470"), b"marker", qos=1)
    platform.wait(lambda ev: any(e[-1:] == (b"marker",) for e in ev), "the marker")
    assert [m[1] for m in platform.messages()] == [b"ok", b"marker"]


def test_logins_the_node_refuses_and_a_re_enabled_device_back_in(
    auth: BrokerAuthServer, probes: Callable[..., Probe], directory: Registry
) -> None:
    refused = {
        "no username": probes(f"{PRODUCT}{DEV_A.device}"),
        "expired": _device(probes, directory, DEV_A, None, expiry=int(time.time()) - 60),
        "another device's key": _device(probes, directory, DEV_A, DEV_B),
        "another device's client id": _device(
            probes, directory, DEV_A, None, client_id=f"{PRODUCT}{DEV_B.device}"
        ),
        "unregistered": _device(probes, directory, DeviceKey(PRODUCT, "ghost")),
        "platform, wrong password": probes("iotfsm-platform-x", ACCOUNT.username, "guess"),
        "guest": probes("guest-client", "guest", "guest"),
    }
    # paho's reason code 134 is MQTT 3.1.1's CONNACK 4, "bad user name or password"
    assert {what: probe.first("connack")[1] for what, probe in refused.items()} == dict.fromkeys(
        refused, 134
    )
    sha1 = _device(probes, directory, DEV_A, None, algorithm="hmacsha1")
    assert sha1.first("connack") == ("connack", 0)
    sha1.stop()

    directory.disable(*DEV_A)
    assert _device(probes, directory, DEV_A).first("connack") == ("connack", 134)
    directory.enable(*DEV_A)  # no restart of the node or the endpoint
    back = _device(probes, directory, DEV_A)
    assert back.first("connack") == ("connack", 0)
    back.client.subscribe(f"$ota/update/{PRODUCT}/{DEV_A.device}", 1)
    assert back.first("suback") == ("suback", (1,))

    directory.remove(*DEV_B)  # deleted
    assert _device(probes, directory, DEV_B).first("connack") == ("connack", 134)


def test_a_device_disabled_while_connected_loses_its_next_subscription(
    auth: BrokerAuthServer, probes: Callable[..., Probe], directory: Registry
) -> None:
    device = _device(probes, directory, DEV_A)
    assert device.first("connack") == ("connack", 0)
    directory.disable(*DEV_A)
    device.client.subscribe(f"$ota/update/{PRODUCT}/{DEV_A.device}", 1)
    device.first("closed")
    assert not any(e[0] == "suback" for e in device.events)


class FailingPolicy(BrokerPolicy):
    """The policy, failing the next `fail` checks that `match` picks (a check the listener
    could not answer: RabbitMQ treats a `deny` and a backend error alike, `access_refused`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail = 0
        self.match: Callable[[str, Mapping[str, str]], bool] = lambda _k, _p: False
        self.asked: list[str] = []

    def decide(self, kind: str, params: Mapping[str, str]) -> bool:
        self.asked.append(f"{kind} {params.get('resource', '')} {params.get('permission', '')}")
        if self.fail and self.match(kind, params):
            self.fail -= 1
            return False
        return super().decide(kind, params)


@pytest.fixture
def failing(rabbitmq_node: RabbitNode, directory: Registry) -> Iterator[FailingPolicy]:
    """A listener answering from a FailingPolicy (failing nothing until armed)."""
    policy = FailingPolicy(directory, ACCOUNT, all_features(), device_topics)
    with BrokerAuthServer(policy, *rabbitmq_node.auth_address):
        yield policy


def _reporter(
    probes: Callable[..., Probe], directory: Registry, key: DeviceKey
) -> tuple[Probe, Probe, str]:
    """The platform's subscriber, a logged-in device `key`, and the topic of its reports."""
    platform = _platform(probes)
    device = _device(probes, directory, key)
    assert device.first("connack") == ("connack", 0)
    return platform, device, f"$ota/report/{key.product}/{key.device}"


def test_a_failed_check_on_the_qos1_channel_loses_every_later_qos1_publish(
    failing: FailingPolicy, probes: Callable[..., Probe], directory: Registry
) -> None:
    """What 3.10.8 does when one authorization check of an established connection fails (issue
    17's lost reports). The MQTT reader checks the topic, then hands the publish to one of its two
    AMQP channels (QoS 0 publishes go through one, QoS 1 publishes through another, opened at the
    first QoS 1 publish), which checks the exchange and the topic again. The QoS 1 channel is not
    linked to the reader: when its check fails the channel closes, and the connection stays open
    with every later QoS 1 publish cast to a dead channel: no PUBACK, nothing routed, nothing
    logged naming the device after the one refusal; QoS 0 publishes still go through. Only a new
    connection recovers. The reader and the channels drop their own permission caches whenever
    they hibernate (after about a second idle), so without the node's authorization cache
    (`rabbitmq_config`) every report after a pause is checked over HTTP again, each check a
    chance to fail under load; here the QoS 1 channel's first check fails."""
    policy = failing
    platform, device, topic = _reporter(probes, directory, DEV_A)
    # the channel's exchange check: the reader asks only about topics
    policy.match = lambda kind, params: kind == "resource" and params.get("resource") == "exchange"
    policy.fail = 1
    device.client.publish(topic, b"refused", qos=1)
    deadline = time.monotonic() + WAIT
    while policy.fail and time.monotonic() < deadline:
        time.sleep(0.05)
    assert policy.fail == 0, f"the channel's check never came: {policy.asked}"
    device.client.publish(topic, b"after", qos=1)  # every check is answered `allow` now
    device.client.publish(topic, b"qos0", qos=0)
    platform.wait(lambda ev: ("message", topic, b"qos0") in ev, "the QoS 0 report")
    time.sleep(2)
    assert [m[1] for m in platform.messages()] == [b"qos0"]
    # paho reports a QoS 0 publish (mid 3) as published once written: no QoS 1 was acked
    assert [e for e in device.events if e[0] in ("puback", "closed")] == [("puback", 3)]


def test_after_a_pause_a_report_is_not_checked_over_http_again(
    failing: FailingPolicy, probes: Callable[..., Probe], directory: Registry
) -> None:
    """The node's authorization cache (`auth_backends.1.authz = cache`): the reader and the
    channels forget their own caches when they hibernate, but the node answers their checks of
    a device's next report from its cache, so the listener is not asked again and no check of
    the connection can fail there. Without it this report was checked three times over HTTP,
    and a failing check lost it and every later QoS 1 report of the connection."""
    policy = failing
    platform, device, topic = _reporter(probes, directory, DEV_B)
    device.client.publish(topic, b"first", qos=1)
    platform.wait(lambda ev: ("message", topic, b"first") in ev, "the first report")
    time.sleep(3)  # the reader and its channels hibernate
    policy.asked.clear()
    policy.match = lambda kind, _params: kind != "user"
    policy.fail = 3
    device.client.publish(topic, b"after a pause", qos=1)
    platform.wait(lambda ev: ("message", topic, b"after a pause") in ev, "the second report")
    device.wait(lambda ev: ("puback", 2) in ev, "its PUBACK")
    assert policy.asked == [] and policy.fail == 3
