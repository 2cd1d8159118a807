"""Fleet over a real Mosquitto: one platform runtime, 1,000 device connections, the OTA exchange.

- The broker: a private `iotfsm.testing.mosquitto.Mosquitto` on a free 127.0.0.1 port, queues and
  in-flight windows unbounded (`max_queued_messages 0`, `max_inflight_messages 0`), so that nothing
  is dropped by a limit and the figures are the platform's.
- The platform: the real thing, `Runtime("platform", transport, [ota.FEATURE])` over the library's
  paho transport (`MqttTransport`, as `Platform` builds it), its `OfferFirmware` handler
  publishing a real `UpdateFirmware` (a fixed fake URL, no HTTP) with `runtime.publish`, and one
  `DeployFirmware` posted per device. A thin wrapper around the transport counts and stamps every
  message in and out; nothing else is patched.
- The devices: `--devices` paho clients (client id `{pid}{dn}`, one MQTT connection each, clean
  session) spread over `--procs` processes. A process drives its clients from one thread with a
  selector over their sockets (paho's external event loop API), so 250 connections do not need
  250 network threads. Each device does the OTA message exchange by hand: report_version ->
  rsp -> update_firmware -> progress 0/25/50/75/100 % -> burning -> done -> report_version of the
  new version -> rsp (12 messages through the broker per device and round). Downloads are
  virtual: the progress reports go out back to back, without the once-a-second cadence.

A round: every device reports its version at once (a burst of `--devices` report_version), and
once every device has its answer the platform posts `DeployFirmware` for all of them (a burst of
offers, then 8 uplinks from every device). The round ends when the platform has seen every task
succeed and every device has the answer to its last report. Rounds repeat with the next version.

Messages per second are the platform's: its messages in plus out over the round, from the first
report it receives to the last answer it sends; its CPU time per message is the platform process's
(paho thread, runtime, timers) over the same span. Latencies are end to end, device clock to device
clock (CLOCK_MONOTONIC is system-wide on Linux, so the platform's post times compare too):

- `report -> rsp`: a device publishes report_version and receives report_version_rsp (the burst).
- `final report -> rsp`: the same for the report of the new version, at the end of the exchange.
- `deploy -> offer`: the platform posts DeployFirmware and the device receives update_firmware.
- `offer -> confirmed`: the device receives update_firmware, sends its 8 uplinks, and receives
  the rsp to its final report.

    python bench/mqtt_fleet.py                  # 1,000 devices, 4 processes, 5 rounds; ~1 minute
    python bench/mqtt_fleet.py --quick          # smoke run, a few seconds
    python bench/mqtt_fleet.py --devices 500 --procs 2 --rounds 3 --json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import selectors
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import paho.mqtt.client as paho
from benchkit import cpu_model
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from iotfsm.adapters.connect import transport_for
from iotfsm.adapters.runtime import Runtime
from iotfsm.adapters.transport import ConnectionHandler, MessageHandler, Transport
from iotfsm.machines import DeviceKey, ota
from iotfsm.testing.mosquitto import Mosquitto

PRODUCT = "PMQTTFLEET"
SIZE = 708_482
MD5 = "5d41402abc4b2a76b9719d911017c592"
FILE_ID = f"fw-{MD5}"
FAKE_URL = (
    "https://fw-1250000000.cos.ap-guangzhou.myqcloud.com/ota/PMQTTFLEET/firmware.bin"
    "?sign=q-sign-algorithm%3Dsha1%26q-ak%3DAKIDxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx%26q-sign-time"
    "%3D1700000000%253B1700003600%26q-key-time%3D1700000000%253B1700003600%26q-header-list%3D"
    "host%26q-url-param-list%3D%26q-signature%3D0123456789abcdef0123456789abcdef01234567"
    "&x-cos-security-token=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)
"""Never fetched: downloads are virtual."""
MESSAGES_PER_DEVICE = 12
BROKER_CONFIG = "\n".join(
    [
        "max_queued_messages 0",
        # Mosquitto 2.0.11 may stall a client's QoS 1 flow with a capped in-flight window (see
        # bench/mqtt.py); uncapped, the platform's own speed is what limits the exchange.
        "max_inflight_messages 0",
        "max_connections -1",
    ]
)
LATENCIES = ("report -> rsp", "final report -> rsp", "deploy -> offer", "offer -> confirmed")


def version(n: int) -> str:
    return f"{n}.0.0"


def device_names(count: int) -> list[str]:
    return [f"dev{i:05d}" for i in range(count)]


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    return host, int(port)


# ---- the devices: many paho clients per process, one thread, one selector --------------------


class SimDevice:
    """One device's side of the exchange, by hand, on its own MQTT connection."""

    def __init__(self, worker: DeviceWorker, name: str) -> None:
        self.worker = worker
        self.name = name
        self.up = f"$ota/report/{PRODUCT}/{name}"
        self.down = f"$ota/update/{PRODUCT}/{name}"
        self.version = version(1)
        self.target = ""
        self.state = "new"
        self.sent_at = 0.0
        self.offered_at = 0.0
        self.connected = False
        self.subscribed = False
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{PRODUCT}{name}",
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=True,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_socket_open = _nodelay

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            raise RuntimeError(f"{self.name}: connection refused: {reason}")
        self.connected = True
        client.subscribe(self.down, 0)

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, _codes: Any, _p: Any) -> None:
        self.subscribed = True

    def publish(self, doc: dict[str, Any], qos: int) -> None:
        self.client.publish(self.up, json.dumps(doc, separators=(",", ":")), qos)

    def report(self) -> None:
        self.state = "reporting"
        self.sent_at = time.monotonic()
        self.publish({"type": "report_version", "report": {"version": self.version}}, 1)

    def _progress(self, state: str, pct: int | None) -> None:
        progress: dict[str, Any] = {"state": state}
        if pct is not None:
            progress["percent"] = str(pct)
        progress["result_code"] = "0"
        progress["result_msg"] = ""
        self.publish(
            {"type": "report_progress", "report": {"progress": progress, "version": self.target}},
            0 if state == "downloading" else 1,
        )

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        now = time.monotonic()
        doc = json.loads(message.payload)
        kind = doc.get("type")
        worker = self.worker
        if kind == "report_version_rsp":
            if self.state == "reporting":
                self.state = "idle"
                worker.latencies["report -> rsp"].append(now - self.sent_at)
                worker.answered += 1
            elif self.state == "confirming" and doc.get("version") == self.version:
                self.state = "done"
                worker.latencies["final report -> rsp"].append(now - self.sent_at)
                worker.latencies["offer -> confirmed"].append(now - self.offered_at)
                worker.done += 1
        elif kind == "update_firmware" and self.state == "idle":
            self.offered_at = now
            worker.offers[self.name] = now
            self.target = doc["version"]
            self.state = "downloading"
            for pct in (0, 25, 50, 75, 100):  # a virtual download: no cadence, no bytes
                self._progress("downloading", pct)
            self._progress("burning", None)
            self.version, self.target = self.target, self.target
            self._progress("done", None)
            self.state = "confirming"
            self.sent_at = time.monotonic()
            self.publish({"type": "report_version", "report": {"version": self.version}}, 1)
        else:
            worker.unexpected += 1


