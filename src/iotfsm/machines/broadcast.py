"""Broadcast (seed 004 §1.3.1): one message from the server to every online device of a product.

Down only: `$broadcast/rxd/{product}/{device}`. Tencent's server API (PublishBroadcastMessage)
takes a product id and a `Payload` string and publishes it to the broadcast topic of each online
device subscribed to it; Tencent's C SDK subscribes at QoS 1 and hands the payload to the
application untouched (docs/PROTOCOL-notes.md, "Broadcast"). So the payload is the server's own
bytes, not a `type`-tagged document.

The platform here publishes at QoS 0 to each registered device of the product: a device that is
online gets it once, one that is offline never does (QoS 0 is not queued for it), which is what
"online devices" means on Tencent's side too. Each device's session counts what it sent.
The device hands every broadcast to the application (`DeliverBroadcast`).
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from ..fsm import ANY_STATE, Effect, Event, MachineSpec, On, Publish, State
from .asking import connection_edges
from .feature import Feature
from .messages import RawMessage

BROADCAST_QOS = 0
"""QoS 0, so that only devices online now receive it (module doc)."""


@attrs.frozen
class Broadcast(RawMessage):
    """down: the server's payload, as it was given."""

    TYPE = "broadcast"


@attrs.frozen
class SendBroadcast(Event):
    """Platform command: publish `payload` on this device's broadcast topic."""

    payload: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")


@attrs.frozen
class DeliverBroadcast(Effect):
    """The application receives a broadcast's payload."""

    payload: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")


# ---- device ---------------------------------------------------------------------------------


@attrs.define
class DeviceContext:
    received: int = 0


def _deliver(ctx: DeviceContext, event: Broadcast, now: float) -> Iterable[Effect]:
    ctx.received += 1
    return (DeliverBroadcast(event.payload),)


DEVICE = MachineSpec(
    name="broadcast.device",
    doc="Hand every broadcast to the application.",
    states=[
        State("offline", initial=True, doc="not connected: nothing can arrive"),
        State("listening", doc="subscribed: each broadcast goes to the application"),
    ],
    transitions=[
        *connection_edges("listening"),
        On(Broadcast, ANY_STATE, None, action=_deliver),
    ],
    context=lambda key: DeviceContext(),
    context_type=DeviceContext,
    inbound=[Broadcast],
)


# ---- platform -------------------------------------------------------------------------------


@attrs.define
class PlatformContext:
    sent: int = 0


def _send(ctx: PlatformContext, event: SendBroadcast, now: float) -> Iterable[Effect]:
    ctx.sent += 1
    return (Publish(Broadcast(payload=event.payload), BROADCAST_QOS),)


PLATFORM = MachineSpec(
    name="broadcast.platform",
    doc="One per device: publish each broadcast of its product on its topic.",
    states=[State("ready", initial=True, doc="publishes every broadcast it is given")],
    transitions=[On(SendBroadcast, "ready", None, action=_send)],
    context=lambda key: PlatformContext(),
    context_type=PlatformContext,
    inbound=[],
)


FEATURE = Feature(
    name="broadcast",
    up_topic="",
    down_topic="$broadcast/rxd/{product}/{device}",
    up=[],
    down=[Broadcast],
    device=DEVICE,
    platform=PLATFORM,
    doc=__doc__ or "",
)

__all__ = [
    "BROADCAST_QOS",
    "DEVICE",
    "FEATURE",
    "PLATFORM",
    "Broadcast",
    "DeliverBroadcast",
    "DeviceContext",
    "PlatformContext",
    "SendBroadcast",
]
