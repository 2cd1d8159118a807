"""Exactly once across a crash between commit and ack (issue 17), made to happen on purpose.

A worker (`pool_crash_child`) steps a device's report, commits it, and dies before it publishes
the answer or acks the delivery. RabbitMQ requeues the report; the next worker takes the partition
over and gets it again, flagged redelivered. It must recognise the step as done (its uplink mark
was committed with it): the device gets the answer exactly once, from the uplink mark, and the
session is not stepped a second time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from pool_world import ACCOUNT, PRODUCT, SRC, Pool
from pool_world import logins as _logins
from pool_world import register as _register
from pool_world import wait_for as _wait

from iotfsm.adapters.amqp.leases import PARTITION_SPACE
from iotfsm.adapters.http.broker_auth import BrokerAuthServer
from iotfsm.adapters.identity.broker_policy import BrokerPolicy
from iotfsm.adapters.identity.registry import device_topics
from iotfsm.adapters.store.postgres import PostgresStore
from iotfsm.machines import all_features

PARTITIONS = 2


def _crashing_worker(running: Pool) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    broker = f"amqp://{running.node.broker.host}:{running.node.broker.amqp_port}/%2F"
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("pool_crash_child.py")), broker,
         str(running.root / "crashing"), str(PARTITIONS)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    running.others.append(child)  # killed and reaped by the fixture, whatever happens here
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(f"{running.cluster.conninfo(running.dbname)} {ACCOUNT.password}\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "started"
    return child


def test_a_report_committed_by_a_worker_that_died_before_its_ack_is_answered_once(
    pool: Pool,
) -> None:
    store = PostgresStore(pool.cluster.conninfo(pool.dbname))
    registry = _register(store, pool.root / "secrets", ["solo"])
    policy = BrokerPolicy(registry, ACCOUNT, all_features(), device_topics)
    auth = BrokerAuthServer(policy, *pool.node.auth_address).start()
    answers: list[dict[str, object]] = []
    got, subscribed = threading.Event(), threading.Event()
    name, username, password = _logins(registry, ["solo"])[0]
    device = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{PRODUCT}{name}")
    device.username_pw_set(username, password)

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        answers.append(json.loads(message.payload))
        got.set()

    device.on_message = on_message
    device.on_subscribe = lambda *_: subscribed.set()
    try:
        crashing = _crashing_worker(pool)
        _wait(
            "the worker to hold every partition", lambda: pool.locks(PARTITION_SPACE) == PARTITIONS
        )
        device.connect(pool.node.broker.host, pool.node.broker.port)
        device.loop_start()
        device.subscribe(f"$ota/update/{PRODUCT}/{name}", 1)
        assert subscribed.wait(20)
        report = {"type": "report_version", "report": {"version": "1.0.0"}}
        device.publish(f"$ota/report/{PRODUCT}/{name}", json.dumps(report), 1).wait_for_publish()
        assert crashing.wait(timeout=60) == 9, "the worker died right after its commit"
        with store.connection() as conn:
            row = conn.execute(
                "SELECT steps FROM uplink_marks WHERE device = %s", (name,)
            ).fetchone()
        assert row is not None and len(row[0]) == 1, "the step and its mark were committed"
        recorded = row[0][0][1]
        assert [json.loads(payload)["type"] for _, payload, _ in recorded] == ["report_version_rsp"]
        assert not got.wait(0.5), "nothing was answered before the crash"
        pool.start_worker()
        assert got.wait(60), "the redelivered report is answered by the next worker"
        _wait("the partition queue to drain", lambda: not any(pool.queue_depths().values()))
        got.clear()
        assert not got.wait(1.0), f"a second answer came: {answers}"
        assert [a["type"] for a in answers] == ["report_version_rsp"], answers
        with psycopg.connect(pool.cluster.conninfo(pool.dbname)) as conn:
            row = conn.execute(
                "SELECT steps FROM uplink_marks WHERE device = %s", (name,)
            ).fetchone()
        assert row is not None and row[0][0][1] == recorded
        log = (pool.root / "worker0.log").read_text()
        assert "stepped and committed already" in log, "the next worker did not step it again"
    finally:
        device.loop_stop()
        auth.stop()
        store.close()
