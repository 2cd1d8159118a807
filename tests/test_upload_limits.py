"""Upload grants have bounds and leave no orphans (issue 16.4).

The platform granted a 100 MB upload with 19 MB free, an invalid `create_upload_task` got no
answer at all, and a SIGKILL during a PUT left a temporary file no restart removed. Now a grant
over `max_upload` or over the free space is refused with a `create_upload_task_rsp` that the
device understands (`url` empty, `result_code` -6), and temporary files older than the process
are removed when the file service is built."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from iotfsm.adapters.codec import Codec
from iotfsm.adapters.http.file_service import FileService
from iotfsm.adapters.mqtt.memory_broker import MemoryBroker
from iotfsm.commands.platform import _size
from iotfsm.fsm import CancelTimer, Connected, Log, Publish, SetTimer, Stepper
from iotfsm.machines import all_features
from iotfsm.machines.feature import DeviceKey
from iotfsm.machines.resources import (
    UPLOAD_DEVICE,
    UPLOAD_PLATFORM,
    UPLOAD_REFUSED,
    CreateUploadTask,
    CreateUploadTaskRsp,
    GrantUpload,
    Upload,
    UploadFinished,
    UploadRefused,
)
from iotfsm.platform import Platform
from iotfsm.testing import Pair

KEY = DeviceKey("P1", "dev-1")
MD5 = "2af9455c6051c337cbfba7fbc0e1abc1"
CODEC = Codec(all_features())
SRC = str(Path(__file__).resolve().parents[1] / "src")


# ---- the machines, stepped by hand ---------------------------------------------------------------


def test_a_refused_grant_ends_the_upload_with_a_clear_fail() -> None:
    s = Stepper(UPLOAD_DEVICE, key=KEY)
    s.step(Connected())
    s.step(Upload("a", "/a", 10, MD5))
    refusal = CreateUploadTaskRsp(10, "a", MD5, "", -6, "no room")
    why = "the platform refused the upload (-6): no room"
    assert s.step(refusal) == [
        CancelTimer("rsp"),
        UploadFinished("a", False, -6, why),
        Log.warning(f"upload of 'a': {why}"),
    ]
    assert s.state == "idle" and s.ctx.current is None


def test_a_refusal_moves_on_to_the_next_queued_upload() -> None:
    s = Stepper(UPLOAD_DEVICE, key=KEY)
    s.step(Connected())
    s.step(Upload("a", "/a", 10, MD5))
    s.step(Upload("b", "/b", 20, MD5))
    # no code but no URL either: a refusal too (-6 stands in for the missing code)
    out = s.step(CreateUploadTaskRsp(10, "a", MD5, ""))
    why = "the platform refused the upload (-6): no URL given"
    assert out == [
        UploadFinished("a", False, UPLOAD_REFUSED, why),
        Log.warning(f"upload of 'a': {why}"),
        Publish(CreateUploadTask(20, "b", MD5), 1),
        SetTimer("rsp", 10.0, 2),
    ]
    assert s.state == "creating" and s.ctx.current is not None and s.ctx.current.name == "b"


def test_a_refusal_of_another_upload_is_ignored() -> None:
    s = Stepper(UPLOAD_DEVICE, key=KEY)
    s.step(Connected())
    s.step(Upload("a", "/a", 10, MD5))
    out = s.step(CreateUploadTaskRsp(10, "other", MD5, "", -6, "no"))
    assert out == [Log.info("ignored create_upload_task_rsp for 'other': not the current upload")]
    assert s.state == "creating"


def test_the_platform_answers_a_refused_grant_and_stops_waiting() -> None:
    s = Stepper(UPLOAD_PLATFORM, key=KEY)
    assert s.step(CreateUploadTask(100, "big", MD5)) == [
        GrantUpload("big", 100, MD5),
        SetTimer("silence", 300.0, 1),
    ]
    out = s.step(UploadRefused("big", 100, MD5, "over 50 bytes"))
    assert out == [
        CancelTimer("silence"),
        Publish(CreateUploadTaskRsp(100, "big", MD5, "", -6, "over 50 bytes"), 1),
        Log.warning("refused upload of 'big': over 50 bytes"),
    ]
    assert s.state == "idle"
    # a refusal that is not about the current upload is still answered; the state stays
    s.step(CreateUploadTask(10, "small", MD5))
    out = s.step(UploadRefused("big", 100, MD5, "late"))
    assert out[0] == Publish(CreateUploadTaskRsp(100, "big", MD5, "", -6, "late"), 1)
    assert s.state == "receiving"


def test_the_granting_answer_stays_exact_and_the_refusal_carries_its_code() -> None:
    assert CODEC.encode(CreateUploadTaskRsp(100, "zxc", MD5, "http://f/u")) == (
        b'{"type":"create_upload_task_rsp","size":100,"name":"zxc","md5sum":"'
        + MD5.encode()
        + b'","url":"http://f/u"}'
    )
    refusal = CreateUploadTaskRsp(100, "zxc", MD5, "", -6, "too big")
    doc = json.loads(CODEC.encode(refusal))
    assert (doc["url"], doc["result_code"], doc["result_msg"]) == ("", -6, "too big")
    assert CODEC.decode("resource_upload", "down", CODEC.encode(refusal)) == refusal


# ---- the platform, over the memory broker ----------------------------------------------------------


def upload_and_wait(pair: Pair, tmp_path: Path, size: int) -> list[tuple[str, bool, int, str]]:
    finished: list[tuple[str, bool, int, str]] = []
    device = pair.device("d1", on_upload_finished=lambda *args: finished.append(args)).start()
    source = tmp_path / "payload.bin"
    source.write_bytes(b"u" * size)
    device.upload(source, "payload.bin")
    pair.wait_for("the upload to end", lambda: bool(finished))
    return finished


def test_an_upload_over_max_upload_is_refused_and_the_device_told(tmp_path: Path) -> None:
    with Pair(tmp_path / "pair", max_upload=1000) as pair:
        finished = upload_and_wait(pair, tmp_path, 1001)
        [(name, ok, code, message)] = finished
        assert (name, ok, code) == ("payload.bin", False, UPLOAD_REFUSED)
        assert "over the platform's maximum upload of 1000 bytes" in message
        assert pair.platform.uploads() == []  # nothing granted, nothing recorded
        assert pair.devices[0].state("resource_upload") == "idle"
        answers = [m for m in pair.wire("$resource/down/") if m["type"] == "create_upload_task_rsp"]
        assert [(a["url"], a["result_code"]) for a in answers] == [("", UPLOAD_REFUSED)]


def test_an_upload_at_max_upload_is_granted(tmp_path: Path) -> None:
    with Pair(tmp_path / "pair", max_upload=1000) as pair:
        assert upload_and_wait(pair, tmp_path, 1000) == [("payload.bin", True, 0, "done")]
        pair.wait_for("the record", lambda: any(u.stored for u in pair.platform.uploads()))


def test_an_upload_larger_than_the_free_space_is_refused(tmp_path: Path) -> None:
    service = FileService(tmp_path / "files")
    free = shutil.disk_usage(service.data_dir).free
    assert service.upload_refusal(1024) is None
    problem = service.upload_refusal(free + 10**9)
    assert problem is not None and "bytes free" in problem
    # the platform asks the same question before granting: a device asking for more than the
    # disk holds (the platform does not read the file, so the size alone is enough) is refused
    with Pair(tmp_path / "pair") as pair:
        pair.device("d2").start()
        too_big = shutil.disk_usage(pair.platform.files.data_dir).free + 10**9
        create = {"type": "create_upload_task", "size": too_big, "name": "x", "md5sum": MD5}
        pair.platform.runtime.on_message(
            f"$resource/up/service/{pair.product}/d2", json.dumps(create).encode()
        )
        pair.settle()
        [answer] = [
            m for m in pair.wire("$resource/down/") if m["type"] == "create_upload_task_rsp"
        ]
        assert answer["url"] == "" and answer["result_code"] == UPLOAD_REFUSED
        assert "bytes free" in answer["result_msg"]


def test_max_upload_must_be_positive_and_the_flag_takes_units(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_upload must be a positive"):
        Platform(MemoryBroker(), max_upload=0)
    assert (_size("1048576"), _size("512K"), _size("50M"), _size("2g")) == (
        1048576,
        512 * 1024,
        50 * 1024**2,
        2 * 1024**3,
    )
    for bad in ("", "M", "-1", "1.5M", "10T", "0"):
        with pytest.raises(Exception, match="must be a size"):
            _size(bad)


def test_the_cli_passes_max_upload(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "iotfsm", "platform", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        check=True,
    ).stdout
    assert "--max-upload" in out


# ---- orphans of a killed process -----------------------------------------------------------------

SERVE = """
import sys, time
from pathlib import Path
from iotfsm.adapters.http.file_service import FileService
from iotfsm.adapters.mqtt.memory_broker import MemoryBroker
service = FileService(Path(sys.argv[1]), secret=b"s").start()
print(service.base_url, service.signed_put_url("big", int(sys.argv[2]), sys.argv[3], 600), flush=True)
time.sleep(600)
"""
BUILD = """
import sys
from pathlib import Path
from iotfsm.adapters.http.file_service import FileService
from iotfsm.adapters.mqtt.memory_broker import MemoryBroker
FileService(Path(sys.argv[1]), secret=b"s")
"""


def test_a_put_cut_by_sigkill_leaves_no_orphan_after_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "files"
    size = 20 * 1024 * 1024
    md5 = hashlib.md5(b"\0" * size).hexdigest()
    env = {**os.environ, "PYTHONPATH": SRC}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(data_dir), str(size), md5],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        base, url = server.stdout.readline().split()
        parts, host = urlsplit(url), urlsplit(base)
        conn = http.client.HTTPConnection(str(host.hostname), host.port, timeout=30)
        conn.putrequest("PUT", f"{parts.path}?{parts.query}")
        conn.putheader("Content-Length", str(size))
        conn.putheader("Content-MD5", base64.b64encode(bytes.fromhex(md5)).decode())
        conn.endheaders()
        conn.send(b"\0" * (5 * 1024 * 1024))
        tmp = data_dir / "tmp"
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size > 0 for p in tmp.iterdir()):
            assert time.monotonic() < deadline, "the PUT never reached the disk"
            time.sleep(0.02)
        server.send_signal(signal.SIGKILL)
        server.wait(30)
        conn.close()
    finally:
        server.kill()
        server.wait(30)
    orphans = list((data_dir / "tmp").iterdir())
    assert orphans, "the killed PUT should have left its temporary file"
    time.sleep(0.05)  # the next process starts strictly after the orphan's last write
    subprocess.run([sys.executable, "-c", BUILD, str(data_dir)], env=env, check=True)
    assert list((data_dir / "tmp").iterdir()) == []
    assert list((data_dir / "uploads").iterdir()) == []


def test_a_temporary_file_newer_than_the_process_is_kept(tmp_path: Path) -> None:
    tmp = tmp_path / "files" / "tmp"
    tmp.mkdir(parents=True)
    fresh, old = tmp / "upload-fresh", tmp / "upload-old"
    fresh.write_bytes(b"in flight")
    old.write_bytes(b"orphan")
    os.utime(old, (time.time() - 86400, time.time() - 86400))
    FileService(tmp_path / "files")
    assert sorted(p.name for p in tmp.iterdir()) == ["upload-fresh"]