def _nodelay(_client: paho.Client, _userdata: Any, sock: Any) -> None:
    """Small packets go out at once, as the library's own transport sends them."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class DeviceWorker:
    """A process's devices: connects them, then runs their sockets from one selector loop and
    obeys the main process (report, quit) over a pipe."""

    def __init__(self, url: str, names: Sequence[str], conn: Any) -> None:
        self.host, self.port = _host_port(url)
        self.conn = conn
        self.latencies: dict[str, list[float]] = {name: [] for name in LATENCIES}
        self.offers: dict[str, float] = {}
        self.answered = 0
        self.done = 0
        self.unexpected = 0
        self.devices = [SimDevice(self, name) for name in names]
        self.selector = selectors.DefaultSelector()

    def connect_all(self, timeout: float) -> None:
        for device in self.devices:
            device.client.connect(self.host, self.port, keepalive=60)
            sock = device.client.socket()
            assert sock is not None
            self.selector.register(sock, selectors.EVENT_READ, device)
        deadline = time.monotonic() + timeout
        while not all(d.subscribed for d in self.devices):
            if time.monotonic() > deadline:
                ready = sum(d.subscribed for d in self.devices)
                raise TimeoutError(f"only {ready} of {len(self.devices)} devices subscribed")
            self.pump(0.05)

    def pump(self, timeout: float) -> None:
        """One turn of the event loop: read what arrived, write what is queued."""
        for key, _ in self.selector.select(timeout):
            device: SimDevice = key.data
            device.client.loop_read()
        for device in self.devices:
            if device.client.want_write():
                device.client.loop_write()

    def misc(self) -> None:
        for device in self.devices:
            device.client.loop_misc()

    def run(self) -> None:
        self.connect_all(60.0)
        self.conn.send(("ready", len(self.devices)))
        self.selector.register(self.conn.fileno(), selectors.EVENT_READ, None)
        last_misc = time.monotonic()
        round_no = 0
        reported_sent = done_sent = True
        cpu0 = time.process_time()
        while True:
            for key, _ in self.selector.select(0.2):
                if key.data is None:
                    command = self.conn.recv()
                    if command[0] == "quit":
                        self.close()
                        return
                    if command[0] == "report":
                        round_no = command[1]
                        self.reset_round()
                        reported_sent = done_sent = False
                        cpu0 = time.process_time()
                        for device in self.devices:
                            device.report()
                    continue
                key.data.client.loop_read()
            for device in self.devices:
                if device.client.want_write():
                    device.client.loop_write()
            now = time.monotonic()
            if now - last_misc > 1.0:
                self.misc()
                last_misc = now
            n = len(self.devices)
            if not reported_sent and self.answered >= n:
                self.conn.send(("reported", round_no))
                reported_sent = True
            if not done_sent and self.done >= n:
                self.conn.send(
                    (
                        "done",
                        round_no,
                        {
                            "latencies": self.latencies,
                            "offers": self.offers,
                            "unexpected": self.unexpected,
                            "cpu_s": time.process_time() - cpu0,
                        },
                    )
                )
                done_sent = True

    def reset_round(self) -> None:
        self.latencies = {name: [] for name in LATENCIES}
        self.offers = {}
        self.answered = self.done = self.unexpected = 0

    def close(self) -> None:
        for device in self.devices:
            device.client.disconnect()
            device.client.loop_write()
            sock = device.client.socket()
            if sock is not None:
                sock.close()


def device_process(url: str, names: list[str], conn: Any) -> None:
    try:
        DeviceWorker(url, names, conn).run()
    except BaseException as exc:
        conn.send(("error", repr(exc)))
        raise


# ---- the platform -------------------------------------------------------------------------------


class CountingTransport:
    """The platform's transport, counting and stamping messages in and out."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.received = 0
        self.sent = 0
        self.first_in = 0.0
        self.last_out = 0.0

    def set_handlers(self, on_message: MessageHandler, on_connection: ConnectionHandler) -> None:
        def counted(topic: str, payload: bytes) -> None:
            now = time.monotonic()
            with self.lock:
                if self.first_in == 0.0:
                    self.first_in = now
                self.received += 1
            on_message(topic, payload)

        self.inner.set_handlers(counted, on_connection)

    def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        self.inner.subscribe(topic_filter, qos)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.inner.publish(topic, payload, qos)
        now = time.monotonic()
        with self.lock:
            self.sent += 1
            self.last_out = now

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    @property
    def connected(self) -> bool:
        return self.inner.connected

    def snapshot(self) -> tuple[int, int, float, float]:
        with self.lock:
            return self.received, self.sent, self.first_in, self.last_out

    def new_round(self) -> None:
        with self.lock:
            self.first_in = 0.0


