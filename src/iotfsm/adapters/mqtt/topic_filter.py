"""MQTT 3.1.1 topic names and filters (§4.7), apart from any broker so they can be tested alone.

Matching is on the hot path: with 100k devices every publish meets every subscription. So a filter
is parsed once, either into a small matcher (`compile_filter`) or into a trie keyed by topic level
(`FilterIndex`), where finding the subscribers of a topic costs the topic's depth, not the number
of subscriptions.

Shared subscriptions (`$share/{group}/{filter}`, MQTT 5, also accepted by Tencent's broker) are
parsed here too; which member of a group gets a message is the broker's business.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

SHARE_PREFIX = "$share/"
_MAX_BYTES = 65535  # an MQTT UTF-8 string carries a 16-bit length


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """`$share/g/a/+` -> ("g", "a/+"); a plain filter -> (None, filter).

    The group must be non-empty and free of `/`, `+` and `#`, and the filter after it non-empty,
    because a broker could not tell the group from the filter otherwise.
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    group, slash, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not group or not slash or not inner:
        raise ValueError(
            f"shared subscription {topic_filter!r} must look like $share/{{group}}/{{filter}}, "
            "with a non-empty group name and a non-empty filter"
        )
    if "+" in group or "#" in group:
        raise ValueError(
            f"shared subscription {topic_filter!r}: the group name {group!r} may not contain "
            "'+' or '#'; pick a plain name such as 'platform'"
        )
    return group, inner


def _check_string(text: str, what: str) -> None:
    if not text:
        raise ValueError(f"an empty {what} is not allowed in MQTT; give at least one character")
    if "\x00" in text:
        raise ValueError(f"{what} {text!r} contains a NUL character, which MQTT forbids")
    if len(text) * 4 > _MAX_BYTES and len(text.encode()) > _MAX_BYTES:
        raise ValueError(f"{what} is {len(text.encode())} bytes in UTF-8; MQTT allows {_MAX_BYTES}")


def validate_filter(topic_filter: str) -> None:
    """Refuse a filter a broker would refuse, with the fix in the message.

    Empty levels are allowed (`a//b`, `/a`), as in MQTT. A `$share/{group}/` prefix is accepted
    and the filter after it is checked.
    """
    _check_string(topic_filter, "topic filter")
    _, inner = split_shared(topic_filter)
    levels = inner.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "+" in level and level != "+":
            raise ValueError(
                f"topic filter {topic_filter!r}: '+' must occupy a whole level, as in 'a/+/b', "
                f"not inside the level {level!r}"
            )
        if "#" in level and (level != "#" or i != last):
            raise ValueError(
                f"topic filter {topic_filter!r}: '#' must be the whole last level, as in 'a/b/#'"
            )


def validate_topic(topic: str) -> None:
    """Refuse a topic name a broker would refuse: the wildcards belong to filters only."""
    _check_string(topic, "topic")
    if "+" in topic or "#" in topic:
        raise ValueError(
            f"topic {topic!r} contains a wildcard ('+' or '#'); wildcards are only allowed in "
            "subscription filters, publish to a concrete topic"
        )


