"""Feature declarations: topic pairs, messages, and one machine per role. Pure data, no I/O."""

from . import config, log_level, ota, resources
from .feature import (
    ROLES,
    DeviceKey,
    Direction,
    Feature,
    Role,
    inbound_direction,
    outbound_direction,
)
from .messages import Message, Wire, wire


def all_features() -> tuple[Feature, ...]:
    """Every feature this version declares, in a stable order (diagrams, runtimes, CLI)."""
    return (
        log_level.FEATURE,
        ota.FEATURE,
        resources.UPLOAD_FEATURE,
        resources.DOWNLOAD_FEATURE,
        config.FEATURE,
    )


__all__ = [
    "ROLES",
    "DeviceKey",
    "Direction",
    "Feature",
    "Message",
    "Role",
    "Wire",
    "all_features",
    "config",
    "inbound_direction",
    "log_level",
    "ota",
    "outbound_direction",
    "resources",
    "wire",
]
