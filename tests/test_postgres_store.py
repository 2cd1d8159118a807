"""What only the PostgreSQL store has: migrations under an advisory lock, a write that fails when
the database drops its connections, and refusals that never show the password (issue 17)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import psycopg
import pytest
from postgres_fixtures import fresh_database, new_cluster

from iotfsm.adapters.store.postgres import (
    PostgresStore,
    StoreUnavailableError,
    describe,
    has_password,
)
from iotfsm.adapters.store.postgres_schema import MIGRATIONS, migrate
from iotfsm.machines.feature import DeviceKey
from iotfsm.testing.postgres import PostgreSQL
from iotfsm.testing.server import free_port

KEY = DeviceKey("PPG", "d")


def test_workers_starting_at_once_apply_each_migration_once(postgres_cluster: PostgreSQL) -> None:
    conninfo = postgres_cluster.conninfo(fresh_database(postgres_cluster))
    start = threading.Barrier(4)
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def worker() -> None:
        start.wait()
        try:
            stores.append(PostgresStore(conninfo))
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for store in stores:
        store.close()
    assert errors == []
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert [r[0] for r in rows] == [v for v, _ in MIGRATIONS]
        assert migrate(conn) == []  # idempotent: nothing left to apply


def test_a_write_cut_off_by_the_database_is_kept_and_written_at_the_next_commit(
    postgres_cluster: PostgreSQL, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    name = fresh_database(postgres_cluster)
    store = PostgresStore(postgres_cluster.conninfo(name), pool_size=1)
    store.save("ota", KEY, {"n": 1})
    store.commit()
    with psycopg.connect(postgres_cluster.conninfo(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
    store.save("ota", KEY, {"n": 2})
    store.commit()  # on the connection the server just closed
    assert store.pending == 1
    assert [doc for _, _, doc in store.load()] == [{"n": 2}]  # reads see what is pending
    store.commit()
    assert store.pending == 0
    store.close()
    again = PostgresStore(postgres_cluster.conninfo(name))
    assert [doc for _, _, doc in again.load()] == [{"n": 2}]
    again.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot be written" in m for m in messages) == 1, messages
    assert any("writing works again" in m for m in messages)
    assert not any(postgres_cluster.password in m for m in messages)


def test_a_store_it_cannot_reach_or_log_in_to_says_so_without_the_password(
    postgres_cluster: PostgreSQL,
) -> None:
    wrong = f"postgresql://iotfsm:not-the-secret-pw@127.0.0.1:{postgres_cluster.port}/postgres"
    with pytest.raises(StoreUnavailableError, match="password") as refused:
        PostgresStore(wrong, connect_timeout=5)
    assert "not-the-secret-pw" not in str(refused.value)
    nowhere = f"postgresql://iotfsm:not-the-secret-pw@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(StoreUnavailableError, match="cannot be reached") as down:
        PostgresStore(nowhere, connect_timeout=2)
    assert "not-the-secret-pw" not in str(down.value)
    with pytest.raises(ValueError, match="not a PostgreSQL connection string"):
        PostgresStore("postgresql://[broken")


def test_describe_keeps_what_locates_the_database_and_drops_the_password() -> None:
    dsn = "postgresql://fleet:s3cret@db.example:6432/iot?sslmode=require"
    assert describe(dsn) == "postgresql://fleet@db.example:6432/iot"
    assert has_password(dsn)
    assert not has_password("postgresql://fleet@db.example/iot")
    assert "s3cret" not in describe("host=db user=fleet password=s3cret dbname=iot")


def test_a_missing_postgres_is_a_skip_with_the_install_command_and_a_failure_in_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        new_cluster(bin_dir=tmp_path)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install postgresql"):
        new_cluster(bin_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


AWKWARD = 'quote " backslash \\ braces {a,b} comma , NULL null é ✓ \t tab'


def test_a_batch_of_awkward_text_comes_back_as_written(postgres_cluster: PostgreSQL) -> None:
    """Batches travel as binary arrays: nothing in a name or document may need escaping."""
    store = PostgresStore(postgres_cluster.conninfo(fresh_database(postgres_cluster)))
    try:
        key = DeviceKey("PPG", AWKWARD)
        store.save("ota", key, {"state": AWKWARD, AWKWARD: [AWKWARD, 1]})
        store.stage("tbl", AWKWARD, {"v": AWKWARD})
        store.mark(f"rk.{AWKWARD}", key, 7, "d1", [("t", AWKWARD, 1)])
        store.commit()
        assert store.device_sessions(key, ("ota",)) == [
            ("ota", {"state": AWKWARD, AWKWARD: [AWKWARD, 1]})
        ]
        assert store.get("tbl", AWKWARD) == {"v": AWKWARD}
        assert store.marked_answers(f"rk.{AWKWARD}", "d1") == [("t", AWKWARD, 1)]
        assert [k for _, _, k, _ in store.partition_sessions(7)] == [key]
    finally:
        store.close()
