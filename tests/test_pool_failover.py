"""The platform pool on a real RabbitMQ and PostgreSQL: three workers, a fleet, one SIGKILL.

Three `iotfsm platform --broker amqp://… --store postgresql://…` processes share the session's
private RabbitMQ node and a database of the session's private PostgreSQL. `DEVICES` simulated
devices (raw MQTT clients, several processes of them, `pool_devices`) log in through the MQTT
plugin, checked by the broker-auth listener this test serves from the shared registry. A
product-wide OTA is queued for the pool's leader; the devices download the image for real from
the workers' file services (any worker, whichever signed the URL). When a third of the fleet has
succeeded one worker is SIGKILLed; at two thirds a fourth worker joins. Then:

- every device ends on the new version, and the pool recorded exactly one OTA success for each;
- no device was answered twice for one report (an answer with no report waiting is counted);
- no report was lost: every report a device sent was answered or sent again, every partition
  queue drained, and the counts are printed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pool_devices
import psycopg
import pytest
from postgres_fixtures import fresh_database, postgres_cluster  # noqa: F401 (fixture)
from rabbitmq_fixtures import RabbitNode, rabbitmq_node  # noqa: F401 (fixture)

from iotfsm.adapters.amqp.leases import MEMBER_SPACE, PARTITION_SPACE, held_locks
from iotfsm.adapters.amqp.topology import queue_name
from iotfsm.adapters.http.broker_auth import BrokerAuthServer
from iotfsm.adapters.identity.broker_account import BrokerAccount
from iotfsm.adapters.identity.broker_policy import BrokerPolicy
from iotfsm.adapters.identity.credentials import DeviceCredentials
from iotfsm.adapters.identity.registry import (
    ProductSecrets,
    RegisteredDevice,
    Registry,
    derive_psk,
    device_topics,
)
from iotfsm.adapters.store.postgres import PostgresStore
from iotfsm.machines import all_features
from iotfsm.pool import outcomes, queue_deploy
from iotfsm.testing.postgres import PostgreSQL
from iotfsm.testing.server import free_port

DEVICES = int(os.environ.get("IOTFSM_POOL_DEVICES", "2000"))
DEVICE_PROCS = 4
PARTITIONS = 16
PRODUCT = "PPOOL"
TARGET = "2.0.0"
IMAGE = bytes(range(256)) * 32  # 8 KiB
ACCOUNT = BrokerAccount("iotfsm-platform", "pool-test-platform-password")
SRC = Path(__file__).resolve().parents[1] / "src"
WAIT = float(os.environ.get("IOTFSM_POOL_WAIT", "150"))


def _wait(what: str, done: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@attrs.define
class Pool:
    cluster: PostgreSQL
    dbname: str
    node: RabbitNode
    root: Path
    workers: list[subprocess.Popen[bytes]] = attrs.Factory(list)
    http: list[tuple[str, int]] = attrs.Factory(list)
    others: list[subprocess.Popen[Any]] = attrs.Factory(list)
    """Other processes of the test (a crashing worker): killed and reaped with the workers."""
    auth: BrokerAuthServer | None = None

    @property
    def dsn(self) -> str:
        return self.cluster.url(self.dbname)

    def start_worker(self) -> subprocess.Popen[bytes]:
        n = len(self.workers)
        port = free_port()
        env = {**self.cluster.environment(), "IOTFSM_BROKER_PASSWORD": ACCOUNT.password}
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
        broker = f"amqp://{self.node.broker.host}:{self.node.broker.amqp_port}/%2F"
        log = (self.root / f"worker{n}.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "iotfsm", "--log-level", "info", "--log", "iotfsm.pool.deliveries=debug", "platform", "--broker", broker, "--store", self.dsn,
             "--data-dir", str(self.root / f"worker{n}"), "--http", f"127.0.0.1:{port}",
             "--username", ACCOUNT.username, "--partitions", str(PARTITIONS)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.workers.append(worker)
        self.http.append(("127.0.0.1", port))
        return worker

    def locks(self, space: int) -> int:
        with psycopg.connect(self.cluster.conninfo(self.dbname)) as conn:
            return held_locks(conn, space)

    def queue_depths(self) -> dict[str, int]:
        result = self.node.broker.ctl("list_queues", "name", "messages", "--quiet")
        depths = {}
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].startswith("iotfsm.partition."):
                depths[parts[0]] = int(parts[1])
        return depths

    def stop(self) -> None:
        """End and reap every process the test started, whatever state it is in: nothing of
        one test may outlive it (a worker left behind takes partitions of the next test's pool,
        and prints lease errors once the session's PostgreSQL is gone)."""
        for other in self.others:
            if other.poll() is None:
                other.kill()
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for process in [*self.others, *self.workers]:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def lines_about(self, needles: list[str], most: int = 60) -> str:
        """The workers' log lines that name one of `needles` (each delivery is traced)."""
        found = []
        for n in range(len(self.workers)):
            text = (self.root / f"worker{n}.log").read_text(errors="replace")
            found += [f"worker{n}: {line}" for line in text.splitlines()
                      if any(needle in line for needle in needles)]  # fmt: skip
        return "\n".join(found[-most:])

    def keep_logs(self) -> None:
        """Copy the workers' and the node's logs to $IOTFSM_POOL_LOGS when it is set."""
        keep = os.environ.get("IOTFSM_POOL_LOGS")
        if keep:
            for n in range(len(self.workers)):
                name = f"worker{n}.log"
                (Path(keep) / name).write_bytes((self.root / name).read_bytes())
            (Path(keep) / "rabbitmq.log").write_text(self.node.broker.log_text())

    def logs(self) -> str:
        self.keep_logs()
        return "\n".join(
            f"--- worker{n}\n" + (self.root / f"worker{n}.log").read_text(errors="replace")[-6000:]
            for n in range(len(self.workers))
        )


class RecordingPolicy(BrokerPolicy):
    """The test's broker policy, remembering what it was asked per login (the part of the
    username before `;`, which is the client id): a stuck device's checks for the failure."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: dict[str, deque[str]] = {}
        self._asked_lock = threading.Lock()

    def decide(self, kind: str, params: Mapping[str, str]) -> bool:
        allowed = super().decide(kind, params)
        who = params.get("username", "").split(";")[0][:40]
        what = params.get("routing_key") or params.get("name") or ""
        line = f"{time.time():.3f} {kind} {params.get('permission', '')} {what[:60]} {allowed}"
        with self._asked_lock:
            self.asked.setdefault(who, deque(maxlen=16)).append(line)
        return allowed


def _register(store: PostgresStore, secrets_dir: Path, names: list[str]) -> Registry:
    """Register the fleet in one statement (Registry.add re-reads the table per device)."""
    registry = Registry(store, ProductSecrets(secrets_dir))
    registry.secrets.ensure(PRODUCT)
    docs = [attrs.asdict(RegisteredDevice(PRODUCT, n, True, "key", 1)) for n in names]
    with store.connection() as conn, conn.transaction():
        conn.execute(
            "INSERT INTO records (tbl, key, value) SELECT 'registry', k, v::jsonb"
            " FROM unnest(%s::text[], %s::text[]) AS t(k, v)",
            ([f"{PRODUCT}/{n}" for n in names], [json.dumps(d) for d in docs]),
        )
        conn.execute("UPDATE change_counter SET version = version + 1")
    registry.reload()
    return registry


@pytest.fixture
def pool(
    postgres_cluster: PostgreSQL,  # noqa: F811
    rabbitmq_node: RabbitNode,  # noqa: F811
    tmp_path: Path,
) -> Iterator[Pool]:
    # the pool's exchange, partition queues and their messages live in the node's vhost: a
    # test gets them empty, declared by its own workers with its own partition count
    rabbitmq_node.reset_vhost()
    found = Pool(postgres_cluster, fresh_database(postgres_cluster), rabbitmq_node, tmp_path)
    try:
        yield found
    finally:
        found.stop()
        found.keep_logs()


@attrs.define
class Devices:
    """The device processes (`pool_devices`), each with a pipe to ask for its counts."""

    procs: list[tuple[Any, Any]] = attrs.Factory(list)

    def start(self, pool: Pool, logins: list[tuple[str, str, str]]) -> None:
        context = multiprocessing.get_context("spawn")
        share = -(-len(logins) // DEVICE_PROCS)
        broker = (pool.node.broker.host, pool.node.broker.port)
        for n in range(DEVICE_PROCS):
            parent, child = context.Pipe()
            chunk = logins[n * share : (n + 1) * share]
            process = context.Process(
                target=pool_devices.run,
                args=(child, broker, PRODUCT, chunk, pool.http),
                daemon=True,
            )
            process.start()
            self.procs.append((process, parent))

    def ask(self, what: str) -> list[Any]:
        answers = []
        for _, pipe in self.procs:
            pipe.send(what)
            if not pipe.poll(30):
                raise AssertionError("a device process does not answer")
            answers.append(pipe.recv())
        return answers

    def totals(self) -> dict[str, int]:
        summed: dict[str, int] = {}
        for counts in self.ask("totals"):
            for k, v in counts.items():
                summed[k] = summed.get(k, 0) + v
        return summed

    def stop(self) -> None:
        for process, pipe in self.procs:
            if process.is_alive():
                try:
                    pipe.send("quit")
                    pipe.poll(10)
                except OSError:  # it died: nothing to ask
                    pass
        for process, _ in self.procs:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()


def _logins(registry: Registry, names: list[str]) -> list[tuple[str, str, str]]:
    secret = registry.secrets.get(PRODUCT)
    logins = []
    for name in names:
        login = DeviceCredentials(PRODUCT, name, derive_psk(secret, PRODUCT, name, 1)).login()
        logins.append((name, login.username, login.password))
    return logins


def _succeeded(store: PostgresStore) -> int:
    with store.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM records WHERE tbl = 'ota_outcomes' AND (value->>'ok')::boolean"
        ).fetchone()
    return int(row[0]) if row else 0


def _diagnosis(pool: Pool, devices: Devices, store: PostgresStore) -> str:
    """What a failure needs to be understood: queues, stuck devices, their sessions, logs."""
    queues = pool.node.broker.ctl(
        "list_queues", "name", "messages", "messages_unacknowledged", "consumers", "--quiet"
    ).stdout
    queues = "\n".join(line for line in queues.splitlines() if "iotfsm." in line)
    stuck = [d for found in devices.ask("stuck") for d in found]
    with store.connection() as conn:
        rows = conn.execute(
            "SELECT s.device, s.doc::text, m.partition, m.steps::text FROM sessions s"
            " LEFT JOIN uplink_marks m USING (product, device)"
            " WHERE s.device = ANY(%s) AND s.feature = 'ota'",
            ([name for name, *_ in stuck],),
        ).fetchall()
    traces = pool.lines_about([f".{name}" for name, *_ in stuck])
    return "\n".join([f"{devices.totals()}", queues, f"{stuck}", f"{rows}", traces,
                      _broker_view(pool, [name for name, *_ in stuck]), pool.logs()])  # fmt: skip


def _auth_summary(pool: Pool) -> str:
    """How the node's auth checks went: what the listener shed, and the node's log lines
    about checks that failed (an error from the HTTP backend, a channel closed by one)."""
    log = pool.node.broker.log_text()
    failures = Counter(
        what for line in log.splitlines()
        for what in ("returned an error", "channel exception", "authorization failure")
        if what in line
    )  # fmt: skip
    if pool.auth is None:
        return f"node log {dict(failures)}"
    asked: Counter[str] = Counter()
    for (kind, _), n in pool.auth.policy.decisions.items():
        asked[kind] += n
    return f"broker auth shed {pool.auth.shed}, asked {dict(asked)}, node log {dict(failures)}"


def _broker_view(pool: Pool, names: list[str]) -> str:
    """The node's and the broker-auth listener's side of the stuck devices: their MQTT
    connections (reader state, channels alive, publishes awaiting a confirm), the node's log
    lines naming them, how often the node's auth checks failed, and what the listener shed
    and answered for them."""
    client_ids = [f"{PRODUCT}{name}" for name in names]
    parts = [
        "--- rabbitmq: the stuck devices' MQTT connections",
        pool.node.mqtt_connections(client_ids),
        f"--- {_auth_summary(pool)}; the node's log lines naming the stuck devices:",
        pool.node.log_lines(client_ids),
    ]
    if pool.auth is not None:
        policy = pool.auth.policy
        parts += [f"--- broker auth decisions {dict(policy.decisions)}"]
        if isinstance(policy, RecordingPolicy):
            for client_id in client_ids:
                asked = policy.asked.get(client_id, deque())
                parts += [f"{client_id}: " + " | ".join(asked)]
    return "\n".join(parts)


def _has_deployment(store: PostgresStore) -> bool:
    return store.get("product_firmware", PRODUCT) is not None


@pytest.mark.timeout(600)
def test_three_workers_one_killed_every_device_updated_once(pool: Pool) -> None:
    began = time.monotonic()
    names = [f"d{i:05d}" for i in range(DEVICES)]
    store = PostgresStore(pool.cluster.conninfo(pool.dbname))
    registry = _register(store, pool.root / "secrets", names)
    policy = RecordingPolicy(registry, ACCOUNT, all_features(), device_topics)
    auth = BrokerAuthServer(policy, *pool.node.auth_address, workers=8, pending=2048).start()
    devices = Devices()
    try:
        pool.auth = auth
        queue_deploy(store, PRODUCT, TARGET, IMAGE)
        for _ in range(3):
            pool.start_worker()
        _wait("three workers holding every partition", lambda: pool.locks(MEMBER_SPACE) == 3
              and pool.locks(PARTITION_SPACE) == PARTITIONS)  # fmt: skip
        _wait("the leader to apply the deployment", lambda: _has_deployment(store))
        ready = time.monotonic()
        devices.start(pool, _logins(registry, names))
        _wait("a third of the fleet updated", lambda: _succeeded(store) >= DEVICES // 3)
        victim = pool.workers[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = _succeeded(store)
        _wait("two thirds of the fleet updated", lambda: _succeeded(store) >= 2 * DEVICES // 3)
        pool.start_worker()
        joined_at = _succeeded(store)
        try:
            _wait("every device updated", lambda: devices.totals()["done"] == DEVICES)
        except AssertionError:
            raise AssertionError(_diagnosis(pool, devices, store)) from None
        finished = time.monotonic()
        _wait("every partition queue drained", lambda: not any(pool.queue_depths().values()))
        counts = devices.totals()
    finally:
        devices.stop()
        auth.stop()
    per_device: dict[str, int] = {}
    for outcome in outcomes(store):
        assert outcome.ok and outcome.version == TARGET
        per_device[outcome.device] = per_device.get(outcome.device, 0) + 1
    store.close()
    print(
        f"\npool: {DEVICES} devices, 3 workers (one SIGKILLed at {killed_at} successes, one "
        f"joined at {joined_at}); setup {ready - began:.1f} s, fleet {finished - ready:.1f} s;"
        f" device counts {counts}; {_auth_summary(pool)}"
    )
    assert sorted(per_device) == names, "every device has an OTA success recorded"
    assert set(per_device.values()) == {1}, "no OTA success recorded twice"
    # a login may be refused while the auth listener's queue is full (it sheds load that way);
    # the device logs in again, as real ones do, and must end updated all the same
    assert counts["done"] == DEVICES
    assert counts["duplicates"] == 0, "no report answered twice"
    assert counts["downloads"] == DEVICES and counts["failed_fetches"] == 0
    # no report lost: every report was answered once, apart from those sent again because
    # the answer was late (`pool_devices.RESEND`); the queues hold nothing more
    assert counts["rsp"] <= counts["reports"]
    assert counts["reports"] - counts["rsp"] <= counts["resends"]
    assert counts["reports"] >= 2 * DEVICES and counts["uplinks"] >= 5 * DEVICES
    assert set(pool.queue_depths()) == {queue_name(p) for p in range(PARTITIONS)}
