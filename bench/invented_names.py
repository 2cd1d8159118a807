"""Invented device names over a real Mosquitto: the platform's memory and its real devices' answers.

Issue 15's flood, re-run as it was measured: a broker that lets anyone in (as every example set
it up before the registry), an `iotfsm platform` process with a data directory and a registry
of `--devices` real devices, and one client publishing `--names` well-formed messages for
invented device names as fast as it can (before the registry, 300k of them kept 259k sessions,
168 MB RSS). Throughout the flood another client asks for a real device's log level every
`--every` seconds and times the answer. The platform's RSS is read from /proc every 0.1 s.

The run is invalid (exit 1) when a real device's ask goes unanswered within 5 s, when the
platform's RSS grows more than 10 % over idle, when it kept a session of an invented name, or
when it logged more than a few refusal lines. Both clients and the broker share the 2 cores
with the platform, so the rates are a floor.

    python bench/invented_names.py                 # 300,000 names, 100 real devices
    python bench/invented_names.py --quick         # 20,000 names: the smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform as host
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import paho.mqtt.client as mqtt
from benchkit import cpu_model
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from iotfsm.commands.registry import open_registry
from iotfsm.machines.feature import DeviceKey
from iotfsm.testing.mosquitto import Mosquitto
from iotfsm.testing.server import free_port
from iotfsm.testing.waiting import wait_for

PRODUCT = "FLOOD00001"
ASK = {"type": "get_log_level"}
ANSWER_TIMEOUT = 5.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Asker:
    """A client that asks for real devices' log levels and times each answer by its token."""

    def __init__(self, port: int) -> None:
        self.sent: dict[str, float] = {}
        self.took: dict[str, float] = {}
        self._lock = threading.Lock()
        self._n = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="asker")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"$log/operation/result/{PRODUCT}/+", 0)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        token = json.loads(message.payload).get("clientToken", "")
        now = time.perf_counter()
        with self._lock:
            if token in self.sent and token not in self.took:
                self.took[token] = now - self.sent[token]

    def ask(self, device: str, via: mqtt.Client | None = None) -> str:
        with self._lock:
            self._n += 1
            token = f"ask-{self._n}"
            self.sent[token] = time.perf_counter()
        payload = json.dumps({**ASK, "clientToken": token}).encode()
        (via or self.client).publish(f"$log/operation/{PRODUCT}/{device}", payload, 0)
        return token

    def answered(self, token: str) -> bool:
        with self._lock:
            return token in self.took

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--names", type=int, default=300_000)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--every", type=float, default=0.05, help="seconds between real asks")
    parser.add_argument("--quick", action="store_true", help="20,000 names")
    args = parser.parse_args(argv)
    if args.quick:
        args.names = 20_000
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="iotfsm-bench-names-") as tmp:
        data = Path(tmp) / "platform"
        real = [f"real-{n:03d}" for n in range(args.devices)]
        registry, store = open_registry(data, None)
        for name in real:
            registry.add(PRODUCT, name)
        store.close()
        child = subprocess.Popen(
            [sys.executable, "-m", "iotfsm", "--log-level", "warning", "platform",
             "--broker", broker.url, "--data-dir", str(data),
             "--http", f"127.0.0.1:{free_port()}", "--events", "jsonl"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert child.stdout is not None
            started = json.loads(child.stdout.readline() or "{}")
            if started.get("event") != "started":
                child.terminate()
                print("the platform did not start:", child.communicate(timeout=30)[1])
                return 1
            threading.Thread(target=child.stdout.read, daemon=True).start()  # drain events
            return _run(broker.port, child, real, data, args)
        finally:
            child.terminate()
            child.wait(timeout=30)


@attrs.define
class Flood:
    """What one flood measured."""

    idle: int = 0
    peak: int = 0
    end: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0
    took: list[float] = attrs.Factory(list)
    """Seconds to each real ask's answer during the flood (inf: none came)."""


def _run(
    port: int, child: subprocess.Popen[str], real: list[str], data: Path, args: argparse.Namespace
) -> int:
    flood = _flood(port, child.pid, real, args)
    child.terminate()
    _, err = child.communicate(timeout=30)
    refusals = [line for line in err.splitlines() if "refused " in line or "more unknown" in line]
    _, store = open_registry(data, None)
    kept = {key for _, key, _ in store.load()}
    store.close()
    invented = kept - {DeviceKey(PRODUCT, name) for name in real}
    grown = (flood.peak - flood.idle) / flood.idle * 100
    ms = sorted(t * 1000 for t in flood.took)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    now = datetime.datetime.now(datetime.timezone.utc)
    print(
        f"invented-names bench {now:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores "
        f"{cpu_model()!r}, load {os.getloadavg()[0]:.2f}, Python {host.python_version()}"
    )
    print(f"names {args.names:,} invented, {len(real)} registered, over Mosquitto (anonymous)")
    print(
        f"flood read in     {flood.elapsed:.1f} s ({args.names / flood.elapsed:,.0f} names/s), "
        f"platform CPU {flood.cpu:.1f} s ({flood.cpu / args.names * 1e6:.0f} us/name)"
    )
    print(
        f"platform RSS KiB  idle {flood.idle:,}  peak {flood.peak:,} (+{grown:.1f} %)  "
        f"end {flood.end:,}"
    )
    print(
        f"real asks         {len(ms)}, answer ms p50 {q[49]:.1f}  p99 {q[98]:.1f}  max {ms[-1]:.1f}"
    )
    print(f"refusal log lines {len(refusals)}; sessions kept {len(kept)}, invented {len(invented)}")
    problems = []
    if ms[-1] > ANSWER_TIMEOUT * 1000:
        problems.append("a real device's ask was not answered within 5 s")
    if grown > 10:
        problems.append(f"RSS grew {grown:.1f} % over idle")
    if invented:
        problems.append(f"{len(invented)} sessions of invented names kept")
    if len(refusals) > 30:
        problems.append(f"{len(refusals)} refusal lines logged")
    if problems:
        print("INVALID RUN: " + "; ".join(problems))
        return 1
    worst = "within a second" if ms[-1] < 1000 else f"within {ms[-1] / 1000:.1f} s"
    print(f"every real device answered {worst}; nothing kept of an invented name")
    return 0


def _flood(port: int, pid: int, real: list[str], args: argparse.Namespace) -> Flood:
    """Warm the real devices, then flood and probe; RSS sampled by the probing thread."""
    asker = Asker(port)
    warm = [asker.ask(name) for name in real]
    wait_for("every real device answered", lambda: all(map(asker.answered, warm)), timeout=60)
    time.sleep(1.0)
    result = Flood(idle=rss_kib(pid), peak=rss_kib(pid))
    flooding = threading.Event()
    flooding.set()
    probes: list[str] = []

    def watch() -> None:
        n = 0
        while flooding.is_set():
            result.peak = max(result.peak, rss_kib(pid))
            probes.append(asker.ask(real[n % len(real)]))
            n += 1
            time.sleep(args.every)

    forger = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="forger")
    forger.max_queued_messages_set(10_000)  # paho's queue, not the broker's: keeps the pace
    forger.connect("127.0.0.1", port)
    forger.loop_start()
    payload = json.dumps({**ASK, "clientToken": "t-1"}).encode()
    watcher = threading.Thread(target=watch)
    watcher.start()
    cpu0, t0 = _cpu(pid), time.perf_counter()
    for n in range(args.names):
        topic = f"$log/operation/{PRODUCT}/inv{n:07d}"
        while forger.publish(topic, payload, 0).rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            time.sleep(0.001)  # paho's queue is full
    # the last ask on the forger's own connection: answered once the platform read every name
    last = asker.ask(real[0], via=forger)
    wait_for("the platform to read the flood", lambda: asker.answered(last), timeout=600)
    result.elapsed, result.cpu = time.perf_counter() - t0, _cpu(pid) - cpu0
    flooding.clear()
    watcher.join()
    result.end = rss_kib(pid)
    deadline = time.perf_counter() + ANSWER_TIMEOUT
    wait_for(
        "every probe answered or given up",
        lambda: all(map(asker.answered, probes)) or time.perf_counter() > deadline,
        timeout=60,
    )
    forger.loop_stop()
    forger.disconnect()
    result.took = [asker.took.get(t, float("inf")) for t in probes]
    asker.stop()
    return result


def _cpu(pid: int) -> float:
    """User + system seconds of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
