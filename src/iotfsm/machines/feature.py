"""A feature is declared once: its topic pair, its messages in each direction, one machine per role.

The device role receives the `down` messages and sends `up`; the platform the reverse. The same
message classes serve both roles, which is what lets one core play either side.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

import attrs

from ..fsm.spec import DeclarationError, MachineSpec
from .messages import Message

Direction = Literal["up", "down"]
Role = Literal["device", "platform"]
ROLES: tuple[Role, ...] = ("device", "platform")


class DeviceKey(NamedTuple):
    """Whose session this is. A tuple so that 100k of them hash and compare at C speed."""

    product: str
    device: str


def inbound_direction(role: Role) -> Direction:
    return "down" if role == "device" else "up"


def outbound_direction(role: Role) -> Direction:
    return "up" if role == "device" else "down"


def _messages(messages: Iterable[type[Message]]) -> tuple[type[Message], ...]:
    return tuple(messages)


@attrs.frozen(eq=False)
class Feature:
    name: str
    up_topic: str
    """Template with `{product}` and `{device}`, e.g. `$log/operation/{product}/{device}`; one
    more level after `{device}` carries a per-message value (RRPC's `/{process_id}`). "" for a
    direction the feature does not use (broadcast is down only): it then has no messages."""
    down_topic: str
    up: tuple[type[Message], ...] = attrs.field(converter=_messages)
    down: tuple[type[Message], ...] = attrs.field(converter=_messages)
    device: MachineSpec[Any]
    platform: MachineSpec[Any]
    doc: str = ""

    def __attrs_post_init__(self) -> None:
        roles: tuple[tuple[Role, MachineSpec[Any], tuple[type[Message], ...]], ...] = (
            ("device", self.device, self.down),
            ("platform", self.platform, self.up),
        )
        for role, spec, expected in roles:
            if set(spec.inbound) != set(expected):
                raise DeclarationError(
                    f"feature {self.name!r}: the {role} machine must declare inbound={expected}"
                    f" (the {inbound_direction(role)} messages), got {spec.inbound}"
                )
        sides: tuple[tuple[Direction, tuple[type[Message], ...]], ...] = (
            ("up", self.up),
            ("down", self.down),
        )
        for direction, messages in sides:
            if not self.topic_template(direction) and messages:
                raise DeclarationError(
                    f"feature {self.name!r}: {direction} messages need a {direction} topic"
                )
            types = [m.TYPE for m in messages]
            if len(set(types)) != len(types) or not all(types):
                raise DeclarationError(
                    f"feature {self.name!r}: {direction} message types must be non-empty and"
                    f" unique, got {types}"
                )

    def spec(self, role: Role) -> MachineSpec[Any]:
        return self.device if role == "device" else self.platform

    def topic_template(self, direction: Direction) -> str:
        return self.up_topic if direction == "up" else self.down_topic

    def messages(self, direction: Direction) -> tuple[type[Message], ...]:
        return self.up if direction == "up" else self.down
