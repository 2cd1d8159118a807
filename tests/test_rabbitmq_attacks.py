"""Issue 15's attacks re-run against RabbitMQ with the platform's auth backend: all refused at the
broker, nothing changed on either side, and a valid device still does OTA, an upload and a config
push in the same run.

The platform (`Platform(broker_auth=...)`) serves the auth endpoints from its registry and logs in
with its own account; devices run the real `Device` over paho; the attackers are bare paho clients
(`Probe`): a registered device with its own valid login (the node accepts the login, then closes
its connection at the forged publish) and a client with no credentials (refused at CONNECT).
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest
from rabbitmq_fixtures import RabbitNode
from test_broker_auth_rabbitmq import Probe, stop_all

from iotfsm.adapters.connect import MqttOptions
from iotfsm.cli import main
from iotfsm.device import Device
from iotfsm.platform import Platform
from iotfsm.testing.server import free_port
from iotfsm.testing.waiting import wait_for

FAST = MqttOptions(backoff_min=0.05, backoff_max=0.5)
PRODUCT = "RABBIT0001"
GOOD, VICTIM, GHOST, EVIL = "dev:ok_1", "victim-2", "ghost_3", "evil-4"
"""GOOD runs every feature; VICTIM runs and is attacked; GHOST is registered and never runs
(its forged reports would finish its OTA); EVIL is a registered device turned attacker."""


class EvilImages(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = b"evil image"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def evil_server() -> Iterator[str]:
    EvilImages.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), EvilImages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:{}/fw.bin".format(*server.server_address[:2])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def platform(rabbitmq_node: RabbitNode, tmp_path: Path) -> Iterator[Platform]:
    platform = Platform(
        rabbitmq_node.broker.url,
        data_dir=tmp_path / "platform",
        broker_auth=rabbitmq_node.auth_address,
        mqtt=FAST,
    )
    for name in (GOOD, VICTIM, GHOST, EVIL):
        platform.register_device(PRODUCT, name)
    platform.start()
    try:
        wait_for("the platform's own login", lambda: platform.runtime.transport.connected)
        yield platform
    finally:
        platform.stop()


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_forgeries_are_refused_at_the_broker_and_a_valid_device_works(
    rabbitmq_node: RabbitNode, platform: Platform, evil_server: str, tmp_path: Path
) -> None:
    registry = platform.registry
    applied: dict[str, list[dict[str, Any]]] = {GOOD: [], VICTIM: []}
    uploads: list[tuple[Any, ...]] = []

    def device(name: str) -> Device:
        return Device(
            PRODUCT, name, registry.device_psk(PRODUCT, name), broker=rabbitmq_node.broker.url,
            state_dir=tmp_path / name, mqtt=FAST, version="1.0", on_config=applied[name].append,
            on_upload_finished=lambda *a: uploads.append(a),
        )  # fmt: skip

    good, victim = device(GOOD).start(), device(VICTIM).start()
    made: list[Probe] = []

    def attacker(name: str | None) -> Probe:
        if name is None:
            probe = Probe(rabbitmq_node, f"{PRODUCT}{VICTIM}", None, None)
        else:
            login = registry.credentials(PRODUCT, name).login()
            probe = Probe(rabbitmq_node, login.client_id, login.username, login.password)
        made.append(probe)
        return probe

    try:
        wait_for("both devices online", lambda: good.connected and victim.connected)
        wait_for(
            "both report their version", lambda: victim.state("ota") == "idle" == good.state("ota")
        )
        platform.deploy_firmware(PRODUCT, [GHOST], "9.9", b"ghost image")
        ghost_before = platform.firmware_status(PRODUCT, GHOST)
        platform_files = _tree(platform.data_dir / "files")

        _forge(attacker, evil_server)

        # the valid device, in the same run: OTA, an upload, a config push
        platform.deploy_firmware(PRODUCT, [GOOD], "2.0", b"good image" * 100)
        source = tmp_path / "capture.bin"
        source.write_bytes(b"measurements" * 50)
        good.upload(source, "capture.bin")
        platform.set_config(PRODUCT, {"v": 1})
        wait_for(
            "the OTA", lambda: platform.firmware_status(PRODUCT, GOOD).state == "succeeded", 60
        )
        wait_for(
            "the upload", lambda: bool(uploads) and platform.uploads(PRODUCT, GOOD)[0].stored, 60
        )
        wait_for("the config push", lambda: good.config == {"v": 1} == victim.config, 60)
        assert good.version == "2.0"
        assert uploads[0][:2] == ("capture.bin", True)
        assert Path(platform.uploads(PRODUCT, GOOD)[0].path).read_bytes() == source.read_bytes()

        # nothing the forgers sent arrived anywhere
        assert EvilImages.hits == []
        assert victim.version == "1.0" and victim.state("ota") == "idle"
        assert applied[VICTIM] == [{"v": 1}]  # the real push only, never {"evil": True}
        assert platform.uploads(PRODUCT, VICTIM) == []
        assert platform.firmware_status(PRODUCT, GHOST) == ghost_before
        assert ghost_before.state == "offered"
        assert not any(b"evil" in data for data in _tree(tmp_path / VICTIM).values())
        new_files = _tree(platform.data_dir / "files").keys() - platform_files.keys()
        assert all("stolen" not in name for name in new_files)
        assert platform.runtime.rejected == good.runtime.rejected == victim.runtime.rejected == 0
    finally:
        stop_all(made)
        good.stop()
        victim.stop()


def test_the_platform_logs_in_with_a_generated_or_the_operators_account(
    rabbitmq_node: RabbitNode, tmp_path: Path
) -> None:
    """Without an account the password is generated (0600) and the node lets the platform in
    with it; with an MQTT login of the operator's, that login is the one the endpoint admits."""
    for name, mqtt in [
        ("generated", FAST),
        ("operator", attrs.evolve(FAST, username="ops-platform", password="from-a-file-0600")),
    ]:
        platform = Platform(
            rabbitmq_node.broker.url, data_dir=tmp_path / name, mqtt=mqtt,
            broker_auth=rabbitmq_node.auth_address,
        ).start()  # fmt: skip
        try:
            wait_for(f"the {name} login", _connected(platform))
            assert platform.broker_auth is not None
            assert platform.broker_auth.policy.decisions[("user", True)] >= 1
            generated = tmp_path / name / "broker-password"
            assert generated.exists() == (name == "generated")
            if generated.exists():
                assert generated.stat().st_mode & 0o777 == 0o600
        finally:
            platform.stop()


