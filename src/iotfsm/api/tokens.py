"""API tokens: made once, shown once, kept only as a sha256 in the platform's store.

A token is 32 random bytes (url-safe base64 behind the `iotfsm_` prefix, so a leaked one is easy
to grep for). The store keeps its sha256, its name and scopes; checking a presented token hashes
it and compares against every stored hash with `hmac.compare_digest`, so the time taken says
nothing about how close a guess was. The book re-reads the table at most once a second: a token
created or revoked by `iotfsm api-token` in another process counts within that second.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable

import attrs

from ..adapters.store.session_store import SessionStore

TABLE = "api_tokens"
PREFIX = "iotfsm_"
SCOPES = ("read", "write")
"""`read`: every GET. `write`: everything (it includes read)."""
REFRESH_EVERY = 1.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class TokenError(ValueError):
    """A token name or scope that cannot be used; the message says what is accepted."""


@attrs.frozen
class TokenInfo:
    """A token as the store keeps it: never the token itself."""

    name: str
    sha256: str
    scopes: tuple[str, ...]
    created_at: float

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or (scope == "read" and "write" in self.scopes)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_token_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise TokenError(
            f"token name {name[:70]!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


class TokenBook:
    """The tokens of one store: create, list, revoke, and check a presented one."""

    def __init__(self, store: SessionStore, *, now: Callable[[], float] = time.time) -> None:
        self._store = store
        self._now = now
        self._lock = threading.Lock()
        self._cached: list[TokenInfo] = []
        self._read_at = float("-inf")

    def create(self, name: str, scopes: tuple[str, ...] = ("read",)) -> str:
        """Make a token; returns it (the only time it exists in clear). TokenError for a name
        in use or an unknown scope."""
        check_token_name(name)
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            raise TokenError(f"scopes {list(scopes)} must be some of {', '.join(SCOPES)}")
        if self._store.get(TABLE, name) is not None:
            raise TokenError(f"a token named {name!r} exists; revoke it first or pick another")
        token = PREFIX + secrets.token_urlsafe(32)
        info = TokenInfo(name, digest(token), tuple(scopes), self._now())
        self._store.put(TABLE, name, attrs.asdict(info))
        self._store.commit()
        self._read_at = float("-inf")
        return token

    def revoke(self, name: str) -> None:
        if self._store.get(TABLE, name) is None:
            raise TokenError(f"no token named {name[:70]!r}")
        self._store.delete(TABLE, name)
        self._store.commit()
        self._read_at = float("-inf")

    def all(self) -> list[TokenInfo]:
        found = []
        for _, doc in self._store.items(TABLE):
            try:
                found.append(TokenInfo(**{**doc, "scopes": tuple(doc["scopes"])}))
            except (TypeError, KeyError):
                continue  # a damaged row grants nothing
        return found

    def check(self, token: str) -> TokenInfo | None:
        """The token's record, or None for an unknown or revoked one."""
        wanted = digest(token)
        found = None
        for info in self._current():
            if hmac.compare_digest(info.sha256, wanted):
                found = info
        return found

    def _current(self) -> list[TokenInfo]:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= REFRESH_EVERY:
                self._cached = self.all()
                self._read_at = now
            return self._cached
