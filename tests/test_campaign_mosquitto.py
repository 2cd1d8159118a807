"""A rollout campaign over a real Mosquitto (issue 18's must-hold test).

Simulated devices (paho clients driven by one selector thread, as bench/mqtt_fleet.py drives
them) answer the OTA exchange by hand; the devices of wave 2 fail their burn with -5. The platform
runs in its own process so that it can be SIGKILLed mid-campaign and started again on the same
data directory. Checked on what was recorded: start times keep the rate (consecutive starts at
least 60/rate seconds apart, across the restart too), waves start in order, the -5 failures of
wave 2 abort the campaign and wave 3 never starts, nobody is started while the campaign is
paused, and nobody is ever offered the firmware twice.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from iotfsm.machines.campaign import plan_waves
from iotfsm.testing import wait_for
from iotfsm.testing.mosquitto import Mosquitto

PRODUCT = "PCAMPAIGN1"
DEVICES = int(os.environ.get("IOTFSM_CAMPAIGN_DEVICES", "1000"))
RATE = 1200.0
"""Starts per minute: one every 50 ms."""
CHILD = Path(__file__).with_name("campaign_platform_child.py")
ROOT = Path(__file__).resolve().parents[1]


# ---- the simulated devices --------------------------------------------------------------------


class SimDevice:
    def __init__(self, fleet: Fleet, name: str, fails: bool) -> None:
        self.fleet = fleet
        self.name = name
        self.fails = fails
        self.up = f"$ota/report/{PRODUCT}/{name}"
        self.subscribed = False
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{PRODUCT}{name}",
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=False,  # offers sent while the platform restarts still arrive
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: setattr(self, "subscribed", True)
        self.client.on_message = self._on_message

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        client.subscribe(f"$ota/update/{PRODUCT}/{self.name}", 1)

    def _publish(self, doc: dict[str, Any]) -> None:
        self.client.publish(self.up, json.dumps(doc), 1)

    def _progress(self, version: str, state: str, **progress: Any) -> None:
        report = {"progress": {"state": state, **progress}, "version": version}
        self._publish({"type": "report_progress", "report": report})

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        doc = json.loads(message.payload)
        if doc.get("type") != "update_firmware":
            return
        version = doc["version"]
        with self.fleet.lock:
            self.fleet.offers.setdefault(self.name, []).append(time.time())
        self._progress(version, "downloading", percent="100", result_code="0", result_msg="")
        self._progress(version, "burning", result_code="0", result_msg="")
        if self.fails:
            self._progress(version, "fail", result_code="-5", result_msg="burn failed")
        else:
            self._progress(version, "done", result_code="0", result_msg="")
            self._publish({"type": "report_version", "report": {"version": version}})


class Fleet:
    """Every device's socket in one selector loop on one thread: 1,000 connections, 1 thread."""

    def __init__(self, broker: Mosquitto, names: list[str], failing: set[str]) -> None:
        self.lock = threading.Lock()
        self.offers: dict[str, list[float]] = {}
        self.devices = [SimDevice(self, n, n in failing) for n in names]
        self.selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        for device in self.devices:
            device.client.connect(broker.host, broker.port, keepalive=120)
            sock = device.client.socket()
            assert isinstance(sock, socket.socket)
            self.selector.register(sock, selectors.EVENT_READ, device)
        self.thread = threading.Thread(target=self._run, name="sim-fleet", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last_misc = time.monotonic()
        while not self._stop.is_set():
            for key, _ in self.selector.select(0.05):
                key.data.client.loop_read()
            for device in self.devices:
                if device.client.want_write():
                    device.client.loop_write()
            if time.monotonic() - last_misc > 1.0:
                for device in self.devices:
                    device.client.loop_misc()
                last_misc = time.monotonic()

    def offered(self) -> int:
        with self.lock:
            return len(self.offers)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)
        for device in self.devices:
            with contextlib.suppress(Exception):
                device.client.disconnect()
                device.client.loop_write()
            sock = device.client.socket()
            if sock is not None:
                sock.close()


# ---- the platform process ---------------------------------------------------------------------


