"""The world of the pool tests: a pool of `iotfsm platform` workers on the session's private
RabbitMQ node and PostgreSQL, its registered fleet and the device processes that play it.

Shared by tests/test_pool_failover.py (a product-wide OTA, one worker killed) and
tests/test_pool_campaign.py (a campaign, its leader killed): `Pool` starts and reaps the worker
processes, `pool` is its fixture, `Devices` runs `pool_devices` processes, `register` puts a
fleet into the shared registry in one statement and `logins` gives its MQTT logins.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pool_devices
import psycopg
import pytest
from postgres_fixtures import fresh_database
from rabbitmq_fixtures import RabbitNode

from iotfsm.adapters.amqp.leases import held_locks
from iotfsm.adapters.http.broker_auth import BrokerAuthServer
from iotfsm.adapters.identity.broker_account import BrokerAccount
from iotfsm.adapters.identity.credentials import DeviceCredentials
from iotfsm.adapters.identity.registry import (
    ProductSecrets,
    RegisteredDevice,
    Registry,
    derive_psk,
)
from iotfsm.adapters.store.postgres import PostgresStore
from iotfsm.testing.postgres import PostgreSQL
from iotfsm.testing.server import free_port

DEVICE_PROCS = 4
PARTITIONS = 16
PRODUCT = "PPOOL"
ACCOUNT = BrokerAccount("iotfsm-platform", "pool-test-platform-password")
SRC = Path(__file__).resolve().parents[1] / "src"
WAIT = float(os.environ.get("IOTFSM_POOL_WAIT", "150"))


def wait_for(what: str, done: Callable[[], bool], timeout: float = WAIT) -> None:
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
    auth: BrokerAuthServer | None = None
    """The test's broker-auth listener, once it serves the pool (for the failure's summary)."""
    """Other processes of the test (a crashing worker): killed and reaped with the workers."""

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


def register(store: PostgresStore, secrets_dir: Path, names: list[str]) -> Registry:
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
def pool(postgres_cluster: PostgreSQL, rabbitmq_node: RabbitNode, tmp_path: Path) -> Iterator[Pool]:
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
    count: int = DEVICE_PROCS
    """How many processes share the fleet."""

    def start(self, pool: Pool, logins: list[tuple[str, str, str]]) -> None:
        context = multiprocessing.get_context("spawn")
        share = -(-len(logins) // self.count)
        broker = (pool.node.broker.host, pool.node.broker.port)
        for n in range(self.count):
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


def logins(registry: Registry, names: list[str]) -> list[tuple[str, str, str]]:
    secret = registry.secrets.get(PRODUCT)
    found = []
    for name in names:
        login = DeviceCredentials(PRODUCT, name, derive_psk(secret, PRODUCT, name, 1)).login()
        found.append((name, login.username, login.password))
    return found
