"""The codec's fast paths (orjson parsing, generated structuring, plain emission) against its
general ones: each fast path may decline, but what it produces is exactly what the general path
produces, on random and hostile input. `tests/test_codec.py` and
`tests/test_reliability_codec.py` pin the codec's rules; this pins that the fast paths keep them.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from test_reliability_codec import EXAMPLES, VALID, doc_of, json_value, mutated

from iotfsm.adapters.codec import Codec, DecodeError, document_problem
from iotfsm.machines import all_features
from iotfsm.machines.messages import Message

CODEC = Codec(all_features())

odd_leaf = st.sampled_from(
    [
        "10", " 10 ", "-5", "+5", "1e3", "0x10", "", "٣", 10, -(2**63), 2**63, 2**64, -(2**63) - 1,
        "9223372036854775808", "-9223372036854775808", True, False, None, 1.5, -0.0, 1e-05,
        {}, [], {"a": 1}, ["x"],
    ]
)  # fmt: skip
"""Values the lenient rules decide on: numeric strings, integers at the 64-bit edges, floats."""


@st.composite
def odd_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with some of its values, at any depth, swapped for an odd one."""
    doc = doc_of(draw(st.sampled_from(sorted(VALID))))

    def swap(node: dict[str, Any]) -> None:
        for key in list(node):
            if key == "type":
                continue
            if isinstance(node[key], dict) and draw(st.booleans()):
                swap(node[key])
            elif draw(st.integers(0, 3)) == 0:
                node[key] = draw(odd_leaf)

    swap(doc)
    return doc


def _message_class(doc: Any) -> type[Message] | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        return None
    for (_, _), types in CODEC._types.items():
        if doc["type"] in types:
            return types[doc["type"]]
    return None


def _check_structuring(doc: dict[str, Any]) -> None:
    cls = _message_class(doc)
    if cls is None:
        return
    fast = CODEC._generator.get(cls)
    assert fast is not None, f"{cls.__name__} has no generated structuring"
    try:
        got = fast(doc)
    except Exception:
        return  # declined: the codec runs the detailed cattrs pass
    expected = CODEC.structure(cls, doc)  # DecodeError here: the fast path took too much
    assert got == expected and got.extra == expected.extra


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(doc=odd_documents())
def test_generated_structuring_takes_only_what_cattrs_takes(doc: dict[str, Any]) -> None:
    _check_structuring(doc)


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(case=mutated())
def test_generated_structuring_on_mutated_documents(case: tuple[str, str, bytes]) -> None:
    _check_structuring(json.loads(case[2]))


def _reference(payload: bytes) -> Any:
    doc = CODEC._parse(("ota",), "up", payload)
    problem = document_problem(doc)
    if problem is not None:
        raise DecodeError(f"ota up: refused, {problem}")
    return doc


def _outcome(load: Any, payload: bytes) -> tuple[str, str]:
    try:
        return "ok", repr(load(payload))  # repr: key order, -0.0 and int vs float all count
    except DecodeError as exc:
        return "refused", str(exc)


surrogate_text = st.text(
    alphabet=st.characters(codec=None, categories=["Cs", "Ll", "Nd", "Cc"]), max_size=6
)
payloads = st.one_of(
    st.builds(lambda v, a: json.dumps(v, ensure_ascii=a).encode(), json_value, st.booleans()),
    st.builds(lambda t: json.dumps({"type": t}).encode(), surrogate_text),
    st.builds(lambda d: json.dumps(d).encode(), odd_documents()),
    st.builds(lambda n: b"[" * n + b"]" * n, st.integers(0, 1100)),
    st.binary(max_size=60),
    st.sampled_from([b"NaN", b"[1e400]", b"-0", b'{"a":1,"a":2}', b"\xef\xbb\xbf{}", b" {} "]),
)


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(payload=payloads)
def test_orjson_reads_exactly_what_json_reads(payload: bytes) -> None:
    assert _outcome(lambda p: CODEC._load(("ota",), "up", p), payload) == _outcome(
        _reference, payload
    )


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(doc=odd_documents(), value=odd_leaf | json_value, pick=st.integers(0, 20))
def test_plain_emission_writes_the_general_bytes(
    doc: dict[str, Any], value: Any, pick: int
) -> None:
    cls = _message_class(doc)
    try:
        message = CODEC.structure(cls, doc) if cls is not None else None
    except DecodeError:
        return
    if message is None:
        return
    fields = [f.name for f in attrs.fields(type(message)) if f.init and f.name != "extra"]
    if fields and pick < 10:  # a value a machine should never put there, typed or not
        message = attrs.evolve(message, **{fields[pick % len(fields)]: value})
    plain = CODEC._encode_plain(message)
    try:
        general = CODEC._encode_general(message)
    except Exception:  # the general path cannot write it either: the plain one must not have
        assert plain is None
        return
    assert plain is None or plain == general
