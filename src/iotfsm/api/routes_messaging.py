"""Messages to devices that are not transfers: an RRPC call, a product broadcast, the shadow.

An RRPC call waits for the device's answer on the request's worker thread (never the event
loop, never the runtime thread) and answers 504 when none comes within the call's timeout. The
shadow is read from the session if there is one; a read never creates a session.
"""

from __future__ import annotations

import copy

from ..machines import shadow
from ..platform_messaging import RrpcTimeout
from .endpoint import ApiError, Call, Endpoint
from .lookup import device_of, product_of
from .models import (
    Accepted,
    BroadcastIn,
    BroadcastOut,
    DesiredIn,
    RrpcIn,
    RrpcOut,
    ShadowOut,
)

ONE = "/devices/{product}/{device}"


def call_device(call: Call) -> RrpcOut:
    body: RrpcIn = call.body
    key = device_of(call)
    try:
        answer = call.ctx.platform.call(key, body.payload, body.timeout)
    except RrpcTimeout as exc:
        raise ApiError(504, "timeout", str(exc)) from None
    except ValueError as exc:  # a payload the feature refuses
        raise ApiError(422, "refused", str(exc)) from None
    return RrpcOut(answer.decode("utf-8", errors="replace"), len(answer))


def broadcast(call: Call) -> BroadcastOut:
    body: BroadcastIn = call.body
    product = product_of(call.path["product"])
    try:
        sent = call.ctx.platform.broadcast(product, body.payload)
    except ValueError as exc:
        raise ApiError(422, "refused", str(exc)) from None
    return BroadcastOut(sent)


def get_shadow(call: Call) -> ShadowOut:
    key = device_of(call)
    session = call.ctx.platform.runtime.sessions.get("shadow", {}).get(key)
    if session is None:
        return ShadowOut({})
    return ShadowOut(copy.deepcopy(shadow.document(session.ctx)))


def set_desired(call: Call) -> Accepted:
    body: DesiredIn = call.body
    key = device_of(call)
    try:
        call.ctx.platform.set_desired(key.product, key.device, body.state)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, "bad_request", f"state: {exc}") from None
    return Accepted()


DEVICES = "devices"
ENDPOINTS = (
    Endpoint(
        "POST",
        ONE + "/rrpc",
        call_device,
        "write",
        "Call a device (RRPC) and wait for its answer",
        DEVICES,
        RrpcOut,
        200,
        RrpcIn,
    ),
    Endpoint(
        "POST",
        "/products/{product}/broadcast",
        broadcast,
        "write",
        "Send one message to every online device of a product",
        "products",
        BroadcastOut,
        200,
        BroadcastIn,
    ),
    Endpoint("GET", ONE + "/shadow", get_shadow, "read", "A device's shadow", DEVICES, ShadowOut),
    Endpoint(
        "PATCH",
        ONE + "/shadow/desired",
        set_desired,
        "write",
        "Merge keys into a device's desired shadow state (a delta goes to the device)",
        DEVICES,
        Accepted,
        202,
        DesiredIn,
    ),
)
