"""The platform's side of broadcast, device shadow and RRPC (issue 19), mixed into `Platform`.

Kept apart from platform.py so each feature's operator calls read in one place: what they check,
which session event they post, and how an effect comes back to the caller.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from typing import Any

from .adapters.identity.registry import Registry
from .adapters.runtime import Runtime
from .adapters.topics import check_key
from .machines import DeviceKey
from .machines.broadcast import SendBroadcast
from .machines.shadow import SetDesired, document

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

    # ---- device shadow ----------------------------------------------------------------------

    def shadow(self, product_id: str, device_name: str) -> dict[str, Any]:
        """The device's shadow document as a get returns it: `state` (reported, and desired
        and delta when set), `metadata` timestamps (ms), `version`, `timestamp`."""
        key = self._device(product_id, device_name)
        return copy.deepcopy(document(self.runtime.session("shadow", key).ctx))

    def set_desired(self, product_id: str, device_name: str, state: dict[str, Any]) -> None:
        """Merge `state` into the desired part (None removes a key); a new version, and a delta
        pushed to the device where desired differs from reported. An offline device gets it
        with its next get. TypeError/ValueError for a state that is not a JSON object."""
        key = self._device(product_id, device_name)
        if not isinstance(state, dict) or not state or not all(isinstance(k, str) for k in state):
            raise TypeError("desired state is a non-empty JSON object, e.g. {'color': 'red'}")
        json.dumps(state, allow_nan=False)
        self.runtime.post("shadow", key, SetDesired(copy.deepcopy(state)))


__all__ = ["PlatformMessaging"]
