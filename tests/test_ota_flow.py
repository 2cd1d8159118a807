"""OTA end to end: a platform and devices over the memory broker, firmware over real HTTP."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from ota_world import PRODUCT, OtaWorld, wait_for

from iotfsm.adapters.http.transfer import partial_path
from iotfsm.adapters.mqtt.memory_broker import Delay

MB = 1024 * 1024
CHUNK = 64 * 1024


@pytest.fixture
def world(tmp_path: Path) -> Iterator[OtaWorld]:
    w = OtaWorld(tmp_path)
    yield w
    w.close()


def firmware(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def test_happy_path_emits_exactly_the_documented_forms(world: OtaWorld) -> None:
    image = firmware(300_000)
    dev = world.device("dev-1", version="0.1").start()
    deployment = world.platform.deploy_firmware(PRODUCT, ["dev-1"], "0.2", image)
    wait_for("the device to run 0.2", lambda: dev.version == "0.2")
    wait_for("the platform to confirm", lambda: bool(world.finished))
    assert world.finished[-1][1].ok
    assert world.platform.firmware_status(PRODUCT, "dev-1").state == "succeeded"

    up = world.wire("$ota/report/")
    down = world.wire("$ota/update/")
    assert up[0] == {"type": "report_version", "report": {"version": "0.1"}}
    assert down[0] == {
        "type": "report_version_rsp",
        "result_code": 0,
        "result_msg": "success",
        "version": "0.1",
    }
    offer = down[1]
    assert offer["type"] == "update_firmware"
    assert (offer["file_size"], offer["md5sum"], offer["version"]) == (
        300_000,
        hashlib.md5(image).hexdigest(),
        "0.2",
    )
    assert isinstance(offer["file_size"], int) and offer["url"].startswith("http://127.0.0.1:")
    assert list(offer) == ["type", "file_size", "md5sum", "url", "version"]
    progress = [m["report"]["progress"] for m in up if m["type"] == "report_progress"]
    assert progress[0] == {
        "state": "downloading",
        "percent": "0",
        "result_code": "0",
        "result_msg": "",
    }
    assert progress[-3] == {
        "state": "downloading",
        "percent": "100",
        "result_code": "0",
        "result_msg": "",
    }
    assert progress[-2] == {"state": "burning", "result_code": "0", "result_msg": ""}
    assert progress[-1] == {"state": "done", "result_code": "0", "result_msg": ""}
    assert up[-1] == {"type": "report_version", "report": {"version": "0.2"}}
    assert (dev.state_dir / "ota" / "firmware-0.2.bin").read_bytes() == image
    assert deployment.md5 == hashlib.md5(image).hexdigest()


def test_eight_megabytes_with_three_cuts_resume_from_the_checkpoint(world: OtaWorld) -> None:
    size = 8 * MB
    image = firmware(size, seed=8)
    dev = world.device("dev-cut", version="1.0", chunk_size=CHUNK)
    deployment = world.platform.deploy_firmware(PRODUCT, ["dev-cut"], "1.1", image)
    cuts = sorted(random.Random(3).sample(range(CHUNK, size - CHUNK), 3))
    world.platform.files.hooks.cut_at(deployment.file_id, cuts)
    dev.start()
    for _ in cuts:
        # each cut: the device reports fail -1, waits 10 s, reports its version; the platform re-offers
        wait_for("the device to fail the attempt", lambda: dev.state("ota") == "idle")
        world.advance(10.0)
    wait_for("the device to run 1.1", lambda: dev.version == "1.1", timeout=30)
    wait_for(
        "the platform to confirm",
        lambda: world.platform.firmware_status(PRODUCT, "dev-cut").state == "succeeded",
    )

    gets = [r for r in world.platform.files.hooks.requests() if r.method == "GET"]
    assert [r.range for r in gets] == [None] + [f"bytes={c}-{size - 1}" for c in cuts]
    assert world.platform.files.hooks.bytes_served(deployment.file_id) <= size + 3 * CHUNK
    assert (dev.state_dir / "ota" / "firmware-1.1.bin").read_bytes() == image
    fails = [
        m
        for m in world.wire("$ota/report/")
        if m["type"] == "report_progress" and m["report"]["progress"]["state"] == "fail"
    ]
    assert [f["report"]["progress"]["result_code"] for f in fails] == ["-1", "-1", "-1"]
    assert world.platform.firmware_status(PRODUCT, "dev-cut").result_code == 0


def test_a_server_ignoring_range_on_resume_makes_the_device_start_over_cleanly(
    world: OtaWorld,
) -> None:
    size = 2 * MB
    image = firmware(size, seed=5)
    dev = world.device("dev-norange", version="1.0")
    deployment = world.platform.deploy_firmware(PRODUCT, ["dev-norange"], "1.2", image)
    world.platform.files.hooks.cut_at(deployment.file_id, [MB])
    dev.start()
    wait_for("the cut attempt to fail", lambda: dev.state("ota") == "idle")
    world.platform.files.hooks.ignore_range = True
    world.advance(10.0)
    wait_for("the device to run 1.2", lambda: dev.version == "1.2")
    assert (dev.state_dir / "ota" / "firmware-1.2.bin").read_bytes() == image


def test_not_found_gives_fail_minus_two(world: OtaWorld) -> None:
    dev = world.device("dev-404", version="1.0")
    deployment = world.platform.deploy_firmware(PRODUCT, ["dev-404"], "2.0", firmware(1000))
    os.remove(world.platform.files.data_dir / "files" / deployment.file_id)
    dev.start()
    wait_for(
        "fail -2 on the wire",
        lambda: world.reported_fail(-2),
    )


def test_an_expired_url_fails_minus_three_then_a_fresh_url_resumes(tmp_path: Path) -> None:
    world = OtaWorld(tmp_path, url_ttl=5.0)
    try:
        size = 2 * MB
        image = firmware(size, seed=9)
        dev = world.device("dev-403", version="1.0")
        deployment = world.platform.deploy_firmware(PRODUCT, ["dev-403"], "3.0", image)
        world.platform.files.hooks.cut_at(deployment.file_id, [700_000])
        dev.start()
        wait_for("the first attempt to be cut", lambda: dev.state("ota") == "idle")
        # the answer to the next report (rsp and offer) reaches the device after the URL expired
        world.broker.inject(Delay("$ota/update/+/+", seconds=6.0, times=2))
        world.advance(10.0)
        world.advance(6.0)
        wait_for(
            "fail -3",
            lambda: world.reported_fail(-3),
        )
        wait_for("the device to be idle again", lambda: dev.state("ota") == "idle")
        assert world.platform.firmware_status(PRODUCT, "dev-403").result_code == -3
        world.advance(10.0)  # it reports again and gets a fresh URL
        wait_for("the device to run 3.0", lambda: dev.version == "3.0")
        gets = [r for r in world.platform.files.hooks.requests() if r.method == "GET"]
        assert [g.status for g in gets] == [200, 403, 206]
        assert gets[-1].range == f"bytes=700000-{size - 1}"
        assert (dev.state_dir / "ota" / "firmware-3.0.bin").read_bytes() == image
    finally:
        world.close()


def test_wrong_md5_fails_minus_four_and_deletes_the_partial(world: OtaWorld) -> None:
    dev = world.device("dev-md5", version="1.0")
    deployment = world.platform.deploy_firmware(PRODUCT, ["dev-md5"], "4.0", firmware(100_000))
    # corrupt the served file behind the platform's back: same size, other bytes
    (world.platform.files.data_dir / "files" / deployment.file_id).write_bytes(
        firmware(100_000, seed=99)
    )
    dev.start()
    wait_for(
        "fail -4",
        lambda: world.reported_fail(-4),
    )
    slot = dev.state_dir / "ota" / "firmware"
    assert not partial_path(slot / "data").exists()
    assert not (slot / "data").exists()
    assert not (slot / "checkpoint.json").exists()
    assert dev.version == "1.0"


def test_failing_burn_gives_fail_minus_five(world: OtaWorld) -> None:
    def burn(image: Path, version: str) -> None:
        raise RuntimeError("flash write error")

    dev = world.device("dev-burn", version="1.0", burn=burn).start()
    world.platform.deploy_firmware(PRODUCT, ["dev-burn"], "5.0", firmware(50_000))
    wait_for(
        "fail -5",
        lambda: world.reported_fail(-5),
    )
    assert dev.version == "1.0"
    assert world.platform.firmware_status(PRODUCT, "dev-burn").state == "retrying"


def test_a_partial_of_firmware_a_is_never_mixed_into_firmware_b(world: OtaWorld) -> None:
    size = MB
    a, b = firmware(size, seed=10), firmware(size, seed=11)
    dev = world.device("dev-ab", version="1.0")
    dep_a = world.platform.deploy_firmware(PRODUCT, ["dev-ab"], "6.0", a)
    world.platform.files.hooks.cut_at(dep_a.file_id, [size // 2])
    dev.start()
    wait_for("A to be cut halfway", lambda: dev.state("ota") == "idle")
    world.platform.deploy_firmware(PRODUCT, ["dev-ab"], "6.1", b)
    wait_for("the device to run B", lambda: dev.version == "6.1")
    assert (dev.state_dir / "ota" / "firmware-6.1.bin").read_bytes() == b
    gets = [r for r in world.platform.files.hooks.requests() if r.method == "GET"]
    assert gets[-1].range is None  # B started from 0, not from A's offset


def test_every_device_of_a_product_including_later_ones(world: OtaWorld) -> None:
    image = firmware(10_000)
    first = world.device("p-1", version="1.0").start()
    world.platform.deploy_firmware(PRODUCT, "*", "7.0", image)
    late = world.device("p-2", version="1.0").start()
    wait_for("both devices to run 7.0", lambda: first.version == late.version == "7.0")
    wait_for(
        "both confirmed",
        lambda: all(
            world.platform.firmware_status(PRODUCT, n).state == "succeeded" for n in ("p-1", "p-2")
        ),
    )


def test_tasks_and_progress_survive_a_platform_restart(tmp_path: Path) -> None:
    world = OtaWorld(tmp_path)
    world.platform.register_device(PRODUCT, "dev-r")
    world.platform.deploy_firmware(PRODUCT, ["dev-r"], "8.0", firmware(20_000))
    status = world.platform.firmware_status(PRODUCT, "dev-r")
    assert (status.state, status.target) == ("offered", "8.0")
    world.platform.stop()
    again = OtaWorld(tmp_path)  # a new platform process on the same data directory
    try:
        assert again.platform.firmware_status(PRODUCT, "dev-r").state == "offered"
        dev = again.device("dev-r", version="7.0").start()
        wait_for("the device to run 8.0", lambda: dev.version == "8.0")
        wait_for(
            "confirmed",
            lambda: again.platform.firmware_status(PRODUCT, "dev-r").state == "succeeded",
        )
    finally:
        again.close()
