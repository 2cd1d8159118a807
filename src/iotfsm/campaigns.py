"""The platform's campaign runner: campaign machines stepped beside the device sessions.

A campaign session is one `machines.campaign` machine keyed by the campaign's id. The runner
steps it, keeps its snapshot in the platform's store (table `campaigns`, so a campaign and its
history survive a restart; timers are re-armed from the snapshot, nothing is replayed), and turns
its effects into the OTA commands the per-device OTA platform machines already understand. The
OTA machines' `OtaFinished` comes back as DeviceSucceeded / DeviceFailed.

At most one start per device: a step's snapshot is committed before its effects run, so a platform
killed between the two restarts with the device marked started (its in-progress timeout, if the
plan has one, catches a start that never reached the OTA machine) and never starts it twice.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import cattrs

from .adapters.identity.registry import ChangeCounter
from .adapters.runtime import Runtime
from .adapters.store.session_store import SessionStore
from .fsm.effects import CancelTimer, Effect, Log, SetTimer
from .fsm.events import Event, TimerFired
from .fsm.machine import Machine
from .fsm.session import Session
from .fsm.snapshot import SnapshotError, restore, snapshot
from .machines import DeviceKey, campaign, ota
from .machines.campaign import CampaignContext, CampaignEnded, CampaignError, Plan
from .machines.windows import DailyWindow, Interval

log = logging.getLogger(__name__)

TABLE = "campaigns"
COMMANDS = "campaign_commands"
"""Operator commands from another process (`iotfsm campaign pause …`): key, {campaign, action,
time}; the running platform's runner applies and deletes them (`CampaignRunner.apply_commands`)."""
ACTIONS = ("pause", "resume", "cancel", "next-wave", "retry-failed")
START = "start"
"""A queued start carries the declaration (`campaign_spec`) under "spec"; the platform's
`starter` checks it again and starts it under the id the command line printed."""

EndedHook = Callable[[str, CampaignEnded], None]
Starter = Callable[[dict[str, Any]], str]


@attrs.frozen
class WaveStatus:
    number: int
    size: int
    pending: int
    running: int
    succeeded: int
    failed: int
    timed_out: int
    cancelled: int


@attrs.frozen
class CampaignStatus:
    """Where a campaign stands: its state, the wave it is at (1-based, 0 before the first),
    per-wave counts, why it stopped, and its history (time, note)."""

    id: str
    state: str
    product: str
    version: str
    wave: int
    waves: tuple[WaveStatus, ...]
    reason: str
    history: tuple[tuple[float, str], ...]


@attrs.frozen
class CampaignSettings:
    """How a campaign rolls out; see `machines.campaign.Plan` for each field's meaning."""

    advance: str = "threshold"
    success_percent: float = 100.0
    rate: campaign.Rate | None = None
    abort: tuple[campaign.AbortRule, ...] = ()
    device_timeout: float = 0.0
    daily_windows: tuple[DailyWindow, ...] = ()
    intervals: tuple[Interval, ...] = ()
    cancel_on_abort: bool = False
    start_at: float = 0.0
    burn: str = "allow"


