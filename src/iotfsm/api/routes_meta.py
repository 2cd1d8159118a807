"""Health, the fleet overview, the audit trail, and the console's cookie session."""

from __future__ import annotations

import time
from collections import Counter

import cattrs
from starlette.responses import JSONResponse, Response

from .context import COOKIE
from .endpoint import PAGE, ApiError, Call, Endpoint, Param
from .lookup import page
from .models import AuditPage, Health, Overview, SessionIn, SessionOut
from .routes_campaigns import _statuses

RECENT = 300.0
"""Seconds since a device's last message for it to count as online in the overview."""


def health(call: Call) -> Health:
    return Health("ok")


def overview(call: Call) -> Overview:
    platform = call.ctx.platform
    registered = platform.registry.devices()
    # plain (product, device) tuples: equal to the DeviceKeys of the session tables, cheaper
    keys: set[tuple[str, str]] = {(d.product, d.device) for d in registered}
    enabled = sum(1 for d in registered if d.enabled)
    open_registry = platform.registry.open
    by_state: dict[str, dict[str, int]] = {}
    versions: Counter[str] = Counter()
    for feature, sessions in list(platform.runtime.sessions.items()):
        counts: Counter[str] = Counter()
        for key, session in list(sessions.items()):
            if open_registry:
                keys.add(key)
            elif key not in keys:
                continue
            counts[session.state] += 1
            if feature == "ota":
                versions[str(session.ctx.reported or "")] += 1
        by_state[feature] = dict(counts)
    if open_registry:
        enabled = len(keys)
    versions[""] += len(keys) - sum(versions.values())
    if not versions[""]:
        del versions[""]
    since = time.time() - RECENT
    online = sum(1 for k, at in list(call.ctx.last_seen.times.items()) if at >= since and k in keys)
    campaigns = Counter(s.state for s in _statuses(call))
    return Overview(
        len(keys),
        enabled,
        online,
        sorted({k[0] for k in keys}),
        by_state,
        dict(versions),
        dict(campaigns),
        call.ctx.feed.dropped,
    )


def audit(call: Call) -> AuditPage:
    wanted = call.query["token"]
    found = [e for e in call.ctx.audit.entries() if wanted in (None, e.token)]
    return AuditPage(**page(found, call))


def whoami(call: Call) -> SessionOut:
    return SessionOut(call.caller.name, list(call.caller.scopes))


def login(call: Call) -> Response:
    body: SessionIn = call.body
    info = call.ctx.tokens.check(body.token)
    if info is None:
        raise ApiError(401, "unauthorized", "that token is unknown or revoked")
    doc = cattrs.Converter().unstructure(SessionOut(info.name, list(info.scopes)))
    answer = JSONResponse(doc)
    answer.set_cookie(COOKIE, body.token, httponly=True, samesite="strict", path="/")
    return answer


def logout(call: Call) -> Response:
    answer = Response(status_code=204)
    answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return answer


ENDPOINTS = (
    Endpoint("GET", "/health", health, "read", "Is the API up", "meta", Health, public=True),
    Endpoint("GET", "/overview", overview, "read", "Fleet overview", "meta", Overview),
    Endpoint(
        "GET",
        "/audit",
        audit,
        "read",
        "Changes made through the API, newest first",
        "meta",
        AuditPage,
        query=(Param("token", str, description="only this token's calls"), *PAGE),
    ),
    Endpoint("GET", "/session", whoami, "read", "Who the caller is", "session", SessionOut),
    Endpoint(
        "POST",
        "/session",
        login,
        "read",
        "Log the console in (sets a cookie)",
        "session",
        SessionOut,
        body=SessionIn,
        public=True,
    ),
    Endpoint(
        "DELETE",
        "/session",
        logout,
        "read",
        "Log the console out",
        "session",
        None,
        204,
        public=True,
    ),
)
