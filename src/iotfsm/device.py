"""`Device`: the device role of every feature, as an application embeds it.

The application gives an identity, a way to the broker and a state directory, plus hooks for what
only it can do (today: the logger whose level the platform controls). Everything else, asking,
retrying, applying, is the declared machines' job; the application observes steps if it wants.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ._role import RoleFacade
from .adapters.connect import Broker, MqttOptions, transport_for
from .adapters.runtime import Runtime
from .adapters.topics import check_key
from .fsm.clock import Clock
from .fsm.trace import Tracer
from .machines import DeviceKey, all_features
from .machines.log_level import ApplyLogLevel, python_level

log = logging.getLogger(__name__)


class Device(RoleFacade):
    def __init__(
        self,
        product_id: str,
        device_name: str,
        psk: str | None = None,
        *,
        broker: Broker,
        state_dir: str | Path,
        logger: logging.Logger | None = None,
        on_log_level: Callable[[int], None] | None = None,
        on_step: Tracer | None = None,
        clock: Clock | None = None,
        mqtt: MqttOptions | None = None,
    ) -> None:
        """`logger` is the application logger whose level follows the platform's log level
        (0 silences it, 1 ERROR ... 4 DEBUG); `on_log_level` is called with each applied level.
        `psk` is the device key, needed on a real broker, unused on the memory broker.
        `broker` is a MemoryBroker, a Transport, or a URL (`mqtt://host:1883`, `mqtts://…`)
        with `mqtt` options for TLS and reconnect pacing."""
        self.key = check_key(DeviceKey(product_id, device_name))
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logger = logger
        self._on_log_level = on_log_level
        self.log_level: int | None = None
        """The level last applied from the platform; None until it has answered."""
        transport = transport_for(broker, self.key, psk, mqtt)
        self.runtime = Runtime(
            "device",
            transport,
            all_features(),
            identity=self.key,
            clock=clock,
            handlers={ApplyLogLevel: self._apply_log_level},
            tracer=on_step,
        )

    # ---- what the application reads --------------------------------------------------------

    def state(self, feature: str) -> str:
        """The current state of this device's machine for `feature` (e.g. "log_level")."""
        if feature not in self.runtime.sessions:
            raise KeyError(f"unknown feature {feature!r}; known: {sorted(self.runtime.sessions)}")
        return self.runtime.session(feature, self.key).state

    @property
    def connected(self) -> bool:
        return self.runtime.transport.connected

    # ---- effect handlers --------------------------------------------------------------------

    def _apply_log_level(self, key: DeviceKey, effect: ApplyLogLevel) -> None:
        self.log_level = effect.level
        if self.logger is not None:
            self.logger.setLevel(python_level(effect.level))
        if self._on_log_level is not None:
            self._on_log_level(effect.level)

    def __repr__(self) -> str:
        return f"<Device {self.key.product}/{self.key.device}>"
