"""iotfsm: Tencent IoT Hub device features as declared finite-state machines, for both roles.

Device code embeds `Device`; server code embeds `Platform`; both take the embedded
`MemoryBroker`, a transport, or an MQTT URL. `iotfsm.testing` has the test kit, `iotfsm.fsm` the
engine, `iotfsm.machines` the feature declarations, `iotfsm.diagrams` their pictures.
"""

from .adapters.connect import MqttOptions
from .adapters.http.log_endpoint import LogLine
from .adapters.http.log_upload import LogUploadOptions
from .adapters.mqtt.memory_broker import MemoryBroker
from .adapters.store.config_store import ConfigError, ConfigVersion
from .device import BurnHook, ConfigHook, Device, ResourceHook, UploadHook
from .device_messaging import RrpcHook
from .machines.config import ConfigStatus, ProductConfig
from .machines.feature import DeviceKey
from .platform import (
    Delivery,
    Deployment,
    FirmwareStatus,
    Platform,
    SessionStatus,
    UploadInfo,
)
from .platform_messaging import RrpcTimeout

__version__ = "0.1.0"

__all__ = [
    "BurnHook",
    "ConfigError",
    "ConfigHook",
    "ConfigStatus",
    "ConfigVersion",
    "Delivery",
    "Deployment",
    "Device",
    "DeviceKey",
    "FirmwareStatus",
    "LogLine",
    "LogUploadOptions",
    "MemoryBroker",
    "MqttOptions",
    "Platform",
    "ProductConfig",
    "ResourceHook",
    "RrpcHook",
    "RrpcTimeout",
    "SessionStatus",
    "UploadHook",
    "UploadInfo",
    "__version__",
]
