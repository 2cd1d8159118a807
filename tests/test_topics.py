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
    with pytest.raises(TopicError, match="longer than 64 bytes"):
        TOPICS.topic("log_level", "down", DeviceKey("ABCDEFGHIJ", "d" * 40))


def test_filters_per_role() -> None:
    device = TOPICS.filters("device", device=DeviceKey("P1", "d1"))
    assert device == ["$log/operation/result/P1/d1", "$ota/update/P1/d1"]
    assert TOPICS.filters("platform") == ["$log/operation/+/+", "$ota/report/+/+"]
    assert TOPICS.filters("platform", products=["P1", "P2"]) == [
        "$log/operation/P1/+",
        "$log/operation/P2/+",
        "$ota/report/P1/+",
        "$ota/report/P2/+",
    ]
    with pytest.raises(TopicError):
        TOPICS.filters("platform", products=["bad/+"])
