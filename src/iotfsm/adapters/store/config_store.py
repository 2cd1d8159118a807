"""Product-level remote config in the platform's records: the last five versions and the switch.

A product's config is one record, not a copy in every device session: a product of 100,000
devices changes its config with one write, and the sessions are handed the result in command
events (`ConfigChanged`, `ConfigLoaded`). The console keeps the last five versions (seed 004
§1.5.2.3), and so does this; version numbers keep counting when old ones fall out of the history.

Payloads come from server code, so they are checked here, where a mistake can still be reported
to the caller: a JSON object with string keys, no NaN, small enough that a `push` carrying it fits
the 16 KB MQTT limit. What is stored is a JSON round-trip copy, so a caller mutating its dict
afterwards changes nothing.
"""

from __future__ import annotations

import copy
import json
import threading
from typing import Any

import attrs

from ...machines.config import ProductConfig
from ..codec import document_problem
from ..limits import MAX_PAYLOAD_BYTES
from .session_store import SessionStore

HISTORY = 5
TABLE = "product_config"
_PUSH_OVERHEAD = len(b'{"type":"push","result":0,"payload":}')


class ConfigError(ValueError):
    """A config the platform cannot store or send; the message says what to change."""


@attrs.frozen
class ConfigVersion:
    """One version of a product's config, as `Platform.config_history` lists it."""

    version: int
    payload: dict[str, Any] = attrs.field(hash=False)
    created_at: float


def check_payload(payload: Any) -> dict[str, Any]:
    """Return a private copy of `payload` or raise ConfigError saying what is wrong with it."""
    if not isinstance(payload, dict):
        raise ConfigError(
            f"a config payload is a JSON object (a dict), got {type(payload).__name__}"
        )
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"the config payload is not JSON-serializable: {exc}") from None
    problem = document_problem(payload)
    if problem is not None:
        raise ConfigError(f"devices would refuse this config payload: {problem}")
    size = len(text.encode()) + _PUSH_OVERHEAD
    if size > MAX_PAYLOAD_BYTES:
        raise ConfigError(
            f"the config payload makes a {size}-byte push, over the {MAX_PAYLOAD_BYTES}-byte MQTT"
            " limit; shrink it (devices can fetch large settings as a resource instead)"
        )
    private: dict[str, Any] = json.loads(text)
    if set(private) != set(payload):
        raise ConfigError("config payload keys must be strings")
    return private


class ConfigRecords:
    """Reads and changes product configs in a `SessionStore`; one lock makes each change atomic
    against another made by a second server thread."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self._lock = threading.Lock()

    def current(self, product: str) -> ProductConfig:
        """What sessions are told: enabled, the latest version and its payload, the revision."""
        return _current(self._load(product))

    def history(self, product: str) -> tuple[ConfigVersion, ...]:
        """The last five versions, oldest first (the current one is last). The payloads are
        copies: the caller may change them without touching what devices are sent."""
        return tuple(
            ConfigVersion(int(h["version"]), copy.deepcopy(h["payload"]), float(h["created_at"]))
            for h in self._load(product)["history"]
        )

    def set(self, product: str, payload: Any, now: float) -> tuple[ConfigVersion, ProductConfig]:
        """Store `payload` as the product's next version; returns it and the new state."""
        stored = check_payload(payload)
        with self._lock:
            doc = dict(self._load(product))  # a new record, never one a reader may hold
            version = int(doc["version"]) + 1
            entry = {"version": version, "payload": stored, "created_at": now}
            doc["history"] = [*doc["history"], entry][-HISTORY:]
            doc["version"] = version
            doc["revision"] = int(doc["revision"]) + 1
            self._store.put(TABLE, product, doc)
        return ConfigVersion(version, copy.deepcopy(stored), now), _current(doc)

    def enable(self, product: str, enabled: bool) -> ProductConfig | None:
        """Flip the switch; None when it was already in that position (nothing to tell)."""
        with self._lock:
            doc = dict(self._load(product))
            if bool(doc["enabled"]) == enabled:
                return None
            doc["enabled"] = enabled
            doc["revision"] = int(doc["revision"]) + 1
            self._store.put(TABLE, product, doc)
        return _current(doc)

    def _load(self, product: str) -> dict[str, Any]:
        doc = self._store.get(TABLE, product)
        if not isinstance(doc, dict):
            return {"enabled": True, "version": 0, "revision": 0, "history": []}
        return doc


def _current(doc: dict[str, Any]) -> ProductConfig:
    history = doc["history"]
    latest = history[-1] if history else None
    return ProductConfig(
        enabled=bool(doc["enabled"]),
        version=int(latest["version"]) if latest else 0,
        payload=latest["payload"] if latest else None,
        revision=int(doc["revision"]),
    )


__all__ = ["HISTORY", "ConfigError", "ConfigRecords", "ConfigVersion", "check_payload"]