class FleetPlatform:
    def __init__(self, url: str) -> None:
        self.transport = CountingTransport(transport_for(url, None))
        self.finished = 0
        self.failed = 0
        self.lock = threading.Lock()
        self.runtime = Runtime(
            "platform",
            self.transport,
            [ota.FEATURE],
            handlers={ota.OfferFirmware: self._offer, ota.OtaFinished: self._finished},
        )

    def _offer(self, key: DeviceKey, effect: ota.OfferFirmware) -> None:
        offer = ota.UpdateFirmware(effect.size, effect.md5, FAKE_URL, effect.version)
        self.runtime.publish("ota", key, offer, 0)

    def _finished(self, key: DeviceKey, effect: ota.OtaFinished) -> None:
        with self.lock:
            if effect.ok:
                self.finished += 1
            else:
                self.failed += 1

    def deploy(self, names: Sequence[str], target: str) -> dict[str, float]:
        command = ota.DeployFirmware(target, FILE_ID, SIZE, MD5)
        posted: dict[str, float] = {}
        for name in names:
            posted[name] = time.monotonic()
            self.runtime.post("ota", DeviceKey(PRODUCT, name), command)
        return posted


# ---- orchestration ------------------------------------------------------------------------------


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)


def _proc_cpu(pid: int | None) -> float:
    """utime + stime of a process in seconds (Linux /proc), 0.0 where unavailable."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class Workers:
    def __init__(self, url: str, names: Sequence[str], procs: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[multiprocessing.connection.Connection] = []
        self.procs: list[Any] = []
        for i in range(procs):
            mine = list(names[i::procs])
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=device_process, args=(url, mine, child), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def expect(self, kind: str, timeout: float) -> list[tuple[Any, ...]]:
        """One message of `kind` from every worker."""
        got: list[tuple[Any, ...]] = []
        deadline = time.monotonic() + timeout
        for conn in self.conns:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not conn.poll(remaining):
                raise TimeoutError(f"a device process sent no {kind!r} within {timeout:.0f} s")
            message = conn.recv()
            if message[0] != kind:
                raise RuntimeError(f"a device process sent {message!r}, expected {kind!r}")
            got.append(message)
        return got

    def send(self, message: tuple[Any, ...]) -> None:
        for conn in self.conns:
            conn.send(message)

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("quit",))
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    return {
        "n": len(ordered),
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": ordered[-1] * 1e3,
        "mean": statistics.fmean(ordered) * 1e3,
    }


def run(devices: int, procs: int, rounds: int, timeout: float) -> dict[str, Any]:
    names = device_names(devices)
    with Mosquitto(extra_config=BROKER_CONFIG) as broker:
        fleet = FleetPlatform(broker.url)
        fleet.runtime.start()
        _wait(lambda: fleet.transport.connected, 30, "the platform's connection")
        workers = Workers(broker.url, names, procs)
        bench = Rounds(fleet, workers, broker.pid, names, timeout)
        try:
            t = time.monotonic()
            workers.expect("ready", timeout)
            connect_s = time.monotonic() - t
            results = [bench.run(r) for r in range(1, rounds + 1)]
        finally:
            workers.stop()
            fleet.runtime.stop()
        states: dict[str, int] = {}
        for session in fleet.runtime.sessions["ota"].values():
            states[session.state] = states.get(session.state, 0) + 1
    return {
        "devices": devices,
        "procs": procs,
        "rounds": results,
        "connect_s": connect_s,
        "latency_ms": {name: percentiles(values) for name, values in bench.samples.items()},
        "platform_states": states,
        "rejected": fleet.runtime.rejected,
        "ignored": fleet.runtime.ignored,
    }


class Rounds:
    """Runs OTA rounds over the fleet and collects every latency sample."""

    def __init__(
        self,
        fleet: FleetPlatform,
        workers: Workers,
        broker_pid: int | None,
        names: Sequence[str],
        timeout: float,
    ) -> None:
        self.fleet = fleet
        self.workers = workers
        self.broker_pid = broker_pid
        self.names = names
        self.timeout = timeout
        self.samples: dict[str, list[float]] = {name: [] for name in LATENCIES}

    def run(self, r: int) -> dict[str, Any]:
        fleet, workers, n = self.fleet, self.workers, len(self.names)
        finished0 = fleet.finished
        received0, sent0, _, _ = fleet.transport.snapshot()
        fleet.transport.new_round()
        cpu0, broker0 = time.process_time(), _proc_cpu(self.broker_pid)
        workers.send(("report", r))
        workers.expect("reported", self.timeout)
        deploy_at = time.monotonic()
        posted = fleet.deploy(self.names, version(r + 1))
        done = workers.expect("done", self.timeout)
        _wait(lambda: fleet.finished - finished0 >= n, self.timeout, "every task to succeed")
        received, sent, first_in, last_out = fleet.transport.snapshot()
        cpu, broker_cpu = time.process_time() - cpu0, _proc_cpu(self.broker_pid) - broker0
        messages = (received - received0) + (sent - sent0)
        span = last_out - first_in
        unexpected = 0
        device_cpu = 0.0
        for _, _, data in done:
            for name, values in data["latencies"].items():
                self.samples[name].extend(values)
            for device, at in data["offers"].items():
                self.samples["deploy -> offer"].append(at - posted[device])
            unexpected += data["unexpected"]
            device_cpu += data["cpu_s"]
        return {
            "round": r,
            "messages": messages,
            "expected": MESSAGES_PER_DEVICE * n,
            "span_s": span,
            "msg_per_s": messages / span,
            "deploy_span_s": last_out - deploy_at,
            "platform_cpu_s": cpu,
            "platform_cpu_us_per_msg": cpu / messages * 1e6,
            "broker_cpu_s": broker_cpu,
            "devices_cpu_s": device_cpu,
            "unexpected": unexpected,
            "succeeded": fleet.finished - finished0,
        }


def facts() -> dict[str, Any]:
    cpu = cpu_model()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "paho": paho.__version__ if hasattr(paho, "__version__") else "?",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "load_before": os.getloadavg()[0],
    }


def problems(doc: dict[str, Any]) -> list[str]:
    found = []
    for r in doc["rounds"]:
        if r["messages"] != r["expected"]:
            found.append(f"round {r['round']}: {r['messages']} messages, expected {r['expected']}")
        if r["succeeded"] != doc["devices"]:
            found.append(f"round {r['round']}: {r['succeeded']} tasks succeeded")
        if r["unexpected"]:
            found.append(f"round {r['round']}: {r['unexpected']} unexpected messages at devices")
    if doc["platform_states"] != {"succeeded": doc["devices"]}:
        found.append(f"platform sessions end in {doc['platform_states']}")
    if doc["rejected"]:
        found.append(f"the platform rejected {doc['rejected']} messages")
    return found


def report(doc: dict[str, Any], info: dict[str, Any]) -> str:
    lines = [
        f"iotfsm MQTT fleet benchmark: {doc['devices']:,} device connections in {doc['procs']}"
        f" processes, one platform Runtime, Mosquitto ({info['date']}, CPython {info['python']},"
        f" {info['nproc']} CPU {info['cpu']}, load {info['load_before']:.2f})",
        f"{doc['devices']:,} devices connected and subscribed in {doc['connect_s']:.1f} s;"
        f" {MESSAGES_PER_DEVICE} messages per device and round",
        "",
        f"{'round':>5} {'messages':>9} {'span s':>7} {'platform msg/s':>15} {'deploy span s':>14}"
        f" {'platform CPU s':>15} {'CPU µs/msg':>11} {'broker CPU s':>13} {'devices CPU s':>14}",
    ]
    for r in doc["rounds"]:
        lines.append(
            f"{r['round']:>5} {r['messages']:>9,} {r['span_s']:>7.2f} {r['msg_per_s']:>15,.0f}"
            f" {r['deploy_span_s']:>14.2f} {r['platform_cpu_s']:>15.2f}"
            f" {r['platform_cpu_us_per_msg']:>11.1f} {r['broker_cpu_s']:>13.2f}"
            f" {r['devices_cpu_s']:>14.2f}"
        )
    rates = [r["msg_per_s"] for r in doc["rounds"]]
    cpu = [r["platform_cpu_us_per_msg"] for r in doc["rounds"]]
    lines.append(
        f"median over {len(rates)} rounds: {statistics.median(rates):,.0f} messages/s at the"
        f" platform, {statistics.median(cpu):.1f} µs platform CPU per message"
    )
    lines.append("")
    lines.append("End-to-end latency, ms (device clock to device clock, all rounds):")
    lines.append(f"  {'':<22} {'n':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'mean':>8}")
    for name in LATENCIES:
        p = doc["latency_ms"][name]
        if not p:
            lines.append(f"  {name:<22} {'-':>6}")
            continue
        lines.append(
            f"  {name:<22} {p['n']:>6,} {p['p50']:>8.1f} {p['p90']:>8.1f} {p['p99']:>8.1f}"
            f" {p['max']:>8.1f} {p['mean']:>8.1f}"
        )
    lines.append("")
    found = problems(doc)
    if found:
        lines.append("INVALID RUN: " + "; ".join(found))
    else:
        lines.append(
            f"checked: every round {MESSAGES_PER_DEVICE * doc['devices']:,} platform messages,"
            f" every task succeeded, nothing rejected"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = p.add_argument
    add("--devices", type=int, default=None, help="device connections (1000)")
    add("--procs", type=int, default=None, help="device processes (4)")
    add("--rounds", type=int, default=None, help="OTA rounds (5)")
    add("--quick", action="store_true", help="40 devices, 2 processes, 1 round (smoke test)")
    add("--json", action="store_true", help="print one JSON document instead of the table")
    add("--timeout", type=float, default=120.0, help="seconds per phase before giving up")
    return p


def main(argv: Iterable[str] | None = None) -> int:
    args = parser().parse_args(None if argv is None else list(argv))
    devices = args.devices or (40 if args.quick else 1_000)
    procs = args.procs or (2 if args.quick else 4)
    rounds = args.rounds or (1 if args.quick else 5)
    info = facts()
    doc = run(devices, procs, rounds, args.timeout)
    if args.json:
        print(json.dumps({"facts": info, **doc, "problems": problems(doc)}, indent=2))
    else:
        print(report(doc, info))
    return 1 if problems(doc) else 0


if __name__ == "__main__":
    sys.exit(main())
