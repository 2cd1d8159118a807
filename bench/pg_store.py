"""Store benchmark (issue 17): session saves per second in batches, SQLite vs PostgreSQL, and the
bytes one idle session takes as a PostgreSQL row.

A batch is what the runtime hands the store per drain: `--batch` saves (distinct devices, each a
real idle OTA session snapshot taken from a platform) then one `commit`. SQLite is the embedded
default (WAL, synchronous=NORMAL: no fsync per commit). PostgreSQL runs as a private cluster
(iotfsm.testing.postgres, fsync on) over TCP on 127.0.0.1, measured twice: with its default
`synchronous_commit=on` (a commit waits for the WAL flush) and with `off` (SQLite's durability:
a server crash may lose the last commits, never corrupt). Bytes per idle session row is
`pg_total_relation_size('sessions')` (heap, TOAST, primary key) over the rows, after VACUUM.

    python bench/pg_store.py                  # 1,000 saves per commit, 20 batches, 20,000 rows
    python bench/pg_store.py --quick          # a smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from benchkit import cpu_model

from iotfsm import Platform
from iotfsm.adapters.mqtt.memory_broker import MemoryBroker
from iotfsm.adapters.store.postgres import PostgresStore
from iotfsm.adapters.store.session_store import SessionStore, SqliteStore
from iotfsm.machines.feature import DeviceKey
from iotfsm.testing.postgres import PostgreSQL

PRODUCT = "PBENCHPG01"


def idle_ota_doc(folder: Path) -> dict[str, Any]:
    """A real idle OTA session snapshot: a platform answers one version report and stops."""
    broker = MemoryBroker()
    with Platform(broker, data_dir=folder) as platform:
        platform.register_device(PRODUCT, "sample")
        client = broker.connect("sample")
        client.set_handlers(lambda topic, payload: None, lambda up: None)
        client.start()
        report = b'{"type":"report_version","report":{"version":"1.0.0"}}'
        client.publish(f"$ota/report/{PRODUCT}/sample", report, 1)
        client.stop()
    store = SqliteStore(folder / "platform.sqlite3")
    try:
        return next(doc for feature, _, doc in store.load() if feature == "ota")
    finally:
        store.close()


def batches(store: SessionStore, doc: dict[str, Any], batch: int, rounds: int) -> list[float]:
    """Saves per second of each batch (saves + commit), on `batch` distinct devices."""
    rates = []
    for r in range(rounds):
        start = time.perf_counter()
        for d in range(batch):
            store.save("ota", DeviceKey(PRODUCT, f"dev-{d}"), dict(doc, n=r))
        store.commit()
        rates.append(batch / (time.perf_counter() - start))
    return rates


def bytes_per_row(conninfo: str, rows: int, doc: dict[str, Any]) -> tuple[int, float]:
    store = PostgresStore(conninfo)
    for start in range(0, rows, 1000):
        for d in range(start, min(rows, start + 1000)):
            store.save("ota", DeviceKey(PRODUCT, f"idle-{d}"), doc)
        store.commit()
    store.close()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE sessions")
        found = conn.execute(
            "SELECT pg_total_relation_size('sessions'), count(*) FROM sessions"
        ).fetchone()
    assert found is not None
    total, count = int(found[0]), int(found[1])
    return total, total / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batch", type=int, default=1000, help="saves per commit")
    parser.add_argument("--rounds", type=int, default=20, help="batches per store")
    parser.add_argument("--rows", type=int, default=20_000, help="idle rows for bytes per row")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small numbers")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.rounds, args.rows = 200, 3, 1000
    with tempfile.TemporaryDirectory(prefix="iotfsm-bench-pg-") as tmp:
        folder = Path(tmp)
        doc = idle_ota_doc(folder / "sample")
        with PostgreSQL(durable=True) as cluster:
            cluster.create_database("bench_on")
            cluster.create_database("bench_off")
            cluster.create_database("bench_rows")
            stores: list[tuple[str, Callable[[], SessionStore]]] = [
                ("SQLite (WAL, synchronous=NORMAL)", lambda: SqliteStore(folder / "b.sqlite3")),
                (
                    "PostgreSQL, synchronous_commit=on",
                    lambda: PostgresStore(cluster.conninfo("bench_on")),
                ),
                (
                    "PostgreSQL, synchronous_commit=off",
                    lambda: PostgresStore(
                        cluster.conninfo("bench_off") + "&options=-csynchronous_commit%3Doff"
                    ),
                ),
            ]
            print(f"store benchmark: {args.batch} session saves per commit, {args.rounds} batches")
            print(f"cpu: {cpu_model()}; idle OTA snapshot {len(str(doc))} chars of JSON")
            print(f"{'store':<38} {'saves/s (median)':>17} {'best':>10}")
            for label, opener in stores:
                store = opener()
                try:
                    batches(store, doc, args.batch, 1)  # first inserts: rows exist from now on
                    rates = batches(store, doc, args.batch, args.rounds)
                finally:
                    store.close()
                print(f"{label:<38} {statistics.median(rates):>17,.0f} {max(rates):>10,.0f}")
            total, per_row = bytes_per_row(cluster.conninfo("bench_rows"), args.rows, doc)
            sqlite_size = (folder / "b.sqlite3").stat().st_size / args.batch
        print(
            f"PostgreSQL bytes per idle session row: {per_row:,.0f} "
            f"(pg_total_relation_size {total:,} B / {args.rows:,} rows)"
        )
        print(f"SQLite file bytes per session row (for comparison): {sqlite_size:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
