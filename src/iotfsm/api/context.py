"""What every handler of the API (and the console mounted beside it) shares: the platform, the
step feed, the token book and the audit trail, and how a request is authenticated."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import attrs
from starlette.requests import Request

from .audit import AuditLog
from .feed import LastSeen, StepFeed
from .schema import strict_converter
from .tokens import TokenBook

if TYPE_CHECKING:
    from ..platform import Platform

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
