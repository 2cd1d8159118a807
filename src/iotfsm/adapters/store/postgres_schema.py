"""The PostgreSQL store's schema, as numbered migrations applied at start (`migrate`).

Migrations live here, in the package, so a worker of version N brings the database to the schema
it needs by itself. They only ever add: a migration that shipped is never edited, the next change
is a new entry. `schema_version` records what was applied; `migrate` holds a transaction-level
advisory lock while it looks and applies, so two workers starting at once apply each migration once
(the second waits, then finds nothing left to do).
"""

from __future__ import annotations

import psycopg

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE sessions (
            feature text NOT NULL, product text NOT NULL, device text NOT NULL,
            doc jsonb NOT NULL, PRIMARY KEY (feature, product, device));
        CREATE TABLE records (
            tbl text NOT NULL, key text NOT NULL, value jsonb NOT NULL, PRIMARY KEY (tbl, key));
        -- one row, bumped in the transaction of every record write: data_version() for workers
        -- and CLI processes that must notice a registry or deployment change made elsewhere
        CREATE TABLE change_counter (
            one boolean PRIMARY KEY DEFAULT true CHECK (one), version bigint NOT NULL);
        INSERT INTO change_counter (version) VALUES (0);
        """,
    ),
    (
        2,
        """
        -- the worker pool (adapters/amqp): per uplink stream (routing key) of a device, the
        -- partition that carried it and, for the messages of the last batch stepped, their
        -- digests and the answers they made ([[digest, [[key, payload, qos], ...]], ...]),
        -- written in the transaction of those steps' snapshots: a redelivery after a crash
        -- between commit and ack is recognised, not stepped again, and its answers are sent
        -- with its ack; a worker taking a partition over finds the sessions to load here
        CREATE TABLE uplink_marks (
            routing_key text PRIMARY KEY, product text NOT NULL, device text NOT NULL,
            partition integer NOT NULL, steps jsonb NOT NULL);
        CREATE INDEX uplink_marks_partition ON uplink_marks (partition);
        -- files the HTTP file service serves (firmware, resources), so any worker serves any URL
        CREATE TABLE blobs (
            name text PRIMARY KEY, size bigint NOT NULL, md5 text NOT NULL, data bytea NOT NULL);
        """,
    ),
)
"""(version, SQL) in the order they apply."""

LOCK_KEY = 0x10F5_0017
"""pg_advisory_xact_lock key: only migrations of this schema take it."""


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> list[int]:
    """Apply every migration the database lacks, in one transaction; the versions applied."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        current = int(str(row[0])) if row is not None else 0
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            conn.execute(sql.encode())
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


def schema_version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """The newest migration applied (0 for an empty database)."""
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(str(row[0])) if row is not None else 0
