"""Moves a running platform toward its desired-state file, and again whenever the file changes.

Each entry is applied once: its fingerprint (content and file bytes) is remembered in the
platform's store, so a restart or a reload re-applies only what changed. A file that does not
validate is refused as a whole and the platform keeps what it had.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .desired import (
    ConfigEntry,
    DesiredState,
    DesiredStateError,
    DevicesEntry,
    Entry,
    FirmwareEntry,
    LogLevelEntry,
    ResourceEntry,
    fingerprint,
    load,
)
from .platform import EVERY_DEVICE, Platform

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, platform: Platform, path: Path) -> None:
        self.platform = platform
        self.path = Path(path)
        self._seen: tuple[float, int] | None = None

    def apply(self) -> list[str]:
        """Load, validate, and apply what is new; returns a line per applied entry.
        Raises DesiredStateError (nothing applied) when the file is not valid."""
        state = load(self.path)
        self._seen = self._stamp()
        applied = []
        for entry in _entries(state):
            mark = fingerprint(entry)
            if self.platform.store.get("desired_applied", mark) is not None:
                continue
            self._apply_one(entry)
            self.platform.store.put("desired_applied", mark, _describe(entry))
            applied.append(_describe(entry))
            log.info("desired state: applied %s", _describe(entry))
        self.platform.store.commit()
        return applied

    def poll(self) -> list[str]:
        """Apply again if the file changed since the last look; errors are logged, not raised."""
        if self._stamp() == self._seen:
            return []
        try:
            return self.apply()
        except DesiredStateError as exc:
            self._seen = self._stamp()
            log.error("desired state not applied, keeping the previous one: %s", exc)
            return []

    def _stamp(self) -> tuple[float, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    def _apply_one(self, entry: Entry) -> None:
        p = self.platform
        if isinstance(entry, DevicesEntry):
            for device in entry.devices:
                known = p.registry.get(entry.product, device)
                if known is None:
                    p.register_device(entry.product, device, auth=entry.auth)
                if entry.enabled:
                    p.registry.enable(entry.product, device)
                else:
                    p.registry.disable(entry.product, device)
        elif isinstance(entry, FirmwareEntry):
            devices = EVERY_DEVICE if entry.devices == ("*",) else list(entry.devices)
            p.deploy_firmware(entry.product, devices, entry.version, entry.file)
        elif isinstance(entry, ConfigEntry):
            p.enable_config(entry.product, entry.enabled)
            if entry.payload is not None:
                p.set_config(entry.product, entry.payload)
        elif isinstance(entry, LogLevelEntry):
            if entry.devices == ("*",):
                p.set_product_log_level(entry.product, entry.level)
            else:
                for device in entry.devices:
                    p.set_log_level(entry.product, device, entry.level)
        else:
            p.offer_resource(entry.product, list(entry.devices), entry.name, entry.file)


def _entries(state: DesiredState) -> list[Entry]:
    return [*state.devices, *state.firmware, *state.config, *state.log_level, *state.resource]


def _describe(entry: Entry) -> str:
    if isinstance(entry, DevicesEntry):
        state = "enabled" if entry.enabled else "disabled"
        return f"devices {entry.product}/{','.join(entry.devices)} ({entry.auth}, {state})"
    if isinstance(entry, FirmwareEntry):
        return f"firmware {entry.version} for {entry.product}/{','.join(entry.devices)}"
    if isinstance(entry, ConfigEntry):
        state = "enabled" if entry.enabled else "disabled"
        return f"config of {entry.product} ({state})"
    if isinstance(entry, LogLevelEntry):
        return f"log level {entry.level} for {entry.product}/{','.join(entry.devices)}"
    assert isinstance(entry, ResourceEntry)
    return f"resource {entry.name} for {entry.product}/{','.join(entry.devices)}"
