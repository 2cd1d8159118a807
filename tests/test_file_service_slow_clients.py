"""Slow and idle clients against the file service (issue 16.3): no thread each, timeouts cut them.

Today's `ThreadingHTTPServer` made a thread per connection (2,000 slow connections: 1,523 threads)
with a listen backlog of 5. The service now holds waiting connections in one selector thread and
serves complete requests from a fixed pool (`adapters/http/bounded_server.py`)."""

from __future__ import annotations

import hashlib
import http.client
import os
import resource
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from iotfsm.adapters.http.bounded_server import listen_backlog
from iotfsm.adapters.http.file_service import FileService

SLOW_CLIENTS = 2000
WORKERS = 8
WAIT = 60.0
"""Generous: these are waits for a condition; the one timed assertion is the issue's 1 s bound."""


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise AssertionError(f"this test needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def connect(service: FileService) -> socket.socket:
    sock = socket.create_connection(service.address, timeout=WAIT)
    return sock


def path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., FileService]]:
    started: list[FileService] = []

    def make(**limits: Any) -> FileService:
        service = FileService(tmp_path / f"data{len(started)}", secret=b"s", **limits).start()
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop()


def download(service: FileService, name: str) -> bytes:
    host, port = service.address
    conn = http.client.HTTPConnection(host, port, timeout=WAIT)
    try:
        conn.request("GET", path_and_query(service.signed_get_url(name, 600)))
        response = conn.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        conn.close()


def test_2000_slow_clients_hold_no_threads_and_a_5_mb_download_completes(
    make_service: Callable[..., FileService],
) -> None:
    raise_nofile(2 * SLOW_CLIENTS + 500)
    before = threading.active_count()
    service = make_service(workers=WORKERS, header_timeout=WAIT * 2, idle_timeout=WAIT * 2)
    data = os.urandom(5 * 1024 * 1024)
    service.publish_file(data, name="big.bin")
    slow: list[socket.socket] = []
    try:
        for _ in range(SLOW_CLIENTS):
            sock = connect(service)
            sock.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            slow.append(sock)
        wait_for(lambda: service.server.connections >= SLOW_CLIENTS, "the server to hold them")
        for sock in slow:  # still alive, still slow: one more header byte each
            sock.sendall(b"X")
        assert threading.active_count() <= before + WORKERS + 1
        took = []
        for _ in range(3):
            began = time.perf_counter()
            body = download(service, "big.bin")
            took.append(time.perf_counter() - began)
            assert hashlib.md5(body).digest() == hashlib.md5(data).digest()
        # the bound: under a second (the bench measures 0.005-0.015 s, so this is ~70x)
        assert max(took) < 1.0, f"5 MB downloads under {SLOW_CLIENTS} slow clients took {took}"
        # the pool served the downloads; the slow clients are still held, on no thread of theirs
        assert service.server.connections >= SLOW_CLIENTS
        assert threading.active_count() <= before + WORKERS + 1
    finally:
        for sock in slow:
            sock.close()
    wait_for(lambda: service.server.connections == 0, "the server to see them go")


def test_a_slowloris_is_cut_at_the_header_timeout(
    make_service: Callable[..., FileService],
) -> None:
    service = make_service(header_timeout=0.5)
    head = b"GET /files/x HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 2000 + b"\r\n\r\n"
    sock = connect(service)
    sock.settimeout(0.05)
    answer = b""
    sent = 0
    try:
        while sent < len(head):
            try:
                sock.send(head[sent : sent + 1])
            except OSError:
                break  # cut: the server closed while we were still sending
            sent += 1
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            answer += chunk
            if not chunk or answer.endswith(b"\n408 Request Timeout\n"):
                break
    finally:
        sock.close()
    assert sent < len(head), "the head was sent whole: the slow client was never cut"
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_an_idle_connection_is_closed(make_service: Callable[..., FileService]) -> None:
    service = make_service(idle_timeout=0.3)
    sock = connect(service)
    try:
        assert sock.recv(100) == b""  # closed by the server, no request ever sent
    finally:
        sock.close()


def test_kept_alive_and_pipelined_requests_are_all_answered(
    make_service: Callable[..., FileService],
) -> None:
    service = make_service(workers=2)
    service.publish_file(b"one", name="a.bin")
    service.publish_file(b"two!", name="b.bin")
    requests = b"".join(
        f"GET {path_and_query(service.signed_get_url(n, 60))} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        for n in ("a.bin", "b.bin", "a.bin")
    )
    sock = connect(service)
    stream = sock.makefile("rb")
    try:
        sock.sendall(requests)
        answers = [read_response(stream) for _ in range(3)]
        assert answers == [(200, b"one"), (200, b"two!"), (200, b"one")]
    finally:
        stream.close()
        sock.close()


def read_response(stream: Any) -> tuple[int, bytes]:
    """One response off a stream that carries several (http.client closes its file after one)."""
    status = int(stream.readline().split()[1])
    length = 0
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, stream.read(length)


def test_an_oversized_head_gets_431(make_service: Callable[..., FileService]) -> None:
    service = make_service()
    sock = connect(service)
    try:
        sock.sendall(b"GET /files/x HTTP/1.1\r\nX: " + b"a" * (70 * 1024))
        assert sock.recv(100).startswith(b"HTTP/1.1 431 ")
    finally:
        sock.close()


def test_the_listen_backlog_is_1024_capped_by_somaxconn(
    make_service: Callable[..., FileService],
) -> None:
    service = make_service()
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert service.server.backlog == listen_backlog() == min(1024, somaxconn)
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("ss (iproute2) is not installed: the kernel's view of the backlog is unread")
    port = service.address[1]
    out = subprocess.run(
        [ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(out[2]) == service.server.backlog  # Send-Q of a listener is its backlog
