"""What every handler of the API (and the console mounted beside it) shares: the platform, the
step feed, the token book and the audit trail, and how a request is authenticated."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import attrs
from starlette.requests import Request

from .audit import AuditLog
from .feed import LastSeen, StepFeed
from .schema import strict_converter
from .tokens import TokenBook

if TYPE_CHECKING:
    from ..platform import Platform

log = logging.getLogger(__name__)

COOKIE = "iotfsm_session"
CONSOLE_HEADER = "x-iotfsm-console"
MAX_JSON = 64 * 1024
MAX_IMAGE = 256 * 1024 * 1024


@attrs.frozen
class Caller:
    """Who is calling: the token's name and scopes, and whether it came in a cookie (the
    console) rather than an Authorization header."""

    name: str
    scopes: tuple[str, ...]
    via_cookie: bool

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or (scope == "read" and "write" in self.scopes)


class Refusals:
    """Calls without a valid token, logged at most once per `every` seconds with a count, so
    an anonymous client cannot flood the log (nor the audit trail, which keeps only callers
    with a token)."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.count = 0
        self._pending = 0
        self._logged_at = float("-inf")
        self._lock = threading.Lock()

    def note(self, method: str, path: str) -> None:
        with self._lock:
            self.count += 1
            self._pending += 1
            now = time.monotonic()
            if now - self._logged_at < self.every:
                return
            pending, self._pending, self._logged_at = self._pending, 0, now
        log.warning(
            "api: %d calls without a valid token in the last %.0f s (latest: %s %s)",
            pending,
            self.every,
            method,
            path[:100],
        )


class ApiContext:
    def __init__(
        self,
        platform: Platform,
        *,
        max_image: int = MAX_IMAGE,
        feed: StepFeed | None = None,
        last_seen: LastSeen | None = None,
    ) -> None:
        self.platform = platform
        self.feed = feed or StepFeed()
        self.last_seen = last_seen or LastSeen()
        self.tokens = TokenBook(platform.store)
        self.audit = AuditLog(platform.store)
        self.max_image = max_image
        self.converter = strict_converter()
        self.stopping = threading.Event()
        """Set when the server stops: live streams end instead of holding the shutdown."""
        self.images_lock = threading.Lock()
        self.refusals = Refusals()

    def authenticate(self, request: Request) -> Caller | None:
        """The caller a request proves with `Authorization: Bearer` or the console's cookie;
        None without one or with a token that is unknown or revoked."""
        header = request.headers.get("authorization")
        via_cookie = False
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            token = token.strip()
        else:
            token = request.cookies.get(COOKIE, "")
            via_cookie = True
            if not token:
                return None
        info = self.tokens.check(token)
        if info is None:
            return None
        return Caller(info.name, info.scopes, via_cookie)
