"""The codec: PROTOCOL.md's examples decode, output is exact, bad input raises only DecodeError."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotfsm.adapters.codec import Codec, DecodeError
from iotfsm.adapters.limits import MAX_PAYLOAD_BYTES
from iotfsm.machines import all_features
from iotfsm.machines.log_level import FEATURE, GetLogLevel, LogLevelReply

CODEC = Codec(all_features())


def test_protocol_examples_decode() -> None:
    ask = CODEC.decode("log_level", "up", b'{"type":"get_log_level","clientToken":"S3EUVBRJLB-1"}')
    assert ask == GetLogLevel("S3EUVBRJLB-1")
    reply = CODEC.decode(
        "log_level",
        "down",
        b'{"type":"get_log_level","clientToken":"S3EUVBRJLB-1","log_level":4,"result":0,"timestamp":1619599073}',
    )
    assert reply == LogLevelReply("S3EUVBRJLB-1", 4, 0, 1619599073)


def test_emits_the_documented_form_exactly() -> None:
    assert CODEC.encode(LogLevelReply("P-1", 4, 0, 1619599073)) == (
        b'{"type":"get_log_level","clientToken":"P-1","log_level":4,"result":0,"timestamp":1619599073}'
    )
    assert CODEC.encode(GetLogLevel("P-1")) == b'{"type":"get_log_level","clientToken":"P-1"}'


def test_numeric_strings_are_accepted_where_devices_differ() -> None:
    reply = CODEC.decode(
        "log_level",
        "down",
        b'{"type":"get_log_level","clientToken":"t","log_level":"2","result":"0"}',
    )
    assert (reply.log_level, reply.result) == (2, 0)  # type: ignore[attr-defined]


def test_unknown_fields_are_kept_and_re_emitted() -> None:
    reply = CODEC.decode(
        "log_level",
        "down",
        b'{"type":"get_log_level","clientToken":"t","log_level":1,"user_defined":"{}"}',
    )
    assert reply.extra == {"user_defined": "{}"}
    assert json.loads(CODEC.encode(reply))["user_defined"] == "{}"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{", "not valid JSON"),
        (
            b'{"type":"get_log_level","clientToken":"t","log_level":1,}',
            "not valid JSON",
        ),  # the seeds' slip
        (b"[1,2]", "a message is a JSON object, got list"),
        (b'{"type":"reboot"}', 'unknown message type "reboot"'),
        (b'{"clientToken":"t"}', "unknown message type null"),
        (b'{"type":"get_log_level","clientToken":7,"log_level":1}', "expected a string, got 7"),
        (
            b'{"type":"get_log_level","clientToken":"t","log_level":true}',
            "expected an integer or a numeric string, got true",
        ),
        (b'{"type":"get_log_level","clientToken":"t","log_level":1.5}', "expected an integer"),
        (b'{"type":"get_log_level","clientToken":"t","log_level":"4x"}', "expected an integer"),
        (b'{"type":"get_log_level","clientToken":"t","log_level":NaN}', "NaN is not valid JSON"),
        (
            b'{"type":"get_log_level","clientToken":"t","log_level":Infinity}',
            "Infinity is not valid JSON",
        ),
        (b'{"type":"get_log_level","clientToken":"t"}', "required field missing"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b" " * (MAX_PAYLOAD_BYTES + 1), "exceed"),
    ],
)
def test_bad_input_gets_a_clear_error(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message.replace("(", r"\(").replace("[", r"\[")):
        CODEC.decode("log_level", "down", payload)


def test_a_message_of_the_other_direction_is_unknown_here() -> None:
    with pytest.raises(DecodeError, match="unknown message type"):
        CODEC.decode("log_level", "up", b'{"type":"reply","result":0}')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
field_values = st.one_of(
    json_values, st.sampled_from(["4", "-1", "x", "", "99999999999999999999999"])
)


@st.composite
def message_like(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = draw(
        st.dictionaries(
            st.sampled_from(["clientToken", "log_level", "result", "timestamp", "extra"]),
            field_values,
        )
    )
    if draw(st.booleans()):
        doc["type"] = draw(st.sampled_from(["get_log_level", "push", "", "GET_LOG_LEVEL"]))
    return doc


@settings(max_examples=400, deadline=None)
@given(doc=message_like(), direction=st.sampled_from(["up", "down"]))
def test_random_documents_only_ever_raise_decode_error(doc: dict[str, Any], direction: str) -> None:
    payload = json.dumps(doc).encode()
    try:
        message = CODEC.decode(FEATURE.name, direction, payload)  # type: ignore[arg-type]
    except DecodeError:
        return
    # whatever decodes re-encodes to valid JSON of the same type
    assert json.loads(CODEC.encode(message))["type"] == doc["type"]


@settings(max_examples=400, deadline=None)
@given(payload=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_random_bytes_and_json_only_ever_raise_decode_error(payload: bytes) -> None:
    for direction in ("up", "down"):
        with contextlib.suppress(DecodeError):
            CODEC.decode("log_level", direction, payload)
