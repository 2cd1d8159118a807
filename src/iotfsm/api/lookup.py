"""Checks the routes share: names from the path, registered devices, pages of a list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from ..adapters.topics import TopicError, check_key
from ..machines import DeviceKey
from .endpoint import ApiError, Call

T = TypeVar("T")


def product_of(name: str) -> str:
    try:
        return check_key(DeviceKey(name, "x")).product
    except TopicError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


def key_of(product: str, device: str) -> DeviceKey:
    try:
        return check_key(DeviceKey(product, device))
    except TopicError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


def device_of(call: Call) -> DeviceKey:
    """The path's device, which must be registered (or any name under an open registry)."""
    key = key_of(call.path["product"], call.path["device"])
    registry = call.ctx.platform.registry
    if not registry.open and registry.get(*key) is None:
        raise ApiError(404, "not_found", f"{key.product}/{key.device} is not registered")
    return key


def page(items: Sequence[T], call: Call) -> dict[str, Any]:
    """The keyword arguments of a page class: this page's items and the total."""
    offset, limit = call.query["offset"], call.query["limit"]
    return {
        "items": list(items[offset : offset + limit]),
        "total": len(items),
        "offset": offset,
        "limit": limit,
    }
