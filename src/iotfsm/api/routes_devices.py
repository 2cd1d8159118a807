"""`/devices`: the registry (list, add, enable, disable, remove) and what each device's sessions
say (state per feature, firmware version, last seen), plus the per-device operator actions.

Everything here reads snapshots: the registry's in-memory table and the runtime's session dicts
(copied before iterating, the runtime may add sessions meanwhile); actions post commands.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..adapters.identity.registry import RegisteredDevice
from ..machines import DeviceKey, all_features, ota
from ..platform import FirmwareStatus
from .endpoint import PAGE, ApiError, Call, Endpoint, Param
from .lookup import device_of, key_of, page, product_of
from .models import (
    Accepted,
    DeviceDetail,
    DeviceIn,
    DeviceOut,
    DevicePage,
    LogLevelIn,
    LogLevelOut,
    LogLineOut,
    LogPage,
)

Row = tuple[tuple[str, str], RegisteredDevice | None]
"""(product, device) and the registry entry (None: a device only an open registry answers).
A plain tuple equals and hashes as the DeviceKey the session tables are keyed by, and costs a
fraction of building one: at 10,000 devices per page load that is most of the time."""


def _known(call: Call, product: str | None) -> list[Row]:
    """Registered devices in (product, device) order, and under an open registry every device
    with a session too."""
    platform = call.ctx.platform
    rows: list[Row] = [((d.product, d.device), d) for d in platform.registry.devices(product)]
    if not platform.registry.open:
        return rows  # the registry lists them sorted already
    found = dict(rows)
    for sessions in list(platform.runtime.sessions.values()):
        for key in list(sessions):
            if product in (None, key.product):
                found.setdefault((key.product, key.device), None)
    return sorted(found.items(), key=lambda row: row[0])


def _version(call: Call, key: DeviceKey) -> str:
    session = call.ctx.platform.runtime.sessions.get("ota", {}).get(key)
    if session is None:
        return ""
    ctx: ota.PlatformContext = session.ctx
    return str(ctx.reported or "")


def _describe(call: Call, key: DeviceKey, entry: RegisteredDevice | None) -> DeviceOut:
    states = {}
    for feature, sessions in list(call.ctx.platform.runtime.sessions.items()):
        session = sessions.get(key)
        if session is not None:
            states[feature] = session.state
    return DeviceOut(
        key.product,
        key.device,
        entry is not None,
        entry.enabled if entry is not None else True,
        entry.auth if entry is not None else "open",
        call.ctx.last_seen.get(key),
        _version(call, key),
        states,
    )


def list_devices(call: Call) -> DevicePage:
    q = call.query
    product = None if q["product"] is None else product_of(q["product"])
    # keyed by DeviceKey; looked up with the equal plain tuples of `_known`
    sessions: dict[Any, Any] = call.ctx.platform.runtime.sessions[q["feature"]]
    ota_sessions: dict[Any, Any] = call.ctx.platform.runtime.sessions["ota"]
    enabled, text, state, version = q["enabled"], q["q"], q["state"], q["version"]
    chosen = []
    for row in _known(call, product):
        key, entry = row
        if enabled is not None and (entry is None or entry.enabled) != enabled:
            continue
        if text is not None and text not in key[1]:
            continue
        if state is not None:
            session = sessions.get(key)
            if session is None or session.state != state:
                continue
        if version is not None:
            session = ota_sessions.get(key)
            if session is None or str(session.ctx.reported or "") != version:
                continue
        chosen.append(row)
    found = page(chosen, call)
    found["items"] = [_describe(call, DeviceKey(*k), e) for k, e in found["items"]]
    return DevicePage(**found)


def add_device(call: Call) -> DeviceOut:
    body: DeviceIn = call.body
    key = key_of(body.product, body.device)
    platform = call.ctx.platform
    if platform.registry.get(*key) is not None:
        raise ApiError(409, "conflict", f"{key.product}/{key.device} is registered already")
    entry = platform.register_device(key.product, key.device, auth=body.auth)
    return _describe(call, key, entry)


def _entry(call: Call, key: DeviceKey) -> RegisteredDevice | None:
    return call.ctx.platform.registry.get(*key)


def _firmware(call: Call, key: DeviceKey) -> FirmwareStatus:
    """From the OTA session if there is one; a read never creates a session."""
    session = call.ctx.platform.runtime.sessions.get("ota", {}).get(key)
    if session is None:
        return FirmwareStatus("idle", "", "", 0, 0, "", "")
    c: ota.PlatformContext = session.ctx
    return FirmwareStatus(
        session.state, c.target, c.reported, c.percent, c.result_code, c.result_msg, c.drift
    )


def _log_level(call: Call, key: DeviceKey) -> int:
    platform = call.ctx.platform
    session = platform.runtime.sessions.get("log_level", {}).get(key)
    if session is not None:
        return int(session.ctx.level)
    level = platform.store.get("product_log_level", key.product)  # what a new session gets
    return level if isinstance(level, int) else 0


def get_device(call: Call) -> DeviceDetail:
    key = device_of(call)
    out = _describe(call, key, _entry(call, key))
    fields: dict[str, Any] = attrs.asdict(out, recurse=False)
    return DeviceDetail(**fields, firmware=_firmware(call, key), log_level=_log_level(call, key))


def _registered(call: Call) -> DeviceKey:
    key = key_of(call.path["product"], call.path["device"])
    if call.ctx.platform.registry.get(*key) is None:
        raise ApiError(404, "not_found", f"{key.product}/{key.device} is not registered")
    return key


def enable_device(call: Call) -> DeviceOut:
    key = _registered(call)
    call.ctx.platform.registry.enable(*key)
    return _describe(call, key, _entry(call, key))


def disable_device(call: Call) -> DeviceOut:
    key = _registered(call)
    call.ctx.platform.registry.disable(*key)
    return _describe(call, key, _entry(call, key))


def remove_device(call: Call) -> None:
    key = _registered(call)
    call.ctx.platform.registry.remove(*key)


def cancel_ota(call: Call) -> Accepted:
    call.ctx.platform.cancel_firmware(*device_of(call))
    return Accepted()


def push_config(call: Call) -> Accepted:
    call.ctx.platform.push_config(*device_of(call))
    return Accepted()


def get_log_level(call: Call) -> LogLevelOut:
    return LogLevelOut(_log_level(call, device_of(call)))


def set_log_level(call: Call) -> LogLevelOut:
    body: LogLevelIn = call.body
    call.ctx.platform.set_log_level(*device_of(call), body.level)
    return LogLevelOut(body.level)


def device_logs(call: Call) -> LogPage:
    lines = call.ctx.platform.device_logs(*device_of(call), call.query["since"])
    out = [LogLineOut(x.seq, x.received_at, x.text, x.level) for x in lines]
    return LogPage(**page(out, call))


FEATURES = tuple(f.name for f in all_features())
ONE = "/devices/{product}/{device}"
DEVICES = "devices"

ENDPOINTS = (
    Endpoint(
        "GET",
        "/devices",
        list_devices,
        "read",
        "List devices",
        DEVICES,
        DevicePage,
        query=(
            Param("product", str, description="only this product"),
            Param("state", str, description="only devices whose `feature` session is in it"),
            Param("feature", str, "ota", "the feature `state` refers to", choices=FEATURES),
            Param("version", str, description="only devices that reported this version"),
            Param("enabled", bool, description="only enabled (true) or disabled (false)"),
            Param("q", str, description="device names containing this"),
            *PAGE,
        ),
    ),
    Endpoint(
        "POST",
        "/devices",
        add_device,
        "write",
        "Register a device",
        DEVICES,
        DeviceOut,
        201,
        DeviceIn,
    ),
    Endpoint("GET", ONE, get_device, "read", "Show a device", DEVICES, DeviceDetail),
    Endpoint("DELETE", ONE, remove_device, "write", "Remove a device", DEVICES, None, 204),
    Endpoint(
        "POST", ONE + "/enable", enable_device, "write", "Enable a device", DEVICES, DeviceOut
    ),
    Endpoint(
        "POST", ONE + "/disable", disable_device, "write", "Disable a device", DEVICES, DeviceOut
    ),
    Endpoint(
        "POST",
        ONE + "/ota/cancel",
        cancel_ota,
        "write",
        "Cancel a device's OTA task",
        DEVICES,
        Accepted,
        202,
    ),
    Endpoint(
        "POST",
        ONE + "/config/push",
        push_config,
        "write",
        "Push the product config to a device",
        DEVICES,
        Accepted,
        202,
    ),
    Endpoint(
        "GET",
        ONE + "/log-level",
        get_log_level,
        "read",
        "A device's log level",
        DEVICES,
        LogLevelOut,
    ),
    Endpoint(
        "PUT",
        ONE + "/log-level",
        set_log_level,
        "write",
        "Set a device's log level",
        DEVICES,
        LogLevelOut,
        202,
        LogLevelIn,
    ),
    Endpoint(
        "GET",
        ONE + "/logs",
        device_logs,
        "read",
        "A device's uploaded log lines",
        DEVICES,
        LogPage,
        query=(Param("since", int, 0, "lines after this seq", minimum=0, maximum=10**15), *PAGE),
    ),
)
