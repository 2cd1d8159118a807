"""MQTT topic filters: the §4.7 table, validation messages, shared subscriptions, the index."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfsm.adapters.mqtt.topic_filter import (
    FilterIndex,
    compile_filter,
    matches,
    split_shared,
    validate_filter,
    validate_topic,
)

MATCH_TABLE = [
    # exact
    ("a/b", "a/b", True),
    ("a/b", "a/b/c", False),
    ("a/b", "a", False),
    ("a/b", "A/b", False),
    # single level
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/tennis/+", "sport/tennis", False),
    ("sport/tennis/+", "sport/tennis/", True),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+", "finance", True),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a//c", True),
    ("a/+/c", "a/b/d", False),
    # multi level
    ("sport/#", "sport", True),
    ("sport/#", "sport/", True),
    ("sport/#", "sport/tennis/player1", True),
    ("sport/#", "sports", False),
    ("sport/tennis/#", "sport/tennis", True),
    ("sport/tennis/#", "sport", False),
    ("#", "a", True),
    ("#", "a/b/c", True),
    ("#", "/", True),
    ("/#", "/a", True),
    ("/#", "a", False),
    ("+/#", "a", True),
    ("+/#", "a/b/c", True),
    ("a/+/#", "a", False),
    ("a/+/#", "a/b", True),
    ("a/+/#", "a/b/c/d", True),
    # empty levels are levels
    ("a//b", "a//b", True),
    ("a//b", "a/b", False),
    ("a/", "a/", True),
    ("a/", "a", False),
    # the $ rule
    ("#", "$SYS/broker", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("+", "$ota", False),
    ("+/#", "$ota/report/P/D", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$ota/report/+/+", "$ota/report/P/D", True),
    ("$ota/report/+/+", "$ota/update/P/D", False),
    ("$ota/#", "$ota", True),
    ("a/+", "a/$x", True),
    ("a/#", "a/$x/y", True),
    # shared subscriptions match like their inner filter
    ("$share/g/$ota/report/+/+", "$ota/report/P/D", True),
    ("$share/g/sport/#", "sport", True),
    ("$share/g/#", "$SYS/x", False),
    ("$share/g/a/b", "a/c", False),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCH_TABLE)
def test_matches_table(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected
    assert compile_filter(topic_filter)(topic) is expected


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCH_TABLE)
def test_index_agrees_with_table(topic_filter: str, topic: str, expected: bool) -> None:
    index: FilterIndex[str, int] = FilterIndex()
    index.set(split_shared(topic_filter)[1], "k", 1)
    assert (index.match(topic) == [("k", 1)]) is expected


@pytest.mark.parametrize(
    "topic_filter",
    [
        "a",
        "a/b",
        "/",
        "//",
        "a//b",
        "+",
        "#",
        "+/+/#",
        "/#",
        "$SYS/#",
        "a/+/c",
        "$share/g/a/#",
        "$share/grp/+",
        "$share",
        "$sharefoo/x",
        "ünïcode/+",
    ],
)
def test_valid_filters(topic_filter: str) -> None:
    validate_filter(topic_filter)


@pytest.mark.parametrize(
    ("topic_filter", "complaint"),
    [
        ("", "empty"),
        ("a/b\x00", "NUL"),
        ("a+", "whole level"),
        ("a/+b/c", "whole level"),
        ("a/b+", "whole level"),
        ("a/#/b", "last level"),
        ("a#", "last level"),
        ("a/b#", "last level"),
        ("#/", "last level"),
        ("$share/g", "$share/{group}/{filter}"),
        ("$share/g/", "$share/{group}/{filter}"),
        ("$share//a", "$share/{group}/{filter}"),
        ("$share/g+/a", "group name"),
        ("$share/g/a+", "whole level"),
        ("x" * 70000, "bytes"),
    ],
)
def test_invalid_filters_say_what_is_wrong(topic_filter: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace("$", r"\$").replace("{", r"\{")):
        validate_filter(topic_filter)


@pytest.mark.parametrize("topic", ["a", "/", "a//b", "$ota/report/P/D", " ", "ü" * 100])
def test_valid_topics(topic: str) -> None:
    validate_topic(topic)


@pytest.mark.parametrize(
    ("topic", "complaint"),
    [
        ("", "empty"),
        ("a/+", "wildcard"),
        ("a/#", "wildcard"),
        ("a+b", "wildcard"),
        ("a\x00", "NUL"),
        ("ü" * 40000, "bytes"),
    ],
)
def test_invalid_topics(topic: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        validate_topic(topic)


def test_split_shared() -> None:
    assert split_shared("a/b") == (None, "a/b")
    assert split_shared("$share/g/a/+") == ("g", "a/+")
    assert split_shared("$share/g/$ota/report/+/+") == ("g", "$ota/report/+/+")
    assert split_shared("$share") == (None, "$share")
    with pytest.raises(ValueError, match="group"):
        split_shared("$share/g#/a")


def test_compile_rejects_invalid_filter() -> None:
    with pytest.raises(ValueError, match="whole level"):
        compile_filter("a/b+")


def test_index_replaces_per_key_and_filter() -> None:
    index: FilterIndex[str, int] = FilterIndex()
    index.set("a/+", "k", 0)
    index.set("a/+", "k", 1)
    index.set("a/+", "j", 0)
    index.set("a/b", "k", 0)
    assert sorted(index.match("a/b")) == [("j", 0), ("k", 0), ("k", 1)]
    assert index.get("a/+", "k") == 1
    assert index.get("a/+", "nobody") is None
    assert index.get("x/y", "k") is None


def test_index_discard_prunes() -> None:
    index: FilterIndex[str, int] = FilterIndex()
    assert not index
    index.set("a/b/c", "k", 0)
    index.set("a/#", "k", 0)
    index.discard("a/b/c", "k")
    index.discard("a/b/c", "k")  # twice is fine
    index.discard("no/such/filter", "k")
    assert index.match("a/b/c") == [("k", 0)]
    index.discard("a/#", "k")
    assert not index
    assert index.match("a/b/c") == []


def test_index_refuses_shared_filters() -> None:
    index: FilterIndex[str, int] = FilterIndex()
    with pytest.raises(ValueError, match="split_shared"):
        index.set("$share/g/a", "k", 0)


def test_index_dollar_rule() -> None:
    index: FilterIndex[str, str] = FilterIndex()
    for topic_filter in ["#", "+/report/P/D", "$ota/#", "$ota/report/+/+", "$ota/report/P/D"]:
        index.set(topic_filter, topic_filter, topic_filter)
    found = sorted(key for key, _ in index.match("$ota/report/P/D"))
    assert found == ["$ota/#", "$ota/report/+/+", "$ota/report/P/D"]


# Property test against a plain reading of the spec ----------------------------------------------


def reference_matches(topic_filter: str, topic: str) -> bool:
    """§4.7 read literally, level by level, with no attempt at speed."""
    if topic_filter[0] in "+#" and topic.startswith("$"):
        return False
    want, have = topic_filter.split("/"), topic.split("/")

    def walk(i: int, j: int) -> bool:
        if i == len(want):
            return j == len(have)
        if want[i] == "#":
            return True
        if j == len(have):
            return False
        return want[i] in ("+", have[j]) and walk(i + 1, j + 1)

    return walk(0, 0)


topic_levels = st.sampled_from(["a", "b", "", "$a", "$", "ab"])
topics = st.lists(topic_levels, min_size=1, max_size=5).map("/".join).filter(bool)
filter_levels = st.sampled_from(["a", "b", "", "+", "$a", "$"])
filters = st.builds(
    lambda levels, tail: "/".join(levels + (["#"] if tail else [])),
    st.lists(filter_levels, min_size=0, max_size=5),
    st.booleans(),
).filter(bool)


@given(filters, topics)
def test_matches_agrees_with_reference(topic_filter: str, topic: str) -> None:
    assert matches(topic_filter, topic) == reference_matches(topic_filter, topic)
    assert matches(f"$share/g/{topic_filter}", topic) == reference_matches(topic_filter, topic)


@given(st.lists(filters, max_size=8), topics)
def test_index_agrees_with_reference(all_filters: list[str], topic: str) -> None:
    index: FilterIndex[str, None] = FilterIndex()
    for topic_filter in all_filters:
        index.set(topic_filter, topic_filter, None)
    found = sorted(key for key, _ in index.match(topic))
    assert found == sorted({f for f in all_filters if reference_matches(f, topic)})


@given(st.lists(filters, max_size=8), st.data())
def test_index_discard_keeps_the_rest(all_filters: list[str], data: st.DataObject) -> None:
    index: FilterIndex[str, None] = FilterIndex()
    for topic_filter in all_filters:
        index.set(topic_filter, topic_filter, None)
    gone = set(data.draw(st.lists(st.sampled_from(all_filters))) if all_filters else [])
    for topic_filter in gone:
        index.discard(topic_filter, topic_filter)
    topic = data.draw(topics)
    kept = {f for f in all_filters if f not in gone}
    assert sorted(k for k, _ in index.match(topic)) == sorted(
        f for f in kept if reference_matches(f, topic)
    )
    if not kept:
        assert not index
