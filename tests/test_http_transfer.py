"""Device-side transfers against real HTTP servers on 127.0.0.1: resume, failures, uploads."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from iotfsm.adapters.http.file_service import FileService
from iotfsm.adapters.http.transfer import (
    ConnectionLostError,
    DownloadResult,
    HttpStatusError,
    Md5MismatchError,
    RemoteNotFoundError,
    SignatureRejectedError,
    TransferCancelledError,
    TransferCode,
    TransferTimeoutError,
    UnsupportedUrlError,
    content_md5,
    download,
    file_md5,
    partial_path,
    read_checkpoint,
    upload,
)
from iotfsm.fsm.clock import ManualClock

MB = 1024 * 1024
CHUNK = 64 * 1024
NOW = 1_700_000_000.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def service(tmp_path: Path, clock: ManualClock) -> Iterator[FileService]:
    with FileService(tmp_path / "platform", clock=clock) as svc:
        yield svc


def random_file(path: Path, size: int, seed: int = 0) -> str:
    """Write `size` pseudo-random bytes in pieces (never all in memory); return the md5."""
    rng = random.Random(seed)
    digest = hashlib.md5()
    with path.open("wb") as out:
        left = size
        while left:
            piece = rng.randbytes(min(MB, left))
            out.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


class Device:
    """Where a device keeps its download and checkpoint, and how it calls `download`."""

    def __init__(self, root: Path) -> None:
        self.dest = root / "device" / "fw.bin"
        self.checkpoint = root / "device" / "ota.checkpoint.json"

    def fetch(
        self, url: str, size: int, md5: str, version: str = "0.2", **kwargs: Any
    ) -> DownloadResult:
        return download(
            url,
            self.dest,
            size=size,
            md5=md5,
            identity={"version": version},
            checkpoint=self.checkpoint,
            **kwargs,
        )

    @property
    def partial(self) -> Path:
        return partial_path(self.dest)


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(tmp_path)


def ranges(service: FileService, name: str) -> list[str | None]:
    return [r.range for r in service.hooks.requests() if r.name == name]


# Resume -----------------------------------------------------------------------------------------


def test_download_cut_three_times_resumes_from_each_checkpoint(
    service: FileService, device: Device
) -> None:
    size = 8 * MB
    data = os.urandom(size)
    ref = service.publish_file(data, name="fw-0.2")
    cuts = sorted(random.Random(7).sample(range(1, size), 3))
    service.hooks.cut_at("fw-0.2", cuts)
    url = service.signed_get_url("fw-0.2", 3600)
    for cut in cuts:
        with pytest.raises(ConnectionLostError) as failed:
            device.fetch(url, ref.size, ref.md5)
        assert failed.value.code == TransferCode.FAILED
        assert int(failed.value.code) == -1
        saved = read_checkpoint(device.checkpoint)
        assert saved is not None
        assert saved.offset == cut  # everything received was fsynced before the failure
        assert device.partial.stat().st_size == cut
    result = device.fetch(url, ref.size, ref.md5)
    assert result.md5 == ref.md5
    assert result.resumed_from == cuts[-1]
    assert result.fetched == size - cuts[-1]
    assert device.dest.read_bytes() == data
    assert not device.partial.exists()
    assert not device.checkpoint.exists()
    assert ranges(service, "fw-0.2") == [None] + [f"bytes={c}-{size - 1}" for c in cuts]
    assert [r.status for r in service.hooks.requests()] == [200, 206, 206, 206]
    assert service.hooks.bytes_served("fw-0.2") <= size + 3 * CHUNK


def test_resume_after_a_reboot_drops_bytes_past_the_checkpoint(
    service: FileService, device: Device
) -> None:
    data = os.urandom(2 * MB)
    ref = service.publish_file(data, name="fw")
    url = service.signed_get_url("fw", 3600)
    service.hooks.cut_after("fw", 1_500_000)
    with pytest.raises(ConnectionLostError):
        device.fetch(url, ref.size, ref.md5, checkpoint_every=256 * 1024)
    # Pretend the power went out: the checkpoint lags the data, and unsynced junk trails it.
    # The checkpoint was written during an earlier boot, so nothing past it is trusted.
    saved = read_checkpoint(device.checkpoint)
    assert saved is not None
    raw = json.loads(device.checkpoint.read_text())
    raw["offset"] = 1_000_000
    raw["boot"] = "an-earlier-boot"
    device.checkpoint.write_text(json.dumps(raw))
    with device.partial.open("ab") as partial:
        partial.write(b"\0" * MB)  # now longer than the whole file
    result = device.fetch(url, ref.size, ref.md5)
    assert result.resumed_from == 1_000_000
    assert device.dest.read_bytes() == data
    assert ranges(service, "fw")[-1] == f"bytes=1000000-{len(data) - 1}"


def test_sigkill_mid_download_leaves_a_checkpoint_that_resumes(
    service: FileService, device: Device, tmp_path: Path
) -> None:
    """A real SIGKILL: the checkpoint on disk never claims bytes the partial does not hold, and
    the next run (same boot) continues from the partial's length, not from the checkpoint: with
    the 0.25 s floor the only checkpoint of this fast run is its first one, but a killed process
    loses nothing that it wrote."""
    size = 6 * MB
    firmware = tmp_path / "fw.bin"
    md5 = random_file(firmware, size)
    service.publish_file(firmware, name="fw")
    url = service.signed_get_url("fw", 3600)
    script = f"""
