"""Per-device commands routed through the device's partition, so only its owner steps them.

Server code posts to sessions from its own threads (a deploy, a campaign wave, a config push). In a
pool the session may live in another worker, and two workers must never step one session; so a
post from outside the worker's loop becomes a message to `iotfsm.uplinks` with the routing key of
that session's uplink topic. The consistent-hash exchange puts it in the very partition the
device's reports go to, behind them, and the partition's owner steps it like a report: in order,
committed before it is acked, deduplicated on redelivery like any uplink.

A command is JSON (feature, device, event type and fields) with an HMAC-SHA256 under a key every
worker reads from the shared store. Devices publish into the same exchange (through `amq.topic`),
so a command is believed only when its signature checks; and only event classes of
`iotfsm.machines` are ever built from one.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import json
import secrets
from typing import Any, cast

import attrs
import cattrs

from ...fsm.events import Event
from ...machines.feature import DeviceKey

MODULES = "iotfsm.machines."


class CommandError(ValueError):
    """A command that is not signed by the pool, not JSON, or names an unknown event."""


@attrs.frozen
class Command:
    feature: str
    key: DeviceKey
    event: Event


class CommandCodec:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the command key must have at least 16 bytes")
        self._secret = secret
        self._converter = cattrs.Converter()

    def encode(self, feature: str, key: DeviceKey, event: Event) -> tuple[bytes, str]:
        """(body, signature) of a command; the nonce makes every command's digest unique, so
        the partition's redelivery check never mistakes two equal commands for one."""
        kind = type(event)
        doc = {
            "feature": feature,
            "product": key.product,
            "device": key.device,
            "type": f"{kind.__module__}:{kind.__qualname__}",
            "event": self._converter.unstructure(event),
            "nonce": secrets.token_hex(8),
        }
        body = json.dumps(doc, separators=(",", ":")).encode()
        return body, self.sign(body)

    def sign(self, body: bytes) -> str:
        return hmac.new(self._secret, body, hashlib.sha256).hexdigest()

    def decode(self, body: bytes, signature: object) -> Command:
        if not isinstance(signature, str) or not hmac.compare_digest(self.sign(body), signature):
            raise CommandError("command signature missing or wrong: not sent by this pool")
        try:
            doc = json.loads(body)
            kind = _event_class(str(doc["type"]))
            event = self._converter.structure(doc["event"], kind)
            key = DeviceKey(str(doc["product"]), str(doc["device"]))
            return Command(str(doc["feature"]), key, event)
        except (ValueError, KeyError, TypeError, cattrs.BaseValidationError) as exc:
            raise CommandError(f"malformed command: {exc}") from None


def _event_class(name: str) -> type[Event]:
    module_name, _, qualname = name.partition(":")
    if not module_name.startswith(MODULES) or not qualname.isidentifier():
        raise CommandError(f"event type {name[:80]!r} is not one of iotfsm.machines")
    module = importlib.import_module(module_name)
    kind = getattr(module, qualname, None)
    if not (isinstance(kind, type) and issubclass(kind, Event) and attrs.has(kind)):
        raise CommandError(f"{name[:80]!r} is not an event class")
    return cast(type[Event], kind)


def new_secret() -> str:
    return secrets.token_hex(32)


def command_key(doc: Any) -> bytes:
    if not isinstance(doc, str) or len(doc) < 32:
        raise ValueError("the pool's command key in the store is malformed")
    return bytes.fromhex(doc)
