"""Codec fuzzing: every feature and direction, fed what a broken or hostile peer could send.

Random bytes, JSON of any shape, deep nesting, huge numbers, NaN and Infinity, wrong types in
every field, oversized payloads, unknown fields and unknown types. The contract: `decode` raises
`DecodeError` and nothing else; whatever it accepts encodes back (so no answer echoing it can
fail) and decodes to the same message; and a runtime fed the same bytes never raises, never
logs at ERROR, and changes no session when it rejects them. `tests/test_codec.py` covers the
documented forms and one feature's random documents; this covers all of them.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import cattrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import DIRECTIONS, PRODUCT, SOAK, World, topics

from iotfsm.adapters.codec import INT_MAX, INT_MIN, MAX_DEPTH, Codec, DecodeError
from iotfsm.adapters.limits import MAX_PAYLOAD_BYTES
from iotfsm.fsm.snapshot import snapshot
from iotfsm.machines import all_features
from iotfsm.machines.messages import Message, wire_info

CODEC = Codec(all_features())
CONVERTER = cattrs.Converter()
EXAMPLES = 1500 if SOAK else 150
MD5 = "0123456789abcdef0123456789abcdef"

VALID: dict[tuple[str, str, str], dict[str, Any]] = {
    ("log_level", "up", "get_log_level"): {"clientToken": "P-1"},
    ("log_level", "down", "get_log_level"): {
        "clientToken": "P-1",
        "log_level": 4,
        "result": 0,
        "timestamp": 1619599073,
    },
    ("ota", "up", "report_version"): {"report": {"version": "0.1"}},
    ("ota", "up", "report_progress"): {
        "report": {
            "progress": {
                "state": "downloading",
                "percent": "10",
                "result_code": "0",
                "result_msg": "",
            },
            "version": "0.2",
        }
    },
    ("ota", "down", "report_version_rsp"): {
        "result_code": 0,
        "result_msg": "success",
        "version": "0.1",
    },
    ("ota", "down", "update_firmware"): {
        "file_size": 708482,
        "md5sum": MD5,
        "url": "http://127.0.0.1:9/f",
        "version": "0.2",
    },
    ("resource_upload", "up", "create_upload_task"): {"size": 100, "name": "a.bin", "md5sum": MD5},
    ("resource_upload", "up", "report_upload_progress"): {
        "name": "a.bin",
        "progress": {"state": "uploading", "percent": 89, "result_code": 0, "result_msg": ""},
    },
    ("resource_upload", "down", "create_upload_task_rsp"): {
        "size": 100,
        "name": "a.bin",
        "md5sum": MD5,
        "url": "http://127.0.0.1:9/u",
    },
    ("resource_upload", "down", "report_upload_progress_rsp"): {
        "result_code": 0,
        "result_msg": "ok",
    },
    ("resource_download", "up", "get_download_task"): {},
    ("resource_download", "up", "report_download_progress"): {
        "name": "a.bin",
        "progress": {"state": "done", "result_code": 0, "result_msg": ""},
    },
    ("resource_download", "down", "get_download_task_rsp"): {
        "size": 100,
        "name": "a.bin",
        "md5sum": MD5,
        "url": "http://127.0.0.1:9/d",
    },
    ("resource_download", "down", "download"): {
        "size": 100,
        "name": "a.bin",
        "md5sum": MD5,
        "url": "http://127.0.0.1:9/d",
    },
    ("resource_download", "down", "report_download_progress_rsp"): {
        "result_code": 0,
        "result_msg": "ok",
    },
    ("config", "up", "get"): {},
    ("config", "down", "reply"): {"result": 0, "payload": {"a": 1}},
    ("config", "down", "push"): {"result": 0, "payload": {"a": [1, {"b": None}]}},
}
"""One valid document per (feature, direction, type), in PROTOCOL.md's forms."""

PAIRS = sorted({(f, d) for f, d, _ in VALID})


def doc_of(key: tuple[str, str, str]) -> dict[str, Any]:
    return {"type": key[2], **copy.deepcopy(VALID[key])}


def decode(feature: str, direction: str, payload: bytes) -> Message:
    return CODEC.decode(feature, direction, payload)  # type: ignore[arg-type]


def accepts(feature: str, direction: str, payload: bytes) -> Message | None:
    """The message, or None on DecodeError; anything else raised fails the test. What is
    accepted must encode (an answer may echo it) and decode back to the same message."""
    try:
        message = decode(feature, direction, payload)
    except DecodeError as exc:
        assert str(exc), "a DecodeError must say what is wrong"
        return None
    again = decode(feature, direction, CODEC.encode(message))
    assert again == message and again.extra == message.extra
    return message


