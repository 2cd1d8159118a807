"""Resources end to end: uploads and deliveries over the memory broker and real HTTP."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from ota_world import PRODUCT, OtaWorld, wait_for

from iotfsm.adapters.mqtt.memory_broker import Delay
from iotfsm.machines import resources

MB = 1024 * 1024


@pytest.fixture
def world(tmp_path: Path) -> Iterator[OtaWorld]:
    w = OtaWorld(tmp_path)
    yield w
    w.close()


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_a_five_megabyte_upload_is_stored_byte_identical(world: OtaWorld, tmp_path: Path) -> None:
    ended: list[tuple[str, bool, int, str]] = []
    dev = world.device("up-1", on_upload_finished=lambda *a: ended.append(a)).start()
    data = blob(5 * MB, 1)
    source = tmp_path / "capture.bin"
    source.write_bytes(data)
    dev.upload(source, "capture.bin")
    wait_for("the upload to end", lambda: bool(ended))
    assert ended == [("capture.bin", True, 0, "done")]
    wait_for("the final answer", lambda: dev.state("resource_upload") == "idle")
    [info] = world.platform.uploads(PRODUCT, "up-1")
    assert (info.name, info.md5, info.size, info.state, info.stored) == (
        "capture.bin",
        hashlib.md5(data).hexdigest(),
        5 * MB,
        "done",
        True,
    )
    assert Path(info.path).read_bytes() == data
    puts = [r for r in world.platform.files.hooks.requests() if r.method == "PUT"]
    assert [r.status for r in puts] == [200]
    up = [m for m in world.wire("$resource/up/") if m["type"] == "report_upload_progress"]
    assert up[0] == {
        "type": "report_upload_progress",
        "name": "capture.bin",
        "progress": {"state": "uploading", "percent": 0, "result_code": 0, "result_msg": ""},
    }
    assert up[-1] == {
        "type": "report_upload_progress",
        "name": "capture.bin",
        "progress": {"state": "done", "result_code": 0, "result_msg": ""},
    }
    answers = [
        m for m in world.wire("$resource/down/") if m["type"] == "report_upload_progress_rsp"
    ]
    assert len(answers) == len(up) and all(
        a == {"type": "report_upload_progress_rsp", "result_code": 0, "result_msg": "ok"}
        for a in answers
    )
    create = next(m for m in world.wire("$resource/up/") if m["type"] == "create_upload_task")
    assert create == {
        "type": "create_upload_task",
        "size": 5 * MB,
        "name": "capture.bin",
        "md5sum": hashlib.md5(data).hexdigest(),
    }


def test_a_declared_md5_that_does_not_match_is_rejected_and_nothing_stored(
    world: OtaWorld, tmp_path: Path
) -> None:
    ended: list[tuple[str, bool, int, str]] = []
    dev = world.device("up-2", on_upload_finished=lambda *a: ended.append(a)).start()
    source = tmp_path / "log.txt"
    source.write_bytes(b"x" * 1000)
    wrong = hashlib.md5(b"something else").hexdigest()
    dev.runtime.post(
        "resource_upload", dev.key, resources.Upload("log.txt", str(source), 1000, wrong)
    )
    wait_for("the upload to end", lambda: bool(ended))
    assert ended[0][:3] == ("log.txt", False, -4)
    [info] = world.platform.uploads(PRODUCT, "up-2")
    assert (info.state, info.code, info.stored) == ("fail", -4, False)
    assert not any(world.platform.files.data_dir.joinpath("uploads").iterdir())


def test_a_body_altered_in_transit_is_rejected(world: OtaWorld, tmp_path: Path) -> None:
    ended: list[tuple[str, bool, int, str]] = []
    dev = world.device("up-3", on_upload_finished=lambda *a: ended.append(a)).start()
    source = tmp_path / "photo.jpg"
    source.write_bytes(blob(200_000, 2))
    world.broker.inject(Delay("$resource/down/service/+/+", seconds=1.0))
    dev.upload(source, "photo.jpg")  # md5 measured now; the body changes before the PUT
    source.write_bytes(blob(200_000, 3))
    world.advance(1.0)
    wait_for("the upload to end", lambda: bool(ended))
    assert ended[0][:3] == ("photo.jpg", False, -4)
    assert world.platform.uploads(PRODUCT, "up-3")[0].stored is False


def test_a_five_megabyte_delivery_with_two_cuts_resumes_with_range(world: OtaWorld) -> None:
    got: list[tuple[Path, str]] = []
    data = blob(5 * MB, 4)
    dev = world.device("down-1", on_resource=lambda p, n: got.append((p, n)))
    [offer] = world.platform.offer_resource(PRODUCT, ["down-1"], "faces.db", data)
    file_id = f"res-{offer.md5}"
    world.platform.files.hooks.cut_at(file_id, [MB, 3 * MB])
    dev.start()
    for pause in (5.0, 10.0):
        wait_for("a cut", lambda: dev.state("resource_download") == "retrying")
        world.advance(pause)
    wait_for("the delivery", lambda: bool(got))
    path, name = got[0]
    assert name == "faces.db" and path.read_bytes() == data
    assert path == dev.resources_dir / "faces.db"
    gets = [r for r in world.platform.files.hooks.requests() if r.method == "GET"]
    assert [g.range for g in gets] == [
        None,
        f"bytes={MB}-{5 * MB - 1}",
        f"bytes={3 * MB}-{5 * MB - 1}",
    ]
    wait_for(
        "done on the platform",
        lambda: world.platform.deliveries(PRODUCT, "down-1")[0].state == "done",
    )


def test_a_device_offline_when_the_task_was_queued_picks_it_up_on_reconnect(
    world: OtaWorld,
) -> None:
    got: list[str] = []
    dev = world.device("down-2", on_resource=lambda p, n: got.append(n)).start()
    world.broker.disconnect(dev.runtime.transport.client_id)  # type: ignore[attr-defined]
    world.platform.offer_resource(PRODUCT, ["down-2"], "music.mp3", blob(50_000, 5))
    assert got == []
    world.broker.reconnect(dev.runtime.transport.client_id)  # type: ignore[attr-defined]
    wait_for("the delivery after reconnect", lambda: got == ["music.mp3"])
    asks = [m for m in world.wire("$resource/up/") if m["type"] == "get_download_task"]
    assert len(asks) == 2  # one at start, one after the reconnect


@pytest.mark.parametrize(
    "name", ["../escape", "a/b", "a\\b", "nul\x00x", "n" * 65, "..", ".profile"]
)
def test_hostile_names_are_refused_on_both_sides(
    world: OtaWorld, tmp_path: Path, name: str
) -> None:
    dev = world.device("names", on_upload_finished=lambda *a: None).start()
    source = tmp_path / "f"
    source.write_bytes(b"data")
    with pytest.raises(ValueError, match="refused"):
        dev.upload(source, name)
    with pytest.raises(ValueError, match="refused"):
        world.platform.offer_resource(PRODUCT, ["names"], name, b"data")
    # a hostile task pushed by a (compromised) platform: refused with a fail report
    task = {
        "type": "download",
        "size": 4,
        "name": name,
        "md5sum": hashlib.md5(b"data").hexdigest(),
        "url": "http://127.0.0.1:9/x",
    }
    dev.runtime.on_message(f"$resource/down/service/{PRODUCT}/names", json.dumps(task).encode())
    fails = [m for m in world.wire("$resource/up/") if m["type"] == "report_download_progress"]
    assert (
        fails
        and fails[-1]["progress"]["state"] == "fail"
        and fails[-1]["progress"]["result_code"] == -2
    )
    # a hostile upload request from a (compromised) device: the platform grants nothing
    create = {
        "type": "create_upload_task",
        "size": 4,
        "name": name,
        "md5sum": hashlib.md5(b"data").hexdigest(),
    }
    world.platform.runtime.on_message(
        f"$resource/up/service/{PRODUCT}/names", json.dumps(create).encode()
    )
    # it is answered (issue 16.4: it used to get no answer at all), with a refusal and no URL
    answers = [m for m in world.wire("$resource/down/") if m["type"] == "create_upload_task_rsp"]
    assert answers and all(m["url"] == "" and m["result_code"] == -6 for m in answers)
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    assert not any(".." in p.parts for p in written)
    assert not (tmp_path.parent / "escape").exists()
