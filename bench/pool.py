"""Pool benchmark (issue 17): messages/s and CPU per message of the platform, 1 and 2 pool workers
over RabbitMQ + PostgreSQL against one platform over Mosquitto + SQLite, in one run; and the bytes
one idle session takes in PostgreSQL (its session row and its uplink mark).

Every platform is the real `iotfsm platform` command in its own process (`--open-registry`, so
no registration is measured). The load is `--devices` devices' `report_version`, `--rounds` times
each, published as fast as one client can (into `amq.topic` over AMQP for the pool, as the MQTT
plugin would route a device's publish; over MQTT QoS 1 for Mosquitto); the platform answers each
with `report_version_rsp`, and a consumer counts the answers. A warm-up round creates the sessions
first, so the figures are of a steady fleet. Messages/s are (reports + answers) over the time from
the first report to the last answer; CPU per message is the platform processes' own CPU time
(/proc, user + system) over the same span, divided by the messages. The RabbitMQ node runs
without the HTTP auth backend here (its own `guest` account on 127.0.0.1): logins are not what
is measured.

    python bench/pool.py                  # 2,000 devices x 5 rounds
    python bench/pool.py --quick          # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pika
import psycopg
from benchkit import cpu_model
from paho.mqtt.enums import CallbackAPIVersion

from iotfsm.adapters.amqp.leases import MEMBER_SPACE, PARTITION_SPACE, held_locks
from iotfsm.testing.mosquitto import Mosquitto
from iotfsm.testing.postgres import PostgreSQL
from iotfsm.testing.rabbitmq import RabbitMQ
from iotfsm.testing.server import free_port

PRODUCT = "PBENCHPOOL"
PARTITIONS = 16
SRC = Path(__file__).resolve().parents[1] / "src"


def _wait(what: str, done: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu(root: int) -> float:
    """CPU seconds of a process and all its descendants (the broker's beam, the database's
    backends), so the bench can say which part is the limit."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += _cpu(pid)
        except OSError:
            continue
        todo += children.get(pid, [])
    return total


def _report(version: str) -> bytes:
    return json.dumps({"type": "report_version", "report": {"version": version}}).encode()


def _platform(
    args: list[str], env: dict[str, str], root: Path, profile: Path | None = None
) -> subprocess.Popen[bytes]:
    """The platform command in its own process; with `profile` (a directory) its pool worker's
    loop thread runs under cProfile (bench/pool_profiled.py)."""
    env = {**env, "PYTHONPATH": os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])}
    data = root / f"platform-{secrets.token_hex(3)}"
    log = (root / f"{data.name}.log").open("wb")
    command = [sys.executable, "-m", "iotfsm"]
    if profile is not None:
        out = profile / f"{data.name}.prof"
        command = [sys.executable, str(Path(__file__).with_name("pool_profiled.py")), str(out)]
    argv = [*command, "platform", *args, "--data-dir", str(data)]
    argv += ["--http", f"127.0.0.1:{free_port()}", "--open-registry"]
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


class AmqpLoad:
    """Reports into `amq.topic`, answers counted from a queue bound to the downlinks."""

    def __init__(self, node: RabbitMQ) -> None:
        params = pika.ConnectionParameters("127.0.0.1", node.amqp_port)
        self.connection = pika.BlockingConnection(params)
        self.channel = self.connection.channel()
        queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(queue, "amq.topic", routing_key=f"$ota.update.{PRODUCT}.*")
        self.answers = 0
        self.channel.basic_consume(queue, self._answer, auto_ack=True)

    def _answer(self, *_: Any) -> None:
        self.answers += 1

    def round(self, devices: int, version: str, timeout: float = 300.0) -> None:
        want = self.answers + devices
        body = _report(version)
        for n in range(devices):
            self.channel.basic_publish("amq.topic", f"$ota.report.{PRODUCT}.d{n:05d}", body)
        deadline = time.monotonic() + timeout
        while self.answers < want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{want - self.answers} answers missing")
            self.connection.process_data_events(time_limit=0.05)

    def close(self) -> None:
        self.connection.close()


