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
import time

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
    return f"{devices.totals()}\n{queues}\n{stuck}\n{rows}\n{traces}\n{pool.logs()}"


def _has_deployment(store: PostgresStore) -> bool:
    return store.get("product_firmware", PRODUCT) is not None


@pytest.mark.timeout(600)
def test_three_workers_one_killed_every_device_updated_once(pool: Pool) -> None:
    began = time.monotonic()
    names = [f"d{i:05d}" for i in range(DEVICES)]
    store = PostgresStore(pool.cluster.conninfo(pool.dbname))
    registry = _register(store, pool.root / "secrets", names)
    policy = BrokerPolicy(registry, ACCOUNT, all_features(), device_topics)
    auth = BrokerAuthServer(policy, *pool.node.auth_address, workers=8, pending=2048).start()
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
        f" device counts {counts}"
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
