"""Turn what a user says about the broker into a Transport.

Users pass the embedded `MemoryBroker` (tests, demos), a ready-made transport, or an MQTT URL; the
role facades accept all three so that switching from a test to a real broker is one argument.
"""

from __future__ import annotations

from ..machines.feature import DeviceKey
from .memory_broker import MemoryBroker
from .transport import Transport

Broker = MemoryBroker | Transport | str


def transport_for(broker: Broker, key: DeviceKey | None, psk: str | None = None) -> Transport:
    """A transport for a device (`key`) or for the platform (`key` None)."""
    client_id = f"{key.product}{key.device}" if key is not None else "iotfsm-platform"
    if isinstance(broker, MemoryBroker):
        return broker.connect(client_id)
    if isinstance(broker, str):
        raise ValueError(f"MQTT URLs are not supported yet: {broker!r}")
    return broker
