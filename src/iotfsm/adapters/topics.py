"""Concrete topics: format them for a session, parse them back into (feature, direction, device).

Every feature topic is `<prefix>/{product}/{device}`, so parsing is one `rsplit` and a dict lookup,
whatever the number of features. A feature may add one level after the device (RRPC's
`/{process_id}`); such topics are looked up only when the fast path finds no prefix, so they cost
the other features nothing. A feature may use one direction only (broadcast is down only).
Seed 004's 64-byte limit bounds the prefix and separators
(checked once per template); a concrete topic may reach 128 bytes (`limits`). Names are checked
here because they come from the network: a topic naming a malformed product or device is refused
before any session is touched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ..machines.feature import DeviceKey, Direction, Feature, Role, inbound_direction
from .limits import MAX_TOPIC_BYTES, MAX_TOPIC_NAME_BYTES

DEVICE_NAME = re.compile(r"[A-Za-z0-9:_-]{1,48}")
PRODUCT_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_SUFFIX = "/{product}/{device}"
_KEY_TAIL = re.compile(f"{PRODUCT_ID.pattern}/{DEVICE_NAME.pattern}")
SUFFIX_VALUE = re.compile(r"[A-Za-z0-9_-]{1,16}")
"""A topic's value after the device: RRPC's processId (Tencent's C SDK keeps 16 bytes of it,
`MAX_RRPC_PROCESS_ID_LEN`)."""


class TopicError(ValueError):
    """A topic or name that this library will not publish to or accept messages from."""


def check_key(key: DeviceKey) -> DeviceKey:
    """Raise TopicError unless product id and device name are valid Tencent names."""
    if not PRODUCT_ID.fullmatch(key.product):
        raise TopicError(f"product id {key.product!r} must be 1-32 letters or digits")
    if not DEVICE_NAME.fullmatch(key.device):
        raise TopicError(
            f"device name {key.device!r} must be 1-48 letters, digits, ':', '_' or '-'"
        )
    return key


class Route(NamedTuple):
    """Where an inbound topic leads. A tuple: one is made per message, and a frozen attrs class
    costs about three times as much to build."""

    features: tuple[Feature, ...]
    """Usually one; features that share a topic pair (resource upload and download) are told
    apart by the message type, which the codec does."""
    direction: Direction
    key: DeviceKey
    suffix: str = ""
    """The value after the device on a suffixed feature's topic (an RRPC processId), else ""."""


_tuple = tuple.__new__


