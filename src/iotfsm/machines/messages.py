"""Message base and wire annotations shared by every feature.

A message is a frozen attrs class whose fields mirror the JSON document; `TYPE` is its `type` field.
Field metadata says how the wire differs from Python (a camelCase name, a number sent as a string,
a field left out when empty). The codec in `adapters` reads it; here it is only data, so feature
modules stay free of I/O imports.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from ..fsm.events import Event

WIRE = "iotfsm.wire"


@attrs.frozen
class Wire:
    name: str | None = None
    """The JSON key when it is not the attribute name (e.g. `clientToken`)."""
    text: bool = False
    """Emit the number as a string: OTA progress sends `"percent":"10"` (PROTOCOL.md)."""
    omit_if_none: bool = False
    """Leave the key out when the value is None (OTA `done`/`fail` carry no percent)."""
    object_text: bool = False
    """Accept a JSON string holding an object in place of the object (seed 004 types config
    `payload` as a string, its examples show an object); the object is what is emitted."""


def wire(
    *,
    name: str | None = None,
    text: bool = False,
    omit_if_none: bool = False,
    object_text: bool = False,
) -> dict[str, Wire]:
    """Field metadata for `attrs.field(metadata=wire(...))`.

    A metadata helper rather than a field factory, so the attrs plugin of mypy still sees every
    `attrs.field(...)` and types the constructors correctly.
    """
    return {WIRE: Wire(name, text, omit_if_none, object_text)}


def url_repr(url: str) -> str:
    """How a URL shows in a repr (log lines, step traces): without its query string. A presigned
    URL's query holds its signature, a bearer credential until it expires."""
    base, sep, _ = url.partition("?")
    return repr(base + ("?<query hidden>" if sep else ""))


def wire_info(field: attrs.Attribute[Any]) -> Wire:
    info = field.metadata.get(WIRE)
    return info if isinstance(info, Wire) else Wire()


@attrs.frozen
class Message(Event):
    """Base of every wire message. Unknown JSON keys are kept in `extra`, never rejected:
    platform variants add fields (e.g. Explorer's `user_defined`) that a device must tolerate."""

    TYPE: ClassVar[str] = ""
    extra: dict[str, Any] = attrs.field(factory=dict, kw_only=True, repr=False, hash=False)


@attrs.frozen
class RawMessage(Message):
    """A message whose payload is the application's own bytes, not a `type`-tagged document:
    broadcast and RRPC carry whatever the server sends (Tencent's C SDK hands the payload to the
    application untouched). The codec takes and emits `payload` as it is. A feature whose topics
    carry a suffix after `{device}` (RRPC's processId) names the field holding it in `SUFFIX`."""

    SUFFIX: ClassVar[str] = ""
    payload: bytes = attrs.field(default=b"", repr=lambda b: f"<{len(b)} bytes>")