def compile_filter(topic_filter: str) -> Callable[[str], bool]:
    """Parse a filter once into a predicate over topic names.

    The predicate assumes a valid topic (see `validate_topic`) so that it stays a few string
    operations. A shared filter matches what its inner filter matches.
    """
    validate_filter(topic_filter)
    _, inner = split_shared(topic_filter)
    if "+" not in inner and "#" not in inner:
        return inner.__eq__
    if inner == "#":
        return lambda topic: not topic.startswith("$")
    if "+" not in inner:  # `a/b/#`: the parent `a/b` or anything below it
        parent = inner[:-2]
        below = inner[:-1]
        return lambda topic: topic == parent or topic.startswith(below)

    levels = inner.split("/")
    open_ended = levels[-1] == "#"
    if open_ended:
        levels.pop()
    depth = len(levels)
    guard_dollar = inner[0] == "+"

    def match(topic: str) -> bool:
        if guard_dollar and topic.startswith("$"):
            return False
        parts = topic.split("/")
        if (len(parts) < depth) if open_ended else (len(parts) != depth):
            return False
        return all(want in ("+", part) for want, part in zip(levels, parts, strict=False))

    return match


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 §4.7 matching, for one-off checks; loops should compile or index their filters.

    `sport/#` matches `sport`; `+` matches one level, empty ones included; a filter starting with
    a wildcard never matches a topic starting with `$` (so `#` does not see `$ota/...`, while
    `$ota/report/+/+` does).
    """
    return compile_filter(topic_filter)(topic)


class _Node(Generic[K, V]):
    __slots__ = ("children", "entries")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K, V]] = {}
        self.entries: dict[K, V] = {}


class FilterIndex(Generic[K, V]):
    """Values stored under plain (non-shared) filters, one per key and filter, found by topic.

    Filters without wildcards (what devices mostly subscribe) sit in a dict: one lookup per topic.
    The others go in a trie by level, as in mosquitto, where `+` and `#` are children of a node,
    so a topic walks only the branches that can match it.
    """

    def __init__(self) -> None:
        self._exact: dict[str, dict[K, V]] = {}
        self._root: _Node[K, V] = _Node()

    def set(self, topic_filter: str, key: K, value: V) -> None:
        """Store or replace, the way a second SUBSCRIBE to the same filter replaces its QoS."""
        validate_filter(topic_filter)
        if split_shared(topic_filter)[0] is not None:
            raise ValueError(
                f"{topic_filter!r} is a shared subscription; index its inner filter "
                "(see split_shared)"
            )
        if _is_exact(topic_filter):
            self._exact.setdefault(topic_filter, {})[key] = value
            return
        node = self._root
        for level in topic_filter.split("/"):
            node = node.children.setdefault(level, _Node())
        node.entries[key] = value

    def get(self, topic_filter: str, key: K) -> V | None:
        if _is_exact(topic_filter):
            return self._exact.get(topic_filter, {}).get(key)
        node: _Node[K, V] | None = self._root
        for level in topic_filter.split("/"):
            if node is None:
                return None
            node = node.children.get(level)
        return None if node is None else node.entries.get(key)

    def discard(self, topic_filter: str, key: K) -> None:
        """Remove if present, and prune, so that the index only holds live filters."""
        if _is_exact(topic_filter):
            entries = self._exact.get(topic_filter)
            if entries is not None:
                entries.pop(key, None)
                if not entries:
                    del self._exact[topic_filter]
            return
        path: list[tuple[_Node[K, V], str]] = []
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return
            path.append((node, level))
            node = child
        node.entries.pop(key, None)
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.entries or child.children:
                break
            del parent.children[level]

    def match(self, topic: str) -> list[tuple[K, V]]:
        """Every (key, value) whose filter matches `topic`; a key may come once per filter."""
        exact = self._exact.get(topic)
        found: list[tuple[K, V]] = [] if exact is None else list(exact.items())
        if not self._root.children:
            return found
        levels = topic.split("/")
        end = len(levels)
        wild_root = not topic.startswith("$")
        stack: list[tuple[_Node[K, V], int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            wild = i > 0 or wild_root
            if wild and (rest := node.children.get("#")) is not None:
                found.extend(rest.entries.items())
            if i == end:
                found.extend(node.entries.items())
                continue
            if (same := node.children.get(levels[i])) is not None:
                stack.append((same, i + 1))
            if wild and (one := node.children.get("+")) is not None:
                stack.append((one, i + 1))
        return found

    def __bool__(self) -> bool:
        return bool(self._exact) or bool(self._root.children)


def _is_exact(topic_filter: str) -> bool:
    return "+" not in topic_filter and "#" not in topic_filter
