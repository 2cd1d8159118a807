"""The shapes the API reads and writes, as attrs classes: the OpenAPI schemas are made from these.
Where the platform has a record of the very shape (Delivery, Deployment, WaveStatus, ...) the API
answers with it, so the two cannot drift apart.

Field metadata carries the bounds the schema publishes (`maximum`, `maxLength`, ...); the bounds
are also checked where the value is used, so a client that skips the schema is refused the same.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from ..adapters.store.config_store import ConfigVersion
from ..campaigns import WaveStatus
from ..platform import Delivery, Deployment, FirmwareStatus

# ---- common -------------------------------------------------------------------------------


@attrs.frozen
class ErrorDetail:
    code: str
    message: str


@attrs.frozen
class ErrorBody:
    """Every 4xx and 5xx answer: what went wrong and what to fix."""

    error: ErrorDetail


@attrs.frozen
class Accepted:
    accepted: bool = True


@attrs.frozen
class Health:
    status: str


# ---- devices ------------------------------------------------------------------------------

PRODUCT_PATTERN = "^[A-Za-z0-9]{1,32}$"
DEVICE_PATTERN = "^[A-Za-z0-9:_-]{1,48}$"
VERSION_PATTERN = "^[A-Za-z0-9_+-][A-Za-z0-9_+-]{0,31}$|^[A-Za-z0-9_+-]+([.][A-Za-z0-9_+-]+){1,15}$"
"""What the API documents for a version: a safe subset of what devices accept (1-32 characters,
no path separators, no '..', no leading dot, no control characters)."""
NAME_PATTERN = "^[A-Za-z0-9_+-]+([.][A-Za-z0-9_+-]+)*$"
CAMPAIGN_PATTERN = "^[A-Za-z0-9_.:-]{1,64}$"
PATTERNS = {
    "product": PRODUCT_PATTERN,
    "device": DEVICE_PATTERN,
    "version": VERSION_PATTERN,
    "name": NAME_PATTERN,
    "id": CAMPAIGN_PATTERN,
}
"""The documented shape of a name, wherever a parameter of that name appears (path or query)."""
LENGTHS = {"product": 32, "device": 48, "version": 32, "name": 64, "id": 64}
PRODUCT = {"pattern": PRODUCT_PATTERN}
DEVICE = {"pattern": DEVICE_PATTERN}
VERSION = {"pattern": VERSION_PATTERN, "maxLength": 32}


@attrs.frozen
class DeviceIn:
    """Register a device. Its key is derived from the product secret (`iotfsm registry key`
    writes it to a file); keys never travel through the API."""

    product: str = attrs.field(metadata=PRODUCT)
    device: str = attrs.field(metadata=DEVICE)
    auth: Literal["key", "cert"] = "key"


@attrs.frozen
class DeviceOut:
    """A device as the registry and this platform's sessions know it."""

    product: str
    device: str
    registered: bool
    enabled: bool
    auth: str
    last_seen: float | None
    version: str
    states: dict[str, str]


@attrs.frozen
class DeviceDetail(DeviceOut):
    """A device and its firmware task and log level (a read never creates a session)."""

    firmware: FirmwareStatus
    log_level: int


@attrs.frozen
class DevicePage:
    items: list[DeviceOut]
    total: int
    offset: int
    limit: int


@attrs.frozen
class LogLevelIn:
    level: int = attrs.field(metadata={"minimum": 0, "maximum": 4})


@attrs.frozen
class LogLevelOut:
    level: int


@attrs.frozen
class LogLineOut:
    seq: int
    received_at: float
    text: str
    level: str


@attrs.frozen
class LogPage:
    items: list[LogLineOut]
    total: int
    offset: int
    limit: int


# ---- firmware and deployments -------------------------------------------------------------


@attrs.frozen
class Image:
    """A firmware image uploaded for a product and version, served by the file service."""

    product: str
    version: str
    file_id: str
    size: int
    md5: str
    uploaded_at: float


@attrs.frozen
class ImagePage:
    items: list[Image]
    total: int
    offset: int
    limit: int


@attrs.frozen
class DeploymentIn:
    """Offer an uploaded image to devices (a list of names, or "*": every device of the
    product, including ones first seen later)."""

    product: str = attrs.field(metadata=PRODUCT)
    version: str = attrs.field(metadata=VERSION)
    devices: list[str] | Literal["*"] = attrs.field(metadata={"maxItems": 10000})


@attrs.frozen
class DeploymentPage:
    items: list[Deployment]
    total: int
    offset: int
    limit: int


# ---- campaigns ----------------------------------------------------------------------------


@attrs.frozen
class RateIn:
    per_minute: float = attrs.field(metadata={"exclusiveMinimum": 0})
    growth: float = 1.0
    every: int = 0
    max_per_minute: float = 0.0


@attrs.frozen
class AbortIn:
    percent: float = attrs.field(metadata={"exclusiveMinimum": 0, "maximum": 100})
    min_finished: int = attrs.field(default=1, metadata={"minimum": 1})
    codes: list[int] = attrs.Factory(list)
    timeouts: bool = False


