"""iotfsm: Tencent IoT Hub device features as declared finite-state machines, for both roles.

Device code embeds `Device`; server code embeds `Platform`; both take the embedded
`MemoryBroker`, a transport, or an MQTT URL. `iotfsm.testing` has the test kit, `iotfsm.fsm` the
engine, `iotfsm.machines` the feature declarations, `iotfsm.diagrams` their pictures.
"""

from .adapters.connect import MqttOptions
from .adapters.memory_broker import MemoryBroker
from .device import BurnHook, Device, ResourceHook, UploadHook
from .machines.feature import DeviceKey
from .platform import (
    Delivery,
    Deployment,
    FirmwareStatus,
    Platform,
    SessionStatus,
    UploadInfo,
)

__version__ = "0.1.0"

__all__ = [
    "BurnHook",
    "Delivery",
    "Deployment",
    "Device",
    "DeviceKey",
    "FirmwareStatus",
    "MemoryBroker",
    "MqttOptions",
    "Platform",
    "ResourceHook",
    "SessionStatus",
    "UploadHook",
    "UploadInfo",
    "__version__",
]