def test_iotfsm_platform_broker_auth_on_the_command_line(
    rabbitmq_node: RabbitNode, tmp_path: Path
) -> None:
    """`iotfsm platform --broker-auth HOST:PORT`: a started event means the platform's own
    login went through the endpoint it serves."""
    host, port = rabbitmq_node.auth_address
    args = ["platform", "--broker", rabbitmq_node.broker.url, "--data-dir", str(tmp_path / "p"),
            "--http", f"127.0.0.1:{free_port()}", "--broker-auth", f"{host}:{port}",
            "--events", "jsonl"]  # fmt: skip
    agent = subprocess.Popen(
        [sys.executable, "-m", "iotfsm", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert agent.stdout is not None
        first = json.loads(agent.stdout.readline() or "{}")
        assert first.get("event") == "started", agent.stderr.read() if agent.stderr else ""
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    assert "password" not in " ".join(args)


def _connected(platform: Platform) -> Callable[[], bool]:
    return lambda: platform.runtime.transport.connected


def _forge(attacker: Callable[[str | None], Probe], evil_server: str) -> None:
    """Every forgery of the issue, each by a registered device with its own valid login and by a
    client with no credentials; then an attempt to listen to the victim's downlinks."""
    offer = {"type": "update_firmware", "file_size": 10, "version": "6.6", "url": evil_server,
             "md5sum": hashlib.md5(b"evil image").hexdigest()}  # fmt: skip
    forgeries: list[tuple[str, dict[str, Any]]] = [
        (f"$ota/update/{PRODUCT}/{VICTIM}", offer),
        (f"$ota/report/{PRODUCT}/{GHOST}",
         {"type": "report_progress", "report": {"progress": {"state": "done", "percent": "100",
          "result_code": "0", "result_msg": ""}, "version": "9.9"}}),
        (f"$ota/report/{PRODUCT}/{GHOST}",
         {"type": "report_version", "report": {"version": "9.9"}}),
        (f"$resource/up/service/{PRODUCT}/{VICTIM}",
         {"type": "create_upload_task", "size": 4, "name": "stolen.bin",
          "md5sum": hashlib.md5(b"evil").hexdigest()}),
        (f"$config/operation/result/{PRODUCT}/{VICTIM}",
         {"type": "push", "result": 0, "payload": {"evil": True}}),
    ]  # fmt: skip
    for topic, message in forgeries:
        evil = attacker(EVIL)
        assert evil.first("connack") == ("connack", 0)  # its own login is valid
        evil.client.publish(topic, json.dumps(message).encode(), qos=1)
        evil.first("closed")  # RabbitMQ 3.10 closes the connection at a refused publish
        assert not any(e[0] == "puback" for e in evil.events), topic
        evil.stop()
        anonymous = attacker(None)
        assert anonymous.first("connack") == ("connack", 134), topic  # bad user name/password
        anonymous.stop()
    # nor may the attacker listen to the victim's downlinks
    spy = attacker(EVIL)
    spy.first("connack")
    spy.client.subscribe(f"$ota/update/{PRODUCT}/{VICTIM}", 1)
    spy.first("closed")
    spy.stop()


def test_iotfsm_registry_disable_and_enable_take_effect_at_the_broker_without_a_restart(
    rabbitmq_node: RabbitNode, platform: Platform
) -> None:
    """Another process (`iotfsm registry`) changes the registry; the running platform's endpoint
    refuses the device's next login within a second, and lets it in again once enabled."""
    login = platform.registry.credentials(PRODUCT, VICTIM).login()
    made: list[Probe] = []

    def connack() -> object:
        probe = Probe(rabbitmq_node, login.client_id, login.username, login.password)
        made.append(probe)
        try:
            return probe.first("connack")[1]
        finally:
            probe.stop()

    try:
        assert connack() == 0
        where = ["--data-dir", str(platform.data_dir), "--product-id", PRODUCT]
        where += ["--device-name", VICTIM]
        assert main(["registry", "disable", *where]) == 0
        wait_for("the disabled device refused", lambda: connack() == 134)
        assert main(["registry", "enable", *where]) == 0
        wait_for("the enabled device back in", lambda: connack() == 0)
        assert main(["registry", "remove", *where]) == 0
        wait_for("the removed device refused", lambda: connack() == 134)
    finally:
        stop_all(made)
