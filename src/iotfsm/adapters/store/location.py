"""Which store a `--store` value names: a `postgresql://` DSN, or a SQLite file path.

Kept apart from both stores so the CLI can tell them apart without importing psycopg, which is an
optional extra (`iotfsm[postgres]`): an embedded platform on SQLite never needs it.
"""

from __future__ import annotations

from pathlib import Path

from .session_store import SessionStore, SqliteStore

SCHEMES = ("postgresql://", "postgres://")


def is_postgres_dsn(location: str) -> bool:
    return location.startswith(SCHEMES)


def open_store(location: str | Path) -> SessionStore:
    """A `PostgresStore` for a DSN, else a `SqliteStore` on that path. ImportError (with the
    install command) when the DSN needs psycopg and it is not installed."""
    text = str(location)
    if not is_postgres_dsn(text):
        return SqliteStore(location)
    try:
        from .postgres import PostgresStore
    except ImportError as exc:
        raise ImportError(
            f"a postgresql:// store needs psycopg ({exc}): pip install 'iotfsm[postgres]'"
        ) from None
    return PostgresStore(text)