class CampaignRunner:
    def __init__(self, runtime: Runtime, store: SessionStore) -> None:
        self.runtime = runtime
        self.store = store
        self.machine: Machine[CampaignContext] = Machine(campaign.SPEC)
        self.sessions: dict[str, Session] = {}
        self.on_ended: EndedHook | None = None
        self.starter: Starter | None = None
        """Starts a queued `start` command's declaration (the platform publishes its image)."""
        self._converter = cattrs.Converter()
        self._lock = threading.RLock()
        self._queue: deque[tuple[str, Event]] = deque()
        self._stepping = False
        self._stopped = True
        self._seen_version: int | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Restore every stored campaign and re-arm its timers (past deadlines fire at once)."""
        with self._lock:
            self._stopped = False
            for cid, doc in self.store.items(TABLE):
                try:
                    session = restore(self.machine, cid, doc, self._converter)
                except SnapshotError as exc:
                    log.warning("stored campaign %s skipped: %s", cid, exc)
                    continue
                self.sessions[cid] = session
                for name, (generation, deadline) in (session.timers or {}).items():
                    self._arm(cid, name, generation, deadline)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._queue.clear()

    # ---- operator actions -------------------------------------------------------------------

    def launch(self, plan: Plan, campaign_id: str | None = None) -> str:
        """Check and run `plan`; returns the campaign's id. Raises CampaignError."""
        campaign.check_plan(plan)
        cid = campaign_id or f"c-{secrets.token_hex(4)}"
        with self._lock:
            if cid in self.sessions or self.store.get(TABLE, cid) is not None:
                raise CampaignError(f"campaign {cid!r} exists; choose another id")
            self.sessions[cid] = self.machine.new_session(cid)
            self._command(cid, campaign.Launch(plan), "launch")
        return cid

    def pause(self, cid: str) -> None:
        self._command(cid, campaign.Pause(), "pause")

    def resume(self, cid: str) -> None:
        self._command(cid, campaign.Resume(), "resume")

    def next_wave(self, cid: str) -> None:
        self._command(cid, campaign.NextWave(), "start the next wave of")

    def retry_failed(self, cid: str) -> None:
        self._command(cid, campaign.RetryFailed(), "retry the failed devices of")

    def cancel(self, cid: str) -> None:
        self._command(cid, campaign.Cancel(), "cancel")

    def status(self, cid: str) -> CampaignStatus:
        with self._lock:
            return _status_of(self._session(cid))

    def apply_commands(self) -> list[str]:
        """Apply the operator commands another process queued (`queue_command`), oldest first,
        each exactly once: a record is deleted and that deletion committed before it is applied,
        so a crash in between loses the command (the operator sees no change and repeats it)
        rather than applying it twice. Returns one line per command: what was done or refused.
        Cheap when nothing changed: SQLite's data_version says whether another process wrote."""
        if isinstance(self.store, ChangeCounter):
            version = self.store.data_version()
            if version == self._seen_version:
                return []
            self._seen_version = version
        lines: list[str] = []
        for key, doc in self.store.items(COMMANDS):
            self.store.delete(COMMANDS, key)
            self.store.commit()
            cid, action = str(doc.get("campaign", "")), str(doc.get("action", ""))
            apply = {
                "pause": self.pause,
                "resume": self.resume,
                "cancel": self.cancel,
                "next-wave": self.next_wave,
                "retry-failed": self.retry_failed,
            }.get(action)
            try:
                if action == START and self.starter is not None:
                    spec = doc.get("spec")
                    if not isinstance(spec, dict) or spec.get("id") != cid:
                        raise CampaignError("the queued start holds no declaration for this id")
                    self.starter(spec)
                elif apply is None:
                    raise CampaignError(f"unknown action {action!r}")
                else:
                    apply(cid)
            except (CampaignError, ValueError, OSError) as exc:
                log.warning("campaign command %s %s refused: %s", action, cid, exc)
                lines.append(f"campaign {cid} {action} refused: {exc}")
            else:
                log.info("campaign %s: %s (operator command)", cid, action)
                lines.append(f"campaign {cid} {action}")
        return lines

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self.sessions)

    def start_lost(self, reached: Callable[[DeviceKey, str], bool]) -> list[DeviceKey]:
        """Send the start again to every running device whose start never reached its OTA
        machine (`reached(key, version)` says whether it did); returns those devices.

        For a pool's new leader: its predecessor may have died between committing a start and
        sending it, and without a device timeout the campaign would wait for that device for
        ever. A start that did reach it is not sent again: the OTA machine ignores the same task
        while an attempt is under way, but a retrying device would be offered it at once."""
        with self._lock:
            if self._stopped:
                return []
            running = [
                (cid, s, device)
                for cid, s in self.sessions.items()
                if s.ctx.plan is not None and s.state not in ("succeeded", "cancelled")
                for device, run in s.ctx.devices.items()
                if run.state == campaign.RUNNING
            ]
        lost = []
        for cid, session, device in running:
            plan: Plan = session.ctx.plan
            key = DeviceKey(plan.product, device)
            if not reached(key, plan.firmware.version):
                log.info("campaign %s: %s/%s started again (its start was lost)", cid, *key)
                self._carry_out(cid, session, campaign.StartDevice(device))
                lost.append(key)
        return lost

    def context(self, cid: str) -> CampaignContext:
        """The live context (device runs with their start times); read it, never change it."""
        ctx: CampaignContext = self._session(cid).ctx
        return ctx

    # ---- outcomes ---------------------------------------------------------------------------

    def ota_finished(self, key: DeviceKey, effect: ota.OtaFinished) -> None:
        """An OTA task ended: tell the campaign that started this device with this version."""
        event: Event = (
            campaign.DeviceSucceeded(key.device)
            if effect.ok
            else campaign.DeviceFailed(key.device, effect.code, effect.message)
        )
        self._tell(key, effect.version, event)

    def ota_attempt_failed(self, key: DeviceKey, effect: ota.OtaAttemptFailed) -> None:
        event = campaign.DeviceAttemptFailed(key.device, effect.code, effect.message)
        self._tell(key, effect.version, event)

    def _tell(self, key: DeviceKey, version: str, event: Event) -> None:
        with self._lock:
            found = [
                cid
                for cid, s in self.sessions.items()
                if s.ctx.plan is not None
                and s.ctx.plan.product == key.product
                and s.ctx.plan.firmware.version == version
                and getattr(s.ctx.devices.get(key.device), "state", "") == campaign.RUNNING
            ]
        for cid in found:
            self._post(cid, event)

    # ---- stepping ---------------------------------------------------------------------------

    def _session(self, cid: str) -> Session:
        session = self.sessions.get(cid)
        if session is None:
            raise CampaignError(f"no campaign {cid!r}; known: {', '.join(sorted(self.sessions))}")
        return session

    def _command(self, cid: str, event: Event, what: str) -> None:
        session = self._session(cid)
        if self._stopped:
            raise CampaignError(f"cannot {what} campaign {cid!r}: the platform is not running")
        if not self._post(cid, event):
            raise CampaignError(f"cannot {what} campaign {cid!r} in state {session.state!r}")

    def _post(self, cid: str, event: Event) -> bool:
        """Step now, or queue behind the step running on this thread (an effect that loops back,
        e.g. a DeployFirmware answered at once). True when the event was accepted (or queued)."""
        with self._lock:
            if self._stopped:
                return False
            if self._stepping:
                self._queue.append((cid, event))
                return True
            self._stepping = True
            try:
                accepted = self._step(cid, event)
                while self._queue and not self._stopped:
                    self._step(*self._queue.popleft())
            finally:
                self._stepping = False
            return accepted

    def _step(self, cid: str, event: Event) -> bool:
        session = self.sessions.get(cid)
        if session is None:
            return False
        effects = self.machine.step(session, event, self.runtime.clock.now())
        if effects is None:
            return False
        self.store.put(TABLE, cid, snapshot(session, self._converter))
        self.store.commit()
        for effect in effects:
            try:
                self._carry_out(cid, session, effect)
            except Exception:
                log.exception("campaign %s: effect %r failed", cid, effect)
        return True

    def _carry_out(self, cid: str, session: Session, effect: Effect) -> None:
        plan: Plan = session.ctx.plan
        if isinstance(effect, campaign.StartDevice):
            fw = plan.firmware
            burn = campaign.burn_windows(plan)
            deploy = ota.DeployFirmware(fw.version, fw.file_id, fw.size, fw.md5, burn)
            self.runtime.post("ota", DeviceKey(plan.product, effect.device), deploy)
        elif isinstance(effect, campaign.CancelDevice):
            self.runtime.post("ota", DeviceKey(plan.product, effect.device), ota.CancelFirmware())
        elif isinstance(effect, SetTimer):
            generation, deadline = (session.timers or {})[effect.name]
            self._arm(cid, effect.name, generation, deadline)
        elif isinstance(effect, Log):
            log.log(effect.level, "%s", effect.text)
        elif isinstance(effect, CampaignEnded):
            log.info("campaign %s %s: %s", cid, effect.state, effect.reason)
            if self.on_ended is not None:
                self.on_ended(cid, effect)
        elif not isinstance(effect, CancelTimer):  # stale generations are ignored when they fire
            log.error("campaign %s: no handler for effect %r", cid, effect)

    def _arm(self, cid: str, name: str, generation: int, deadline: float) -> None:
        self.runtime.scheduler.call_at(
            deadline, partial(self._fire, cid, TimerFired(name, generation))
        )

    def _fire(self, cid: str, event: TimerFired) -> None:
        self._post(cid, event)


