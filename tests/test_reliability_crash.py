"""Crashes with real processes over a real Mosquitto.

- A device process is SIGKILLed at 20 random points of an OTA download, and again of a resource
  download. After every kill the checkpoint is whole and describes bytes that really are on
  disk (the prefix of the partial file hashes like the same prefix of the file); in the end the
  file's md5 is right, and the bytes served over HTTP in total stay within the file's size plus
  one chunk per kill: a kill loses at most the chunk in flight.
- The broker is killed and restarted while device processes download: both flows finish.
  (A platform process SIGKILLed mid-flow is `tests/test_agents_e2e.py`.)

Device processes are forked from one interpreter that imported iotfsm once
(`tests/reliability_child.py`), so a kill-and-restart costs a fork, not an interpreter start.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mqtt_fixtures import mosquitto_broker
from reliability_helpers import SOAK

from iotfsm.adapters.connect import MqttOptions
from iotfsm.adapters.http.transfer import read_checkpoint
from iotfsm.platform import Platform
from iotfsm.testing.mosquitto import Mosquitto
from iotfsm.testing.waiting import wait_for

__all__ = ["mosquitto_broker"]

PRODUCT = "CRASH00001"
PSK = "vX6PQqazsGsMyf5SMfs6OA6y"
CHUNK = 64 * 1024
KILLS = 20
SIZE = 3 * (KILLS + 1) * CHUNK
"""Room for one kill point per three chunks."""
RATE = 2 * 1024 * 1024
"""Bytes per second the file service sends: a link slow enough to stop a download anywhere."""
FAST = MqttOptions(backoff_min=0.05, backoff_max=0.3)
SEEDS = range(1, 6) if SOAK else range(1, 2)


class ForkServer:
    """`tests/reliability_child.py`: spawns device processes on request and reaps them."""

    def __init__(self, log: Path) -> None:
        self.log = log
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("reliability_child.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def spawn(self, broker: Mosquitto, name: str, state: Path) -> int:
        spec = {
            "product": PRODUCT,
            "device": name,
            "psk": PSK,
            "broker": broker.url,
            "state_dir": str(state),
            "version": "1.0",
            "chunk_size": CHUNK,
            "log": str(self.log),
        }
        pid: int = self._ask({"spawn": spec})["pid"]
        return pid

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        status = self._ask({"reap": pid})["status"]
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture
def forks(tmp_path: Path) -> Iterator[ForkServer]:
    server = ForkServer(tmp_path / "devices.log")
    try:
        yield server
    finally:
        server.close()


def kill_points(rng: random.Random) -> list[int]:
    """One random byte offset in each stretch of three chunks, past the first chunk of it, so
    every life of the device downloads something before it dies."""
    return [(3 * i + 1) * CHUNK + rng.randrange(2 * CHUNK) for i in range(KILLS)]


def check_checkpoint(checkpoint: Path, data: bytes, label: str) -> int:
    """The checkpoint is whole JSON, names this download, and its offset's bytes are on disk."""
    raw = json.loads(checkpoint.read_text(encoding="utf-8"))  # never half written
    saved = read_checkpoint(checkpoint)
    assert saved is not None, raw
    assert saved.identity == {"label": label}
    assert (saved.size, saved.md5) == (len(data), hashlib.md5(data).hexdigest())
    partial = Path(saved.partial)
    with partial.open("rb") as f:
        prefix = f.read(saved.offset)
    assert len(prefix) == saved.offset, "the checkpoint runs ahead of the data"
    assert hashlib.md5(prefix).digest() == hashlib.md5(data[: saved.offset]).digest()
    return saved.offset


def kill_twenty_times(
    *,
    forks: ForkServer,
    broker: Mosquitto,
    name: str,
    state: Path,
    partial: Path,
    checkpoint: Path,
    data: bytes,
    label: str,
    rng: random.Random,
) -> list[int]:
    offsets = []
    for point in kill_points(rng):
        pid = forks.spawn(broker, name, state)
        try:
            wait_for(
                f"{name} to download past byte {point}",
                lambda p=point: partial.exists() and partial.stat().st_size >= p,  # type: ignore[misc]
                timeout=30,
            )
            # the file grows a chunk at a time: a random pause up to one chunk's time puts the
            # kill anywhere in the device's cycle (reading, writing, checkpointing)
            time.sleep(rng.uniform(0, CHUNK / RATE))
        finally:
            forks.kill(pid)
        offsets.append(check_checkpoint(checkpoint, data, label))
    return offsets


