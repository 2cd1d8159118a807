"""Range headers and numbers of any shape (issue 16.5): 416 or 200/206, never a traceback.

A Range with 4,300+ digits used to raise Python's int-string-limit ValueError inside the handler,
and the connection closed with no response."""

from __future__ import annotations

import hashlib
import http.client
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotfsm.adapters.http.file_service import (
    ByteRange,
    FileService,
    RangeNotSatisfiableError,
    parse_decimal,
    parse_range,
)

LONG = "9" * 5000
"""Past Python's default int-string limit of 4,300 digits."""


@pytest.fixture
def service(tmp_path: Path) -> Iterator[FileService]:
    with FileService(tmp_path / "data", secret=b"s") as svc:
        yield svc


def _get(service: FileService, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    host, port = service.address
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}", headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"bytes={LONG}-", RangeNotSatisfiableError),
        (f"bytes=0-{LONG}", ByteRange(0, 999)),
        (f"bytes=-{LONG}", ByteRange(0, 999)),
        (f"bytes={'0' * 5000}5-9", ByteRange(5, 9)),
        ("bytes=\u0661-\u0662", None),  # Arabic-Indic digits are not HTTP digits
        ("bytes=1_0-20", None),
    ],
)
def test_long_and_odd_numbers_in_range(header: str, expected: object) -> None:
    if expected is RangeNotSatisfiableError:
        with pytest.raises(RangeNotSatisfiableError):
            parse_range(header, 1000)
    else:
        assert parse_range(header, 1000) == expected


def test_parse_decimal_is_strict_and_bounded() -> None:
    assert parse_decimal("0042") == 42
    assert parse_decimal(LONG) is not None and parse_decimal(LONG) > 2**63  # type: ignore[operator]
    for bad in ("", "-1", "+1", " 1", "1 ", "1_000", "\u0661", "0x10"):
        assert parse_decimal(bad) is None


@settings(max_examples=400, deadline=None)
@given(
    header=st.one_of(
        st.text(max_size=60),
        st.builds(
            lambda unit, a, b: f"{unit}={a}-{b}",
            st.sampled_from(["bytes", "BYTES", " bytes ", "items"]),
            st.one_of(st.just(""), st.from_regex(r"[0-9]{1,6000}", fullmatch=True)),
            st.one_of(st.just(""), st.from_regex(r"[0-9]{1,6000}", fullmatch=True)),
        ),
    ),
    size=st.integers(min_value=0, max_value=10**12),
)
def test_parse_range_never_raises_anything_else(header: str, size: int) -> None:
    try:
        got = parse_range(header, size)
    except RangeNotSatisfiableError:
        return
    if got is not None:
        assert 0 <= got.start <= got.end < size


@pytest.mark.parametrize(
    "header", [f"bytes={LONG}-", f"bytes=0-{LONG}", f"bytes=-{LONG}", f"bytes={LONG}-{LONG}"]
)
def test_a_range_of_thousands_of_digits_is_answered(
    service: FileService, header: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = bytes(range(256)) * 4
    service.publish_file(data, name="f.bin")
    with caplog.at_level(logging.DEBUG, logger="iotfsm.adapters.http.file_service"):
        status, body = _get(service, service.signed_get_url("f.bin", 60), {"Range": header})
    assert status in (200, 206, 416)
    if status == 416:
        assert body == b""
    else:
        assert hashlib.md5(body).hexdigest() == hashlib.md5(data).hexdigest()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_numbers_of_thousands_of_digits_elsewhere_are_refused_with_an_answer(
    service: FileService,
) -> None:
    service.publish_file(b"x", name="f.bin")
    url = service.signed_get_url("f.bin", 60)
    forged = url.replace("expires=", f"expires={LONG}")
    assert _get(service, forged, {})[0] == 403
    put = service.signed_put_url("u", 1, "0" * 32, 60).replace("size=1", f"size={LONG}")
    host, port = service.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        parts = urlsplit(put)
        conn.putrequest("PUT", f"{parts.path}?{parts.query}")
        conn.putheader("Content-Length", LONG)
        conn.endheaders()
        assert conn.getresponse().status in (400, 403)
    finally:
        conn.close()
