"""The platform's sessions and records in PostgreSQL, so several workers (and `iotfsm status` on
another host) share one store: `PostgresStore`, behind the same `SessionStore` protocol as SQLite.

Session snapshots wait in memory until `commit` (once per batch of steps), as in SQLite, and
records are written at once; each write is one transaction over a connection from a small psycopg
pool, a few statements whatever the batch size (arrays through `unnest`). A write that fails (the
database restarting, a network cut) keeps every pending change, reads see them, and the next
commit writes them again; one warning says so, repeated at most every `WARN_EVERY` seconds.

Unlike SQLite, a record's write carries only records: the batch pending then (snapshots, the
pool's uplink marks and the records `stage`d with them) waits for `commit`. In a pool a record is
written in the middle of a batch, by a handler inside a step (the leader's campaign runner hearing
an OTA end) or by another thread (the leader relaying outcomes): had it carried the batch, a step
would be durable half done, its uplink mark committed before its answers and its staged outcome,
and the next owner would take the redelivered message for one stepped already and never record
that outcome.

`data_version()` is a change counter row bumped in the transaction of every record write (the
registry, deployments, campaigns live in records; sessions belong to the worker stepping them, so
session batches do not touch the row and workers never queue on it). A counter and not
LISTEN/NOTIFY: the registry already looks at most once a second, a poll of one row is cheap, and
a counter cannot miss a change while a connection is down, where a notification sent then is gone.

The connection string is never logged (`describe` drops the password and options); give the
password to libpq through PGPASSFILE, PGPASSWORD or a service file, not in the string.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from ...machines.feature import DeviceKey
from .postgres_schema import migrate
from .session_store import WARN_EVERY

log = logging.getLogger(__name__)

_GONE = object()
"""A pending deletion (of a session or a record)."""

Conn = psycopg.Connection[tuple[Any, ...]]


class StoreUnavailableError(Exception):
    """The database cannot be reached (or refused the login) when the store opens. The message
    names the database without its password and says what to check."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        super().__init__(
            f"the platform store {name} cannot be reached ({problem}): check that PostgreSQL "
            "runs there and that the password is in PGPASSFILE, PGPASSWORD or a service file"
        )