def test_every_message_type_has_a_valid_example() -> None:
    # broadcast, shadow and rrpc have their own example and hypothesis tests
    # (tests/test_broadcast_machines.py, test_shadow_machines.py, test_rrpc_machines.py)
    own = {"broadcast", "shadow", "rrpc"}
    declared = {
        (f.name, d, m.TYPE)
        for f in all_features()
        if f.name not in own
        for d in DIRECTIONS
        for m in f.messages(d)
    }
    missing, stale = sorted(declared - set(VALID)), sorted(set(VALID) - declared)
    assert not missing, (
        f"no valid example in VALID (tests/test_reliability_codec.py) for {missing}: add one "
        "document per (feature, direction, type) in PROTOCOL.md's form, or name the feature in "
        "`own` here if its own test module checks its codec"
    )
    assert not stale, f"VALID has examples for message types no feature declares: {stale}"
    for key in VALID:
        assert accepts(key[0], key[1], json.dumps(doc_of(key)).encode()) is not None, key


@settings(max_examples=EXAMPLES, deadline=None)
@given(pair=st.sampled_from(PAIRS), payload=st.binary(max_size=400))
def test_random_bytes(pair: tuple[str, str], payload: bytes) -> None:
    accepts(*pair, payload)


json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """A valid document with fields replaced, removed or added, or its type changed."""
    key = draw(st.sampled_from(sorted(VALID)))
    doc = doc_of(key)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "remove", "add", "type", "nest"]))
        fields = [k for k in doc if k != "type"]
        if action == "replace" and fields:
            doc[draw(st.sampled_from(fields))] = draw(json_value)
        elif action == "remove" and fields:
            del doc[draw(st.sampled_from(fields))]
        elif action == "add":
            doc[draw(st.text(max_size=10))] = draw(json_value)
        elif action == "type":
            doc["type"] = draw(
                st.sampled_from([*{k[2] for k in VALID}, "", "GET", "reboot", 5, None])
            )
        elif action == "nest" and fields:
            name = draw(st.sampled_from(fields))
            if isinstance(doc[name], dict) and doc[name]:
                inner = draw(st.sampled_from(sorted(doc[name])))
                doc[name][inner] = draw(json_value)
    return key[0], key[1], json.dumps(doc).encode()


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(case=mutated())
def test_wrong_types_missing_and_unknown_fields(case: tuple[str, str, bytes]) -> None:
    accepts(*case)


def fits(key: tuple[str, str, str], name: str, value: Any) -> bool:
    """Whether the codec should take `value` for the wire field `name`: a string for a string,
    an int or a numeric string within 64 bits for an int, an object (or null) for a payload."""
    cls = next(
        m
        for f in all_features()
        if f.name == key[0]
        for m in f.messages("up" if key[1] == "up" else "down")
        if key[2] == m.TYPE
    )
    field = next(a for a in attrs.fields(cls) if (wire_info(a).name or a.name) == name)
    if field.type in (str, "str"):
        return isinstance(value, str)
    if field.type in (int, "int"):
        if isinstance(value, str) and value.lstrip("-").isdigit() and len(value.lstrip("-")) <= 19:
            value = int(value)
        return type(value) is int and INT_MIN <= value <= INT_MAX
    if name == "payload":
        return value is None or isinstance(value, dict)
    return False  # a nested object: none of the values tried is a valid one


@pytest.mark.parametrize("key", sorted(VALID))
def test_every_field_with_every_wrong_type(key: tuple[str, str, str]) -> None:
    tried: list[Any] = [
        None,
        True,
        1.5,
        [],
        {},
        "",
        "x",
        "12",
        -1,
        2**64,
        "9" * 25,
        [1, 2],
        {"a": 1},
    ]
    for name in VALID[key]:
        for value in tried:
            doc = doc_of(key)
            doc[name] = value
            message = accepts(key[0], key[1], json.dumps(doc).encode())
            assert (message is not None) == fits(key, name, value), (name, value)


@pytest.mark.parametrize(
    "number", [INT_MAX + 1, INT_MIN - 1, 10**30, -(10**40), str(INT_MAX + 1), "-" + "9" * 19]
)
def test_integers_outside_64_bits_are_refused(number: int | str) -> None:
    doc = doc_of(("ota", "down", "update_firmware"))
    doc["file_size"] = number
    with pytest.raises(DecodeError, match=r"64-bit|integer"):
        decode("ota", "down", json.dumps(doc).encode())
    for edge in (INT_MAX, INT_MIN, str(INT_MAX)):
        doc["file_size"] = edge
        assert decode("ota", "down", json.dumps(doc).encode()).file_size == int(edge)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "literal",
    [b"1e400", b"-1e400", b"1E999", b"NaN", b"Infinity", b"-Infinity", b"1" + b"0" * 5000],
)
@pytest.mark.parametrize("where", ["field", "payload", "extra", "nested extra"])
def test_nan_infinity_and_numbers_no_float_or_int_can_hold(literal: bytes, where: str) -> None:
    templates = {
        "field": (b"config", b'{"type":"push","result":%s}'),
        "payload": (b"config", b'{"type":"push","result":0,"payload":{"x":[%s]}}'),
        "extra": (b"ota", b'{"type":"report_version_rsp","result_code":0,"future":%s}'),
        "nested extra": (b"ota", b'{"type":"report_version_rsp","result_code":0,"f":{"g":[1,%s]}}'),
    }
    feature, template = templates[where]
    with pytest.raises(DecodeError):
        decode(feature.decode(), "down", template % literal)


