"""OTA over a real Mosquitto with the device as a real process, SIGKILLed in mid-download."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from mqtt_fixtures import mosquitto_broker

from iotfsm.adapters.connect import MqttOptions
from iotfsm.adapters.http.transfer import read_checkpoint
from iotfsm.platform import Platform
from iotfsm.testing.mosquitto import Mosquitto
from iotfsm.testing.waiting import wait_for

__all__ = ["mosquitto_broker"]

PRODUCT = "S3EUVBRJLB"
PSK = "vX6PQqazsGsMyf5SMfs6OA6y"
FAST = MqttOptions(backoff_min=0.05, backoff_max=0.3)


def device_process(broker: Mosquitto, state_dir: Path, version: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iotfsm",
            "device",
            "--broker",
            broker.url,
            "--product-id",
            PRODUCT,
            "--device-name",
            "proc-1",
            "--psk",
            PSK,
            "--version",
            version,
            "--state-dir",
            str(state_dir),
            "--events",
            "jsonl",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_killed_device_process_resumes_from_its_checkpoint(
    mosquitto_broker: Mosquitto, tmp_path: Path
) -> None:
    size = 4 * 1024 * 1024
    image = random.Random(4).randbytes(size)
    state = tmp_path / "device"
    checkpoint = state / "ota" / "firmware" / "checkpoint.json"
    with Platform(mosquitto_broker.url, data_dir=tmp_path / "platform", mqtt=FAST) as platform:
        wait_for("the platform to connect", lambda: platform.runtime.transport.connected)
        platform.register_device(PRODUCT, "proc-1")
        deployment = platform.deploy_firmware(PRODUCT, ["proc-1"], "2.0", image)
        platform.files.hooks.rate_limit = 2 * 1024 * 1024  # a slow link: about 2 s for the file

        first = device_process(mosquitto_broker, state, "1.0")
        try:
            wait_for(
                "a checkpoint past 1 MB",
                lambda: (c := read_checkpoint(checkpoint)) is not None and c.offset >= 1024 * 1024,
            )
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        saved = read_checkpoint(checkpoint)
        assert saved is not None and 0 < saved.offset < size
        # Same boot, so the next run continues from the partial's length (>= the checkpoint):
        # a killed process loses only what it had not written yet.
        length = (checkpoint.parent / "data.part").stat().st_size
        assert saved.offset <= length < size
        platform.files.hooks.rate_limit = None

        second = device_process(mosquitto_broker, state, "1.0")
        try:
            wait_for(
                "the platform to see 2.0",
                lambda: platform.firmware_status(PRODUCT, "proc-1").state == "succeeded",
                timeout=30,
            )
        finally:
            second.send_signal(signal.SIGTERM)
            out, err = second.communicate(timeout=15)
        assert second.returncode == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        started = [e for e in events if e["event"] == "started"]
        assert [e["version"] for e in started] == ["1.0"]
        assert any(e.get("machine") == "ota.device" and e["to"] == "burning" for e in events)

        gets = [r for r in platform.files.hooks.requests() if r.method == "GET"]
        assert gets[0].range is None
        assert gets[-1].range == f"bytes={length}-{size - 1}"  # resumed, not from 0
        assert platform.files.hooks.bytes_served(deployment.file_id) < 2 * size
    kept = state / "ota" / "firmware-2.0.bin"
    assert hashlib.md5(kept.read_bytes()).hexdigest() == deployment.md5
    assert json.loads((state / "ota" / "version.json").read_text())["version"] == "2.0"
