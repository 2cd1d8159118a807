"""Which worker of a pool consumes which partition, and which leads: PostgreSQL advisory locks.

Single-active-consumer alone would not spread the work: RabbitMQ 3.10 makes the first consumer of
a queue the active one, so the first worker to start would be active on every partition and the
others idle standbys. Consumer priorities do not help on 3.10 either (SAC ignores them; quorum
queues honour them from 4.0). So each worker consumes only the partitions it holds a lease on, and
takes leases up to a fair share, `ceil(partitions / live workers)`:

- a lease is a session-level advisory lock `(PARTITION_SPACE, partition)` on one dedicated
  connection per worker; "live workers" are the holders of a membership lock
  `(MEMBER_SPACE, worker number)`, counted in `pg_locks`. Both vanish with the worker's connection:
  a SIGKILLed worker's TCP connection is closed by its kernel and PostgreSQL drops its locks at
  once, with no heartbeat or expiry to tune;
- a worker over its share (one joined) cancels its surplus consumers, commits and acks what it
  stepped, then unlocks; a worker under its share (one died) takes free locks. Locks are exclusive,
  so two workers never both believe they own a partition;
- SAC stays as the second guard: a worker that took over a lease while the old owner's channel
  still lingers waits as a standby, and the broker switches only when that channel is gone.

A worker whose lock connection fails can no longer prove its leases; it gives every partition up at
once (`fenced`), and the worker drops what it had not committed.
The leader (campaigns, product-wide work: once per pool) is the holder of `(LEADER_SPACE, 0)`.
"""

from __future__ import annotations

import logging
import math
import secrets
from typing import Any

import psycopg

log = logging.getLogger(__name__)

MEMBER_SPACE = 0x10F5_0101
PARTITION_SPACE = 0x10F5_0102
LEADER_SPACE = 0x10F5_0103

_COUNT = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND classid = %s::int::oid AND objsubid = 2"
)


class LeaseLostError(Exception):
    """The lock connection failed: leases can no longer be proven (give every partition up)."""


def held_locks(conn: psycopg.Connection[Any], space: int) -> int:
    """How many locks of `space` are held in the connection's database (live workers for
    `MEMBER_SPACE`, owned partitions for `PARTITION_SPACE`): for operators and tests."""
    row = conn.execute(_COUNT, (space,)).fetchone()
    return int(row[0]) if row else 0


def fair_share(partitions: int, members: int) -> int:
    return math.ceil(partitions / max(1, members))


class Leases:
    """One worker's advisory locks, on a connection of its own (never from a pool: a session lock
    lives as long as the connection that took it)."""

    def __init__(self, dsn: str, partitions: int, *, connect_timeout: float = 5.0) -> None:
        self.dsn = dsn
        self.partitions = partitions
        self.connect_timeout = connect_timeout
        self.member = secrets.randbelow(2**31)
        self.held: set[int] = set()
        self.leader = False
        self._conn: psycopg.Connection[Any] | None = None

    def join(self) -> None:
        """Connect and take the membership lock (another worker's number: draw again)."""
        self.close()
        try:
            conn = psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=max(2, int(self.connect_timeout))
            )
            while not self._try(conn, MEMBER_SPACE, self.member):
                self.member = secrets.randbelow(2**31)
        except psycopg.Error as exc:
            raise LeaseLostError(str(exc).strip().splitlines()[0]) from None
        self._conn = conn

    def members(self) -> int:
        return int(self._query(_COUNT, (MEMBER_SPACE,)))

    def share(self) -> int:
        return fair_share(self.partitions, self.members())

    def take(self, partition: int) -> bool:
        if partition in self.held:
            return True
        if self._query(
            "SELECT pg_try_advisory_lock(%s::int, %s::int)", (PARTITION_SPACE, partition)
        ):
            self.held.add(partition)
            return True
        return False

    def give(self, partition: int) -> None:
        if partition in self.held:
            self.held.discard(partition)
            self._query("SELECT pg_advisory_unlock(%s::int, %s::int)", (PARTITION_SPACE, partition))

    def lead(self) -> bool:
        """Try to become (or stay) the leader; True while this worker leads."""
        if not self.leader:
            self.leader = bool(
                self._query("SELECT pg_try_advisory_lock(%s::int, 0)", (LEADER_SPACE,))
            )
        return self.leader

    def close(self) -> None:
        """Drop the connection, and with it every lock this worker held."""
        conn, self._conn = self._conn, None
        self.held.clear()
        self.leader = False
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                log.debug("closing the lease connection failed", exc_info=True)

    @staticmethod
    def _try(conn: psycopg.Connection[Any], space: int, key: int) -> bool:
        row = conn.execute("SELECT pg_try_advisory_lock(%s::int, %s::int)", (space, key)).fetchone()
        return bool(row and row[0])

    def _query(self, sql: str, params: tuple[int, ...]) -> Any:
        if self._conn is None:
            raise LeaseLostError("not joined")
        try:
            row = self._conn.execute(sql, params).fetchone()
        except psycopg.Error as exc:
            self.close()
            raise LeaseLostError(str(exc).strip().splitlines()[0]) from None
        return None if row is None else row[0]
