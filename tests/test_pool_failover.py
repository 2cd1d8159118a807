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

import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

import pytest
from pool_world import ACCOUNT, PARTITIONS, PRODUCT, Devices, Pool
from pool_world import logins as _logins
from pool_world import register as _register
from pool_world import wait_for as _wait

from iotfsm.adapters.amqp.leases import MEMBER_SPACE, PARTITION_SPACE
from iotfsm.adapters.amqp.topology import queue_name
from iotfsm.adapters.http.broker_auth import BrokerAuthServer
from iotfsm.adapters.identity.broker_policy import BrokerPolicy
from iotfsm.adapters.identity.registry import device_topics
from iotfsm.adapters.store.postgres import PostgresStore
from iotfsm.machines import all_features
from iotfsm.pool import outcomes, queue_deploy

DEVICES = int(os.environ.get("IOTFSM_POOL_DEVICES", "2000"))
TARGET = "2.0.0"
IMAGE = bytes(range(256)) * 32  # 8 KiB


def _succeeded(store: PostgresStore) -> int:
    with store.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM records WHERE tbl = 'ota_outcomes' AND (value->>'ok')::boolean"
        ).fetchone()
    return int(row[0]) if row else 0


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
    pool.auth = auth
    devices = Devices()
    try:
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
