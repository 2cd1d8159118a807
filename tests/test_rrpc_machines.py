"""The RRPC machines stepped by hand (manual clock, exact effects), the RRPC topics and codec:
raw bytes both ways, the processId in the topic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfsm.adapters.codec import Codec, DecodeError
from iotfsm.adapters.limits import MAX_PAYLOAD_BYTES
from iotfsm.adapters.topics import SUFFIX_VALUE, TopicError, Topics
from iotfsm.fsm import CancelTimer, Disconnected, Log, Publish, SetTimer, Stepper
from iotfsm.machines import all_features
from iotfsm.machines.feature import DeviceKey, Direction
from iotfsm.machines.rrpc import (
    DEVICE,
    FORGET_AFTER,
    MAX_OPEN,
    PLATFORM,
    AnswerRrpc,
    CallDevice,
    DeviceContext,
    HandleRrpc,
    ReplyDropped,
    RrpcAnswered,
    RrpcReply,
    RrpcRequest,
    RrpcTimedOut,
    is_process_id,
)

KEY = DeviceKey("P1", "dev-1")
CODEC = Codec(all_features())
TOPICS = Topics(all_features())


# ---- platform -------------------------------------------------------------------------------


def test_platform_publishes_each_call_with_the_next_process_id_and_matches_the_answer() -> None:
    s = Stepper(PLATFORM, key=KEY, start=100.0)
    assert s.step(CallDevice("c1", b"uptime", 5.0)) == [
        Publish(RrpcRequest(payload=b"uptime", process_id="1"), 0),
        SetTimer("deadline", 5.0, 1),
    ]
    assert s.state == "waiting"
    s.clock.advance(1.0)
    assert s.step(CallDevice("c2", b"disk", 10.0)) == [
        Publish(RrpcRequest(payload=b"disk", process_id="2"), 0),
        SetTimer("deadline", 4.0, 2),  # still the earliest deadline: call 1's, at 105
    ]
    # answers in any order, each to its own call
    assert s.step(RrpcReply(payload=b"12 GB", process_id="2")) == [
        RrpcAnswered("c2", "2", b"12 GB")
    ]
    assert s.state == "waiting"
    assert s.step(RrpcReply(payload=b"up 3 days", process_id="1")) == [
        CancelTimer("deadline"),
        RrpcAnswered("c1", "1", b"up 3 days"),
    ]
    assert s.state == "idle" and s.ctx.pending == {} and s.ctx.answered == 2


def test_platform_drops_late_duplicate_unknown_and_malformed_answers_changing_nothing() -> None:
    s = Stepper(PLATFORM, key=KEY, start=100.0)
    s.step(CallDevice("c1", b"a", 5.0))
    s.step(RrpcReply(payload=b"ok", process_id="1"))
    s.step(CallDevice("c2", b"b", 5.0))
    before = (s.state, repr(s.ctx), dict(s.session.timers or {}))
    assert s.step(RrpcReply(payload=b"again", process_id="1")) == [ReplyDropped("1", "late")]
    assert s.step(RrpcReply(payload=b"?", process_id="3")) == [ReplyDropped("3", "unknown")]
    assert s.step(RrpcReply(payload=b"?", process_id="x-2")) == [ReplyDropped("x-2", "malformed")]
    assert s.step(RrpcReply(payload=b"?", process_id="02")) == [ReplyDropped("02", "malformed")]
    assert (s.state, repr(s.ctx), dict(s.session.timers or {})) == before
    # and with nothing in flight
    s.step(RrpcReply(payload=b"ok", process_id="2"))
    assert s.state == "idle"
    assert s.step(RrpcReply(payload=b"late", process_id="2")) == [ReplyDropped("2", "late")]


def test_platform_times_calls_out_one_deadline_at_a_time() -> None:
    s = Stepper(PLATFORM, key=KEY, start=100.0)
    s.step(CallDevice("c1", b"a", 5.0))  # due 105
    s.step(CallDevice("c2", b"b", 5.0))  # due 105
    s.step(CallDevice("c3", b"c", 8.0))  # due 108
    assert s.advance(4.9) == []
    assert s.advance(0.1) == [
        RrpcTimedOut("c1", "1"),
        RrpcTimedOut("c2", "2"),
        SetTimer("deadline", 3.0, 4),
    ]
    assert s.state == "waiting" and list(s.ctx.pending) == ["3"]
    # the timer that fired is no longer armed: nothing to cancel as the state is left
    assert s.advance(3.0) == [RrpcTimedOut("c3", "3")]
    assert s.state == "idle" and s.ctx.timed_out == 3
    # an answer after its deadline is late
    assert s.step(RrpcReply(payload=b"x", process_id="3")) == [ReplyDropped("3", "late")]


def test_platform_timer_of_an_answered_call_re_arms_for_the_next() -> None:
    s = Stepper(PLATFORM, key=KEY, start=0.0)
    s.step(CallDevice("c1", b"a", 2.0))  # due 2
    s.step(CallDevice("c2", b"b", 6.0))  # due 6
    s.step(RrpcReply(payload=b"ok", process_id="1"))
    assert s.advance(2.0) == [SetTimer("deadline", 4.0, 3)]  # nothing due: wait for call 2
    assert s.advance(4.0) == [RrpcTimedOut("c2", "2")]


# ---- device ---------------------------------------------------------------------------------


def test_device_hands_each_request_over_and_answers_on_its_process_id() -> None:
    s = Stepper(DEVICE, key=KEY, start=10.0)
    assert s.step(RrpcRequest(payload=b"uptime", process_id="469")) == [
        HandleRrpc("469", b"uptime"),
        SetTimer("forget", FORGET_AFTER, 1),
    ]
    assert s.state == "answering"
    assert s.step(RrpcRequest(payload=b"disk", process_id="470")) == [
        HandleRrpc("470", b"disk"),
        SetTimer("forget", FORGET_AFTER, 2),
    ]
    assert s.step(AnswerRrpc("470", b"12 GB")) == [
        Publish(RrpcReply(payload=b"12 GB", process_id="470"), 0)
    ]
    assert s.step(AnswerRrpc("469", b"ok")) == [
        CancelTimer("forget"),
        Publish(RrpcReply(payload=b"ok", process_id="469"), 0),
    ]
    assert s.state == "idle" and s.ctx.answered == 2 and s.ctx.recent == ["470", "469"]


def test_device_refuses_duplicates_malformed_ids_and_late_answers_changing_nothing() -> None:
    s = Stepper(DEVICE, key=KEY, start=10.0)
    assert s.step(RrpcRequest(payload=b"a", process_id="-1")) == [
        Log.warning("refused an RRPC request: processId '-1'")
    ]
    assert (s.state, s.ctx) == ("idle", DeviceContext())
    s.step(RrpcRequest(payload=b"a", process_id="5"))
    before = (s.state, repr(s.ctx))
    assert s.step(RrpcRequest(payload=b"a", process_id="5")) == [
        Log.info("dropped a duplicate RRPC request 5")
    ]
    for bad in ("abc", "0", "05", "12345678901234567"):
        (effect,) = s.step(RrpcRequest(payload=b"a", process_id=bad))
        assert isinstance(effect, Log) and "refused an RRPC request" in effect.text
    (late,) = s.step(AnswerRrpc("6", b"x"))
    assert isinstance(late, Log) and "no such request is open" in late.text
    assert (s.state, repr(s.ctx)) == before
    s.step(AnswerRrpc("5", b"ok"))
    # answered: a redelivered request is still a duplicate, a second answer is dropped
    assert s.step(RrpcRequest(payload=b"a", process_id="5"))[0].text.startswith("dropped")  # type: ignore[attr-defined]
    assert isinstance(s.step(AnswerRrpc("5", b"again"))[0], Log)
    assert s.state == "idle"


def test_device_refuses_a_request_beyond_max_open() -> None:
    s = Stepper(DEVICE, key=KEY)
    for n in range(1, MAX_OPEN + 1):
        s.step(RrpcRequest(payload=b"a", process_id=str(n)))
    before = repr(s.ctx)
    [effect] = s.step(RrpcRequest(payload=b"a", process_id="1000"))
    assert effect == Log.warning(f"refused RRPC request 1000: {MAX_OPEN} requests are open")
    assert repr(s.ctx) == before


def test_device_forgets_unanswered_requests_and_drops_them_on_disconnect() -> None:
    s = Stepper(DEVICE, key=KEY, start=0.0)
    s.step(RrpcRequest(payload=b"a", process_id="1"))
    s.clock.advance(10.0)
    s.step(RrpcRequest(payload=b"b", process_id="2"))
    assert s.advance(FORGET_AFTER - 10.0) == [
        Log.info("forgot unanswered RRPC requests ['1']"),
        SetTimer("forget", 10.0, 3),
    ]
    assert s.advance(10.0) == [Log.info("forgot unanswered RRPC requests ['2']")]
    assert s.state == "idle"
    assert isinstance(s.step(AnswerRrpc("1", b"too late"))[0], Log)
    s.step(RrpcRequest(payload=b"c", process_id="3"))
    assert s.step(Disconnected()) == [
        CancelTimer("forget"),
        Log.info("connection lost: RRPC requests ['3'] go unanswered"),
    ]
    assert s.state == "idle" and s.ctx.open == {}


def test_device_remembers_a_bounded_number_of_closed_requests() -> None:
    s = Stepper(DEVICE, key=KEY)
    for n in range(1, 100):
        s.step(RrpcRequest(payload=b"a", process_id=str(n)))
        s.step(AnswerRrpc(str(n), b"ok"))
    assert len(s.ctx.recent) == 32 and s.ctx.recent[-1] == "99"
    assert isinstance(DeviceContext().recent, list)


# ---- topics and codec -----------------------------------------------------------------------


def test_rrpc_topics_carry_the_process_id() -> None:
    route = TOPICS.parse("$rrpc/rxd/KL4J2K3JZ8/airConditioner1/469")  # seed 004's sample
    assert (route.features[0].name, route.direction, route.key, route.suffix) == (
        "rrpc",
        "down",
        DeviceKey("KL4J2K3JZ8", "airConditioner1"),
        "469",
    )
    up = TOPICS.parse("$rrpc/txd/KL4J2K3JZ8/airConditioner1/469")
    assert (up.direction, up.suffix) == ("up", "469")
    assert TOPICS.topic("rrpc", "up", KEY, "7") == "$rrpc/txd/P1/dev-1/7"
    assert "$rrpc/rxd/P1/dev-1/+" in TOPICS.filters("device", device=KEY)
    assert "$rrpc/txd/+/+/+" in TOPICS.filters("platform")
    for bad in (
        "$rrpc/rxd/P1/dev-1",  # no processId
        "$rrpc/rxd/P1/dev-1/1/2",  # two levels after the device
        "$rrpc/rxd/P1/dev-1/" + "1" * 17,  # longer than the C SDK keeps
        "$rrpc/rxd/P1/dev-1/a.b",
        "$rrpc/rxd/P-1/dev-1/1",  # not a product id
    ):
        with pytest.raises(TopicError):
            TOPICS.parse(bad)
    with pytest.raises(TopicError):
        TOPICS.topic("rrpc", "down", KEY, "")


def test_seed_004_rrpc_examples_decode() -> None:
    """The C SDK sample of seed 004's RRPC section: request `closed`, answer `ok`."""
    request = CODEC.decode("rrpc", "down", b"closed")
    assert request == RrpcRequest(payload=b"closed")
    assert CODEC.decode("rrpc", "up", b"ok") == RrpcReply(payload=b"ok")
    assert CODEC.encode(RrpcReply(payload=b"ok", process_id="469")) == b"ok"
    # the payload is the application's: JSON or not, it is not parsed
    assert CODEC.decode("rrpc", "down", b'{"cmd":').payload == b'{"cmd":'  # type: ignore[attr-defined]