def describe(dsn: str) -> str:
    """A DSN as it may appear in logs and messages: user, host, port, database; no password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://<unparsable connection string>"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = str(parts.get("host") or parts.get("service") or "localhost")
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"


def has_password(dsn: str) -> bool:
    try:
        return bool(conninfo_to_dict(dsn).get("password"))
    except psycopg.ProgrammingError:
        return False


class PostgresStore:
    """One PostgreSQL database. Writes from whichever thread runs the steps, serialized by a lock;
    reads take the same lock, so they see pending changes and never an older row under them."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
        write_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Connect, migrate the schema, open the pool; StoreUnavailableError if the database
        cannot be used. A database that refuses (no server on the port, a wrong password) is
        reported at once; `connect_timeout` bounds the wait for a host that does not answer."""
        self.name = describe(dsn)
        try:
            conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"not a PostgreSQL connection string ({self.name}): {exc}") from None
        self._lock = threading.Lock()
        self._clock = clock
        self._write_timeout = write_timeout
        self._sessions: dict[tuple[str, str, str], str | object] = {}
        self._records: dict[tuple[str, str], str | object] = {}
        """Records `put` or deleted and not written yet (a write failed): with the next write."""
        self._staged: dict[tuple[str, str], str | object] = {}
        """Records `stage`d: part of the batch, written by `commit` only."""
        self._marks: dict[str, tuple[str, str, int, list[Any]]] = {}
        """routing key -> (product, device, partition, steps): the pool's uplink marks, written
        in the transaction of the snapshots saved with them (see `mark`)."""
        self._failing_since: float | None = None
        self._failures = 0
        self._warned_at = float("-inf")
        self._version = 0
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(2, int(connect_timeout)),  # libpq's least is 2 s
        }
        # One connection of our own first, for the migrations, so that a database that answers
        # no (nothing listens on the port, a wrong password, an unknown host) is reported at
        # once with libpq's reason, as psql would, and not after the pool has retried for
        # `connect_timeout` seconds to say only "pool initialization incomplete".
        try:
            with psycopg.connect(dsn, **kwargs) as conn:
                applied = migrate(conn)
        except psycopg.Error as exc:
            raise StoreUnavailableError(self.name, _first_line(exc)) from None
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            dsn, min_size=1, max_size=pool_size, kwargs=kwargs, name="iotfsm-store", open=False
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreUnavailableError(self.name, _first_line(exc)) from None
        if applied:
            log.info("store %s: schema migrations %s applied", self.name, applied)

    @property
    def pending(self) -> int:
        """Changes kept in memory because they could not be written yet (0 when all is saved)."""
        with self._lock:
            return len(self._sessions) + len(self._records) + len(self._staged) + len(self._marks)

    def load(self) -> Iterator[tuple[str, DeviceKey, dict[str, Any]]]:
        with self._lock, self._pool.connection() as conn:
            found = conn.execute("SELECT feature, product, device, doc FROM sessions").fetchall()
            rows: dict[tuple[str, str, str], object] = {(f, p, d): doc for f, p, d, doc in found}
            rows.update(
                (k, v if v is _GONE else json.loads(str(v))) for k, v in self._sessions.items()
            )
        for (feature, product, device), doc in rows.items():
            if isinstance(doc, dict):
                yield feature, DeviceKey(product, device), doc

    def save(self, feature: str, key: DeviceKey, doc: dict[str, Any]) -> None:
        text = json.dumps(doc, separators=(",", ":"))
        with self._lock:
            self._sessions[(feature, key.product, key.device)] = text

    def delete_session(self, feature: str, key: DeviceKey) -> None:
        with self._lock:
            self._sessions[(feature, key.product, key.device)] = _GONE

    def commit(self) -> None:
        with self._lock:
            self._write()

    def put(self, table: str, key: str, value: Any) -> None:
        """Write the record now, without the batch pending (see the module's docstring)."""
        text = json.dumps(value)
        with self._lock:
            self._staged.pop((table, key), None)
            self._records[(table, key)] = text
            self._write(batch=False)

    def delete(self, table: str, key: str) -> None:
        with self._lock:
            self._staged.pop((table, key), None)
            self._records[(table, key)] = _GONE
            self._write(batch=False)

    def get(self, table: str, key: str) -> Any | None:
        with self._lock:
            pending = self._staged.get((table, key), self._records.get((table, key)))
            if pending is not None:
                return None if pending is _GONE else json.loads(str(pending))
            with self._pool.connection() as conn:
                row = conn.execute(
                    "SELECT value FROM records WHERE tbl = %s AND key = %s", (table, key)
                ).fetchone()
        return None if row is None else row[0]

    def items(self, table: str) -> list[tuple[str, Any]]:
        with self._lock, self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT key, value FROM records WHERE tbl = %s", (table,)
            ).fetchall()
            merged: dict[str, object] = dict(rows)
            for (t, k), v in [*self._records.items(), *self._staged.items()]:
                if t == table:
                    merged[k] = v if v is _GONE else json.loads(str(v))
        return [(k, v) for k, v in sorted(merged.items()) if v is not _GONE]

    def data_version(self) -> int:
        """Changes whenever a record write commits (from any process). While the database cannot
        be reached it answers the last value it read, so the message path does not stop."""
        try:
            with self._pool.connection(timeout=self._write_timeout) as conn:
                row = conn.execute("SELECT version FROM change_counter").fetchone()
        except psycopg.Error as exc:
            with self._lock:
                self._cannot_write(exc)
            return self._version
        self._version = int(row[0]) if row is not None else 0
        return self._version

    # --- what the worker pool needs (adapters/amqp) ---

    def mark(
        self,
        routing_key: str,
        key: DeviceKey,
        partition: int,
        digest: str,
        answers: list[tuple[str, str, int]],
    ) -> None:
        """Remember an uplink of a stream stepped from `partition` and the answers it made,
        durable with the snapshots of the same batch (one transaction). The marks of a batch
        replace the stream's marks of the batch before: by then those were acked."""
        entry: list[Any] = [digest, [list(a) for a in answers]]
        with self._lock:
            pending = self._marks.get(routing_key)
            steps = pending[3] if pending is not None else []
            if steps and steps[-1][0] == digest:
                steps[-1] = entry  # the same step again, now with its answers
            else:
                steps.append(entry)
            self._marks[routing_key] = (key.product, key.device, partition, steps)

    def stage(self, table: str, key: str, value: Any) -> None:
        """`put` without writing now: the record goes with the next `commit`, in the same
        transaction as the snapshots and marks of that batch."""
        text = json.dumps(value)
        with self._lock:
            self._records.pop((table, key), None)
            self._staged[(table, key)] = text

    def marked_answers(self, routing_key: str, digest: str) -> list[tuple[str, str, int]] | None:
        """The answers of a committed step of this stream's last batch whose message had
        `digest`; None when no such step was committed (the message was not stepped)."""
        with self._lock, self._pool.connection() as conn:
            row = conn.execute(
                "SELECT steps FROM uplink_marks WHERE routing_key = %s", (routing_key,)
            ).fetchone()
        for step_digest, answers in row[0] if row is not None else []:
            if step_digest == digest:
                return [(str(k), str(p), int(q)) for k, p, q in answers]
        return None

    def partition_sessions(
        self, partition: int
    ) -> list[tuple[str, str, DeviceKey, dict[str, Any]]]:
        """(routing key, feature, key, snapshot) of every session of a device with a stream in
        `partition`; the caller keeps the features that stream carries. One query."""
        with self._lock, self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT m.routing_key, s.feature, s.product, s.device, s.doc"
                " FROM uplink_marks m JOIN sessions s USING (product, device)"
                " WHERE m.partition = %s",
                (partition,),
            ).fetchall()
        return [(rk, f, DeviceKey(p, d), doc) for rk, f, p, d, doc in rows]

    def device_sessions(
        self, key: DeviceKey, features: tuple[str, ...]
    ) -> list[tuple[str, dict[str, Any]]]:
        """(feature, committed snapshot) of one device's sessions of these features."""
        with self._lock, self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT feature, doc FROM sessions WHERE product = %s AND device = %s"
                " AND feature = ANY(%s)",
                (key.product, key.device, list(features)),
            ).fetchall()
        return [(str(f), doc) for f, doc in rows]

    def session_keys(self, feature: str, product: str) -> list[DeviceKey]:
        """Every device of `product` with a committed session of `feature`, whichever worker
        steps it (a product-wide task reaches them all)."""
        with self._lock, self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT device FROM sessions WHERE feature = %s AND product = %s ORDER BY device",
                (feature, product),
            ).fetchall()
        return [DeviceKey(product, str(d)) for (d,) in rows]

    def discard_pending(self) -> int:
        """Forget the session snapshots, marks and staged records not written yet; how many. A
        worker that lost its partitions calls it: the new owner steps those messages again from
        what was committed, and a late write of ours would overwrite its progress (or record an
        OTA outcome the new owner records again)."""
        with self._lock:
            count = len(self._sessions) + len(self._marks) + len(self._staged)
            self._sessions.clear()
            self._marks.clear()
            self._staged.clear()
            return count

    def setdefault(self, table: str, key: str, value: Any) -> Any:
        """The record's value, storing `value` first if there is none: the first of several
        workers starting at once decides (a pool-wide secret, the partition count)."""
        with self._lock, self._pool.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO records (tbl, key, value) VALUES (%s, %s, %s::jsonb)"
                " ON CONFLICT (tbl, key) DO NOTHING",
                (table, key, json.dumps(value)),
            )
            row = conn.execute(
                "SELECT value FROM records WHERE tbl = %s AND key = %s", (table, key)
            ).fetchone()
        return None if row is None else row[0]

    def connection(self) -> contextlib.AbstractContextManager[Conn]:
        """A connection of the store's pool (autocommit), for tables beside the sessions."""
        return self._pool.connection(timeout=self._write_timeout)

    def close(self) -> None:
        with self._lock:
            if not self._write():
                log.warning(
                    "store %s closed with %d changes that could not be written: they are lost",
                    self.name,
                    len(self._sessions) + len(self._records),
                )
            self._pool.close()

    # --- writing ---

    def _write(self, *, batch: bool = True) -> bool:
        """Write the pending records and, with `batch`, the pending batch (snapshots, marks,
        staged records) in one transaction; False (changes kept) if it failed."""
        sessions = self._sessions if batch else {}
        marks = self._marks if batch else {}
        records = {**self._records, **self._staged} if batch else self._records
        if not sessions and not records and not marks:
            return True
        saved = [(*k, v) for k, v in sessions.items() if isinstance(v, str)]
        gone = [k for k, v in sessions.items() if v is _GONE]
        puts = [(*k, v) for k, v in records.items() if isinstance(v, str)]
        dropped = [k for k, v in records.items() if v is _GONE]
        try:
            with self._pool.connection(timeout=self._write_timeout) as conn, conn.transaction():
                _write_batch(conn, saved, gone, puts, dropped)
                if marks:
                    _write_marks(conn, marks)
        except psycopg.Error as exc:
            self._cannot_write(exc)
            return False
        count = len(sessions) + len(records) + len(marks)
        self._records.clear()
        if batch:
            self._sessions.clear()
            self._staged.clear()
            self._marks.clear()
        if self._failing_since is not None and not (self._sessions or self._staged or self._marks):
            log.warning(
                "store %s: writing works again; %d changes kept in memory over %.0f s are saved",
                self.name,
                count,
                self._clock() - self._failing_since,
            )
            self._failing_since = None
            self._failures = 0
        return True

    def _cannot_write(self, exc: psycopg.Error) -> None:
        now = self._clock()
        self._failures += 1
        pending = len(self._sessions) + len(self._records) + len(self._staged)
        if self._failing_since is None:
            self._failing_since = self._warned_at = now
            log.warning(
                "store %s cannot be written (%s): %d changes kept in memory and written again at"
                " every commit; a stop before it works loses them",
                self.name,
                _first_line(exc),
                pending,
            )
        elif now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning(
                "store %s still cannot be written after %.0f s (%s): %d failures, %d pending",
                self.name,
                now - self._failing_since,
                _first_line(exc),
                self._failures,
                pending,
            )


