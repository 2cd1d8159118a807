"""`--store`, shared by `iotfsm platform` and `iotfsm status`: a PostgreSQL DSN (a shared store
for a pool of workers) instead of the SQLite file in the data directory.

The DSN is visible to every user in `ps`, so one carrying a password is refused; the message and
the logs name the database without it (`describe`)."""

from __future__ import annotations

import argparse

from ..adapters.store.location import is_postgres_dsn
from ..adapters.store.session_store import SessionStore
from .common import CommandError

HELP = (
    "postgresql://USER@HOST:PORT/DB: keep sessions and records in PostgreSQL, shared by every "
    "worker (default: SQLite in the data directory). No password here (argv is public): libpq "
    "reads it from PGPASSFILE (~/.pgpass), PGPASSWORD or a service file (PGSERVICE)"
)


def add_store_argument(parser: argparse._ActionsContainer) -> None:
    """On a parser, or a group (status: `--data-dir` or `--store`, one of them)."""
    parser.add_argument("--store", metavar="DSN", help=HELP)


def open_dsn(dsn: str) -> SessionStore:
    """The PostgreSQL store a `--store` value names, or a CommandError saying what is wrong."""
    if not is_postgres_dsn(dsn):
        raise CommandError("--store must be a postgresql://USER@HOST:PORT/DB connection string")
    try:
        from ..adapters.store.postgres import (
            PostgresStore,
            StoreUnavailableError,
            describe,
            has_password,
        )
    except ImportError as exc:
        raise CommandError(
            f"--store needs psycopg ({exc}): pip install 'iotfsm[postgres]'"
        ) from None
    if has_password(dsn):
        raise CommandError(
            f"--store {describe(dsn)}: a password in the connection string is visible to every "
            "user in `ps`; put it in PGPASSFILE (~/.pgpass), PGPASSWORD or a service file"
        )
    try:
        return PostgresStore(dsn)
    except (StoreUnavailableError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def describe_store(dsn: str) -> str:
    """The DSN as titles and messages may show it: no password (psycopg is there once opened)."""
    from ..adapters.store.postgres import describe

    return describe(dsn)
