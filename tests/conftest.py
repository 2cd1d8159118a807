"""Fixtures every test module may ask for by name, registered once for the whole session.

`rabbitmq_node`, `postgres_cluster`, the browser (`chromium`, `page`) and the pool tests' worker
pool (`pool`) live here (imported from rabbitmq_fixtures, postgres_fixtures, browser_fixtures and
pool_world) and not in each test module: a session-scoped fixture imported into two modules is
two fixtures, and so two 20-second nodes.
Fixtures are lazy: a run that asks for no node starts none. One that does starts booting it as
soon as collection is done, on a thread, while the tests before the first user run
(tests/server_warmup.py).
"""

from __future__ import annotations

import postgres_fixtures
import pytest
import rabbitmq_fixtures
from browser_fixtures import artifacts_dir, chromium, page
from pool_world import pool
from postgres_fixtures import postgres_cluster
from rabbitmq_fixtures import rabbitmq_node

__all__ = [
    "artifacts_dir",
    "chromium",
    "page",
    "pool",
    "postgres_cluster",
    "pytest_collection_finish",
    "rabbitmq_node",
]


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    wanted = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if "rabbitmq_node" in wanted:
        rabbitmq_fixtures.WARMUP.begin()
    if "postgres_cluster" in wanted:
        postgres_fixtures.WARMUP.begin()
