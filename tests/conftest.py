"""Fixtures every test module may ask for by name, registered once for the whole session.

`rabbitmq_node`, `postgres_cluster` and the browser (`chromium`, `page`) live here (imported from
rabbitmq_fixtures, postgres_fixtures and browser_fixtures) and not in each test module: a
session-scoped fixture imported into two modules is two fixtures, and so two 20-second nodes.
Fixtures are lazy: a run that asks for no node starts none.
"""

from __future__ import annotations

from browser_fixtures import artifacts_dir, chromium, page
from postgres_fixtures import postgres_cluster
from rabbitmq_fixtures import rabbitmq_node

__all__ = ["artifacts_dir", "chromium", "page", "postgres_cluster", "rabbitmq_node"]
