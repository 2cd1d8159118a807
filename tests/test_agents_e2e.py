"""The command-line agents end to end: `iotfsm platform` and two `iotfsm device` processes over a
real Mosquitto, driven by a desired-state file; the platform is killed and restarted mid-flow.

The kill comes after the desired state was applied and before the devices start, so the devices'
first reports and asks are lost and recovered by their own retries: deterministic, unlike a kill
at a random point of a download. (A kill just as a device sends its final reports loses them
until the platform's 300 s silence timer, since the platform's MQTT session is clean; a device
process killed mid-download is tested in test_ota_process.py.)"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from iotfsm.testing import Mosquitto, wait_for
from iotfsm.testing.server import free_port

PRODUCT = "AGENT00001"
PSK = "vX6PQqazsGsMyf5SMfs6OA6y"


class Agent:
    """A child `python -m iotfsm ...` whose JSON-lines events are collected as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iotfsm", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            self.events.append(json.loads(line))

    def seen(self, **match: Any) -> bool:
        return any(all(e.get(k) == v for k, v in match.items()) for e in list(self.events))

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return err

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=30)


def status(data_dir: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "iotfsm", "status", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def test_desired_state_reaches_two_device_processes_across_a_platform_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rng = random.Random(8)
    (tmp_path / "fw-2.0.bin").write_bytes(rng.randbytes(600_000))
    (tmp_path / "faces.db").write_bytes(rng.randbytes(200_000))
    desired = tmp_path / "desired.toml"
    desired.write_text(f"""
[[devices]]
product = "{PRODUCT}"
devices = ["agent-1", "agent-2"]

[[firmware]]
product = "{PRODUCT}"
devices = ["*"]
version = "2.0"
file = "fw-2.0.bin"

[[config]]
product = "{PRODUCT}"
enabled = true
payload = {{ baud = 9600 }}

[[log_level]]
product = "{PRODUCT}"
devices = ["*"]
level = 3

[[resource]]
product = "{PRODUCT}"
devices = ["agent-1", "agent-2"]
name = "faces.db"
file = "faces.db"
""")
    data = tmp_path / "platform"
    http = f"127.0.0.1:{free_port()}"
    platform_args = (
        "platform",
        "--broker",
        mosquitto.url,
        "--data-dir",
        str(data),
        "--http",
        http,
        "--desired",
        str(desired),
        "--events",
        "jsonl",
    )

    def device(name: str) -> Agent:
        return Agent(
            "device",
            "--broker",
            mosquitto.url,
            "--product-id",
            PRODUCT,
            "--device-name",
            name,
            "--psk",
            PSK,
            "--version",
            "1.0",
            "--state-dir",
            str(tmp_path / name),
            "--events",
            "jsonl",
        )

    platform = Agent(*platform_args)
    devices: list[Agent] = []
    try:
        wait_for(
            "the desired state to be applied",
            lambda: sum(e["event"] == "applied" for e in platform.events) == 5,
        )
        platform.kill()  # SIGKILL with every task queued: SQLite keeps them
        # the devices start while the platform is down: their first reports and asks are lost
        devices = [device("agent-1"), device("agent-2")]
        wait_for("both devices to connect", lambda: all(d.seen(event="started") for d in devices))
        platform = Agent(*platform_args)
        wait_for("the platform to be back", lambda: platform.seen(event="started"))
        assert not platform.seen(event="applied")  # nothing re-applied: it was all kept

        def all_done() -> bool:
            rows = status(data)
            ota = {r["device"]: r for r in rows if r["feature"] == "ota"}
            levels = {r["device"]: r for r in rows if r["feature"] == "log_level"}
            deliveries = [r for r in rows if r["feature"] == "delivery"]
            # a persistent platform session gets the devices' QoS 1 OTA reports the moment it
            # is back; their QoS 0 log-level asks are lost and answered on a later ask
            return (
                all(ota.get(n, {}).get("state") == "succeeded" for n in ("agent-1", "agent-2"))
                and all(levels.get(n, {}).get("level") == 3 for n in ("agent-1", "agent-2"))
                and len(deliveries) == 2
                and all(r["state"] == "done" for r in deliveries)
            )

        try:
            wait_for("every device done", all_done, timeout=90)
        except AssertionError:
            print(json.dumps(status(data), indent=1))  # shown by pytest when the test fails
            raise
        rows = status(data)
        by = {(r["feature"], r["device"]): r for r in rows}
        for name in ("agent-1", "agent-2"):
            assert by[("ota", name)]["version"] == "2.0"
            assert by[("log_level", name)]["level"] == 3  # the product-wide level, seen later too
            assert by[("config", name)]["state"] == "serving"
            assert (tmp_path / name / "resources" / "files" / "faces.db").read_bytes() == (
                tmp_path / "faces.db"
            ).read_bytes()
            assert json.loads((tmp_path / name / "config" / "config.json").read_text())
    finally:
        errors = [d.stop() for d in devices] + [platform.stop()]
    assert all("Traceback" not in e for e in errors), errors