def _status_of(session: Session) -> CampaignStatus:
    ctx: CampaignContext = session.ctx
    plan = ctx.plan
    if plan is None:
        raise CampaignError(f"campaign {session.key!r} was never launched")
    waves = tuple(
        WaveStatus(i + 1, len(plan.waves[i]), **counts)
        for i, counts in enumerate(campaign.wave_counts(ctx))
    )
    return CampaignStatus(
        str(session.key),
        session.state,
        plan.product,
        plan.firmware.version,
        ctx.wave + 1,
        waves,
        ctx.reason,
        tuple((n.at, n.text) for n in ctx.history),
    )


def stored_statuses(store: SessionStore) -> list[CampaignStatus]:
    """Every launched campaign as the store last saw it: works with the platform running (its
    commits are read) or stopped. Snapshots that no longer restore are skipped with a warning."""
    machine: Machine[CampaignContext] = Machine(campaign.SPEC)
    converter = cattrs.Converter()
    found: list[CampaignStatus] = []
    for cid, doc in store.items(TABLE):
        try:
            session = restore(machine, cid, doc, converter)
            found.append(_status_of(session))
        except (SnapshotError, CampaignError) as exc:
            log.warning("stored campaign %s skipped: %s", cid, exc)
    return found


def queue_start(store: SessionStore, spec: dict[str, Any], now: float) -> str:
    """Queue a checked declaration (`campaign_spec.parse` accepted it) for the running platform
    to start; returns the record's key. Raises CampaignError when its id is taken, by a stored
    campaign or by a start still queued (nothing is written then)."""
    cid = str(spec["id"])
    taken = store.get(TABLE, cid) is not None or any(
        d.get("campaign") == cid and d.get("action") == START for _, d in store.items(COMMANDS)
    )
    if taken:
        raise CampaignError(f"campaign {cid!r} exists; choose another --id")
    key = f"{now:017.6f}-{secrets.token_hex(4)}"
    store.put(COMMANDS, key, {"campaign": cid, "action": START, "spec": spec, "time": now})
    store.commit()
    return key


def queue_command(store: SessionStore, campaign_id: str, action: str, now: float) -> str:
    """Queue an operator command for the running platform; returns the record's key. Raises
    CampaignError for an unknown action or campaign (nothing is written then)."""
    if action not in ACTIONS:
        raise CampaignError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    if store.get(TABLE, campaign_id) is None:
        known = ", ".join(k for k, _ in store.items(TABLE)) or "none"
        raise CampaignError(f"no campaign {campaign_id!r}; known: {known}")
    key = f"{now:017.6f}-{secrets.token_hex(4)}"
    store.put(COMMANDS, key, {"campaign": campaign_id, "action": action, "time": now})
    store.commit()
    return key
