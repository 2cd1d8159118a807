"""The README's "Secure deployment" section, run: every command of its sh blocks, in order.

Runs in a temp directory with what a test must change substituted: free ports for 8883, 8884 and
8080, and `--user root` when the suite runs as root (Mosquitto switching to its own account could
not read pytest's private temp directory). `mosquitto`, `iotfsm platform` and `iotfsm device`
lines are services: they are started in the background and waited for (open ports, a `started`
event); every other `iotfsm` line must exit 0. At the end the removed device's certificate must
be refused by the broker that was reloaded, never restarted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mosquitto_secure_helpers import connack_code
from rabbitmq_fixtures import RabbitNode

from iotfsm.testing.mosquitto import find_mosquitto
from iotfsm.testing.server import free_port
from iotfsm.testing.waiting import wait_for

README = Path(__file__).resolve().parent.parent / "README.md"


def section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Secure deployment\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


RABBITMQ = "### RabbitMQ"
"""The subsection run against a private RabbitMQ node (the rest runs against Mosquitto)."""


def subsection(rabbitmq: bool) -> str:
    parts = re.split(r"(?m)^(?=### )", section())
    return "".join(p for p in parts if p.startswith(RABBITMQ) == rabbitmq)


def commands(rabbitmq: bool = False) -> list[list[str]]:
    lines: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", subsection(rabbitmq), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                lines.append(shlex.split(line))
    return lines


class Service:
    """A background process whose stdout lines are kept (JSON events parsed when they are)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    def started(self) -> bool:
        """Its `started` event was printed; a service that exited fails at once, with output."""
        if self.popen.poll() is not None:
            raise AssertionError(f"exited with {self.popen.returncode}: {''.join(self.lines)}")
        return any(e.get("event") == "started" for e in self.events())

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    try:
        yield started
    finally:
        for service in reversed(started):
            service.stop()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_the_section_has_the_mosquitto_commands() -> None:
    names = [" ".join(argv[:3]) for argv in commands()]
    for needed in (
        "iotfsm registry add",
        "iotfsm registry issue-cert",
        "iotfsm broker-config mosquitto",
        "iotfsm platform --broker",
        "iotfsm device --broker",
    ):
        assert any(name.startswith(needed) for name in names), needed


def test_secure_deployment_section_runs(tmp_path: Path, services: list[Service]) -> None:
    ports = {"8883": free_port(), "8884": free_port(), "8080": free_port()}
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    iotfsm = [sys.executable, "-m", "iotfsm"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    mosquitto: Service | None = None
    for line in commands():
        argv = [_substitute(arg, ports) for arg in line]
        if argv[:2] == ["iotfsm", "broker-config"] and "--reload" not in argv:
            argv += ["--device-port", str(ports["8883"]), "--platform-port", str(ports["8884"])]
        if as_root and "--user" in argv:
            argv[argv.index("--user") + 1] = "root"
        if argv[0] == "mosquitto":
            mosquitto = Service([find_mosquitto(), *argv[1:]], tmp_path, env)
            services.append(mosquitto)
            wait_for(
                "mosquitto's ports", lambda: _port_open(ports["8883"]) and _port_open(ports["8884"])
            )
        elif argv[:2] in (["iotfsm", "platform"], ["iotfsm", "device"]):
            service = Service([*iotfsm, *argv[1:]], tmp_path, env)
            services.append(service)
            wait_for(f"{argv[1]} to start", service.started, timeout=30)
        elif argv[0] == "iotfsm":
            done = subprocess.run(
                [*iotfsm, *argv[1:]],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout}{done.stderr}"
        else:
            pytest.fail(f"the README runs {argv[0]!r}: teach tests/test_readme_secure.py how")
    assert mosquitto is not None and mosquitto.popen.poll() is None, "mosquitto stopped"
    cert = (tmp_path / "dev-1/S3EUVBRJLB-dev-1.crt", tmp_path / "dev-1/S3EUVBRJLB-dev-1.key")
    ca = tmp_path / "mosquitto/ca.crt"
    deadline = time.monotonic() + 20
    while connack_code(ports["8883"], ca, cert=cert, client_id="again") is not None:
        assert time.monotonic() < deadline, "the removed device's certificate is still accepted"
        time.sleep(0.05)  # the reload is asynchronous: the broker handles SIGHUP in its loop
    assert (tmp_path / "platform/broker-password").stat().st_mode & 0o077 == 0


def test_the_rabbitmq_subsection_runs_against_a_private_node(
    tmp_path: Path, services: list[Service], rabbitmq_node: RabbitNode
) -> None:
    """The RabbitMQ commands, against the suite's node: its MQTT port stands for 1883 and its
    auth backend's address for 8089, where the README's platform serves the endpoints."""
    names = [" ".join(line[:2]) for line in commands(rabbitmq=True)]
    assert names == [
        "iotfsm broker-config",
        "iotfsm platform",
        "iotfsm registry",
        "iotfsm device",
    ]
    ports = {
        "1883": rabbitmq_node.broker.port,
        "8089": rabbitmq_node.auth_address[1],
        "8081": free_port(),
    }
    iotfsm = [sys.executable, "-m", "iotfsm"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    platform: Service | None = None
    for line in commands(rabbitmq=True):
        argv = [_substitute(arg, ports) for arg in line]
        if argv[:2] == ["iotfsm", "platform"]:
            platform = Service([*iotfsm, *argv[1:]], tmp_path, env)
            services.append(platform)
            wait_for("the platform to log in to RabbitMQ", platform.started, timeout=60)
        elif argv[:2] == ["iotfsm", "device"]:
            device = Service([*iotfsm, *argv[1:]], tmp_path, env)
            services.append(device)
            wait_for("the key device to log in", device.started, timeout=60)
        else:
            done = subprocess.run(
                [*iotfsm, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                check=False,
            )  # fmt: skip
            assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout}{done.stderr}"
    conf = (tmp_path / "rabbitmq" / "rabbitmq.conf").read_text()
    assert "auth_backends.1.authn = http" in conf and "mqtt.allow_anonymous = false" in conf
    assert platform is not None
    wait_for(
        "the platform to answer the device",
        lambda: any(
            e.get("device") == "dev-3" for e in platform.events() if e.get("event") == "state"
        ),
        timeout=30,
    )


def _substitute(arg: str, ports: dict[str, int]) -> str:
    for old, new in ports.items():
        arg = arg.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    return arg
