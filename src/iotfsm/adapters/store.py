"""Where a platform keeps its sessions and records, so a restart loses nothing.

`SqliteStore` is the embedded default (stdlib sqlite3, WAL, one file in the data directory). Server
code with its own database implements `SessionStore` instead. Sessions are stored as the engine's
snapshot documents; restoring assigns them and re-arms their timers, it replays nothing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from ..machines.feature import DeviceKey


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


class SqliteStore:
    """One SQLite file. Writes from whichever thread runs the steps, serialized by a lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # the store holds device records and upload paths: readable by its owner only, the
        # WAL and shared-memory files too (SQLite gives them the database file's mode)
        self.path.touch(mode=0o600, exist_ok=True)
        self.path.chmod(0o600)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sessions (feature TEXT, product TEXT, device TEXT,"
            " doc TEXT NOT NULL, PRIMARY KEY (feature, product, device)) WITHOUT ROWID"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (tbl TEXT, key TEXT, value TEXT NOT NULL,"
            " PRIMARY KEY (tbl, key)) WITHOUT ROWID"
        )
        self._in_tx = False

    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def load(self) -> Iterator[tuple[str, DeviceKey, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute("SELECT feature, product, device, doc FROM sessions").fetchall()
        for feature, product, device, doc in rows:
            yield feature, DeviceKey(product, device), json.loads(doc)

    def save(self, feature: str, key: DeviceKey, doc: dict[str, Any]) -> None:
        text = json.dumps(doc, separators=(",", ":"))
        with self._lock:
            self._begin()
            self._db.execute(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?)",
                (feature, key.product, key.device, text),
            )

    def commit(self) -> None:
        with self._lock:
            if self._in_tx:
                self._db.execute("COMMIT")
                self._in_tx = False

    def delete_session(self, feature: str, key: DeviceKey) -> None:
        with self._lock:
            self._begin()
            self._db.execute(
                "DELETE FROM sessions WHERE feature = ? AND product = ? AND device = ?",
                (feature, key.product, key.device),
            )

    def data_version(self) -> int:
        """Changes whenever another connection (another process: `iotfsm registry`) commits."""
        with self._lock:
            row = self._db.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def put(self, table: str, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?)", (table, key, json.dumps(value))
            )

    def get(self, table: str, key: str) -> Any | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM records WHERE tbl = ? AND key = ?", (table, key)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def items(self, table: str) -> list[tuple[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM records WHERE tbl = ? ORDER BY key", (table,)
            ).fetchall()
        return [(k, json.loads(v)) for k, v in rows]

    def delete(self, table: str, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM records WHERE tbl = ? AND key = ?", (table, key))

    def close(self) -> None:
        self.commit()
        with self._lock:
            self._db.close()
