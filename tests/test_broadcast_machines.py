"""The broadcast machines stepped by hand, and the broadcast codec: raw bytes both ways."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfsm.adapters.codec import Codec, DecodeError
from iotfsm.adapters.limits import MAX_PAYLOAD_BYTES
from iotfsm.adapters.topics import TopicError, Topics
from iotfsm.fsm import Connected, Disconnected, Publish, Stepper
from iotfsm.machines import all_features
from iotfsm.machines.broadcast import (
    DEVICE,
    FEATURE,
    PLATFORM,
    Broadcast,
    DeliverBroadcast,
    SendBroadcast,
)
from iotfsm.machines.feature import DeviceKey

KEY = DeviceKey("P1", "dev-1")


def test_device_hands_every_broadcast_to_the_application() -> None:
    s = Stepper(DEVICE, key=KEY)
    assert s.state == "offline"
    assert s.step(Connected()) == []
    assert s.state == "listening"
    assert s.step(Broadcast(payload=b'{"cmd":"off"}')) == [DeliverBroadcast(b'{"cmd":"off"}')]
    assert s.step(Broadcast(payload=b"\x00binary")) == [DeliverBroadcast(b"\x00binary")]
    assert (s.state, s.ctx.received) == ("listening", 2)
    assert s.step(Disconnected()) == []
    assert s.state == "offline"


def test_platform_publishes_each_broadcast_at_qos_0() -> None:
    s = Stepper(PLATFORM, key=KEY)
    assert s.step(SendBroadcast(b"hello")) == [Publish(Broadcast(payload=b"hello"), 0)]
    assert s.step(SendBroadcast(b"again")) == [Publish(Broadcast(payload=b"again"), 0)]
    assert (s.state, s.ctx.sent) == ("ready", 2)


def test_the_feature_is_down_only_and_its_topic_parses() -> None:
    topics = Topics(all_features())
    route = topics.parse("$broadcast/rxd/S3EUVBRJLB/airConditioner1")
    assert (route.features, route.direction, route.key) == (
        (FEATURE,),
        "down",
        DeviceKey("S3EUVBRJLB", "airConditioner1"),
    )
    assert "$broadcast/rxd/P1/dev-1" in topics.filters("device", device=KEY)
    assert not any(f.startswith("$broadcast") for f in topics.filters("platform"))
    with pytest.raises(TopicError):
        topics.parse("$broadcast/txd/P1/dev-1")
    with pytest.raises(KeyError):
        topics.topic("broadcast", "up", KEY)


CODEC = Codec(all_features())


def test_seed_and_sdk_payloads_decode_as_they_are() -> None:
    """Seed 004 gives no payload form (the server's API takes any `Payload`); Tencent's C SDK hands
    the bytes to the application as they came, JSON or not."""
    for payload in (b'{"action":"turn_off"}', b"turn off", b"", "空调关机".encode()):
        assert CODEC.decode("broadcast", "down", payload) == Broadcast(payload=payload)


def test_an_oversized_broadcast_is_refused_both_ways() -> None:
    big = b"x" * (MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(DecodeError, match="exceed"):
        CODEC.decode("broadcast", "down", big)
    with pytest.raises(ValueError, match="MQTT limit"):
        CODEC.encode(Broadcast(payload=big))


@given(st.binary(max_size=MAX_PAYLOAD_BYTES))
def test_any_payload_round_trips(payload: bytes) -> None:
    message = Broadcast(payload=payload)
    assert CODEC.encode(message) == payload
    assert CODEC.decode("broadcast", "down", CODEC.encode(message)) == message