import os, signal
from pathlib import Path
from typing import Any
from iotfsm.adapters.http.transfer import download
def die(done, total):
    if done >= {3 * MB + 12345}:
        os.kill(os.getpid(), signal.SIGKILL)
download({url!r}, Path({str(device.dest)!r}), size={size}, md5={md5!r},
         identity={{"version": "0.2"}}, checkpoint=Path({str(device.checkpoint)!r}),
         on_progress=die)
"""
    child = subprocess.run([sys.executable, "-c", script], timeout=30, check=False)
    assert child.returncode == -signal.SIGKILL
    saved = read_checkpoint(device.checkpoint)
    assert saved is not None
    length = device.partial.stat().st_size
    assert 0 < saved.offset <= length
    assert length >= 3 * MB + 12345  # every byte reported was written before the kill
    result = device.fetch(url, size, md5)
    assert result.resumed_from == length
    assert file_md5(device.dest) == md5
    assert ranges(service, "fw")[-1] == f"bytes={length}-{size - 1}"


def test_server_ignoring_range_on_resume_starts_over_cleanly(
    service: FileService, device: Device
) -> None:
    data = os.urandom(MB)
    ref = service.publish_file(data, name="fw")
    url = service.signed_get_url("fw", 3600)
    service.hooks.cut_after("fw", 400_000)
    with pytest.raises(ConnectionLostError):
        device.fetch(url, ref.size, ref.md5)
    service.hooks.ignore_range = True
    result = device.fetch(url, ref.size, ref.md5)
    assert result.restarts == 1
    assert result.resumed_from == 400_000
    assert device.dest.read_bytes() == data  # never the old prefix with a full body appended
    requests = service.hooks.requests()
    assert [(r.range, r.status) for r in requests] == [
        (None, 200),
        (f"bytes=400000-{len(data) - 1}", 200),
    ]


def test_a_different_offer_discards_the_old_partial(service: FileService, device: Device) -> None:
    old = os.urandom(MB)
    new = os.urandom(MB)
    old_ref = service.publish_file(old, name="fw-0.2")
    new_ref = service.publish_file(new, name="fw-0.3")
    service.hooks.cut_after("fw-0.2", 600_000)
    with pytest.raises(ConnectionLostError):
        device.fetch(service.signed_get_url("fw-0.2", 60), old_ref.size, old_ref.md5, "0.2")
    assert device.partial.stat().st_size == 600_000
    result = device.fetch(service.signed_get_url("fw-0.3", 60), new_ref.size, new_ref.md5, "0.3")
    assert result.resumed_from == 0
    assert device.dest.read_bytes() == new
    assert ranges(service, "fw-0.3") == [None]


@pytest.mark.parametrize("change", ["version", "md5", "size"])
def test_identity_size_and_md5_must_all_match_to_resume(
    service: FileService, device: Device, change: str
) -> None:
    data = os.urandom(MB)
    ref = service.publish_file(data, name="fw")
    url = service.signed_get_url("fw", 60)
    service.hooks.cut_after("fw", 300_000)
    with pytest.raises(ConnectionLostError):
        device.fetch(url, ref.size, ref.md5)
    if change == "version":
        assert device.fetch(url, ref.size, ref.md5, "0.2-hotfix").resumed_from == 0
    else:
        other = hashlib.md5(b"another build").hexdigest()
        size, md5 = (ref.size - 1, ref.md5) if change == "size" else (ref.size, other)
        with pytest.raises(Md5MismatchError):  # the offer is wrong about the file
            device.fetch(url, size, md5)
    assert ranges(service, "fw") == [None, None]  # started over, no Range


def test_md5_mismatch_deletes_partial_and_checkpoint(service: FileService, device: Device) -> None:
    ref = service.publish_file(os.urandom(300_000), name="fw")
    wrong = hashlib.md5(b"not it").hexdigest()
    with pytest.raises(Md5MismatchError) as failed:
        device.fetch(service.signed_get_url("fw", 60), ref.size, wrong.upper())
    assert failed.value.code == -4
    assert not device.partial.exists()
    assert not device.checkpoint.exists()
    assert not device.dest.exists()


def test_md5_is_compared_case_insensitively(service: FileService, device: Device) -> None:
    ref = service.publish_file(b"firmware", name="fw")
    result = device.fetch(service.signed_get_url("fw", 60), ref.size, ref.md5.upper())
    assert result.md5 == ref.md5


def test_a_server_sending_more_than_declared_is_cut_off(
    service: FileService, device: Device
) -> None:
    data = os.urandom(500_000)
    service.publish_file(data + os.urandom(100_000), name="fw")  # the file outgrew the offer
    expected = hashlib.md5(data).hexdigest()
    result = device.fetch(service.signed_get_url("fw", 60), len(data), expected)
    assert result.size == len(data)
    assert device.dest.read_bytes() == data


def test_a_body_without_length_is_read_up_to_size_only(tmp_path: Path, device: Device) -> None:
    data = os.urandom(200_000)

    class Endless(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(data)
            except OSError:
                pass

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve(Endless) as base:
        result = device.fetch(f"{base}/fw", 150_000, hashlib.md5(data[:150_000]).hexdigest())
    assert result.size == 150_000
    assert device.dest.stat().st_size == 150_000


def test_cancel_keeps_the_checkpoint_for_the_next_offer(
    service: FileService, device: Device
) -> None:
    data = os.urandom(2 * MB)
    ref = service.publish_file(data, name="fw")
    url = service.signed_get_url("fw", 60)
    cancel = threading.Event()
    progress: list[tuple[int, int]] = []

    def on_progress(done: int, total: int) -> None:
        progress.append((done, total))
        if done >= 500_000:
            cancel.set()

    with pytest.raises(TransferCancelledError) as failed:
        device.fetch(url, ref.size, ref.md5, on_progress=on_progress, cancel=cancel)
    assert failed.value.code == -1
    assert progress[0] == (0, ref.size)
    saved = read_checkpoint(device.checkpoint)
    assert saved is not None
    assert saved.offset == progress[-1][0] >= 500_000
    progress.clear()
    result = device.fetch(url, ref.size, ref.md5, on_progress=on_progress)
    assert result.resumed_from == saved.offset
    assert progress[0] == (saved.offset, ref.size)
    assert progress[-1] == (ref.size, ref.size)
    assert device.dest.read_bytes() == data


def test_empty_file(service: FileService, device: Device) -> None:
    ref = service.publish_file(b"", name="empty")
    result = device.fetch(service.signed_get_url("empty", 60), 0, ref.md5)
    assert result.size == 0
    assert device.dest.read_bytes() == b""


# Failures ---------------------------------------------------------------------------------------


def test_404_is_code_minus_2(service: FileService, device: Device) -> None:
    with pytest.raises(RemoteNotFoundError) as failed:
        device.fetch(service.signed_get_url("nope", 60), 10, "0" * 32)
    assert (failed.value.code, failed.value.status) == (-2, 404)


def test_expired_url_is_code_minus_3(
    service: FileService, device: Device, clock: ManualClock
) -> None:
    ref = service.publish_file(b"abc", name="fw")
    url = service.signed_get_url("fw", 60)
    clock.advance(61)
    with pytest.raises(SignatureRejectedError) as failed:
        device.fetch(url, ref.size, ref.md5)
    assert (failed.value.code, failed.value.status) == (-3, 403)


def test_forged_or_extended_signature_is_code_minus_3(service: FileService, device: Device) -> None:
    ref = service.publish_file(b"abc", name="fw")
    url = service.signed_get_url("fw", 60)
    expires = int(NOW) + 60
    for bad in (url.replace(str(expires), str(expires + 3600)), url[:-1] + "x"):
        with pytest.raises(SignatureRejectedError):
            device.fetch(bad, ref.size, ref.md5)


def test_other_statuses_are_code_minus_1_with_the_status(tmp_path: Path, device: Device) -> None:
    with serve(status_handler(500)) as base, pytest.raises(HttpStatusError) as failed:
        device.fetch(f"{base}/fw", 10, "0" * 32)
    assert failed.value.code == -1
    assert failed.value.status == 500
    assert "500" in str(failed.value)


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/fw", "gopher://x/", "/relative", "http:///x"]
)
def test_only_http_and_https_urls_are_fetched(device: Device, url: str) -> None:
    with pytest.raises(UnsupportedUrlError):
        device.fetch(url, 10, "0" * 32)
    assert not device.partial.exists()


def test_a_redirect_to_file_is_refused(device: Device) -> None:
    to_file = redirect_handler(lambda _: "file:///etc/passwd")
    with serve(to_file) as base, pytest.raises(UnsupportedUrlError) as failed:
        device.fetch(f"{base}/fw", 10, "0" * 32)
    assert "file" in str(failed.value)


def test_redirects_are_followed_at_most_three_times(service: FileService, device: Device) -> None:
    ref = service.publish_file(b"redirected firmware", name="fw")
    target = service.signed_get_url("fw", 60)

    def location(path: str) -> str:
        hop = int(path.strip("/") or 0)
        return target if hop >= 2 else f"/{hop + 1}"

    with serve(redirect_handler(location)) as base:
        assert device.fetch(f"{base}/0", ref.size, ref.md5).size == ref.size
        with pytest.raises(HttpStatusError, match="redirect"):
            device.fetch(f"{base}/-1", ref.size, ref.md5)


def test_a_silent_server_times_out(device: Device) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with pytest.raises(TransferTimeoutError) as failed:
            device.fetch(f"http://127.0.0.1:{port}/fw", 10, "0" * 32, timeout=0.2)
    assert failed.value.code == -1


def test_a_refused_connection_is_connection_lost(device: Device) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    with pytest.raises(ConnectionLostError):
        device.fetch(f"http://127.0.0.1:{port}/fw", 10, "0" * 32)


def test_https_verifies_certificates_by_default(service: FileService, device: Device) -> None:
    host, port = service.address
    with pytest.raises(ConnectionLostError):  # a plain-HTTP listener fails the TLS handshake
        device.fetch(f"https://{host}:{port}/files/x", 10, "0" * 32, timeout=2)


def test_a_mismatched_content_range_starts_over(tmp_path: Path, device: Device) -> None:
    data = os.urandom(300_000)
    seen: list[str | None] = []

    class WrongRange(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append(self.headers.get("Range"))
            if self.headers.get("Range"):
                self.send_response(206)
                self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    md5 = hashlib.md5(data).hexdigest()
    with serve(WrongRange) as base:
        leave_partial(device, data[:100_000], len(data), md5)
        result = device.fetch(f"{base}/fw", len(data), md5)
    assert result.restarts == 1
    assert seen[-2:] == [f"bytes=100000-{len(data) - 1}", None]
    assert device.dest.read_bytes() == data


def leave_partial(device: Device, prefix: bytes, size: int, md5: str) -> None:
    """What an earlier run of the same offer (version 0.2) leaves behind after a power cut."""
    device.partial.parent.mkdir(parents=True, exist_ok=True)
    device.partial.write_bytes(prefix)
    device.checkpoint.write_text(
        json.dumps(
            {
                "format": 1,
                "identity": {"version": "0.2"},
                "size": size,
                "md5": md5,
                "offset": len(prefix),
                "partial": str(device.partial),
            }
        )
    )


def test_a_server_file_shorter_than_the_offer_is_code_minus_4(
    service: FileService, device: Device
) -> None:
    data = os.urandom(300_000)
    md5 = hashlib.md5(data).hexdigest()
    service.publish_file(data[:50_000], name="fw")  # the platform published the wrong build
    url = service.signed_get_url("fw", 60)
    with pytest.raises(Md5MismatchError, match="ended at byte 50000"):
        device.fetch(url, len(data), md5)
    assert not device.partial.exists()
    assert not device.checkpoint.exists()
    # Resuming past the end of that file: 416, then a fresh start, then the same verdict.
    leave_partial(device, data[:100_000], len(data), md5)
    with pytest.raises(Md5MismatchError):
        device.fetch(url, len(data), md5)
    assert [(r.range, r.status) for r in service.hooks.requests()][1:] == [
        (f"bytes=100000-{len(data) - 1}", 416),
        (None, 200),
    ]
    assert not device.partial.exists()


# Flat memory ------------------------------------------------------------------------------------


def test_a_64_mb_download_runs_in_flat_memory(
    service: FileService, device: Device, tmp_path: Path
) -> None:
    size = 64 * MB
    firmware = tmp_path / "big.bin"
    md5 = random_file(firmware, size, seed=64)
    service.publish_file(firmware, name="big")
    firmware.unlink()
    url = service.signed_get_url("big", 60)
    tracemalloc.start()
    try:
        result = device.fetch(url, size, md5, checkpoint_every=8 * MB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.md5 == md5
    assert device.dest.stat().st_size == size
    assert peak < 2 * MB, f"peak {peak} bytes"


# Upload -----------------------------------------------------------------------------------------


def test_content_md5_matches_the_protocol_example() -> None:
    assert content_md5("2af9455c6051c337cbfba7fbc0e1abc1") == "KvlFXGBRwzfL+6f7wOGrwQ=="
    assert content_md5("2AF9455C6051C337CBFBA7FBC0E1ABC1") == "KvlFXGBRwzfL+6f7wOGrwQ=="
    with pytest.raises(ValueError, match="hexadecimal"):
        content_md5("KvlFXGBRwzfL+6f7wOGrwQ==")


def test_upload_is_stored_byte_identical(service: FileService, tmp_path: Path) -> None:
    source = tmp_path / "log.tar"
    md5 = random_file(source, 3 * MB + 17, seed=3)
    size = source.stat().st_size
    progress: list[int] = []
    url = service.signed_put_url("dev1-log.tar", size, md5, 60)
    upload(url, source, md5=md5, size=size, on_progress=lambda done, _: progress.append(done))
    record = service.upload_record("dev1-log.tar")
    assert record is not None
    assert record.path.read_bytes() == source.read_bytes()
    assert progress[-1] == size
    upload(url, source, md5=md5, size=size)  # the device retries: idempotent
    assert len(service.uploads()) == 1


def test_upload_with_a_wrong_md5_is_code_minus_4(service: FileService, tmp_path: Path) -> None:
    source = tmp_path / "log.txt"
    source.write_bytes(os.urandom(2 * MB))
    wrong = hashlib.md5(b"something else").hexdigest()
    url = service.signed_put_url("k", 2 * MB, wrong, 60)
    with pytest.raises(Md5MismatchError) as failed:
        upload(url, source, md5=wrong, size=2 * MB)
    assert (failed.value.code, failed.value.status) == (-4, 400)
    assert service.uploads() == []
    assert list((service.data_dir / "uploads").iterdir()) == []


def test_upload_refused_before_the_body_still_reports_400(
    service: FileService, tmp_path: Path
) -> None:
    """The task's md5 differs from the file's: the service answers before reading 3 MB."""
    source = tmp_path / "log.txt"
    md5 = random_file(source, 3 * MB)
    url = service.signed_put_url("k", 3 * MB, hashlib.md5(b"the task").hexdigest(), 60)
    with pytest.raises(Md5MismatchError) as failed:
        upload(url, source, md5=md5, size=3 * MB)
    assert failed.value.status == 400
    assert service.uploads() == []


def test_upload_of_a_file_that_changed_size_is_refused_locally(
    service: FileService, tmp_path: Path
) -> None:
    source = tmp_path / "log.txt"
    source.write_bytes(b"12345")
    md5 = file_md5(source)
    url = service.signed_put_url("k", 4, md5, 60)
    with pytest.raises(Md5MismatchError, match="5 bytes"):
        upload(url, source, md5=md5, size=4)
    assert service.hooks.requests() == []


def test_upload_statuses_map_to_codes(
    service: FileService, tmp_path: Path, clock: ManualClock
) -> None:
    source = tmp_path / "a"
    source.write_bytes(b"abc")
    md5 = file_md5(source)
    url = service.signed_put_url("k", 3, md5, 60)
    with pytest.raises(RemoteNotFoundError):
        upload(url.replace("/uploads/", "/nowhere/"), source, md5=md5, size=3)
    clock.advance(61)
    with pytest.raises(SignatureRejectedError):
        upload(url, source, md5=md5, size=3)
    with serve(status_handler(503)) as base, pytest.raises(HttpStatusError) as failed:
        upload(f"{base}/k", source, md5=md5, size=3)
    assert (failed.value.code, failed.value.status) == (-1, 503)
    with pytest.raises(UnsupportedUrlError):
        upload("file:///tmp/x", source, md5=md5, size=3)


def test_upload_cancel(service: FileService, tmp_path: Path) -> None:
    source = tmp_path / "a"
    md5 = random_file(source, MB)
    cancel = threading.Event()
    url = service.signed_put_url("k", MB, md5, 60)
    with pytest.raises(TransferCancelledError):
        upload(url, source, md5=md5, size=MB, on_progress=lambda *_: cancel.set(), cancel=cancel)
    assert service.uploads() == []


# Logging ----------------------------------------------------------------------------------------


def test_signatures_never_reach_logs_or_messages(
    service: FileService, device: Device, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ref = service.publish_file(os.urandom(300_000), name="fw")
    url = service.signed_get_url("fw", 60)
    signature = url.rsplit("=", 1)[1]
    service.hooks.cut_after("fw", 1000)
    messages = []
    with pytest.raises(ConnectionLostError) as lost:
        device.fetch(url, ref.size, ref.md5)
    messages.append(str(lost.value))
    device.fetch(url, ref.size, ref.md5)
    clock.advance(61)
    with pytest.raises(SignatureRejectedError) as rejected:
        device.fetch(url, ref.size, ref.md5)
    messages.append(str(rejected.value))
    assert "/files/fw" in caplog.text
    assert signature not in caplog.text
    assert all(signature not in m and "expires=" not in m for m in messages)


# Test servers -----------------------------------------------------------------------------------


class QuietServer(ThreadingHTTPServer):
    """A test server that does not print a traceback when the client hangs up early."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class serve:  # noqa: N801 - used as a context manager like a function
    """Run a handler class on 127.0.0.1 for the duration of a `with` block; yields its base URL."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = QuietServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def status_handler(status: int) -> type[BaseHTTPRequestHandler]:
    class Status(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            body = b"error page"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = _answer  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Status


def redirect_handler(location: Callable[[str], str]) -> type[BaseHTTPRequestHandler]:
    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", location(self.path))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Redirect
