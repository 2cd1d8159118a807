"""The platform's file service over real HTTP on 127.0.0.1: ranges, signatures, uploads, names."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from iotfsm.adapters.http.file_service import (
    ByteRange,
    FileService,
    RangeNotSatisfiableError,
    UploadRecord,
    parse_range,
)
from iotfsm.fsm.clock import ManualClock

SECRET = b"test-secret"
NOW = 1_700_000_000.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def service(tmp_path: Path, clock: ManualClock) -> Iterator[FileService]:
    with FileService(tmp_path / "data", secret=SECRET, clock=clock) as svc:
        yield svc


Response = tuple[int, dict[str, str], bytes]


def request(
    service: FileService,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Response:
    """One raw request; `target` may be a full URL (its host is ignored) or a path."""
    parts = urlsplit(target)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    host, port = service.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def sign(method: str, path: str, expires: int, size: int | None = None, md5: str = "") -> str:
    """The documented signature, computed independently of the service."""
    message = f"{method}\n{path}\n{expires}" + (f"\n{size}\n{md5}" if size is not None else "")
    return hmac.new(SECRET, message.encode(), hashlib.sha256).hexdigest()


def b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# Range parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", ByteRange(0, 99)),
        ("bytes=10-", ByteRange(10, 999)),
        ("bytes=0-1000", ByteRange(0, 999)),  # C SDK: end one past the file, clamped
        ("bytes=0-99999999999999999999", ByteRange(0, 999)),
        ("bytes=-10", ByteRange(990, 999)),
        ("bytes=-5000", ByteRange(0, 999)),
        ("BYTES = 5 - 6", ByteRange(5, 6)),
        ("bytes=10-5", None),  # inverted: ignored
        ("bytes=0-1,5-6", None),  # multi-range: whole file
        ("items=0-1", None),
        ("bytes=abc", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=1000-", 1000), ("bytes=-0", 1000), ("bytes=0-", 0)]
)
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiableError):
        parse_range(header, size)


# GET --------------------------------------------------------------------------------------------


def test_full_get_has_content_length_and_is_not_chunked(service: FileService) -> None:
    data = os.urandom(100_000)
    ref = service.publish_file(data, name="fw-0.2.bin")
    assert ref.size == len(data)
    assert ref.md5 == hashlib.md5(data).hexdigest()
    status, headers, body = request(service, "GET", service.signed_get_url("fw-0.2.bin", 60))
    assert status == 200
    assert headers["content-length"] == str(len(data))
    assert "transfer-encoding" not in headers
    assert body == data
    assert service.hooks.bytes_served("fw-0.2.bin") == len(data)


def test_publish_from_a_path_copies_the_file(service: FileService, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(600_000))
    ref = service.publish_file(source, name="fw.bin")
    source.write_bytes(b"changed afterwards")
    status, _, body = request(service, "GET", service.signed_get_url(ref.file_id, 60))
    assert status == 200
    assert hashlib.md5(body).hexdigest() == ref.md5
    assert service.published("fw.bin") == ref


def test_head_gives_the_size_without_a_body(service: FileService) -> None:
    service.publish_file(b"x" * 1234, name="f")
    status, headers, body = request(service, "HEAD", service.signed_get_url("f", 60))
    assert (status, headers["content-length"], body) == (200, "1234", b"")


def test_c_sdk_range_one_past_the_end_is_answered_206(service: FileService) -> None:
    data = os.urandom(307200)
    service.publish_file(data, name="fw")
    url = service.signed_get_url("fw", 60)
    status, headers, body = request(service, "GET", url, {"Range": "bytes=0-307200"})
    assert status == 206
    assert headers["content-range"] == "bytes 0-307199/307200"
    assert headers["content-length"] == "307200"
    assert body == data


def test_open_ended_range_resumes_from_an_offset(service: FileService) -> None:
    data = os.urandom(5000)
    service.publish_file(data, name="fw")
    url = service.signed_get_url("fw", 60)
    status, headers, body = request(service, "GET", url, {"Range": "bytes=1234-"})
    assert (status, headers["content-range"], body) == (206, "bytes 1234-4999/5000", data[1234:])
    status, _, body = request(service, "GET", url, {"Range": "bytes=0-1,3-4"})
    assert (status, body) == (200, data)  # multi-range: the whole file, as documented


def test_range_past_the_end_is_416_with_the_size(service: FileService) -> None:
    service.publish_file(b"0123456789", name="fw")
    url = service.signed_get_url("fw", 60)
    status, headers, body = request(service, "GET", url, {"Range": "bytes=10-"})
    assert status == 416
    assert headers["content-range"] == "bytes */10"
    assert headers["content-length"] == "0"
    assert body == b""


# Signatures -------------------------------------------------------------------------------------


def test_signed_url_format_and_public_base(tmp_path: Path, clock: ManualClock) -> None:
    with FileService(
        tmp_path / "d", secret=SECRET, clock=clock, public_base="http://files.example/"
    ) as svc:
        svc.publish_file(b"abc", name="fw v1.bin")
        url = svc.signed_get_url("fw v1.bin", 300)
        expires = int(NOW) + 300
        path = "/files/fw%20v1.bin"
        assert (
            url
            == f"http://files.example{path}?expires={expires}&signature={sign('GET', path, expires)}"
        )
        # Devices reach the listener through a proxy on the default port; the listener accepts it.
        assert request(svc, "GET", url)[0] == 200


def test_public_base_with_a_path_prefix(tmp_path: Path, clock: ManualClock) -> None:
    with FileService(
        tmp_path / "d", secret=SECRET, clock=clock, public_base="https://cdn.example/fw"
    ) as svc:
        svc.publish_file(b"abc", name="a")
        url = svc.signed_get_url("a", 60)
        assert url.startswith("https://cdn.example/fw/files/a?expires=")
        assert request(svc, "GET", url)[0] == 200  # a proxy that keeps the prefix
        stripped = url.replace("/fw/files/", "/files/")
        assert request(svc, "GET", stripped)[0] == 200  # a proxy that strips it


@pytest.mark.parametrize("bad", ["ftp://x", "http://", "http://x/?a=1", "files.example"])
def test_public_base_must_be_an_http_url(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="public base"):
        FileService(tmp_path, public_base=bad)


def test_expired_url_is_403(service: FileService, clock: ManualClock) -> None:
    service.publish_file(b"abc", name="fw")
    url = service.signed_get_url("fw", 60)
    clock.advance(60)
    assert request(service, "GET", url)[0] == 200  # valid through its expiry second
    clock.advance(1)
    status, headers, body = request(service, "GET", url)
    assert status == 403
    assert headers["content-length"] == str(len(body))
    assert b"expired" in body


def test_extending_or_forging_a_url_is_403(service: FileService, clock: ManualClock) -> None:
    service.publish_file(b"abc", name="fw")
    service.publish_file(b"def", name="other")
    url = service.signed_get_url("fw", 60)
    expires = int(NOW) + 60
    extended = url.replace(f"expires={expires}", f"expires={expires + 86400}")
    forged = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
    other_file = url.replace("/files/fw?", "/files/other?")
    no_signature = url.split("&signature=")[0]
    doubled = url + "&signature=" + url.rsplit("=", 1)[1]
    for bad in (extended, forged, other_file, no_signature, doubled):
        assert request(service, "GET", bad)[0] == 403, bad
    # The URL itself keeps working; a signature signed for GET does not allow a PUT.
    assert request(service, "GET", url)[0] == 200
    put_path = "/uploads/fw?" + urlsplit(url).query
    assert request(service, "PUT", put_path, body=b"abc")[0] == 403


def test_unknown_file_with_a_valid_signature_is_404(service: FileService) -> None:
    status, headers, _ = request(service, "GET", service.signed_get_url("missing.bin", 60))
    assert status == 404
    assert "content-length" in headers


def test_another_service_with_the_same_secret_honours_old_urls(
    tmp_path: Path, clock: ManualClock
) -> None:
    with FileService(tmp_path / "d", secret=SECRET, clock=clock) as first:
        first.publish_file(b"persist", name="fw")
        url = first.signed_get_url("fw", 60)
    with FileService(tmp_path / "d", secret=SECRET, clock=clock) as second:
        assert request(second, "GET", url)[2] == b"persist"
    with FileService(tmp_path / "d", clock=clock) as random_secret:
        assert request(random_secret, "GET", url)[0] == 403


# PUT --------------------------------------------------------------------------------------------


def test_put_with_the_right_md5_is_stored_byte_identical(service: FileService) -> None:
    data = os.urandom(700_000)
    md5 = hashlib.md5(data).hexdigest()
    seen: list[UploadRecord] = []
    service.on_upload(seen.append)
    url = service.signed_put_url("dev1-log.txt", len(data), md5, 60)
    status, _, _ = request(service, "PUT", url, {"Content-MD5": b64md5(data)}, data)
    assert status == 200
    record = service.upload_record("dev1-log.txt")
    assert record is not None
    assert record.path.read_bytes() == data
    assert record.path.parent == service.data_dir / "uploads"
    assert seen == [record] == service.uploads()
    assert (record.size, record.md5) == (len(data), md5)
    assert list((service.data_dir / "tmp").iterdir()) == []


def test_repeated_identical_put_is_idempotent(service: FileService) -> None:
    data = b"same content" * 1000
    seen: list[UploadRecord] = []
    service.on_upload(seen.append)
    url = service.signed_put_url("k", len(data), hashlib.md5(data).hexdigest(), 60)
    for _ in range(3):
        assert request(service, "PUT", url, {"Content-MD5": b64md5(data)}, data)[0] == 200
    assert len(seen) == 1
    assert len(service.uploads()) == 1
    assert (service.data_dir / "uploads" / "k").read_bytes() == data
    # A new task for the same key with other content replaces it and is reported again.
    new = b"new content"
    url2 = service.signed_put_url("k", len(new), hashlib.md5(new).hexdigest(), 60)
    assert request(service, "PUT", url2, {"Content-MD5": b64md5(new)}, new)[0] == 200
    assert len(seen) == 2
    assert (service.data_dir / "uploads" / "k").read_bytes() == new


def test_put_with_a_wrong_md5_is_400_and_nothing_is_stored(service: FileService) -> None:
    data = os.urandom(50_000)
    url = service.signed_put_url("k", len(data), hashlib.md5(data).hexdigest(), 60)
    wrong_header = request(service, "PUT", url, {"Content-MD5": b64md5(b"other")}, data)
    assert wrong_header[0] == 400
    corrupted = bytes([data[0] ^ 1]) + data[1:]  # header agrees with the task, body does not
    wrong_body = request(service, "PUT", url, {"Content-MD5": b64md5(data)}, corrupted)
    assert wrong_body[0] == 400
    missing = request(service, "PUT", url, {}, data)
    assert missing[0] == 400
    not_base64 = request(service, "PUT", url, {"Content-MD5": "zz"}, data)
    assert not_base64[0] == 400
    hex_instead = request(service, "PUT", url, {"Content-MD5": hashlib.md5(data).hexdigest()}, data)
    assert hex_instead[0] == 400
    assert service.uploads() == []
    assert list((service.data_dir / "uploads").iterdir()) == []
    assert list((service.data_dir / "tmp").iterdir()) == []


def test_put_with_a_wrong_length_is_400(service: FileService) -> None:
    data = b"0123456789"
    url = service.signed_put_url("k", len(data), hashlib.md5(data).hexdigest(), 60)
    longer = data + b"!"
    headers = {"Content-MD5": b64md5(data)}
    assert request(service, "PUT", url, headers, longer)[0] == 400
    assert request(service, "PUT", url, headers, data[:-1])[0] == 400
    assert service.uploads() == []


def test_put_rejected_early_still_answers_a_large_body(service: FileService) -> None:
    """The service answers 400 before reading 3 MB; the client still reads the 400, not a reset."""
    data = os.urandom(3 * 1024 * 1024)
    url = service.signed_put_url("big", len(data), hashlib.md5(b"x").hexdigest(), 60)
    assert request(service, "PUT", url, {"Content-MD5": b64md5(data)}, data)[0] == 400


def test_put_needs_a_valid_unexpired_signature(service: FileService, clock: ManualClock) -> None:
    data = b"abc"
    md5 = hashlib.md5(data).hexdigest()
    url = service.signed_put_url("k", len(data), md5, 60)
    headers = {"Content-MD5": b64md5(data)}
    bigger = url.replace("size=3", "size=4")
    other_md5 = url.replace(md5, hashlib.md5(b"abcd").hexdigest())
    assert request(service, "PUT", bigger, headers, data + b"d")[0] == 403
    assert request(service, "PUT", other_md5, {"Content-MD5": b64md5(b"abcd")}, b"abcd")[0] == 403
    clock.advance(61)
    assert request(service, "PUT", url, headers, data)[0] == 403
    assert service.uploads() == []


def test_methods_are_bound_to_their_folders(service: FileService) -> None:
    data = b"abc"
    put_url = service.signed_put_url("k", 3, hashlib.md5(data).hexdigest(), 60)
    assert request(service, "GET", put_url)[0] == 405
    service.publish_file(data, name="k")
    assert request(service, "PUT", service.signed_get_url("k", 60), body=data)[0] == 405
    assert request(service, "GET", "/elsewhere/k")[0] == 404
    assert request(service, "GET", "/files")[0] == 404


def test_one_kept_alive_connection_carries_several_requests(service: FileService) -> None:
    data = os.urandom(100_000)
    service.publish_file(data, name="fw")
    good = os.urandom(10_000)
    put_ok = service.signed_put_url("a", len(good), hashlib.md5(good).hexdigest(), 60)
    big = os.urandom(2 * 1024 * 1024)
    put_bad = service.signed_put_url("b", len(big), hashlib.md5(b"x").hexdigest(), 60)
    host, port = service.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    results = []
    try:
        for method, url, headers, body in [
            ("GET", service.signed_get_url("fw", 60), {"Range": "bytes=10-19"}, None),
            ("GET", service.signed_get_url("fw", 60), {}, None),
            ("PUT", put_ok, {"Content-MD5": b64md5(good)}, good),
            ("PUT", put_bad, {"Content-MD5": b64md5(big)}, big),
        ]:
            parts = urlsplit(url)
            conn.request(method, f"{parts.path}?{parts.query}", body=body, headers=headers)
            response = conn.getresponse()
            results.append((response.status, len(response.read())))
    finally:
        conn.close()
    assert results == [(206, 10), (200, len(data)), (200, 0), (400, results[3][1])]
    assert [r.key for r in service.uploads()] == ["a"]


# Hostile names ----------------------------------------------------------------------------------

HOSTILE = ["../x", "a/b", "..", ".", "a..b", "a\x00b", "x" * 65, "", "a\\b", ".hidden", "a\nb"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_by_the_api(service: FileService, name: str) -> None:
    with pytest.raises(ValueError, match="refused"):
        service.publish_file(b"x", name=name)
    with pytest.raises(ValueError, match="refused"):
        service.signed_get_url(name, 60)
    with pytest.raises(ValueError, match="refused"):
        service.signed_put_url(name, 1, "0" * 32, 60)


def test_64_characters_and_unicode_are_fine(service: FileService) -> None:
    for name in ("x" * 64, "固件-v1.bin", "name with spaces"):
        service.publish_file(name.encode(), name=name)
        assert request(service, "GET", service.signed_get_url(name, 60))[2] == name.encode()


@pytest.mark.parametrize("name", ["../../escaped", "..", "a/b", "a\x00b", "x" * 65, "a\\..\\b"])
def test_hostile_names_over_http_even_with_a_valid_signature(
    service: FileService, tmp_path: Path, name: str
) -> None:
    before = all_files(tmp_path)
    expires = int(NOW) + 60
    data = b"evil"
    md5 = hashlib.md5(data).hexdigest()
    quoted = quote(name, safe="")
    get_path = f"/files/{quoted}"
    put_path = f"/uploads/{quoted}"
    get_target = f"{get_path}?expires={expires}&signature={sign('GET', get_path, expires)}"
    put_sig = sign("PUT", put_path, expires, len(data), md5)
    put_target = f"{put_path}?expires={expires}&size={len(data)}&md5={md5}&signature={put_sig}"
    assert request(service, "GET", get_target)[0] == 400
    put = request(service, "PUT", put_target, {"Content-MD5": b64md5(data)}, data)
    assert put[0] == 400
    # Unencoded traversal never even matches a route.
    raw = f"/uploads/../../x?expires={expires}&size=4&md5={md5}&signature=00"
    assert request(service, "PUT", raw, {"Content-MD5": b64md5(data)}, data)[0] in (400, 404)
    assert request(service, "GET", "/files/%ff%fe?expires=1&signature=0")[0] == 400
    assert all_files(tmp_path) == before
    assert service.uploads() == []


# Fault hooks and logging ------------------------------------------------------------------------


def test_cut_after_is_one_shot_and_counted(service: FileService) -> None:
    data = os.urandom(1_000_000)
    service.publish_file(data, name="fw")
    url = service.signed_get_url("fw", 60)
    service.hooks.cut_after("fw", 1000)
    with pytest.raises(http.client.IncompleteRead) as cut:
        request(service, "GET", url)
    assert len(cut.value.partial) == 1000
    assert request(service, "GET", url)[2] == data
    assert service.hooks.bytes_served("fw") == 1000 + len(data)


def test_cut_at_absolute_offsets(service: FileService) -> None:
    data = os.urandom(100_000)
    service.publish_file(data, name="fw")
    url = service.signed_get_url("fw", 60)
    service.hooks.cut_at("fw", [30_000, 70_000])
    with pytest.raises(http.client.IncompleteRead) as first:
        request(service, "GET", url)
    assert len(first.value.partial) == 30_000
    with pytest.raises(http.client.IncompleteRead) as second:
        request(service, "GET", url, {"Range": "bytes=30000-"})
    assert len(second.value.partial) == 40_000
    assert request(service, "GET", url, {"Range": "bytes=70000-"})[2] == data[70_000:]


def test_ignore_range_answers_the_full_body(service: FileService) -> None:
    service.publish_file(b"0123456789", name="fw")
    service.hooks.ignore_range = True
    status, _, body = request(
        service, "GET", service.signed_get_url("fw", 60), {"Range": "bytes=5-"}
    )
    assert (status, body) == (200, b"0123456789")
    assert [(r.method, r.name, r.range, r.status) for r in service.hooks.requests()] == [
        ("GET", "fw", "bytes=5-", 200)
    ]


def test_signatures_never_reach_the_log(
    service: FileService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service.publish_file(b"abc", name="fw")
    url = service.signed_get_url("fw", 60)
    signature = url.rsplit("=", 1)[1]
    request(service, "GET", url)
    request(service, "GET", url + "x")
    request(service, "GET", url.replace("/files/fw", "/files/..%2Ffw"))
    # A request line http.server cannot parse is logged by the stdlib: still redacted.
    target = urlsplit(url).path + "?" + urlsplit(url).query
    with socket.create_connection(service.address, timeout=5) as sock:
        sock.sendall(f"GET {target} EXTRA HTTP/1.1\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    assert "Bad request syntax" in caplog.text
    assert caplog.records
    assert signature not in caplog.text


def test_a_url_signed_for_a_device_is_served_while_it_is_admitted(service: FileService) -> None:
    service.publish_file(b"payload", name="fw-held")
    admitted = {"P1/d1"}
    service.admits = lambda product, device: f"{product}/{device}" in admitted
    url = service.signed_get_url("fw-held", 60, ("P1", "d1"))
    assert request(service, "GET", url)[0] == 200
    assert request(service, "GET", url + "&device=P1%2Fd1")[0] == 403  # repeated
    admitted.clear()
    status, _, body = request(service, "GET", url)
    assert status == 403 and b"not admitted" in body
    put = service.signed_put_url("up-held", 4, hashlib.md5(b"data").hexdigest(), 60, ("P1", "d1"))
    assert request(service, "PUT", put, body=b"data")[0] == 403
    assert service.upload_record("up-held") is None
