"""Where a platform keeps its sessions and records, so a restart loses nothing.

`SqliteStore` is the embedded default (stdlib sqlite3, WAL, one file in the data directory). Server
code with its own database implements `SessionStore` instead. Sessions are stored as the engine's
snapshot documents; restoring assigns them and re-arms their timers, it replays nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from ...machines.feature import DeviceKey
from ..durable import fsync_dir

log = logging.getLogger(__name__)


class SessionStore(Protocol):
    def load(self) -> Iterator[tuple[str, DeviceKey, dict[str, Any]]]:
        """Every stored session: (feature, key, snapshot document)."""

    def save(self, feature: str, key: DeviceKey, doc: dict[str, Any]) -> None:
        """Remember a session's latest snapshot (made durable by the next `commit`)."""

    def commit(self) -> None:
        """Make what was saved durable; called once per batch of steps, not per step."""

    def delete_session(self, feature: str, key: DeviceKey) -> None:
        """Forget a session (its device left the registry); durable with the next `commit`."""

    def put(self, table: str, key: str, value: Any) -> None:
        """Keep a JSON-ready record (deployments, files, uploads) under a name."""

    def get(self, table: str, key: str) -> Any | None: ...

    def items(self, table: str) -> list[tuple[str, Any]]: ...

    def delete(self, table: str, key: str) -> None: ...

    def close(self) -> None: ...


class MemoryStore:
    """A store that forgets on exit: tests and demos that need no persistence."""

    def __init__(self) -> None:
        self.sessions: dict[tuple[str, DeviceKey], dict[str, Any]] = {}
        self.records: dict[str, dict[str, Any]] = {}

    def load(self) -> Iterator[tuple[str, DeviceKey, dict[str, Any]]]:
        for (feature, key), doc in list(self.sessions.items()):
            yield feature, key, doc

    def save(self, feature: str, key: DeviceKey, doc: dict[str, Any]) -> None:
        self.sessions[(feature, key)] = doc

    def commit(self) -> None:
        pass

    def delete_session(self, feature: str, key: DeviceKey) -> None:
        self.sessions.pop((feature, key), None)

    def put(self, table: str, key: str, value: Any) -> None:
        self.records.setdefault(table, {})[key] = value

    def get(self, table: str, key: str) -> Any | None:
        return self.records.get(table, {}).get(key)

    def items(self, table: str) -> list[tuple[str, Any]]:
        return sorted(self.records.get(table, {}).items())

    def delete(self, table: str, key: str) -> None:
        self.records.get(table, {}).pop(key, None)

    def close(self) -> None:
        pass


class StoreCorruptError(Exception):
    """The store's file is not a SQLite database or is damaged. Starting on it would crash at
    every start (or lose tasks quietly), so the platform refuses it; the message names the file,
    what is wrong and what to do."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"the platform store {path} is damaged ({problem}): restore it from a backup, or run "
            "`iotfsm platform --reset-store ...` once to move it aside (kept as "
            f"{path.name}.corrupt-<time>) and start with an empty store"
        )


_CORRUPT_CODES = frozenset({11, 26})
"""SQLITE_CORRUPT and SQLITE_NOTADB (the sqlite3 module names them only in Python 3.11+)."""
WARN_EVERY = 60.0
"""Seconds between repeated warnings while the store cannot write (a full disk)."""


def _is_corrupt(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in _CORRUPT_CODES or (
        "malformed" in str(exc) or "not a database" in str(exc)
    )


def move_aside(path: str | Path, now: Callable[[], float] = time.time) -> Path | None:
    """Rename a store file and its WAL and shared-memory files to `<name>.corrupt-<UTC time>`
    (kept for forensics or a manual repair), so the next open starts an empty store. Returns the
    new name of the main file, or None when there was none."""
    path = Path(path)
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now()))
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        if extra.exists():
            os.replace(extra, aside.with_name(aside.name + suffix))
    os.replace(path, aside)
    fsync_dir(path.parent)
    return aside


def reset_if_damaged(path: str | Path) -> Path | None:
    """Move the store at `path` aside (see `move_aside`) if it is damaged; a healthy store, or
    none, is left alone. Only a damaged file is moved: a reset flag left in a service's command
    line must not wipe a working platform's tasks at every restart. Returns the new name."""
    if not Path(path).exists():
        return None
    try:
        SqliteStore(path).close()
    except StoreCorruptError:
        return move_aside(path)
    return None


_DELETED = object()
"""A pending record deletion, in `SqliteStore`'s pending records."""


