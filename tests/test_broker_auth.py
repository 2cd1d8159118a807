"""The broker-auth endpoint without a broker: routing keys, decisions, and hostile HTTP input.

The forms posted here are the ones RabbitMQ 3.10.8 sends (recorded against the real node; the
same questions are asked by the node itself in test_broker_auth_rabbitmq.py).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from test_broker_auth_rabbitmq import ACCOUNT, DEV_A, make_registry

from iotfsm.adapters.amqp.rabbitmq_config import BrokerConfigError, RabbitConfig
from iotfsm.adapters.amqp.routing import routing_key
from iotfsm.adapters.http.broker_auth import (
    MAX_BODY,
    OVERLOAD_TIMEOUT,
    BrokerAuthServer,
    parse_form,
)
from iotfsm.adapters.identity.broker_account import (
    BrokerAccount,
    BrokerAccountError,
    platform_account,
    read_password_file,
)
from iotfsm.adapters.identity.broker_policy import BrokerPolicy
from iotfsm.adapters.identity.registry import Registry, device_topics
from iotfsm.cli import main
from iotfsm.machines import all_features
from iotfsm.machines.feature import DeviceKey

PRODUCT = DEV_A.product
A_ID = f"{PRODUCT}{DEV_A.device}"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return make_registry(tmp_path)


@pytest.fixture
def policy(registry: Registry) -> BrokerPolicy:
    return BrokerPolicy(registry, ACCOUNT, all_features(), device_topics)


def _login(policy: BrokerPolicy, registry: Registry, key: DeviceKey = DEV_A) -> str:
    creds = registry.credentials(*key)
    username = creds.username()
    form = {"username": username, "password": creds.password(username), "vhost": "/",
            "client_id": creds.client_id()}  # fmt: skip
    assert policy.decide("user", form)
    return username


def _topic(username: str, permission: str, key: str, client_id: str = A_ID) -> dict[str, str]:
    return {"username": username, "vhost": "/", "resource": "topic", "name": "amq.topic",
            "permission": permission, "tags": "", "routing_key": key,
            "variable_map.client_id": client_id, "variable_map.username": username,
            "variable_map.vhost": "/"}  # fmt: skip


def test_routing_keys_are_what_rabbitmq_checks() -> None:
    assert routing_key("$ota/report/PROD1/dev:a_1-x") == "$ota.report.PROD1.dev:a_1-x"
    assert routing_key("$ota/report/+/+") == "$ota.report.*.*"
    assert routing_key("$log/operation/#") == "$log.operation.#"
    assert routing_key("$rrpc/txd/PROD1/dev-1/+") == "$rrpc.txd.PROD1.dev-1.*"


def test_a_device_gets_its_own_topics_only(policy: BrokerPolicy, registry: Registry) -> None:
    user = _login(policy, registry)
    own_up, own_down = f"$ota.report.{PRODUCT}.dev:a_1-x", f"$ota.update.{PRODUCT}.dev:a_1-x"
    assert policy.decide("topic", _topic(user, "write", own_up))
    assert policy.decide("topic", _topic(user, "read", own_down))
    assert policy.decide(
        "topic", _topic(user, "read", f"$config.operation.result.{PRODUCT}.dev:a_1-x")
    )
    refused = [
        ("write", own_down),  # its own downlink: only the platform speaks there
        ("read", own_up),  # its own uplink: nobody else's business to read
        ("write", f"$ota.report.{PRODUCT}.dev-b"),
        ("read", f"$ota.update.{PRODUCT}.dev-b"),
        ("read", f"$ota.update.{PRODUCT}.*"),
        ("read", "$ota.update.#"),
        ("read", "#"),
        ("write", f"$ota/report/{PRODUCT}/dev:a_1-x"),  # the MQTT spelling is not a routing key
    ]
    assert [policy.decide("topic", _topic(user, p, k)) for p, k in refused] == [False] * len(
        refused
    )


def test_a_device_gets_its_session_queues_and_the_topic_exchange_only(
    policy: BrokerPolicy, registry: Registry
) -> None:
    user = _login(policy, registry)
    base = {"username": user, "vhost": "/", "tags": "", "client_id": A_ID}

    def resource(kind: str, name: str, permission: str, **extra: str) -> bool:
        form = {**base, "resource": kind, "name": name, "permission": permission, **extra}
        return policy.decide("resource", form)

    for permission in ("configure", "read", "write"):
        assert resource("queue", f"mqtt-subscription-{A_ID}qos1", permission)
        assert resource("queue", f"mqtt-subscription-{A_ID}qos0", permission)
    assert resource("exchange", "amq.topic", "read") and resource("exchange", "amq.topic", "write")
    assert not resource("exchange", "amq.topic", "configure")
    assert not resource("exchange", "amq.direct", "write")
    assert not resource("queue", f"mqtt-subscription-{PRODUCT}dev-bqos1", "read")
    assert not resource("queue", "mqtt-subscription-Xqos1", "read", client_id="X")
    assert not resource("queue", "some-queue", "read")
    assert policy.decide("vhost", {**base, "ip": "127.0.0.1"})
    assert not policy.decide("vhost", {**base, "vhost": "other", "ip": "127.0.0.1"})


def test_the_platform_account_reads_uplinks_and_writes_downlinks(policy: BrokerPolicy) -> None:
    login = {"username": ACCOUNT.username, "password": ACCOUNT.password, "vhost": "/",
             "client_id": "iotfsm-platform-1"}  # fmt: skip
    assert policy.decide("user", login)
    assert not policy.decide("user", {**login, "password": ACCOUNT.password + "x"})
    user = ACCOUNT.username
    for key in ("$ota.report.*.*", f"$ota.report.{PRODUCT}.*", "$resource.up.service.*.*",
                f"$ota.report.{PRODUCT}.dev:a_1-x"):  # fmt: skip
        assert policy.decide("topic", _topic(user, "read", key, "iotfsm-platform-1")), key
    assert policy.decide("topic", _topic(user, "write", f"$ota.update.{PRODUCT}.dev-b"))
    for permission, key in [("read", "#"), ("read", "$ota.update.*.*"), ("read", "$ota.report.*.x"),
                            ("write", "$ota.update.*.*"), ("write", f"$ota.report.{PRODUCT}.d"),
                            ("write", "$ota.update.P.bad/name"), ("read", "$ota.report.#")]:  # fmt: skip
        assert not policy.decide("topic", _topic(user, permission, key)), key


def test_rrpc_topics_end_with_any_process_id_never_a_wildcard_published(
    policy: BrokerPolicy, registry: Registry
) -> None:
    user = _login(policy, registry)
    me = f"{PRODUCT}.dev:a_1-x"
    allowed = [("read", f"$rrpc.rxd.{me}.*"), ("write", f"$rrpc.txd.{me}.469"),
               ("write", f"$rrpc.txd.{me}.*")]  # fmt: skip
    refused = [("write", f"$rrpc.txd.{PRODUCT}.dev-b.469"), ("read", f"$rrpc.rxd.{PRODUCT}.dev-b.*"),
               ("write", f"$rrpc.rxd.{me}.469"), ("read", f"$rrpc.txd.{me}.*"),
               ("write", f"$rrpc.txd.{me}.#"), ("write", f"$rrpc.txd.{me}.1.2"),
               ("read", f"$rrpc.rxd.{me}.#"), ("write", f"$rrpc.txd.{me}." + "1" * 17)]  # fmt: skip
    assert [policy.decide("topic", _topic(user, p, k)) for p, k in allowed] == [True] * 3
    assert [policy.decide("topic", _topic(user, p, k)) for p, k in refused] == [False] * 8
    platform = ACCOUNT.username
    pid = "iotfsm-platform-1"
    for permission, key in [("read", "$rrpc.txd.*.*.*"), ("read", f"$rrpc.txd.{PRODUCT}.*.*"),
                            ("write", f"$rrpc.rxd.{me}.469")]:  # fmt: skip
        assert policy.decide("topic", _topic(platform, permission, key, pid)), key
    for permission, key in [("write", f"$rrpc.rxd.{me}.*"), ("write", "$rrpc.rxd.*.*.1"),
                            ("read", "$rrpc.rxd.*.*.*"), ("read", "$rrpc.txd.*.*.5"),
                            ("write", f"$rrpc.txd.{me}.5"), ("write", f"$rrpc.rxd.{me}")]:  # fmt: skip
        assert not policy.decide("topic", _topic(platform, permission, key, pid)), key


def test_questions_without_a_login_or_with_missing_fields_are_denied(policy: BrokerPolicy) -> None:
    stranger = f"{A_ID};12010126;abcde;4102444800"  # a well-formed name, never logged in? see _find
    form = _topic(stranger, "read", f"$ota.update.{PRODUCT}.dev:a_1-x")
    # the login may predate this process: the registry vouches for the client id
    assert policy.decide("topic", form)
    assert not policy.decide("topic", {**form, "variable_map.client_id": f"{PRODUCT}dev-b"})
    assert not policy.decide("topic", {k: v for k, v in form.items() if k != "routing_key"})
    assert not policy.decide("topic", {**form, "name": "amq.direct"})
    assert not policy.decide("user", {"username": "x"})
    assert not policy.decide("nonsense", form)
    assert not policy.decide("topic", _topic("ghost;1;a;1", "read", "x", "ghost"))


def test_form_parsing_refuses_ambiguous_and_undecodable_bodies() -> None:
    assert parse_form(b"username=a%3Bb&password=") == {"username": "a;b", "password": ""}
    assert parse_form(b"") == {}
    assert parse_form(b"username=a&username=b") is None
    assert parse_form(b"username=%ff") is None
    assert parse_form("username=é".encode()) is None
    assert parse_form(b"a=%00") is None
    assert parse_form(b"&".join(b"k%d=v" % i for i in range(100))) is None
    assert parse_form(b"no-equals-sign") is None


@pytest.fixture
def server(policy: BrokerPolicy) -> Iterator[BrokerAuthServer]:
    with BrokerAuthServer(policy, workers=2, pending=4) as running:
        yield running


def _post(server: BrokerAuthServer, path: str, body: bytes, **headers: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(*server.address, timeout=10)
    try:
        connection.request("POST", path, body=body, headers={
            "Content-Type": "application/x-www-form-urlencoded", **headers})  # fmt: skip
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_endpoint_answers_allow_and_deny_and_survives_hostile_input(
    server: BrokerAuthServer, registry: Registry
) -> None:
    creds = registry.credentials(*DEV_A)
    username = creds.username()
    good = urlencode({"username": username, "password": creds.password(username), "vhost": "/",
                      "client_id": A_ID}).encode()  # fmt: skip
    assert _post(server, "/auth/user", good) == (200, b"allow")
    hostile = [
        ("/auth/user", b"username=" + b"A" * (MAX_BODY - 9)),  # huge username, within the limit
        ("/auth/user", b"username=" + b"%ff" * 100),
        ("/auth/user", good + b"&username=other"),
        ("/auth/topic", b"\x00\x01\x02"),
        ("/auth/resource", b"username=&vhost=/&resource=queue"),
        ("/auth/other", good),
    ]
    for path, body in hostile:
        assert _post(server, path, body)[1] == b"deny", (path, body[:40])
    assert _post(server, "/auth/user", b"x" * (MAX_BODY + 1)) == (413, b"deny")
    with socket.create_connection(server.address) as raw:  # no Content-Length at all
        raw.sendall(b"POST /auth/user HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.recv(4096).split(b" ", 2)[1] == b"411"
    with socket.create_connection(server.address) as raw:
        raw.sendall(b"\xff\xfe garbage\r\n\r\n")
        assert b"400" in raw.recv(4096)  # http.server's 400 (HTTP/0.9-style: no status line)
    assert _post(server, "/auth/user", good) == (200, b"allow")  # still serving


def test_silent_clients_cannot_exhaust_the_endpoint(server: BrokerAuthServer) -> None:
    """More idle connections than workers and queue slots: the surplus is closed at once instead
    of queueing without bound, and once the idle ones go a real question is answered again."""
    idle = [socket.create_connection(server.address) for _ in range(12)]
    try:
        closed = threading.Event()

        def watch(sock: socket.socket) -> None:
            try:
                if sock.recv(1) == b"":
                    closed.set()
            except OSError:
                closed.set()

        watchers = [threading.Thread(target=watch, args=(s,), daemon=True) for s in idle]
        for watcher in watchers:
            watcher.start()
        assert closed.wait(10), "no surplus connection was refused"
    finally:
        for sock in idle:
            sock.shutdown(socket.SHUT_RDWR)
        for watcher in watchers:
            watcher.join()
        for sock in idle:
            sock.close()
    answers: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + 20
    while not answers and time.monotonic() < deadline:
        try:
            answers.append(_post(server, "/auth/vhost", b"username=x&vhost=/"))
        except (http.client.RemoteDisconnected, ConnectionResetError):
            time.sleep(0.05)  # still draining the closed ones
    assert answers == [(200, b"deny")]


def test_a_full_queue_sheds_logins_but_answers_every_check_of_a_connection(
    policy: BrokerPolicy, registry: Registry
) -> None:
    """The worker and the queue held by silent clients: the accept thread reads the next
    request itself. A login is answered deny unasked (shed); a topic check of a device that is
    in is decided as ever, because a failed check there loses the device's QoS 1 publishes."""
    user = _login(policy, registry)
    creds = registry.credentials(*DEV_A)
    login = urlencode({"username": user, "password": creds.password(user), "vhost": "/",
                       "client_id": A_ID}).encode()  # fmt: skip
    check = urlencode(_topic(user, "write", f"$ota.report.{PRODUCT}.dev:a_1-x")).encode()
    foreign = urlencode(_topic(user, "write", f"$ota.report.{PRODUCT}.dev-b")).encode()
    with BrokerAuthServer(policy, workers=1, pending=1) as server:
        idle = [socket.create_connection(server.address) for _ in range(3)]
        try:
            # one idle connection on the worker, one in the queue, and the third read by the
            # accept thread until OVERLOAD_TIMEOUT cuts it
            time.sleep(OVERLOAD_TIMEOUT + 0.3)
            assert _post(server, "/auth/topic", check) == (200, b"allow")
            assert _post(server, "/auth/topic", foreign) == (200, b"deny")
            assert _post(server, "/auth/user", login) == (200, b"deny")
            assert server.shed == 1
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 10
        while _post(server, "/auth/user", login) != (200, b"allow"):
            assert time.monotonic() < deadline, "logins never answered again"
            time.sleep(0.05)
        assert server.shed >= 1