def test_an_oversized_rrpc_payload_is_refused_both_ways() -> None:
    big = b"x" * (MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(DecodeError, match="exceed"):
        CODEC.decode("rrpc", "up", big)
    with pytest.raises(ValueError, match="MQTT limit"):
        CODEC.encode(RrpcRequest(payload=big, process_id="1"))


@given(st.binary(max_size=MAX_PAYLOAD_BYTES), st.from_regex(SUFFIX_VALUE, fullmatch=True))
def test_rrpc_messages_round_trip_through_topic_and_codec(payload: bytes, process_id: str) -> None:
    pairs: tuple[tuple[type[RrpcRequest | RrpcReply], Direction], ...] = (
        (RrpcRequest, "down"),
        (RrpcReply, "up"),
    )
    for cls, direction in pairs:
        message = cls(payload=payload, process_id=process_id)
        topic = TOPICS.topic("rrpc", direction, KEY, message.process_id)
        route = TOPICS.parse(topic)
        decoded = CODEC.decode("rrpc", direction, CODEC.encode(message))
        assert cls(payload=decoded.payload, process_id=route.suffix) == message  # type: ignore[attr-defined]
        assert route.key == KEY


@given(st.text(max_size=20))
def test_process_ids_are_decimal_numbers_only(text: str) -> None:
    assert is_process_id(text) == (
        text.isascii() and text.isdigit() and not text.startswith("0") and len(text) <= 16
    )
