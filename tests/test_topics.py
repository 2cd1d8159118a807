"""Topics: formatting, parsing, limits, subscriptions, and hostile names."""

from __future__ import annotations

import pytest

from iotfsm.adapters.topics import TopicError, Topics
from iotfsm.machines import DeviceKey, all_features
from iotfsm.machines.log_level import FEATURE

TOPICS = Topics(all_features())


def test_format_and_parse_round_trip() -> None:
    key = DeviceKey("S3EUVBRJLB", "test_device")
    up = TOPICS.topic("log_level", "up", key)
    down = TOPICS.topic("log_level", "down", key)
    assert (up, down) == (
        "$log/operation/S3EUVBRJLB/test_device",
        "$log/operation/result/S3EUVBRJLB/test_device",
    )
    route = TOPICS.parse(down)
    assert (route.features, route.direction, route.key) == ((FEATURE,), "down", key)


@pytest.mark.parametrize(
    "topic",
    [
        "$log/operation/P1",
        "$log/other/P1/d1",
        "$log/operation/P1/d1/extra",
        "$log/operation/P-1/d1",
        "$log/operation/P1/../d1",
        "$log/operation/P1/" + "d" * 49,
        "$log/operation/P1/dev ice",
        "$log/operation/P1/dev\x00",
        "",
    ],
)
def test_foreign_or_hostile_topics_are_refused(topic: str) -> None:
    with pytest.raises(TopicError):
        TOPICS.parse(topic)


def test_topic_length_limit() -> None:
    # 64 bytes bound the topic without its names (tests/test_topic_length.py): 48-character
    # device names fit with a 10-character product id
    topic = TOPICS.topic("log_level", "down", DeviceKey("ABCDEFGHIJ", "d" * 48))
    assert len(topic) == len("$log/operation/result/") + 10 + 1 + 48


def test_filters_per_role() -> None:
    # features using a direction, with plain `/{product}/{device}` topics (RRPC's carry a
    # processId after the device: tests/test_rrpc_machines.py)
    plain = [f for f in all_features() if "{process" not in f.up_topic + f.down_topic]
    downs = list(dict.fromkeys(f.down_topic.rsplit("/", 2)[0] for f in plain if f.down_topic))
    ups = list(dict.fromkeys(f.up_topic.rsplit("/", 2)[0] for f in plain if f.up_topic))
    assert "$log/operation/result" in downs and "$resource/down/service" in downs
    # a device subscribes its own concrete down topics, once per topic pair
    device = TOPICS.filters("device", device=DeviceKey("P1", "d1"))
    # (RRPC's, declared last, with `+` for the processId)
    assert device == [*(f"{prefix}/P1/d1" for prefix in downs), "$rrpc/rxd/P1/d1/+"]
    # a platform every product's up topics, spelled out for $ topics, or chosen products only
    assert TOPICS.filters("platform") == [*(f"{prefix}/+/+" for prefix in ups), "$rrpc/txd/+/+/+"]
    assert TOPICS.filters("platform", products=["P1", "P2"]) == [
        *(f"{prefix}/{product}/+" for prefix in ups for product in ("P1", "P2")),
        "$rrpc/txd/P1/+/+",
        "$rrpc/txd/P2/+/+",
    ]
    with pytest.raises(TopicError):
        TOPICS.filters("platform", products=["bad/+"])
