"""`Platform`: the platform role of every feature, as server code embeds it.

One object per server process holds a session per device and feature; server code calls it from
its own threads (an HTTP handler, a console) and observes steps by callback.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ._role import RoleFacade
from .adapters.connect import Broker, MqttOptions, transport_for
from .adapters.runtime import Runtime
from .adapters.topics import check_key
from .fsm.clock import Clock
from .fsm.trace import Tracer
from .machines import DeviceKey, all_features
from .machines.log_level import LEVELS, SetLogLevel


@attrs.frozen(order=True)
class SessionStatus:
    feature: str
    product: str
    device: str
    state: str


class Platform(RoleFacade):
    def __init__(
        self,
        broker: Broker,
        *,
        products: Sequence[str] | None = None,
        on_step: Tracer | None = None,
        clock: Clock | None = None,
        mqtt: MqttOptions | None = None,
        share_group: str | None = None,
    ) -> None:
        """`products` limits the subscriptions to those products (default: every product).
        `share_group` lets several platform workers split the load of one broker (MQTT shared
        subscriptions; Mosquitto does not share `$` topics, so partition by `products` there)."""
        self.runtime = Runtime(
            "platform",
            transport_for(broker, None, None, mqtt),
            all_features(),
            products=products,
            share_group=share_group,
            clock=clock,
            tracer=on_step,
        )

    # ---- log level --------------------------------------------------------------------------

    def set_log_level(self, product_id: str, device_name: str, level: int) -> None:
        """Set a device's log level and push it now; an offline device gets it when it asks."""
        if level not in LEVELS:
            raise ValueError(f"log level {level!r} must be 0 (nothing) to 4 (debug)")
        key = check_key(DeviceKey(product_id, device_name))
        self.runtime.post("log_level", key, SetLogLevel(level))

    def log_level(self, product_id: str, device_name: str) -> int:
        """The level this platform answers the device with (0 until set)."""
        key = check_key(DeviceKey(product_id, device_name))
        level: int = self.runtime.session("log_level", key).ctx.level
        return level

    # ---- status -----------------------------------------------------------------------------

    def status(self) -> list[SessionStatus]:
        """Every known session, by feature, product and device."""
        return sorted(
            SessionStatus(feature, s.key.product, s.key.device, s.state)
            for feature, s in self.runtime.all_sessions()
        )
