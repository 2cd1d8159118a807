"""The audit trail: every API call that changes something, who made it and how it ended.

Kept in the platform's store (table `api_audit`), one record per call, keyed by time so the
newest come last in key order. Refused calls are kept too (a 403 or a 422 is worth knowing);
calls without a valid token are not, so an anonymous client cannot fill the store, and go to
the log instead.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import attrs

from ..adapters.store.session_store import SessionStore
from .models import AuditEntry

TABLE = "api_audit"
KEEP = 10_000
"""Records kept; the oldest go once there are more (checked every `TRIM_EVERY` records)."""
TRIM_EVERY = 500


class AuditLog:
    def __init__(self, store: SessionStore, *, now: Callable[[], float] = time.time) -> None:
        self._store = store
        self._now = now
        self._written = 0

    def record(self, token: str, method: str, path: str, status: int, result: str) -> None:
        now = self._now()
        entry = AuditEntry(now, token, method, path[:300], status, result[:300])
        self._store.put(TABLE, f"{now:017.6f}-{secrets.token_hex(3)}", attrs.asdict(entry))
        self._store.commit()
        self._written += 1
        if self._written % TRIM_EVERY == 0:
            self._trim()

    def entries(self) -> list[AuditEntry]:
        """Newest first."""
        return [AuditEntry(**doc) for _, doc in reversed(self._store.items(TABLE))]

    def _trim(self) -> None:
        keys = [k for k, _ in self._store.items(TABLE)]
        for key in keys[: max(0, len(keys) - KEEP)]:
            self._store.delete(TABLE, key)
        self._store.commit()
