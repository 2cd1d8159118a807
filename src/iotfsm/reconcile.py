"""Moves a running platform toward its desired-state file, and again whenever the file changes.

Each entry is applied once: its fingerprint (content and file bytes) is remembered in the
platform's store for what it sets (its subject), so a restart or a reload re-applies only what
changed, and a file that goes back to an earlier declaration applies it again. A file that does
not validate is refused as a whole and the platform keeps what it had.

Campaigns are not entries to re-apply: a `[[campaigns]]` table is started once under its id,
and afterwards only a change of its declared `state` acts (pause, resume, cancel). The state
last acted on is kept per id (table `desired_campaigns`), so an operator's `iotfsm campaign
pause` is not undone by an unrelated edit of the file, and a restart starts nobody again.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import attrs

from .campaign_spec import CampaignSpec
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
from .machines.campaign import CampaignError
from .platform import EVERY_DEVICE, Platform

log = logging.getLogger(__name__)

LAST_APPLIED = "desired_last_applied"
"""Per subject (what an entry sets: a product's config, some devices' firmware, ...): the
fingerprint of the entry last applied to it. Kept per subject, not as a set of every mark ever
applied, so a file that goes back to an earlier declaration (`enabled = true` again, the
previous firmware) is applied again."""
APPLIED = "desired_applied"
"""Marks applied by earlier versions (one row per mark): still read, so an upgrade does not
apply everything again."""
CAMPAIGNS = "desired_campaigns"
"""Per declared campaign id: {"state": the declared state last acted on, "plan": a mark of
the rest of its declaration}."""
FINAL = ("succeeded", "cancelled")


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
        self._check_campaigns(state)
        applied = []
        store = self.platform.store
        for entry in _entries(state):
            mark, subject = fingerprint(entry), _subject(entry)
            last = store.get(LAST_APPLIED, subject)
            if last is None and store.get(APPLIED, mark) is not None:
                last = mark  # recorded before marks were kept per subject: applied already
            if last == mark:
                continue
            self._apply_one(entry)
            store.put(LAST_APPLIED, subject, mark)
            applied.append(_describe(entry))
            log.info("desired state: applied %s", _describe(entry))
        for spec in state.campaigns:
            line = self._campaign(spec)
            if line:
                applied.append(line)
                log.info("desired state: %s", line)
        self.platform.store.commit()
        return applied

    def _check_campaigns(self, state: DesiredState) -> None:
        """Before anything is applied: every campaign to be started names devices that are
        registered or declared in this file, and has devices at all."""
        p = self.platform
        declared = {(e.product, d) for e in state.devices for d in e.devices}
        for i, spec in enumerate(state.campaigns):
            if spec.id in p.campaigns.ids() or p.store.get(CAMPAIGNS, spec.id) is not None:
                continue
            where = f"{self.path}: campaigns[{i}]"
            if p.registry.open:
                continue
            field = "waves" if spec.waves else "devices"
            for device in spec.named_devices():
                if (spec.product, device) not in declared and p.registry.get(
                    spec.product, device
                ) is None:
                    raise DesiredStateError(
                        f"{where}: {field!r}: {spec.product}/{device} is not registered;"
                        " declare it under [[devices]] or `iotfsm registry add` it"
                    )
            known = {d for pr, d in declared if pr == spec.product}
            if (
                spec.devices == ("*",)
                and not spec.waves
                and not (known or p.product_devices(spec.product))
            ):
                raise DesiredStateError(
                    f"{where}: 'devices': {spec.product} has no registered devices to update"
                )

    def _campaign(self, spec: CampaignSpec) -> str:
        """Start a declared campaign once, then follow changes of its declared state."""
        p = self.platform
        plan = _spec_mark(spec)
        record = p.store.get(CAMPAIGNS, spec.id)
        line = ""
        if record is None and spec.id not in p.campaigns.ids():
            if spec.state == "cancelled":
                line = f"campaign {spec.id} declared cancelled: not started"
            else:
                try:
                    p.start_declared_campaign(spec)
                except (CampaignError, ValueError, OSError) as exc:
                    log.error("desired state: campaign %s not started: %s", spec.id, exc)
                    return f"campaign {spec.id} not started: {exc}"
                line = (
                    f"campaign {spec.id} started ({spec.product} -> {spec.version}, {spec.state})"
                )
        elif record is None:  # started meanwhile (the command line, or a crash before the record)
            line = self._move(spec, quiet=True)
        elif record.get("state") != spec.state:
            line = self._move(spec)
        elif record.get("plan") != plan:
            log.warning(
                "desired state: campaign %s changed but only its state acts once started; "
                "give a new id to roll out something else",
                spec.id,
            )
        p.store.put(CAMPAIGNS, spec.id, {"state": spec.state, "plan": plan})
        return line

    def _move(self, spec: CampaignSpec, quiet: bool = False) -> str:
        p = self.platform
        if spec.id not in p.campaigns.ids():
            return f"campaign {spec.id} is not in this platform's store: nothing to {spec.state}"
        now = p.campaign_status(spec.id).state
        act = {
            "paused": p.pause_campaign if now in ("scheduled", "running", "waiting") else None,
            "running": p.resume_campaign if now == "paused" else None,
            "cancelled": p.cancel_campaign if now not in FINAL else None,
        }[spec.state]
        if act is None:
            return "" if quiet else f"campaign {spec.id} is {now}: nothing to do for {spec.state}"
        try:
            act(spec.id)
        except CampaignError as exc:
            log.error("desired state: campaign %s not %s: %s", spec.id, spec.state, exc)
            return f"campaign {spec.id} not {spec.state}: {exc}"
        return f"campaign {spec.id} {spec.state}"

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


def _spec_mark(spec: CampaignSpec) -> str:
    """What was declared apart from the state (file bytes included): a change is warned about."""
    text = repr(attrs.evolve(spec, state="")) + hashlib.md5(spec.file.read_bytes()).hexdigest()
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _entries(state: DesiredState) -> list[Entry]:
    return [*state.devices, *state.firmware, *state.config, *state.log_level, *state.resource]


def _subject(entry: Entry) -> str:
    """What an entry sets, without the value it sets it to: two entries with one subject are
    the same setting, the later replacing the earlier."""
    if isinstance(entry, ConfigEntry):
        return f"config {entry.product}"
    where = f"{entry.product}/{','.join(sorted(entry.devices))}"
    if isinstance(entry, ResourceEntry):
        return f"resource {entry.name} {where}"
    return f"{type(entry).__name__} {where}"


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