def _write_batch(
    conn: Conn,
    saved: list[tuple[str, str, str, str]],
    gone: list[tuple[str, str, str]],
    puts: list[tuple[str, str, str]],
    dropped: list[tuple[str, str]],
) -> None:
    """A batch as at most five statements: arrays unnested server-side, not one row a call.

    The arrays go in binary (`%b`): in text format psycopg escapes every `"` of every JSON
    document with a regex substitution, ~24 µs of CPU per document, against <1 µs for the
    length-prefixed binary array (the pool worker's commit per batch paid it twice a message)."""
    if saved:
        conn.execute(
            "INSERT INTO sessions (feature, product, device, doc)"
            " SELECT f, p, d, doc::jsonb FROM unnest(%b::text[], %b::text[], %b::text[],"
            " %b::text[]) AS t(f, p, d, doc)"
            " ON CONFLICT (feature, product, device) DO UPDATE SET doc = EXCLUDED.doc",
            _columns(saved),
        )
    if gone:
        conn.execute(
            "DELETE FROM sessions WHERE (feature, product, device) IN"
            " (SELECT * FROM unnest(%b::text[], %b::text[], %b::text[]))",
            _columns(gone),
        )
    if puts:
        conn.execute(
            "INSERT INTO records (tbl, key, value)"
            " SELECT t, k, v::jsonb FROM unnest(%b::text[], %b::text[], %b::text[]) AS u(t, k, v)"
            " ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value",
            _columns(puts),
        )
    if dropped:
        conn.execute(
            "DELETE FROM records WHERE (tbl, key) IN"
            " (SELECT * FROM unnest(%b::text[], %b::text[]))",
            _columns(dropped),
        )
    if puts or dropped:
        conn.execute("UPDATE change_counter SET version = version + 1")


def _write_marks(conn: Conn, marks: dict[str, tuple[str, str, int, list[Any]]]) -> None:
    keys = list(marks)
    products, devices, partitions, steps = (list(c) for c in zip(*marks.values(), strict=True))
    conn.execute(
        "INSERT INTO uplink_marks (routing_key, product, device, partition, steps)"
        " SELECT k, p, d, n, s::jsonb FROM"
        " unnest(%b::text[], %b::text[], %b::text[], %b::int[], %b::text[]) AS t(k, p, d, n, s)"
        " ON CONFLICT (routing_key) DO UPDATE SET partition = EXCLUDED.partition,"
        " steps = EXCLUDED.steps",
        [keys, products, devices, partitions, [json.dumps(s) for s in steps]],
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows as one list per column: the arrays `unnest` takes."""
    return [list(column) for column in zip(*rows, strict=True)]
