"""iotfsm: Tencent IoT Hub device features as declared finite-state machines, for both roles.

Device code embeds `Device`; server code embeds `Platform`; both take the embedded
`MemoryBroker`, a transport, or an MQTT URL. `iotfsm.testing` has the test kit, `iotfsm.fsm` the
engine, `iotfsm.machines` the feature declarations, `iotfsm.diagrams` their pictures.

Importing `iotfsm` itself is cheap: the names below are imported on first use (PEP 562), so a
process that needs only `iotfsm.machines` or `iotfsm.fsm` (a benchmark of 100k sessions, the
command line's `--help`) does not pay for paho, the HTTP servers and `cryptography`: about 35 MB
of resident memory and half a second of start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from .adapters.connect import MqttOptions
    from .adapters.http.log_endpoint import LogLine
    from .adapters.http.log_upload import LogUploadOptions
    from .adapters.mqtt.memory_broker import MemoryBroker
    from .adapters.store.config_store import ConfigError, ConfigVersion
    from .device import BurnHook, ConfigHook, Device, ResourceHook, UploadHook
    from .device_messaging import RrpcHook
    from .machines.config import ConfigStatus, ProductConfig
    from .machines.feature import DeviceKey
    from .platform import Delivery, Deployment, FirmwareStatus, Platform, SessionStatus, UploadInfo
    from .platform_messaging import RrpcTimeout

__version__ = "0.1.0"

_LAZY = {
    "BurnHook": ".device",
    "ConfigError": ".adapters.store.config_store",
    "ConfigHook": ".device",
    "ConfigStatus": ".machines.config",
    "ConfigVersion": ".adapters.store.config_store",
    "Delivery": ".platform",
    "Deployment": ".platform",
    "Device": ".device",
    "DeviceKey": ".machines.feature",
    "FirmwareStatus": ".platform",
    "LogLine": ".adapters.http.log_endpoint",
    "LogUploadOptions": ".adapters.http.log_upload",
    "MemoryBroker": ".adapters.mqtt.memory_broker",
    "MqttOptions": ".adapters.connect",
    "Platform": ".platform",
    "ProductConfig": ".machines.config",
    "ResourceHook": ".device",
    "RrpcHook": ".device_messaging",
    "RrpcTimeout": ".platform_messaging",
    "SessionStatus": ".platform",
    "UploadHook": ".device",
    "UploadInfo": ".platform",
}
"""Each public name and the module that defines it."""


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)

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
