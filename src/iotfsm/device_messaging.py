"""The device's side of broadcast, device shadow and RRPC (issue 19), mixed into `Device`.

The machines decide; these handlers only hand payloads to the application's callbacks and post
what the application answers back to the machines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .adapters.runtime import Runtime
from .fsm.effects import Effect
from .machines import DeviceKey
from .machines.broadcast import DeliverBroadcast

log = logging.getLogger(__name__)

BroadcastHook = Callable[[bytes], None]
"""`on_broadcast(payload)`: a broadcast of the product, its bytes as the server sent them."""


class DeviceMessaging:
    """Broadcast, shadow and RRPC of a `Device` (which provides `runtime` and `key`)."""

    runtime: Runtime
    key: DeviceKey
    _on_broadcast: BroadcastHook | None = None

    def _messaging_handlers(
        self,
    ) -> dict[type[Effect] | tuple[str, type[Effect]], Callable[[DeviceKey, Any], None]]:
        return {DeliverBroadcast: self._deliver_broadcast}

    def _deliver_broadcast(self, key: DeviceKey, effect: DeliverBroadcast) -> None:
        if self._on_broadcast is None:
            log.info("a broadcast of %d bytes came; no on_broadcast takes it", len(effect.payload))
            return
        self._on_broadcast(effect.payload)


__all__ = ["BroadcastHook", "DeviceMessaging"]