def nested(depth: int) -> bytes:
    """A config push whose payload nests `depth` levels (the message itself adds one)."""
    inner = b"1"
    for i in range(depth - 1):
        inner = (b"[%s]" if i % 2 or i > 100 else b'{"k":%s}') % inner
    return b'{"type":"push","result":0,"payload":{"v":%s}}' % inner


def test_nesting_up_to_the_limit_is_fine_and_beyond_it_refused() -> None:
    accepted = decode("config", "down", nested(MAX_DEPTH - 1))
    copy.deepcopy(accepted)
    CODEC.encode(accepted)
    for depth in (MAX_DEPTH, MAX_DEPTH + 1, 100, 600, 990, 7000):
        assert len(nested(depth)) <= MAX_PAYLOAD_BYTES
        with pytest.raises(DecodeError, match="nested"):
            decode("config", "down", nested(depth))
    brackets = b"[" * (MAX_PAYLOAD_BYTES // 2) + b"]" * (MAX_PAYLOAD_BYTES // 2)
    with pytest.raises(DecodeError):
        decode("config", "down", brackets)


def test_wide_but_shallow_documents_are_fine() -> None:
    payload = {f"k{i}": [i, {"x": [i]}] for i in range(300)}
    message = decode(
        "config", "down", json.dumps({"type": "push", "result": 0, "payload": payload}).encode()
    )
    assert message.payload == payload  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", ["\\ud800", "\\udfff", "a\\udc00b", "\\ud83d"])
def test_lone_surrogates_are_refused_but_pairs_are_fine(text: str) -> None:
    for template in (
        '{"type":"report_version","report":{"version":"%s"}}',
        '{"type":"report_version","report":{"version":"1"},"%s":1}',
    ):
        with pytest.raises(DecodeError, match="surrogate"):
            decode("ota", "up", (template % text).encode())
    paired = decode("ota", "up", b'{"type":"report_version","report":{"version":"\\ud83d\\ude00"}}')
    assert paired.report.version == "\U0001f600"  # type: ignore[attr-defined]


@pytest.mark.parametrize("pair", PAIRS)
def test_oversized_payloads_and_unknown_types(pair: tuple[str, str]) -> None:
    feature, direction = pair
    key = next(k for k in sorted(VALID) if k[:2] == pair)
    doc = doc_of(key)
    doc["padding"] = ""
    room = MAX_PAYLOAD_BYTES - len(json.dumps(doc).encode())
    doc["padding"] = "x" * room
    at_limit = json.dumps(doc).encode()
    assert len(at_limit) == MAX_PAYLOAD_BYTES
    assert decode(feature, direction, at_limit).extra["padding"] == "x" * room
    doc["padding"] += "x"
    with pytest.raises(DecodeError, match="exceed"):
        decode(feature, direction, json.dumps(doc).encode())
    with pytest.raises(DecodeError, match="exceed"):
        decode(feature, direction, b"{" * (10 * MAX_PAYLOAD_BYTES))
    for kind in ("reboot", "", "UPDATE_FIRMWARE", None, 7, ["get"]):
        with pytest.raises(DecodeError, match="unknown message type"):
            decode(feature, direction, json.dumps({**doc_of(key), "type": kind}).encode())


def test_unknown_fields_are_kept_and_sent_back() -> None:
    for key in sorted(VALID):
        extra = {"user_defined": '{"a":1}', "n": [1, 2, {"x": None}], "future_flag": True}
        message = decode(key[0], key[1], json.dumps({**doc_of(key), **extra}).encode())
        assert message.extra == extra
        assert {k: v for k, v in json.loads(CODEC.encode(message)).items() if k in extra} == extra


# ---- the runtimes behind the codec ---------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("codec") / "world")
    w.device("fuzz").start()
    w.drive(until=lambda: True)
    try:
        yield w
    finally:
        w.close()


def sessions(world: World) -> dict[tuple[str, str, str], Any]:
    return {
        (runtime.role, feature, session.key.device): snapshot(session, CONVERTER)
        for runtime in world.runtimes
        for feature, session in runtime.all_sessions()
    }


garbage = (
    st.binary(max_size=200)
    | json_value.map(lambda v: json.dumps(v).encode())
    | mutated().map(lambda case: case[2])
)


@settings(
    max_examples=EXAMPLES * 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    feature=st.sampled_from(sorted({k[0] for k in VALID})),
    direction=st.sampled_from(["up", "down"]),
    payload=garbage,
)
def test_runtimes_take_anything_without_raising(
    world: World, feature: str, direction: str, payload: bytes
) -> None:
    runtime = world.platform.runtime if direction == "up" else world.find("fuzz").runtime
    before = sessions(world)
    rejected = runtime.rejected
    runtime.on_message(topics(feature, "fuzz", PRODUCT)[direction], payload)
    world.drive(until=lambda: True)  # also: nothing at ERROR, nobody stuck, no stray file
    if runtime.rejected > rejected:
        assert sessions(world) == before, "a rejected message changed a session"
    with contextlib.suppress(FileNotFoundError):
        assert not (Path(world.root).parent / "escape").exists()