class Topics:
    def __init__(self, features: Iterable[Feature]) -> None:
        self._by_prefix: dict[str, tuple[tuple[Feature, ...], Direction]] = {}
        self._suffixed: dict[str, tuple[tuple[Feature, ...], Direction]] = {}
        """Prefixes of topics with one level after the device; looked up only on a miss."""
        self._prefix: dict[tuple[str, Direction], str] = {}
        for feature in features:
            for direction in ("up", "down"):
                template = feature.topic_template(direction)
                if not template:
                    continue  # a direction the feature does not use
                prefix, suffixed = _split(feature, template)
                name_bytes = len(prefix.encode()) + 2 + 17 * suffixed  # separators, suffix
                if name_bytes > MAX_TOPIC_NAME_BYTES:
                    raise ValueError(
                        f"{feature.name!r}: topic template {template!r} is {name_bytes} bytes "
                        f"without product id and device name; Tencent allows "
                        f"{MAX_TOPIC_NAME_BYTES}"
                    )
                table = self._suffixed if suffixed else self._by_prefix
                sharing, known_direction = table.get(prefix, ((), direction))
                if known_direction != direction:
                    raise ValueError(f"topic prefix {prefix!r} is both an up and a down topic")
                table[prefix] = ((*sharing, feature), direction)
                self._prefix[(feature.name, direction)] = prefix
        self._suffix_features = {f.name for found, _ in self._suffixed.values() for f in found}

    def parse(self, topic: str) -> Route:
        parts = topic.rsplit("/", 2)
        found = self._by_prefix.get(parts[0]) if len(parts) == 3 else None
        if found is None:
            return self._parse_suffixed(topic)
        # the two named tuples built as tuples: their generated `__new__` takes keywords and
        # costs more than the C call, which builds the same objects
        key = _tuple(DeviceKey, parts[1:])
        # one match over `product/device` for the common, valid case; check_key says what is wrong
        if _KEY_TAIL.fullmatch(topic, len(parts[0]) + 1) is None:
            check_key(key)
        return _tuple(Route, (*found, key, ""))

    def _parse_suffixed(self, topic: str) -> Route:
        parts = topic.rsplit("/", 3)
        found = self._suffixed.get(parts[0]) if len(parts) == 4 else None
        if found is None:
            raise TopicError(f"topic {topic!r} belongs to no declared feature")
        key = check_key(DeviceKey(parts[1], parts[2]))
        if not SUFFIX_VALUE.fullmatch(parts[3]):
            raise TopicError(
                f"topic {topic!r}: {parts[3][:40]!r} after the device must be 1-16 letters, "
                "digits, '_' or '-'"
            )
        return Route(found[0], found[1], key, parts[3])

    def suffixed(self, feature: str) -> bool:
        """Whether `feature`'s topics carry a value after the device (RRPC's processId)."""
        return feature in self._suffix_features

    def topic(self, feature: str, direction: Direction, key: DeviceKey, suffix: str = "") -> str:
        topic = f"{self._prefix[(feature, direction)]}/{key.product}/{key.device}"
        if feature in self._suffix_features:
            if not SUFFIX_VALUE.fullmatch(suffix):
                raise TopicError(
                    f"{feature}: {suffix[:40]!r} must be 1-16 letters, digits, '_' or '-'"
                )
            topic = f"{topic}/{suffix}"
        if len(topic.encode()) > MAX_TOPIC_BYTES:
            raise TopicError(
                f"topic {topic!r} is longer than {MAX_TOPIC_BYTES} bytes (a 10-character product "
                "id and a 48-character device name always fit); use a shorter product id"
            )
        return topic

    def filters(
        self,
        role: Role,
        *,
        device: DeviceKey | None = None,
        products: Sequence[str] | None = None,
    ) -> list[str]:
        """What a role subscribes: a device its own down topics; a platform every up topic of
        every product (`+/+`, spelled out because `$` topics never match a leading wildcard),
        or of the chosen products only."""
        direction = inbound_direction(role)
        prefixes = list(
            dict.fromkeys(
                p + ("/+" if f in self._suffix_features else "")
                for (f, d), p in self._prefix.items()
                if d == direction
            )
        )
        if role == "device":
            if device is None:
                raise ValueError("a device subscribes its own topics: give its DeviceKey")
            check_key(device)
            return [_with_key(p, f"{device.product}/{device.device}") for p in prefixes]
        if products is None:
            return [_with_key(p, "+/+") for p in prefixes]
        for product in products:
            check_key(DeviceKey(product, "x"))
        return [_with_key(p, f"{product}/+") for p in prefixes for product in products]


def template_filter(template: str, product: str, device: str) -> str:
    """A feature's topic template for one device (or `+` for either name) as a topic filter:
    the level after the device of a suffixed topic (RRPC's processId) becomes `+`. For broker
    ACLs and allow-lists, which name every topic a device may use."""
    head, _, last = template.rpartition("/")
    if not template.endswith(_SUFFIX) and last.startswith("{") and last.endswith("}"):
        return f"{head.format(product=product, device=device)}/+"
    return template.format(product=product, device=device)


def _with_key(prefix: str, key: str) -> str:
    """`prefix/key`, or `prefix/key/+` for a suffixed prefix (marked by a trailing `/+`)."""
    if prefix.endswith("/+"):
        return f"{prefix[:-2]}/{key}/+"
    return f"{prefix}/{key}"


def _split(feature: Feature, template: str) -> tuple[str, bool]:
    """A template's prefix, and whether one `/{name}` level follows the device."""
    head = template
    suffixed = False
    if template.endswith("}") and not template.endswith(_SUFFIX):
        head, _, last = template.rpartition("/")
        suffixed = last.startswith("{") and "{" not in last[1:]
    plain = template.endswith(_SUFFIX)
    if (not plain and not suffixed) or not head.endswith(_SUFFIX) or "{" in head[: -len(_SUFFIX)]:
        raise ValueError(
            f"{feature.name!r}: topic template {template!r} must end with {_SUFFIX}"
            " (optionally followed by one /{name} level)"
        )
    return head[: -len(_SUFFIX)], suffixed
