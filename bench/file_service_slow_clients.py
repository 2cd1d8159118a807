"""A real 5 MB download from the file service while 2,000 slowloris clients hold connections.

The slow clients connect over raw sockets to 127.0.0.1, send a request head that never ends and
one more byte per second each (a slowloris). Meanwhile the script downloads a 5 MB file several
times and prints how long each took, the process's thread count, the connections the server
holds, and the kernel's listen overflows during the run (TcpExt ListenOverflows). Issue 16.3
measured 1,523 threads and 351 overflows for the old thread-per-connection server.

    PYTHONPATH=src .venv/bin/python bench/file_service_slow_clients.py [--clients 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import resource
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from benchkit import cpu_model

from iotfsm.adapters.http.file_service import FileService


def listen_overflows() -> int:
    """TcpExt ListenOverflows from /proc/net/netstat (whole host: other processes count too)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", "0"))
    return 0


def trickle(sockets: list[socket.socket], stop: threading.Event) -> None:
    """One header byte per second on every slow connection, until stopped or cut."""
    while not stop.wait(1.0):
        for sock in list(sockets):
            try:
                sock.send(b"a")
            except OSError:
                sockets.remove(sock)


def download(service: FileService, name: str) -> tuple[float, str]:
    host, port = service.address
    parts = urlsplit(service.signed_get_url(name, 600))
    began = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        body = conn.getresponse().read()
    finally:
        conn.close()
    return time.perf_counter() - began, hashlib.md5(body).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--downloads", type=int, default=5)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * args.clients + 500
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    data = os.urandom(5 * 1024 * 1024)
    with tempfile.TemporaryDirectory() as tmp:
        service = FileService(Path(tmp), secret=b"bench", workers=args.workers).start()
        try:
            ref = service.publish_file(data, name="big.bin")
            threads_before = threading.active_count()
            overflows_before = listen_overflows()
            slow: list[socket.socket] = []
            began = time.perf_counter()
            for _ in range(args.clients):
                sock = socket.create_connection(service.address, timeout=30)
                sock.setblocking(False)
                sock.send(b"GET /files/big.bin HTTP/1.1\r\nHost: bench\r\n")
                slow.append(sock)
            connect_s = time.perf_counter() - began
            stop = threading.Event()
            trickler = threading.Thread(target=trickle, args=(slow, stop), daemon=True)
            trickler.start()
            time.sleep(1.5)  # every slow client has trickled at least once
            held = service.server.connections
            times, max_threads = [], threading.active_count()
            for _ in range(args.downloads):
                seconds, md5 = download(service, "big.bin")
                assert md5 == ref.md5, "the download came back damaged"
                times.append(seconds)
                max_threads = max(max_threads, threading.active_count())
            held_after = service.server.connections
            cut_began = time.perf_counter()
            while service.server.connections > 0 and time.perf_counter() - cut_began < 60:
                time.sleep(0.1)
            cut_s = time.perf_counter() - cut_began
            stop.set()
            trickler.join()
            for sock in slow:
                sock.close()
            result = {
                "clients": args.clients,
                "workers": args.workers,
                "connect_all_s": round(connect_s, 2),
                "held_before_downloads": held,
                "held_after_downloads": held_after,
                "download_5mb_s": [round(t, 3) for t in times],
                "download_5mb_median_s": round(statistics.median(times), 3),
                "download_5mb_max_s": round(max(times), 3),
                "threads_before_clients": threads_before,
                "threads_max": max_threads,
                "listen_overflows": listen_overflows() - overflows_before,
                "header_timeout_s": service.server.header_timeout,
                "all_slow_cut_within_s": round(cut_s, 1),
                "backlog": service.server.backlog,
                "cpu": cpu_model(),
                "nproc": os.cpu_count(),
                "load_before": os.getloadavg()[0],
            }
        finally:
            service.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
