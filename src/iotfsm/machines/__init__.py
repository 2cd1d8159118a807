"""Feature declarations: topic pairs, messages, and one machine per role. Pure data, no I/O."""

from typing import Any

from ..fsm.spec import MachineSpec
from . import broadcast, campaign, config, log_level, ota, resources, rrpc, shadow
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
        broadcast.FEATURE,
        shadow.FEATURE,
        rrpc.FEATURE,
    )


def platform_machines() -> tuple[MachineSpec[Any], ...]:
    """Machines of the platform as a whole rather than of one device and feature (campaigns):
    no topic pair, drawn and documented like the features' machines."""
    return (campaign.SPEC,)


__all__ = [
    "ROLES",
    "DeviceKey",
    "Direction",
    "Feature",
    "Message",
    "Role",
    "Wire",
    "all_features",
    "broadcast",
    "campaign",
    "config",
    "inbound_direction",
    "log_level",
    "ota",
    "outbound_direction",
    "platform_machines",
    "resources",
    "rrpc",
    "shadow",
    "wire",
]