@pytest.mark.parametrize("seed", SEEDS)
def test_ota_download_killed_at_twenty_random_points(
    mosquitto_broker: Mosquitto, forks: ForkServer, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    image = rng.randbytes(SIZE)
    state = tmp_path / "ota-dev"
    slot = state / "ota" / "firmware"
    with Platform(mosquitto_broker.url, data_dir=tmp_path / "platform", mqtt=FAST) as platform:
        wait_for("the platform to connect", lambda: platform.runtime.transport.connected)
        platform.files.hooks.rate_limit = RATE
        platform.register_device(PRODUCT, "ota-dev")
        deployment = platform.deploy_firmware(PRODUCT, ["ota-dev"], "2.0", image)
        offsets = kill_twenty_times(
            forks=forks,
            broker=mosquitto_broker,
            name="ota-dev",
            state=state,
            partial=slot / "data.part",
            checkpoint=slot / "checkpoint.json",
            data=image,
            label="2.0",
            rng=rng,
        )
        assert offsets == sorted(offsets) and offsets[0] > 0 and offsets[-1] < SIZE
        platform.files.hooks.rate_limit = None
        pid = forks.spawn(mosquitto_broker, "ota-dev", state)
        try:
            wait_for(
                "the platform to confirm 2.0",
                lambda: platform.firmware_status(PRODUCT, "ota-dev").state == "succeeded",
                timeout=30,
            )
        finally:
            forks.kill(pid)
        served = platform.files.hooks.bytes_served(deployment.file_id)
        gets = [r for r in platform.files.hooks.requests() if r.method == "GET"]
    kept = state / "ota" / "firmware-2.0.bin"
    assert hashlib.md5(kept.read_bytes()).hexdigest() == deployment.md5
    assert json.loads((state / "ota" / "version.json").read_text()) == {"version": "2.0"}
    assert [g.range is None for g in gets].count(True) == 1, "a restart started over from 0"
    print(
        f"OTA: {KILLS} kills, {served - SIZE} bytes fetched again ({(served - SIZE) / CHUNK:.1f} chunks)"
    )
    assert served <= SIZE + KILLS * CHUNK, (served, SIZE, served - SIZE)


@pytest.mark.parametrize("seed", SEEDS)
def test_resource_download_killed_at_twenty_random_points(
    mosquitto_broker: Mosquitto, forks: ForkServer, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(100 + seed)
    data = rng.randbytes(SIZE)
    state = tmp_path / "res-dev"
    slot = state / "resources" / "incoming" / "faces.db"
    with Platform(mosquitto_broker.url, data_dir=tmp_path / "platform", mqtt=FAST) as platform:
        wait_for("the platform to connect", lambda: platform.runtime.transport.connected)
        platform.files.hooks.rate_limit = RATE
        platform.register_device(PRODUCT, "res-dev")
        [delivery] = platform.offer_resource(PRODUCT, ["res-dev"], "faces.db", data)
        file_id = f"res-{delivery.md5}"
        kill_twenty_times(
            forks=forks,
            broker=mosquitto_broker,
            name="res-dev",
            state=state,
            partial=slot / "data.part",
            checkpoint=slot / "checkpoint.json",
            data=data,
            label="faces.db",
            rng=rng,
        )
        platform.files.hooks.rate_limit = None
        pid = forks.spawn(mosquitto_broker, "res-dev", state)
        try:
            wait_for(
                "the delivery to be done",
                lambda: platform.deliveries(PRODUCT, "res-dev")[0].state == "done",
                timeout=30,
            )
        finally:
            forks.kill(pid)
        served = platform.files.hooks.bytes_served(file_id)
    delivered = state / "resources" / "files" / "faces.db"
    assert hashlib.md5(delivered.read_bytes()).hexdigest() == delivery.md5
    assert not slot.joinpath("data.part").exists()
    print(
        f"resource: {KILLS} kills, {served - SIZE} bytes fetched again ({(served - SIZE) / CHUNK:.1f} chunks)"
    )
    assert served <= SIZE + KILLS * CHUNK, (served, SIZE, served - SIZE)


def test_broker_killed_and_restarted_while_devices_download(
    mosquitto_broker: Mosquitto, forks: ForkServer, tmp_path: Path
) -> None:
    rng = random.Random(7)
    image, data = rng.randbytes(SIZE), rng.randbytes(SIZE)
    with Platform(mosquitto_broker.url, data_dir=tmp_path / "platform", mqtt=FAST) as platform:
        wait_for("the platform to connect", lambda: platform.runtime.transport.connected)
        platform.files.hooks.rate_limit = 2 * RATE
        for name in ("b-ota", "b-res"):
            platform.register_device(PRODUCT, name)
        deployment = platform.deploy_firmware(PRODUCT, ["b-ota"], "2.0", image)
        [delivery] = platform.offer_resource(PRODUCT, ["b-res"], "faces.db", data)
        pids = [forks.spawn(mosquitto_broker, name, tmp_path / name) for name in ("b-ota", "b-res")]
        try:
            parts = [
                tmp_path / "b-ota" / "ota" / "firmware" / "data.part",
                tmp_path / "b-res" / "resources" / "incoming" / "faces.db" / "data.part",
            ]
            wait_for(
                "both downloads under way",
                lambda: all(p.exists() and p.stat().st_size > SIZE // 4 for p in parts),
            )
            mosquitto_broker.kill()
            time.sleep(0.3)  # the downloads go on over HTTP; reports are lost meanwhile
            mosquitto_broker.start()
            wait_for(
                "both flows finished",
                lambda: (
                    platform.firmware_status(PRODUCT, "b-ota").state == "succeeded"
                    and platform.deliveries(PRODUCT, "b-res")[0].state == "done"
                ),
                timeout=60,
            )
        finally:
            for pid in pids:
                forks.kill(pid)
        assert platform.files.hooks.bytes_served(deployment.file_id) <= SIZE + CHUNK
    kept = tmp_path / "b-ota" / "ota" / "firmware-2.0.bin"
    assert hashlib.md5(kept.read_bytes()).hexdigest() == deployment.md5
    got = tmp_path / "b-res" / "resources" / "files" / "faces.db"
    assert hashlib.md5(got.read_bytes()).hexdigest() == delivery.md5
