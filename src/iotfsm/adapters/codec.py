"""JSON <-> message objects, with cattrs: lenient where real devices differ, exact when emitting.

Receivers accept an int or a numeric string for every integer field (OTA sends `"percent":"10"`,
resources send `89`), keep unknown keys in `extra`, and reject everything else with one error type,
`DecodeError`, whose message names the field and what was expected. Senders emit each feature's
documented form: numbers as strings only where the field is marked `text`, keys in declared order,
compact separators, no NaN.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import attrs
import cattrs
import orjson
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ..machines.feature import Direction, Feature
from ..machines.messages import Message, RawMessage, wire_info
from .codec_emit import EmitGenerator, FallbackError
from .codec_structure import Generator, Structure
from .limits import MAX_PAYLOAD_BYTES

Decoder = Callable[[bytes], tuple[str, Message]]
"""A payload -> (the feature whose message it is, the message); raises DecodeError only."""

_EXTRA = "\x00extra"
_NUMERIC = re.compile(r"-?[0-9]{1,19}")
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
"""Integers outside a signed 64-bit range are refused: no SDK on the other side can hold them."""
MAX_DEPTH = 32
"""Nesting levels a document may have (the messages themselves use four; a config payload the
rest). Deeper ones are refused on arrival: a few hundred levels already exhaust the recursion of
whatever walks the document later (copying it, encoding it, snapshotting it)."""
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONG_NUMBER = re.compile(rb"[0-9]{19}")
_DIGITS = b"0123456789"


def _stdlib_only(payload: bytes) -> bool:
    """Whether `json` must parse this payload: orjson refuses a lone surrogate escape (`json`
    takes it and `document_problem` names it), and turns integers beyond 64 bits (19 digits and
    more) into floats, which `json` keeps as integers for the codec to refuse by name. Two
    substring tests first: the regular expressions cost more than orjson's whole parse."""
    if b"\\u" in payload and _SURROGATE_ESCAPE.search(payload) is not None:
        return True
    digits = len(payload) - len(payload.translate(None, _DIGITS))
    return digits >= 19 and _LONG_NUMBER.search(payload) is not None


class DecodeError(ValueError):
    """An inbound payload is not a valid message of the feature and direction it arrived on."""


def _strict_int(value: Any, _: Any) -> int:
    if type(value) is int:
        number = value
    elif type(value) is str and _NUMERIC.fullmatch(value.strip()):
        number = int(value)
    else:
        raise ValueError(f"expected an integer or a numeric string, got {_show(value)}")
    if not INT_MIN <= number <= INT_MAX:
        raise ValueError(f"integer {_show(value)} is out of the signed 64-bit range")
    return number


def _strict_str(value: Any, _: Any) -> str:
    if type(value) is str:
        return value
    raise ValueError(f"expected a string, got {_show(value)}")


def _strict_bool(value: Any, _: Any) -> bool:
    if type(value) is bool:
        return value
    raise ValueError(f"expected true or false, got {_show(value)}")


def _json_object(value: Any, _: Any) -> dict[str, Any]:
    if type(value) is dict:
        return value
    raise ValueError(f"expected a JSON object, got {_show(value)}")