@attrs.frozen
class DailyWindowIn:
    """Every day from `start` to `end` ("HH:MM" in `tz`); an end before the start crosses
    midnight."""

    start: str = attrs.field(metadata={"pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"})
    end: str = attrs.field(metadata={"pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"})
    tz: str = attrs.field(default="UTC", metadata={"maxLength": 64})


@attrs.frozen
class IntervalIn:
    """One window, `start` <= t < `end`, in epoch seconds."""

    start: float
    end: float


@attrs.frozen
class SettingsIn:
    advance: Literal["threshold", "operator"] = "threshold"
    success_percent: float = attrs.field(default=100.0, metadata={"minimum": 0, "maximum": 100})
    device_timeout: float = attrs.field(default=0.0, metadata={"minimum": 0})
    cancel_on_abort: bool = False
    start_at: float = 0.0
    rate: RateIn | None = None
    abort: list[AbortIn] = attrs.Factory(list)
    daily_windows: list[DailyWindowIn] = attrs.Factory(list)
    intervals: list[IntervalIn] = attrs.Factory(list)


@attrs.frozen
class CampaignIn:
    """Roll an uploaded image out in waves of registered devices."""

    product: str = attrs.field(metadata=PRODUCT)
    version: str = attrs.field(metadata=VERSION)
    waves: list[list[str]] = attrs.field(metadata={"minItems": 1, "maxItems": 1000})
    id: str | None = attrs.field(default=None, metadata={"pattern": CAMPAIGN_PATTERN})
    settings: SettingsIn | None = None


@attrs.frozen
class HistoryEntry:
    time: float
    note: str


@attrs.frozen
class CampaignOut:
    id: str
    state: str
    product: str
    version: str
    wave: int
    waves: list[WaveStatus]
    reason: str
    history: list[HistoryEntry]


@attrs.frozen
class CampaignPage:
    items: list[CampaignOut]
    total: int
    offset: int
    limit: int


# ---- resources ----------------------------------------------------------------------------


@attrs.frozen
class DeliveryList:
    items: list[Delivery]


@attrs.frozen
class DeliveryPage:
    items: list[Delivery]
    total: int
    offset: int
    limit: int


@attrs.frozen
class UploadOut:
    """The platform's UploadInfo without `path`: where the file lies on the server is not the
    client's business (and would tell it the data directory)."""

    product: str
    device: str
    name: str
    md5: str
    size: int
    state: str
    percent: int
    code: int
    message: str
    stored: bool


@attrs.frozen
class UploadPage:
    items: list[UploadOut]
    total: int
    offset: int
    limit: int


# ---- config -------------------------------------------------------------------------------


@attrs.frozen
class ConfigIn:
    payload: dict[str, Any]


@attrs.frozen
class ConfigEnabledIn:
    enabled: bool


@attrs.frozen
class ConfigOut:
    enabled: bool
    version: int
    payload: dict[str, Any] | None


@attrs.frozen
class ConfigHistory:
    items: list[ConfigVersion]


# ---- steps, audit, session, overview ------------------------------------------------------


@attrs.frozen
class StepEvent:
    """One step of a machine: a device feature's (product, device set) or a campaign's.
    `machine` is the feature (`ota`) or `campaign` for the platform's machines, and the device
    machine's name (`ota.device`, `role` device) for devices traced in-process (the demo)."""

    seq: int
    time: float
    machine: str
    role: Literal["platform", "device"]
    product: str | None
    device: str | None
    campaign: str | None
    source: str
    trigger: str
    dest: str
    handled: bool
    effects: list[str]


@attrs.frozen
class StepList:
    items: list[StepEvent]
    dropped: int


@attrs.frozen
class AuditEntry:
    time: float
    token: str
    method: str
    path: str
    status: int
    result: str


@attrs.frozen
class AuditPage:
    items: list[AuditEntry]
    total: int
    offset: int
    limit: int


@attrs.frozen
class SessionIn:
    token: str = attrs.field(metadata={"maxLength": 200})


@attrs.frozen
class SessionOut:
    name: str
    scopes: list[str]


@attrs.frozen
class Overview:
    devices: int
    enabled: int
    online_recently: int
    products: list[str]
    by_state: dict[str, dict[str, int]]
    by_version: dict[str, int]
    campaigns: dict[str, int]
    steps_dropped: int


@attrs.frozen
class RrpcIn:
    """An RRPC call: the text sent to the device and how long to wait for its answer (seed
    004 gives devices 5-10 s; the platform allows up to 30 here so an API call stays short)."""

    payload: str = attrs.field(metadata={"maxLength": 16_384})
    timeout: float = attrs.field(default=5.0, metadata={"minimum": 0.1, "maximum": 30})


@attrs.frozen
class RrpcOut:
    """The device's answer as text (bytes that are not UTF-8 are replaced) and its size."""

    answer: str
    size: int


@attrs.frozen
class BroadcastIn:
    payload: str = attrs.field(metadata={"maxLength": 16_384})


@attrs.frozen
class BroadcastOut:
    """How many devices the message was published to (online ones receive it: QoS 0)."""

    devices: int


@attrs.frozen
class ShadowOut:
    """The shadow document as a device's `get` returns it (empty before any report)."""

    document: dict[str, Any]


@attrs.frozen
class DesiredIn:
    """Keys to merge into the desired state; a null value removes a key."""

    state: dict[str, Any]
