"""RRPC round trips over a private Mosquitto: calls per second and latency, many calls in flight.

One process holds the platform and every device (each a `Device` with its own MQTT connection);
the devices answer at once from `on_rrpc`. `--concurrency` threads each make `Platform.call`
after `Platform.call` until `--calls` are done; every answer is checked against its request (the
device echoes the payload with its name), and any timeout or mismatch makes the run invalid
(exit 1). Latency is the caller's: from `call` to the answer in hand, so it includes both
publishes, the broker, both runtimes and the future's hand-over. On a 2-core machine the
devices, the platform and the broker share the CPU, so the figures are a floor, not a ceiling.

    python bench/rrpc.py                          # 10 devices, 100 in flight, 5,000 calls
    python bench/rrpc.py --quick                  # smoke run, a second or two
    python bench/rrpc.py --devices 50 --concurrency 200 --calls 20000
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform as host
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchkit import cpu_model

from iotfsm import Device, DeviceKey, Platform
from iotfsm.adapters.connect import MqttOptions
from iotfsm.testing.mosquitto import Mosquitto
from iotfsm.testing.waiting import wait_for

PRODUCT = "BENCH00001"
PSK = "vX6PQqazsGsMyf5SMfs6OA6y"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="3 devices, 20 in flight, 300 calls")
    args = parser.parse_args(argv)
    if args.quick:
        args.devices, args.concurrency, args.calls = 3, 20, 300
    fast = MqttOptions(backoff_min=0.05, backoff_max=0.3)
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="iotfsm-bench-rrpc-") as tmp:
        platform = Platform(broker.url, mqtt=fast).start()
        names = [f"dev-{i:03d}" for i in range(args.devices)]
        devices = []
        for name in names:
            platform.register_device(PRODUCT, name, PSK)
            prefix = name.encode() + b":"
            devices.append(
                Device(
                    PRODUCT,
                    name,
                    PSK,
                    broker=broker.url,
                    state_dir=Path(tmp) / name,
                    mqtt=fast,
                    on_rrpc=_echo(prefix),
                ).start()
            )
        try:
            wait_for("the platform", lambda: platform.runtime.transport.connected, timeout=30)
            wait_for(
                "every device to be subscribed",
                lambda: all(d.state("log_level") == "listening" for d in devices),
                timeout=60,
            )
            return _run(platform, names, args)
        finally:
            for device in devices:
                device.stop()
            platform.stop()


def _echo(prefix: bytes) -> Callable[[bytes, str], bytes]:
    """A device's answer: its name and the call's payload, checked by the caller."""

    def answer(payload: bytes, process_id: str) -> bytes:
        return prefix + payload

    return answer


def _run(platform: Platform, names: list[str], args: argparse.Namespace) -> int:
    latencies: list[float] = []
    wrong: list[int] = []
    lock = threading.Lock()
    counter = iter(range(args.calls))

    def worker() -> None:
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            name = names[n % len(names)]
            payload = f"call-{n}".encode()
            started = time.perf_counter()
            try:
                answer = platform.call(DeviceKey(PRODUCT, name), payload, timeout=10.0)
            except TimeoutError:
                answer = b""
            took = time.perf_counter() - started
            with lock:
                latencies.append(took)
                if answer != name.encode() + b":" + payload:
                    wrong.append(n)

    cpu0 = os.times()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for _ in range(args.concurrency):
            pool.submit(worker)
    elapsed = time.perf_counter() - started
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    ms = sorted(x * 1000 for x in latencies)
    q = statistics.quantiles(ms, n=100)
    now = datetime.datetime.now(datetime.timezone.utc)
    print(
        f"rrpc bench {now:%Y-%m-%d %H:%M} UTC, {os.cpu_count()}"
        f" cores {cpu_model()!r}, load {os.getloadavg()[0]:.2f}, Python {host.python_version()}"
    )
    print(f"devices {len(names)}, in flight {args.concurrency}, calls {args.calls}")
    print(f"calls/s          {args.calls / elapsed:,.0f}")
    print(f"latency ms       p50 {q[49]:.1f}  p95 {q[94]:.1f}  p99 {q[98]:.1f}  max {ms[-1]:.1f}")
    print(f"process CPU/call {cpu / args.calls * 1e6:,.0f} us (platform, devices and callers)")
    dropped = sum(platform.rrpc_dropped.values())
    if wrong or dropped or len(latencies) != args.calls:
        print(f"INVALID RUN: {len(wrong)} calls unanswered or answered wrongly, {dropped} dropped")
        return 1
    print("every call answered with its own answer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
