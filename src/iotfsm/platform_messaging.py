"""The platform's side of broadcast, device shadow and RRPC (issue 19), mixed into `Platform`.

Kept apart from platform.py so each feature's operator calls read in one place: what they check,
which session event they post, and how an effect comes back to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .adapters.registry import Registry
from .adapters.runtime import Runtime
from .adapters.topics import check_key
from .machines import DeviceKey
from .machines.broadcast import SendBroadcast

log = logging.getLogger(__name__)


def _payload_bytes(payload: bytes | str, what: str) -> bytes:
    if isinstance(payload, str):
        return payload.encode("utf-8")
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    raise TypeError(f"{what} payload must be bytes or str, got {type(payload).__name__}")


class PlatformMessaging:
    """Broadcast, shadow and RRPC calls of a `Platform` (which provides these attributes)."""

    runtime: Runtime
    registry: Registry
    _device: Callable[[str, str], DeviceKey]
    """Platform's: the key of a registered device (RegistryError for an unknown name)."""

    # ---- broadcast --------------------------------------------------------------------------

    def broadcast(self, product_id: str, payload: bytes | str) -> int:
        """Send `payload` once to every device of the product that is online now (QoS 0: an
        offline device never gets it, as on Tencent). Returns how many devices it was published
        to: the registered ones (or, under an open registry, the ones seen so far)."""
        check_key(DeviceKey(product_id, "x"))
        data = _payload_bytes(payload, "broadcast")
        if self.registry.open:
            keys = sorted(
                {s.key for _, s in self.runtime.all_sessions() if s.key.product == product_id}
            )
        else:
            keys = [d.key for d in self.registry.devices(product_id) if d.enabled]
        for key in keys:
            self.runtime.post("broadcast", key, SendBroadcast(data))
        return len(keys)


__all__ = ["PlatformMessaging"]
