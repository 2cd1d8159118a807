"""`iotfsm platform --store postgresql://…` and `iotfsm status --store …` (issue 17): a platform
process keeps its sessions in a private PostgreSQL cluster, found by a password-free DSN and the
password in PGPASSFILE; a DSN with a password in argv is refused without echoing it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
from mqtt_fixtures import mosquitto_broker
from paho.mqtt.enums import CallbackAPIVersion
from postgres_fixtures import fresh_database

from iotfsm.adapters.store.postgres import PostgresStore
from iotfsm.machines.feature import DeviceKey
from iotfsm.testing import Mosquitto, wait_for
from iotfsm.testing.postgres import PostgreSQL
from iotfsm.testing.server import free_port

__all__ = ["mosquitto_broker"]

PRODUCT = "PGCLI00001"


def iotfsm(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotfsm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def _report(broker: Mosquitto, device: str) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{PRODUCT}{device}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        payload = {"type": "report_version", "report": {"version": "1.0.0"}}
        info = client.publish(f"$ota/report/{PRODUCT}/{device}", json.dumps(payload), qos=1)
        info.wait_for_publish(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_platform_process_keeps_its_sessions_in_postgres_and_status_reads_them(
    postgres_cluster: PostgreSQL, mosquitto_broker: Mosquitto, tmp_path: Path
) -> None:
    dsn = postgres_cluster.url(fresh_database(postgres_cluster))
    env = dict(postgres_cluster.environment(), PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    platform = subprocess.Popen(
        [sys.executable, "-m", "iotfsm", "platform", "--broker", mosquitto_broker.url,
         "--data-dir", str(tmp_path / "files"), "--store", dsn,
         "--http", f"127.0.0.1:{free_port()}", "--open-registry", "--events", "jsonl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        assert platform.stdout is not None
        assert json.loads(platform.stdout.readline())["event"] == "started"
        _report(mosquitto_broker, "dev1")
        watcher = PostgresStore(postgres_cluster.conninfo(dsn.rsplit("/", 1)[1]))
        try:
            wait_for(
                "the session in PostgreSQL",
                lambda: any(k == DeviceKey(PRODUCT, "dev1") for _, k, _ in watcher.load()),
                timeout=30,
            )
        finally:
            watcher.close()
    finally:
        platform.send_signal(signal.SIGTERM)
        _, err = platform.communicate(timeout=30)
    assert platform.returncode == 0, err
    assert postgres_cluster.password not in err
    assert not (tmp_path / "files" / "platform.sqlite3").exists()
    shown = iotfsm(env, "status", "--store", dsn, "--json")
    assert shown.returncode == 0, shown.stderr
    assert [(r["device"], r["feature"]) for r in json.loads(shown.stdout)] == [("dev1", "ota")]


def test_a_password_in_the_store_dsn_is_refused_and_not_echoed(tmp_path: Path) -> None:
    dsn = "postgresql://fleet:hunter2secret@127.0.0.1:1/iot"
    env = dict(os.environ)
    for argv in (
        ["status", "--store", dsn],
        ["platform", "--broker", "mqtt://127.0.0.1:1", "--data-dir", str(tmp_path),
         "--store", dsn, "--http", "127.0.0.1:0"],
    ):  # fmt: skip
        result = iotfsm(env, *argv)
        assert result.returncode == 1, result.stderr
        assert "PGPASSFILE" in result.stderr
        assert "hunter2secret" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []


def test_status_on_a_store_it_cannot_reach_says_so_in_one_line() -> None:
    dsn = f"postgresql://fleet@127.0.0.1:{free_port()}/iot"
    result = iotfsm(dict(os.environ), "status", "--store", dsn)
    assert result.returncode == 1
    assert "cannot be reached" in result.stderr
    assert "Traceback" not in result.stderr
    bad = iotfsm(dict(os.environ), "status", "--store", "mysql://x")
    assert bad.returncode == 1 and "postgresql://" in bad.stderr
