"""A private PostgreSQL cluster for the whole test session: ask for `postgres_cluster`.

initdb plus a start take a few seconds, so one cluster serves every test; each test that wants a
store takes a database of its own (`fresh_database`). Without PostgreSQL installed the tests that
need it are skipped with the install command, except in CI (CI=true), where that is a failure:
CI must run the PostgreSQL half of the store contract.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_warmup import Warmup

from iotfsm.testing.postgres import PostgresNotFoundError, PostgreSQL


def new_cluster(bin_dir: Path | None = None) -> PostgreSQL:
    """A cluster (not started); without PostgreSQL a skip naming the install, a failure in CI."""
    try:
        return PostgreSQL(bin_dir=bin_dir)
    except PostgresNotFoundError as error:
        message = str(error)
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


WARMUP = Warmup(lambda: new_cluster().__enter__())
"""Begun by conftest.py as soon as collection shows a test that wants the cluster."""


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgreSQL]:
    cluster = WARMUP.take()
    try:
        yield cluster
    finally:
        cluster.close()


def fresh_database(cluster: PostgreSQL) -> str:
    """A new empty database in the session's cluster; its name."""
    name = f"t_{secrets.token_hex(6)}"
    cluster.create_database(name)
    return name