class SqliteStore:
    """One SQLite file. Writes from whichever thread runs the steps, serialized by a lock.

    Writes are kept in memory until they are written in one transaction: sessions at `commit`
    (once per batch of steps), records at once. When a write fails (a full disk, an I/O error)
    SQLite may have rolled the transaction back by itself, so the store rolls back what is left,
    keeps every pending change and writes it again at the next commit: a step already taken
    (its answer already sent) is never undone, and once the disk has room the file catches up
    with memory. One warning says so, repeated at most every `WARN_EVERY` seconds, and one line
    when writing works again."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # the store holds device records and upload paths: readable by its owner only, the
        # WAL and shared-memory files too (SQLite gives them the database file's mode)
        self.path.touch(mode=0o600, exist_ok=True)
        self.path.chmod(0o600)
        self._clock = clock
        self._sessions: dict[tuple[str, str, str], str | object] = {}
        """Session snapshots saved (or deleted: `_DELETED`) since the last successful write."""
        self._records: dict[tuple[str, str], str | object] = {}
        """Records put (JSON text) or deleted (`_DELETED`) and not written yet."""
        self._failing_since: float | None = None
        self._failures = 0
        self._warned_at = float("-inf")
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            if _is_corrupt(exc):
                raise StoreCorruptError(self.path, str(exc)) from None
            raise

    def _open(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Damaged pages may sit in a table or index no start reads: check them all, once.
        problems = [str(row[0]) for row in self._db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            lines = (line.strip() for p in problems for line in p.splitlines())
            found = [line for line in lines if line and not line.startswith("***")]
            raise StoreCorruptError(self.path, "; ".join(found[:3]) or "quick_check failed")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sessions (feature TEXT, product TEXT, device TEXT,"
            " doc TEXT NOT NULL, PRIMARY KEY (feature, product, device)) WITHOUT ROWID"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (tbl TEXT, key TEXT, value TEXT NOT NULL,"
            " PRIMARY KEY (tbl, key)) WITHOUT ROWID"
        )

    @property
    def pending(self) -> int:
        """Changes kept in memory because they could not be written yet (0 when all is saved)."""
        with self._lock:
            return len(self._sessions) + len(self._records)

    def load(self) -> Iterator[tuple[str, DeviceKey, dict[str, Any]]]:
        with self._lock:
            found = self._db.execute("SELECT feature, product, device, doc FROM sessions")
            rows = {(f, p, d): doc for f, p, d, doc in found.fetchall()}
            rows.update(self._sessions)
        for (feature, product, device), doc in rows.items():
            if isinstance(doc, str):
                yield feature, DeviceKey(product, device), json.loads(doc)

    def save(self, feature: str, key: DeviceKey, doc: dict[str, Any]) -> None:
        text = json.dumps(doc, separators=(",", ":"))
        with self._lock:
            self._sessions[(feature, key.product, key.device)] = text

    def commit(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> bool:
        """Write every pending change in one transaction; False (changes kept) if it failed."""
        if not self._sessions and not self._records:
            return True
        puts = [(t, k, v) for (t, k), v in self._records.items() if isinstance(v, str)]
        deletes = [(t, k) for (t, k), v in self._records.items() if v is _DELETED]
        sessions = [(*k, doc) for k, doc in self._sessions.items() if isinstance(doc, str)]
        gone = [k for k, doc in self._sessions.items() if doc is _DELETED]
        try:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?)", sessions)
            self._db.executemany(
                "DELETE FROM sessions WHERE feature = ? AND product = ? AND device = ?", gone
            )
            self._db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?)", puts)
            self._db.executemany("DELETE FROM records WHERE tbl = ? AND key = ?", deletes)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            # SQLite rolls some failures back itself (SQLITE_FULL, SQLITE_IOERR): ask it, never
            # assume a transaction is still open.
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            self._cannot_write(exc)
            return False
        self._sessions.clear()
        self._records.clear()
        if self._failing_since is not None:
            log.warning(
                "store %s: writing works again; %d changes kept in memory over %.0f s are saved",
                self.path,
                len(sessions) + len(gone) + len(puts) + len(deletes),
                self._clock() - self._failing_since,
            )
            self._failing_since = None
            self._failures = 0
        return True

    def _cannot_write(self, exc: sqlite3.Error) -> None:
        now = self._clock()
        self._failures += 1
        pending = len(self._sessions) + len(self._records)
        what = "is damaged" if _is_corrupt(exc) else "cannot be written"
        if self._failing_since is None:
            self._failing_since = now
            self._warned_at = now
            log.warning(
                "store %s %s (%s): %d changes kept in memory and written again at every commit;"
                " a stop before it works loses them. Free space (or fix the disk)",
                self.path,
                what,
                exc,
                pending,
            )
        elif now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning(
                "store %s still %s after %.0f s (%s): %d failed writes, %d changes pending",
                self.path,
                what,
                now - self._failing_since,
                exc,
                self._failures,
                pending,
            )

    def delete_session(self, feature: str, key: DeviceKey) -> None:
        with self._lock:
            self._sessions[(feature, key.product, key.device)] = _DELETED

    def data_version(self) -> int:
        """Changes whenever another connection (another process: `iotfsm registry`) commits."""
        with self._lock:
            row = self._db.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def put(self, table: str, key: str, value: Any) -> None:
        text = json.dumps(value)
        with self._lock:
            self._records[(table, key)] = text
            self._write()

    def get(self, table: str, key: str) -> Any | None:
        with self._lock:
            pending = self._records.get((table, key))
            if pending is not None:
                return None if pending is _DELETED else json.loads(str(pending))
            row = self._db.execute(
                "SELECT value FROM records WHERE tbl = ? AND key = ?", (table, key)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def items(self, table: str) -> list[tuple[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM records WHERE tbl = ? ORDER BY key", (table,)
            ).fetchall()
            if not self._records:
                return [(k, json.loads(v)) for k, v in rows]
            merged: dict[str, str | object] = dict(rows)
            for (t, k), v in self._records.items():
                if t == table:
                    merged[k] = v
        return [(k, json.loads(v)) for k, v in sorted(merged.items()) if isinstance(v, str)]

    def delete(self, table: str, key: str) -> None:
        with self._lock:
            self._records[(table, key)] = _DELETED
            self._write()

    def close(self) -> None:
        with self._lock:
            if not self._write():
                log.warning(
                    "store %s closed with %d changes that could not be written: they are lost",
                    self.path,
                    len(self._sessions) + len(self._records),
                )
            self._db.close()