def test_platform_account_password_file(tmp_path: Path) -> None:
    account = platform_account(tmp_path)
    path = tmp_path / "broker-password"
    assert path.stat().st_mode & 0o777 == 0o600
    assert account.password not in repr(account)
    assert platform_account(tmp_path) == account  # kept, not regenerated
    path.chmod(0o644)
    with pytest.raises(BrokerAccountError, match="chmod 600"):
        read_password_file(path)
    with pytest.raises(BrokerAccountError, match="letters"):
        BrokerAccount("dev;1;a;2", "x")


def test_config_generator_refuses_injection_and_the_command_writes_it(tmp_path: Path) -> None:
    with pytest.raises(BrokerConfigError, match="auth URL"):
        RabbitConfig(auth_url="http://h:1\nauth_backends.2 = internal").rabbitmq_conf()
    with pytest.raises(BrokerConfigError, match="listener"):
        RabbitConfig(mqtt=("0.0.0.0 x", 1883)).rabbitmq_conf()
    assert main(["broker-config", "rabbitmq", "--auth-url", "http://127.0.0.1:8089",
                 "--mqtt", "127.0.0.1:1883", "--amqp", "none", "--out", str(tmp_path)]) == 0  # fmt: skip
    expected = RabbitConfig(mqtt=("127.0.0.1", 1883), amqp=None, auth_url="http://127.0.0.1:8089")
    assert (tmp_path / "rabbitmq.conf").read_text() == expected.rabbitmq_conf()
    assert "auth_http.topic_path = http://127.0.0.1:8089/auth/topic" in expected.rabbitmq_conf()
    assert (tmp_path / "advanced.config").read_text() == expected.advanced_config()
    assert (tmp_path / "enabled_plugins").read_text() == expected.enabled_plugins()
    assert (
        main(["broker-config", "rabbitmq", "--auth-url", "http://x:1", "--out", str(tmp_path)]) == 1
    )  # fmt: skip  (exists: refuses without --force)