def _object_or_text(value: Any, _: Any) -> dict[str, Any] | None:
    """An object, or a JSON string holding one (seed 004's config table types `payload` as a
    string); None stays None."""
    if value is None or type(value) is dict:
        return value
    if type(value) is str:
        try:
            parsed = json.loads(value, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            parsed = None
        if type(parsed) is dict and document_problem(parsed) is None:
            return parsed
        raise ValueError(f"expected a JSON object or a string holding one, got {_show(value)}")
    raise ValueError(f"expected a JSON object, got {_show(value)}")


def _show(value: Any) -> str:
    text = (
        json.dumps(value)
        if isinstance(value, (str, int, float, bool, type(None)))
        else type(value).__name__
    )
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(exc: BaseException, expected: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    return str(exc) or f"invalid value, expected {getattr(expected, '__name__', expected)}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """`1e400` is valid JSON but no float: refused like NaN, which nothing could send back."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def document_problem(doc: Any) -> str | None:
    """Why a parsed JSON document cannot be taken in, or None when it can: nested deeper than
    MAX_DEPTH, or a string holding a lone surrogate (`"\\ud800"` is valid
    JSON, but no UTF-8 encoder can send it back, so an answer echoing it would fail)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels"
            if isinstance(value, dict):
                for key in value:
                    if isinstance(key, str) and not _encodable(key):
                        return "a key holds a lone surrogate (\\ud800-\\udfff)"
                stack.extend((item, depth + 1) for item in value.values())
            else:
                stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and not _encodable(value):
            return "a string holds a lone surrogate (\\ud800-\\udfff)"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _where(features: Sequence[str], direction: str) -> str:
    """How an error names where a payload arrived; built only when there is an error."""
    return f"{'/'.join(features)} {direction}"


def _field_hook(cls: type[Any], field: attrs.Attribute[Any]) -> Any:
    """A field's own structure hook, as `Codec._overrides` gives it to cattrs."""
    return _object_or_text if wire_info(field).object_text else None


def _as_text(value: Any) -> Any:
    return None if value is None else str(value)


class Codec:
    """Encodes and decodes the messages of the given features. One instance per runtime."""

    def __init__(self, features: Iterable[Feature]) -> None:
        self._types: dict[tuple[str, Direction], dict[str, type[Message]]] = {}
        self._raw: dict[tuple[str, Direction], type[RawMessage]] = {}
        """Features whose payload is the application's bytes (one raw message per direction)."""
        for feature in features:
            for direction in ("up", "down"):
                messages = feature.messages(direction)
                self._types[(feature.name, direction)] = {m.TYPE: m for m in messages}
                raw = [m for m in messages if issubclass(m, RawMessage)]
                if raw and len(messages) != 1:
                    raise ValueError(
                        f"{feature.name!r} {direction}: a raw message must be the direction's only"
                        " message (its payload carries no type to tell messages apart)"
                    )
                if raw:
                    self._raw[(feature.name, direction)] = raw[0]
        self._conv = self._converter(detailed_validation=True)
        self._fast = self._converter(detailed_validation=False)
        self._encoders: dict[type[Message], Callable[[Any], dict[str, Any]]] = {}
        self._generator = Generator(_strict_int, _field_hook)
        self._emit = EmitGenerator()
        self._emitters: dict[type[Message], Any] = {}
        """Per message class, its plain document builder (codec_emit), or None."""
        self._structurers: dict[type[Message], Structure] = {}
        """Per message class, its one-pass structuring (or cattrs' fast converter where the
        generator does not cover a field type)."""
        self._known: dict[type[Message], frozenset[str]] = {}
        self._decoders: dict[tuple[tuple[str, ...], Direction], Decoder] = {}
        """Per (features of a topic, direction), its `decoder`."""
        # one decoder and one encoder for every message: json.loads/dumps with options build a
        # new one per call, a measurable share of the platform's cost per message
        self._decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
        self._encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def _converter(self, *, detailed_validation: bool) -> cattrs.Converter:
        conv = cattrs.Converter(detailed_validation=detailed_validation)
        conv.register_structure_hook(int, _strict_int)
        conv.register_structure_hook(str, _strict_str)
        conv.register_structure_hook(bool, _strict_bool)
        conv.register_structure_hook_func(lambda t: t == dict[str, Any], _json_object)
        conv.register_structure_hook_factory(
            attrs.has, lambda cls: self._structure_factory(cls, conv)
        )
        conv.register_unstructure_hook_factory(attrs.has, self._unstructure_factory)
        return conv

    def _overrides(self, cls: type[Any], emitting: bool) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for field in attrs.fields(cls):
            if field.name == "extra" and issubclass(cls, Message):
                result[field.name] = override(omit=True) if emitting else override(rename=_EXTRA)
                continue
            info = wire_info(field)
            result[field.name] = override(
                rename=info.name,
                unstruct_hook=_as_text if (info.text and emitting) else None,
                struct_hook=_object_or_text if (info.object_text and not emitting) else None,
            )
        return result

    def _structure_factory(self, cls: type[Any], conv: cattrs.Converter) -> Any:
        return make_dict_structure_fn(cls, conv, **self._overrides(cls, emitting=False))

    def _unstructure_factory(self, cls: type[Any]) -> Any:
        encode = make_dict_unstructure_fn(cls, self._conv, **self._overrides(cls, emitting=True))
        optional = tuple(
            wire_info(f).name or f.name for f in attrs.fields(cls) if wire_info(f).omit_if_none
        )
        if not optional:
            return encode

        def encode_omitting_none(value: Any) -> dict[str, Any]:
            # cattrs' own omit_if_default moves such keys to the end; the wire order is declared
            doc: dict[str, Any] = encode(value)
            for key in optional:
                if doc.get(key) is None:
                    doc.pop(key, None)
            return doc

        return encode_omitting_none

    # ---- inbound ----------------------------------------------------------------------------

    def decode(self, feature: str, direction: Direction, payload: bytes) -> Message:
        """Parse one payload received on `feature`'s `direction` topic. Raises DecodeError only."""
        return self.decoder((feature,), direction)(payload)[1]

    def decode_any(
        self, features: Sequence[str], direction: Direction, payload: bytes
    ) -> tuple[str, Message]:
        """Parse a payload from a topic that `features` share; the `type` says whose it is."""
        return self.decoder(features, direction)(payload)

    def decoder(self, features: Sequence[str], direction: Direction) -> Decoder:
        """`decode_any` for one topic's features and direction, as one function made once:
        what the common case looks up per payload is looked up here instead."""
        key = (tuple(features), direction)
        made = self._decoders.get(key)
        if made is None:
            made = self._make_decoder(key[0], direction)
            if all((name, direction) in self._types for name in key[0]):
                self._decoders[key] = made  # declared names only: callers cannot grow it
        return made

    def _make_decoder(self, features: tuple[str, ...], direction: Direction) -> Decoder:
        general = partial(self._decode_general, features, direction)
        single = len(features) == 1  # the fast path serves a topic of one feature only
        one = features[0] if single else ""
        raw = self._raw.get((one, direction)) if single else None
        types = self._types.get((one, direction)) if single else None
        structurers = self._structurers

        def decode(payload: bytes) -> tuple[str, Message]:
            if len(payload) > MAX_PAYLOAD_BYTES:
                where = _where(features, direction)
                raise DecodeError(f"{where}: {len(payload)} bytes exceed {MAX_PAYLOAD_BYTES}")
            if raw is not None:
                return one, raw(payload=bytes(payload))
            # The common case in one pass, with no call that is not needed: one feature, a
            # payload orjson reads as json would (see `_load`), a known type, a document the
            # generated structuring takes. Anything else, including every error, takes the
            # general path.
            if (
                types is not None
                and payload.count(b"[") + payload.count(b"{") <= MAX_DEPTH
                and b"\\u" not in payload
                and len(payload) - len(payload.translate(None, _DIGITS)) < 19
            ):
                try:
                    doc = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    doc = None
                if type(doc) is dict:
                    kind = doc.get("type")
                    cls = types.get(kind) if type(kind) is str else None
                    fast = structurers.get(cls) if cls is not None else None
                    if fast is not None:
                        try:
                            return one, fast(doc)
                        except Exception:  # the general path below names what is wrong
                            pass
            return general(payload)

        return decode

    def _decode_general(
        self, features: Sequence[str], direction: Direction, payload: bytes
    ) -> tuple[str, Message]:
        doc = self._load(features, direction, payload)
        if not isinstance(doc, dict):
            where = _where(features, direction)
            raise DecodeError(f"{where}: a message is a JSON object, got {type(doc).__name__}")
        kind = doc.get("type")
        expected: list[str] = []
        for feature in features:
            types = self._types.get((feature, direction))
            if types is None:
                where = _where(features, direction)
                raise DecodeError(f"{where}: no such feature/direction in this codec")
            cls = types.get(kind) if isinstance(kind, str) else None
            if cls is not None:
                return feature, self._structure(cls, doc, features, direction)
            expected.extend(types)
        raise DecodeError(
            f"{_where(features, direction)}: unknown message type {_show(kind)}; "
            f"expected one of {sorted(expected)}"
        )

    def _load(self, features: Sequence[str], direction: Direction, payload: bytes) -> Any:
        """The parsed document, as `_parse` makes it, or the same DecodeError."""
        # orjson parses what `json` parses, to the same document, ~3x faster. What it might read
        # differently, and what may be refused below, goes through `json`; so does whatever
        # orjson refuses, and `json` words the error
        if payload.count(b"[") + payload.count(b"{") <= MAX_DEPTH and not _stdlib_only(payload):
            try:
                return orjson.loads(payload)
            except orjson.JSONDecodeError:
                return self._parse(features, direction, payload)
        doc = self._parse(features, direction, payload)
        # the full walk only when a cheap look at the bytes says it could find something
        problem = document_problem(doc)
        if problem is not None:
            raise DecodeError(f"{_where(features, direction)}: refused, {problem}")
        return doc

    def _parse(self, features: Sequence[str], direction: Direction, payload: bytes) -> Any:
        """`json`'s document, the reference: every error is worded from here."""
        try:
            return self._decoder.decode(payload.decode())
        except RecursionError:
            raise DecodeError(f"{_where(features, direction)}: JSON nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            where = _where(features, direction)
            raise DecodeError(f"{where}: not valid JSON ({exc})") from None

    def _structure(
        self, cls: type[Message], doc: dict[str, Any], features: Sequence[str], direction: str
    ) -> Message:
        """`structure` on the fast converter; only a document it refuses pays for the detailed
        one, which names every problem (most messages are valid, and detailed validation wraps
        each field in its own error bookkeeping)."""
        fast = self._structurers.get(cls)
        if fast is None:
            fast = self._structurers[cls] = self._generator.get(cls) or partial(
                self._structure_cattrs, cls
            )
        try:
            return fast(doc)
        except Exception:  # whatever it was, the detailed pass names it properly
            return self.structure(cls, doc, _where(features, direction))

    def _structure_cattrs(self, cls: type[Message], doc: dict[str, Any]) -> Message:
        return self._fast.structure(self._fields(cls, doc), cls)

    def _fields(self, cls: type[Message], doc: dict[str, Any]) -> dict[str, Any]:
        """The document with its unknown keys gathered under the `extra` field's wire name."""
        known = self._known.get(cls)
        if known is None:
            names = {wire_info(f).name or f.name for f in attrs.fields(cls)}
            known = self._known[cls] = frozenset({"type", *names})
        fields = dict(doc)
        fields[_EXTRA] = {k: v for k, v in doc.items() if k not in known}
        return fields

    def structure(self, cls: type[Message], doc: dict[str, Any], where: str = "") -> Message:
        """Build `cls` from a parsed document; DecodeError names every field that is wrong."""
        fields = self._fields(cls, doc)
        try:
            return self._conv.structure(fields, cls)
        except cattrs.BaseValidationError as exc:
            problems = "; ".join(
                cattrs.transform_error(exc, path=cls.TYPE, format_exception=_describe)
            )
            raise DecodeError(f"{where}: invalid {cls.TYPE}: {problems}") from None
        except (TypeError, ValueError, KeyError, RecursionError) as exc:
            raise DecodeError(f"{where}: invalid {cls.TYPE}: {exc}") from None

    # ---- outbound ---------------------------------------------------------------------------

    def to_dict(self, message: Message) -> dict[str, Any]:
        """The exact wire document: `type` first, declared fields in order, then kept extras."""
        encode = self._encoders.get(type(message))
        if encode is None:
            encode = self._encoders[type(message)] = self._conv.get_unstructure_hook(type(message))
        doc: dict[str, Any] = {"type": message.TYPE}
        doc.update(encode(message))
        for key, value in message.extra.items():
            doc.setdefault(key, value)
        return doc

    def encode(self, message: Message) -> bytes:
        emit = self._emitters.get(type(message))
        payload = None
        if emit is not None:  # a plain message, as most are: one document, orjson writes it
            try:
                payload = orjson.dumps(emit(message))
            except (FallbackError, TypeError):
                payload = None
        if payload is None:
            if isinstance(message, RawMessage):
                payload = message.payload
            else:
                payload = self._encode_plain(message) or self._encode_general(message)
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"{message.TYPE} encodes to {len(payload)} bytes, over the {MAX_PAYLOAD_BYTES}-byte"
                " MQTT limit; shrink it (e.g. a smaller config payload)"
            )
        return payload

    def _encode_plain(self, message: Message) -> bytes | None:
        """orjson's bytes for a message of plain values only (see codec_emit), else None."""
        cls = type(message)
        emit = self._emitters.get(cls, _UNKNOWN)
        if emit is _UNKNOWN:
            emit = self._emitters[cls] = self._emit.get(cls)
        if emit is None:
            return None
        try:
            return orjson.dumps(emit(message))
        except (FallbackError, TypeError):  # TypeError: an integer beyond 64 bits, a surrogate
            return None

    def _encode_general(self, message: Message) -> bytes:
        return self._encoder.encode(self.to_dict(message)).encode()


_UNKNOWN: Any = object()