class MqttLoad:
    def __init__(self, broker: Mosquitto) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-load")
        self.answers = 0
        self._lock = threading.Lock()
        self.client.on_message = self._answer
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(f"$ota/update/{PRODUCT}/+", 0)

    def _answer(self, *_: Any) -> None:
        with self._lock:
            self.answers += 1

    def round(self, devices: int, version: str, timeout: float = 300.0) -> None:
        want = self.answers + devices
        body = _report(version)
        for n in range(devices):
            self.client.publish(f"$ota/report/{PRODUCT}/d{n:05d}", body, 1)
        _wait("the answers", lambda: self.answers >= want, timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _measure(
    load: AmqpLoad | MqttLoad,
    pids: list[int],
    others: dict[str, int],
    devices: int,
    rounds: int,
) -> dict[str, float]:
    """`others`: name -> root pid of a server whose CPU per message is reported beside."""
    load.round(devices, "0.0.1")  # warm-up: every session exists afterwards
    cpu0 = sum(_cpu(p) for p in pids)
    other0 = {name: _tree_cpu(pid) for name, pid in others.items()}
    began = time.monotonic()
    for r in range(rounds):
        load.round(devices, f"1.0.{r}")
    took = time.monotonic() - began
    cpu = sum(_cpu(p) for p in pids) - cpu0
    messages = 2 * devices * rounds
    result = {"messages": messages, "seconds": took, "msg_per_s": messages / took,
              "cpu_us_per_msg": cpu / messages * 1e6}  # fmt: skip
    for name, pid in others.items():
        result[f"{name}_cpu_us_per_msg"] = (_tree_cpu(pid) - other0[name]) / messages * 1e6
    return result


def _postmaster(cluster: PostgreSQL) -> int:
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


def _locks(conninfo: str, space: int) -> int:
    with psycopg.connect(conninfo) as conn:
        return held_locks(conn, space)


def run_pool(
    node: RabbitMQ,
    cluster: PostgreSQL,
    *,
    workers: int,
    devices: int,
    rounds: int,
    root: Path,
    profile: Path | None = None,
) -> dict[str, Any]:
    db = f"bench_{secrets.token_hex(4)}"
    cluster.create_database(db)
    conninfo = cluster.conninfo(db)
    env = {**cluster.environment(), "IOTFSM_BROKER_PASSWORD": "guest"}
    args = ["--broker", f"amqp://127.0.0.1:{node.amqp_port}/%2F", "--username", "guest"]
    args += ["--store", cluster.url(db), "--partitions", str(PARTITIONS)]
    processes = [_platform(args, env, root, profile) for _ in range(workers)]
    try:
        _wait("the workers to share the partitions",
              lambda: _locks(conninfo, MEMBER_SPACE) == workers
              and _locks(conninfo, PARTITION_SPACE) == PARTITIONS)  # fmt: skip
        load = AmqpLoad(node)
        try:
            beam = int((node.directory / "node.pid").read_text().split()[0])
            servers = {"broker": beam, "database": _postmaster(cluster)}
            pids = [p.pid for p in processes]
            result: dict[str, Any] = _measure(load, pids, servers, devices, rounds)
        finally:
            load.close()
    finally:
        _stop(processes)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM sessions")
        conn.execute("VACUUM uplink_marks")
        row = conn.execute(
            "SELECT pg_total_relation_size('sessions'), pg_total_relation_size('uplink_marks'),"
            " (SELECT count(*) FROM sessions)"
        ).fetchone()
    assert row is not None
    result["bytes_per_idle_session"] = (row[0] + row[1]) / max(1, row[2])
    result["sessions"] = row[2]
    return result


def run_mosquitto(devices: int, rounds: int, root: Path) -> dict[str, Any]:
    with Mosquitto(extra_config="max_queued_messages 0\nmax_inflight_messages 0\n") as broker:
        process = _platform(["--broker", broker.url], dict(os.environ), root)
        try:
            load = MqttLoad(broker)
            try:
                _wait("the platform to answer", lambda: _answers_once(load), 60.0)
                servers = {"broker": broker.pid or 0}
                return _measure(load, [process.pid], servers, devices, rounds)
            finally:
                load.close()
        finally:
            _stop([process])


def _answers_once(load: MqttLoad) -> bool:
    before = load.answers
    load.client.publish(f"$ota/report/{PRODUCT}/probe", _report("0.0.0"), 1)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if load.answers > before:
            return True
        time.sleep(0.02)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="200 devices x 2 rounds")
    parser.add_argument(
        "--profile", type=Path, help="write each pool worker's loop profile into this directory"
    )
    args = parser.parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    devices, rounds = (200, 2) if args.quick else (args.devices, args.rounds)
    root = Path(tempfile.mkdtemp(prefix="iotfsm-bench-pool-"))
    results: dict[str, Any] = {}
    with RabbitMQ() as node, PostgreSQL() as cluster:
        for workers in (1, 2):
            results[f"pool, {workers} worker(s)"] = run_pool(
                node,
                cluster,
                workers=workers,
                devices=devices,
                rounds=rounds,
                root=root,
                profile=args.profile,
            )
    results["mosquitto + sqlite, 1 platform"] = run_mosquitto(devices, rounds, root)
    print(f"pool benchmark: {devices} devices x {rounds} rounds, {cpu_model()}")
    for name, r in results.items():
        line = f"  {name:32} {r['msg_per_s']:8.0f} msg/s  {r['cpu_us_per_msg']:6.0f} µs CPU/msg"
        line += (
            "  ("
            + ", ".join(
                f"{k.split('_')[0]} {v:.0f} µs"
                for k, v in r.items()
                if k.endswith("_cpu_us_per_msg") and not k.startswith("cpu")
            )
            + ")"
        )
        if "bytes_per_idle_session" in r:
            line += f"  {r['bytes_per_idle_session']:.0f} B/idle session in PostgreSQL"
        print(line)
    one, two = results["pool, 1 worker(s)"], results["pool, 2 worker(s)"]
    base = results["mosquitto + sqlite, 1 platform"]
    print(f"  2 workers / 1 worker: {two['msg_per_s'] / one['msg_per_s']:.2f}x messages/s")
    print(f"  pool CPU per message / Mosquitto+SQLite: "
          f"{one['cpu_us_per_msg'] / base['cpu_us_per_msg']:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