class PlatformProcess:
    def __init__(self, data_dir: Path, broker: Mosquitto, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self._log = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(data_dir), broker.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        assert self._read() == {"ready": True}

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the platform process exited ({self.proc.poll()})")
        doc: dict[str, Any] = json.loads(line)
        assert "error" not in doc, doc["error"]
        return doc

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto(extra_config="max_queued_messages 0\nmax_inflight_messages 0") as b:
        yield b


def started(status: dict[str, Any]) -> dict[str, float]:
    return {d: run[1] for d, run in status["devices"].items() if run[2]}


def test_a_three_wave_campaign_over_mosquitto(broker: Mosquitto, tmp_path: Path) -> None:
    names = [f"d{i:04d}" for i in range(DEVICES)]
    waves = [list(w) for w in plan_waves(names, percents=[10, 30, 60])]
    fleet = Fleet(broker, names, failing=set(waves[1]))
    platform = PlatformProcess(tmp_path / "platform", broker, tmp_path / "platform.log")
    try:
        wait_for("the fleet to subscribe", lambda: all(d.subscribed for d in fleet.devices), 120)
        spec = {
            "product": PRODUCT,
            "waves": waves,
            "rate": RATE,
            "abort_percent": 10,
            "min_finished": len(waves[0]),
            "success_percent": 90,
            "device_timeout": 120,
        }
        cid = platform.ask({"start": spec})["id"]

        # pause a third into wave 1: nobody is offered anything until resumed
        wait_for("a third of wave 1", lambda: fleet.offered() >= len(waves[0]) // 3, 60)
        platform.ask({"pause": cid})
        paused = started(platform.ask({"status": cid}))
        # the offers of starts made just before the pause arrive, then nothing for 40 slots
        wait_for("the last offers before the pause", lambda: fleet.offered() == len(paused), 30)
        time.sleep(2.0)
        assert fleet.offered() == len(paused)
        assert started(platform.ask({"status": cid})) == paused
        platform.ask({"resume": cid})

        # SIGKILL two thirds into wave 1, start again on the same data directory
        wait_for("two thirds of wave 1", lambda: fleet.offered() >= 2 * len(waves[0]) // 3, 60)
        platform.kill()
        killed_at = time.time()
        platform = PlatformProcess(tmp_path / "platform", broker, tmp_path / "platform.log")

        deadline = time.monotonic() + 300
        while platform.ask({"state": cid})["state"] != "aborted":
            assert time.monotonic() < deadline, "the campaign did not abort within 300 s"
            time.sleep(0.2)
        status = platform.ask({"status": cid})
        time.sleep(0.5)  # no start follows an abort: give a stray offer time to show
    finally:
        platform.close()
        fleet.close()

    assert "with codes [-5]" in status["reason"], status["reason"]
    at = started(status)
    # waves in order; wave 3 never started, and nobody of it was offered anything
    assert max(at[d] for d in waves[0]) < min(at[d] for d in waves[1] if d in at)
    assert not [d for d in waves[2] if d in at or d in fleet.offers]
    # the rate, on the recorded start times (across the pause and the restart)
    times = sorted(at.values())
    assert times[0] < killed_at < times[-1]  # the restarted platform went on starting
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 60.0 / RATE - 1e-6, min(gaps)
    # nobody started twice: one start recorded, at most one offer received
    assert all(run[2] <= 1 for run in status["devices"].values())
    assert max(len(v) for v in fleet.offers.values()) == 1
    ended = {d: run[0] for d, run in status["devices"].items()}
    # wave 1: succeeded, or still running when wave 2's failures aborted (wave 2 starts at 90 %)
    first = [ended[d] for d in waves[0]]
    assert first.count("succeeded") >= 0.9 * len(first)
    assert set(first) <= {"succeeded", "running"}, first
    assert {ended[d] for d in waves[1] if d in at} <= {"failed", "running", "timed_out"}
    sys.stderr.write(
        f"campaign over mosquitto: {DEVICES} devices, {len(at)} started "
        f"({first.count('succeeded')} of {len(waves[0])} in wave 1 succeeded), "
        f"{sum(v == 'failed' for v in ended.values())} failed; "
        f"starts from {times[0]:.2f} to {times[-1]:.2f}, smallest gap {min(gaps) * 1000:.1f} ms\n"
    )
