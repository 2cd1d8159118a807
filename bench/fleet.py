"""Fleet benchmark: one platform runtime and n simulated devices, a complete OTA exchange each.

Everything runs in one process over the memory broker, with a manual clock (virtual time, virtual
downloads, no HTTP):

- `engine`: the real platform, `Runtime("platform", broker.connect(...), [ota.FEATURE])`, whose
  `OfferFirmware` handler publishes a real `UpdateFirmware` (a fixed fake URL of a presigned URL's
  length) with `runtime.publish`, and one `DeployFirmware` posted per device. The devices are a
  bench-local `DeviceSimulator`: one transport subscribed to `$ota/update/+/+`, one session of
  the real `Machine(ota.DEVICE)` per `DeviceKey`, the real `Codec` both ways, and the device
  effects carried out in place: `Publish` is encoded and published on `$ota/report/{pid}/{dn}`,
  `StartDownload` posts `TransferStarted` (later waves post `TransferProgress` and
  `TransferDone`), `BurnFirmware` posts `BurnDone(True)`, timers go to the manual clock.
- `baseline`: the same exchange by hand-written dict-dispatch handlers: plain dicts of per-device
  state, `json.loads`/`json.dumps`, no engine, no cattrs, through the same kind of memory broker.
  It is the floor: the engine's cost over it is what the engine and the codec add.

Before timing, `check_equivalent` runs both variants for a few devices with the broker recording,
and requires the very same payloads on the very same topics in the same order per topic.

The exchange, in waves over all devices (so that all n sessions are live at once, as in a
fleet-wide rollout): `connect` (report_version -> report_version_rsp), `settle` (11 virtual
seconds: the devices' answered report timers come due), `deploy` (update_firmware -> progress
0 %), four `progress` waves one virtual second apart (25, 50, 75, 100 %: the device's cadence rule
sends at most one report a second), `finish` (transfer done -> burning -> burn done -> done ->
report_version of the new version -> rsp; the platform session ends in `succeeded`), `timers` (the
clock jumps an hour: every clock callback still scheduled runs, and none may change a state).
Twelve messages per device go through the broker. The cost per message is the CPU (and wall) time
of all six phases over those messages: timer upkeep is part of what the exchange costs.

Each (variant, size) runs in its own child process, so peak RSS (VmHWM) is that case's alone.

    python bench/fleet.py                        # 1k, 10k, 100k devices; ~5 minutes on 2 cores
    python bench/fleet.py --quick                # smoke run, a few seconds
    python bench/fleet.py --sizes 1000,20000 --json
    python bench/fleet.py --profile /tmp/fleet.pstats --sizes 10000   # cProfile the engine case
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import hashlib
import io
import json
import os
import platform
import pstats
import resource
import subprocess
import sys
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import transitions
from benchkit import cpu_model, parse_sizes

from iotfsm.adapters.codec import Codec
from iotfsm.adapters.mqtt.memory_broker import MemoryBroker, MemoryTransport
from iotfsm.adapters.runtime import Runtime
from iotfsm.fsm import (
    CancelTimer,
    Connected,
    Effect,
    Event,
    Log,
    Machine,
    ManualClock,
    Publish,
    Session,
    SetTimer,
    TimerFired,
)
from iotfsm.machines import DeviceKey, Message, ota
from iotfsm.machines.transfer import (
    CancelTransfer,
    StartDownload,
    TransferDone,
    TransferProgress,
    TransferStarted,
    percent,
    progress_due,
)

ENGINE = "engine"
FLOOR = "floor"
"""Not a variant: the creation floor (`floor_build`), measured beside the variants' creation."""
BASELINE = "baseline"
VARIANTS = (ENGINE, BASELINE)
LABELS = {ENGINE: "engine (Runtime + Machine + Codec)", BASELINE: "baseline (dict dispatch + json)"}

RATIO_TARGET = 3.0
IDLE_TARGET_BYTES = 1024
PEAK_TARGET_BYTES = 300 * 10**6
"""300 MB read strictly, as decimal megabytes (286 MiB)."""
LINEAR_TARGET = 1.2

PRODUCT = "PFLEET0001"
OLD = "1.0.0"
NEW = "2.0.0"
SIZE = 708_482
MD5 = hashlib.md5(b"iotfsm fleet benchmark firmware").hexdigest()
FILE_ID = f"fw-{MD5}"
FAKE_URL = (
    "https://fw-1250000000.cos.ap-guangzhou.myqcloud.com/ota/PFLEET0001/2.0.0/firmware.bin"
    "?sign=q-sign-algorithm%3Dsha1%26q-ak%3DAKIDxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx%26q-sign-time"
    "%3D1700000000%253B1700003600%26q-key-time%3D1700000000%253B1700003600%26q-header-list%3D"
    "host%26q-url-param-list%3D%26q-signature%3D0123456789abcdef0123456789abcdef01234567"
    "&x-cos-security-token=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab"
)
"""Never fetched: downloads are virtual. As long as a real presigned URL (~450 characters)."""
NOW = 1_700_000_000.0
WAVES = (25, 50, 75, 100)
MESSAGES_PER_DEVICE = 12
DOWN = "$ota/update/"
UP = "$ota/report/"
PHASES = ("connect", "settle", "deploy", "progress", "finish", "timers")
"""What a message costs: every phase of the exchange, and the timers it leaves behind."""
SETTLE = ota.RSP_TIMEOUT + 1.0
"""Virtual seconds between the fleet's connect and the rollout: the devices' report timers
come due (disarmed by the answers) before the deployment starts."""


def make_keys(start: int, stop: int, product: str = PRODUCT) -> list[DeviceKey]:
    return [DeviceKey(product, f"dev{i:06d}") for i in range(start, stop)]


def up_topics(keys: Iterable[DeviceKey]) -> list[str]:
    return [f"{UP}{key.product}/{key.device}" for key in keys]


# ---- the engine variant -----------------------------------------------------------------------


class DeviceSimulator:
    """Many devices behind one memory-broker connection: the real device machine and codec.

    A `Device` facade per device would bring a runtime and a transport each; here one object holds
    every device's OTA session and carries out the device effects itself. Steps run to completion
    one at a time (a local trampoline, like the runtime's), so an effect that posts an outcome
    (`TransferStarted`, `BurnDone`) is stepped after the current step, never inside it.

    Timers: at most one clock callback per (device, timer name) is pending. Re-arming a name whose
    callback is pending adds nothing; when the callback comes due it looks at the session's armed
    timer and either fires it or waits again for its (later) deadline. The device machine only
    ever re-arms a name with the same or a longer delay, which is what makes that exact.
    """

    def __init__(self, broker: MemoryBroker, clock: ManualClock, client_id: str) -> None:
        self.machine: Machine[ota.DeviceContext] = Machine(ota.DEVICE)
        self.codec = Codec([ota.FEATURE])
        self.clock = clock
        self.sessions: dict[DeviceKey, Session] = {}
        self.downloads: dict[DeviceKey, int] = {}
        """Devices with a virtual download under way, with the transfer's number."""
        self.transport: MemoryTransport = broker.connect(client_id)
        self._queue: deque[tuple[DeviceKey, Event]] = deque()
        self._draining = False
        self._pending: dict[str, set[DeviceKey]] = {}
        self._effects: dict[type[Effect], Callable[[DeviceKey, Session, Any], None]] = {
            Publish: self._publish,
            SetTimer: self._arm,
            CancelTimer: _ignore,
            StartDownload: self._start_download,
            CancelTransfer: self._cancel_download,
            ota.BurnFirmware: self._burn,
            ota.FirmwareAdopted: _ignore,
            Log: self._log,
        }
        self.logged = 0
        self.ignored = 0
        self.timers_fired = 0

    def start(self) -> None:
        self.transport.set_handlers(self.on_message, _no_connection_change)
        self.transport.subscribe(DOWN + "+/+", 1)
        self.transport.start()

    def add(self, key: DeviceKey) -> None:
        self.sessions[key] = self.machine.new_session(key, ota.DeviceContext(version=OLD))

    def on_message(self, topic: str, payload: bytes) -> None:
        _, product, device = topic.rsplit("/", 2)
        key = DeviceKey(product, device)
        if key not in self.sessions:
            raise LookupError(f"no simulated device {key}")
        self.post(key, self.codec.decode("ota", "down", payload))

    def post(self, key: DeviceKey, event: Event) -> None:
        self._queue.append((key, event))
        if self._draining:
            return
        self._draining = True
        try:
            queue, step, sessions, clock = self._queue, self.machine.step, self.sessions, self.clock
            while queue:
                k, ev = queue.popleft()
                session = sessions[k]
                effects = step(session, ev, clock.now())
                if effects is None:
                    self.ignored += 1
                    continue
                handlers = self._effects
                for effect in effects:
                    handlers[type(effect)](k, session, effect)
        finally:
            self._draining = False

    def _publish(self, key: DeviceKey, session: Session, effect: Publish) -> None:
        message = effect.message
        assert isinstance(message, Message)
        topic = f"{UP}{key.product}/{key.device}"
        self.transport.publish(topic, self.codec.encode(message), effect.qos)

    def _start_download(self, key: DeviceKey, session: Session, effect: StartDownload) -> None:
        self.downloads[key] = effect.transfer
        self.post(key, TransferStarted(effect.transfer, 0, effect.size))

    def _cancel_download(self, key: DeviceKey, session: Session, effect: CancelTransfer) -> None:
        if self.downloads.get(key) == effect.transfer:
            del self.downloads[key]

    def _burn(self, key: DeviceKey, session: Session, effect: ota.BurnFirmware) -> None:
        self.post(key, ota.BurnDone(True))

    def _log(self, key: DeviceKey, session: Session, effect: Log) -> None:
        self.logged += 1

    def _arm(self, key: DeviceKey, session: Session, effect: SetTimer) -> None:
        key = session.key  # the session's own key, not the one just parsed off a topic
        pending = self._pending.setdefault(effect.name, set())
        if key in pending:
            return
        pending.add(key)
        deadline = session.timers[effect.name][1] if session.timers else self.clock.now()
        self.clock.call_at(deadline, _Due(self, key, effect.name))

    def due(self, key: DeviceKey, name: str) -> None:
        self._pending[name].discard(key)
        timers = self.sessions[key].timers
        armed = timers.get(name) if timers else None
        if armed is None:
            return  # cancelled, or its state was left
        generation, deadline = armed
        if deadline > self.clock.now():
            self._pending[name].add(key)
            self.clock.call_at(deadline, _Due(self, key, name))
            return
        self.timers_fired += 1
        self.post(key, TimerFired(name, generation))

    # ---- the bench's waves: what a real download would report --------------------------------

    def progress(self, pct: int) -> None:
        downloads = self.downloads
        for key in list(downloads):
            self.post(key, TransferProgress(downloads[key], SIZE * pct // 100, SIZE))

    def finish_downloads(self) -> None:
        downloads, self.downloads = self.downloads, {}
        for key, transfer in downloads.items():
            self.post(key, TransferDone(transfer, "/virtual/firmware.bin"))


class _Due:
    """A clock callback of the simulator: a slotted callable is a quarter of the memory of a
    partial (which brings a bound method, an argument tuple and a keyword dict)."""

    __slots__ = ("key", "name", "simulator")

    def __init__(self, simulator: DeviceSimulator, key: DeviceKey, name: str) -> None:
        self.simulator = simulator
        self.key = key
        self.name = name

    def __call__(self) -> None:
        self.simulator.due(self.key, self.name)


def _ignore(key: DeviceKey, session: Session, effect: Any) -> None:
    """FirmwareAdopted (the application would persist the version) and CancelTimer (the pending
    callback finds the timer disarmed) need nothing from the simulator."""


def _no_connection_change(up: bool) -> None:
    """The simulator's one connection never drops in this benchmark."""


class EngineFleet:
    """The platform runtime and the simulated devices on one memory broker and one manual clock."""

    def __init__(self) -> None:
        self.clock = ManualClock(NOW)
        self.broker = MemoryBroker()
        self.finished_ok = 0
        self.finished_failed = 0
        self.runtime = Runtime(
            "platform",
            self.broker.connect("platform"),
            [ota.FEATURE],
            clock=self.clock,
            handlers={ota.OfferFirmware: self._offer, ota.OtaFinished: self._finished},
        )
        self.devices = DeviceSimulator(self.broker, self.clock, "fleet-devices")
        self.command = ota.DeployFirmware(NEW, FILE_ID, SIZE, MD5)

    def start(self) -> None:
        self.runtime.start()
        self.devices.start()

    def _offer(self, key: DeviceKey, effect: ota.OfferFirmware) -> None:
        offer = ota.UpdateFirmware(effect.size, effect.md5, FAKE_URL, effect.version)
        self.runtime.publish("ota", key, offer, 0)

    def _finished(self, key: DeviceKey, effect: ota.OtaFinished) -> None:
        if effect.ok:
            self.finished_ok += 1
        else:
            self.finished_failed += 1

    # ---- phases -------------------------------------------------------------------------------

    def create_platform(self, topics: Iterable[str]) -> None:
        """Idle platform sessions, keyed as the runtime keys them: a DeviceKey of the strings
        split off a topic, so that the platform owns its keys as it does in service."""
        session = self.runtime.session
        for topic in topics:
            _, product, device = topic.rsplit("/", 2)
            session("ota", DeviceKey(product, device))

    def create_devices(self, keys: Iterable[DeviceKey]) -> None:
        add = self.devices.add
        for key in keys:
            add(key)

    def connect(self, keys: Iterable[DeviceKey]) -> None:
        post = self.devices.post
        connected = Connected()
        for key in keys:
            post(key, connected)

    def deploy(self, keys: Iterable[DeviceKey]) -> None:
        post, command = self.runtime.post, self.command
        for key in keys:
            post("ota", key, command)

    def progress(self, pct: int) -> None:
        self.clock.advance(1.0)
        self.devices.progress(pct)

    def settle(self) -> int:
        return self.clock.advance(SETTLE)

    def finish(self) -> None:
        self.clock.advance(1.0)
        self.devices.finish_downloads()

    def drain_timers(self) -> int:
        return self.clock.advance(3600.0)

    # ---- checks -------------------------------------------------------------------------------

    def pending_timers(self) -> int:
        return self.clock.pending()

    def delivered(self) -> int:
        return self.broker.stats.delivered

    def outcome(self, keys: Sequence[DeviceKey]) -> dict[str, Any]:
        platform_states: dict[str, int] = {}
        for session in self.runtime.sessions["ota"].values():
            platform_states[session.state] = platform_states.get(session.state, 0) + 1
        device_states: dict[str, int] = {}
        versions: dict[str, int] = {}
        for key in keys:
            session = self.devices.sessions[key]
            device_states[session.state] = device_states.get(session.state, 0) + 1
            version = session.ctx.version
            versions[version] = versions.get(version, 0) + 1
        return {
            "platform_states": platform_states,
            "device_states": device_states,
            "device_versions": versions,
            "finished_ok": self.finished_ok,
            "finished_failed": self.finished_failed,
            "rejected": self.runtime.rejected + self.devices.logged,
        }


# ---- the baseline variant -----------------------------------------------------------------------


class BaselinePlatform:
    """The platform's side of the exchange by hand: a dict of dicts and a dict of handlers.

    It keeps what the engine's platform keeps and decides what it decides (answer every report;
    offer to a device that reports another version than the target; follow progress; succeed on
    the target version; re-arm the silence deadline on every report), without the engine."""

    def __init__(self, transport: MemoryTransport, clock: ManualClock) -> None:
        self.transport = transport
        self.clock = clock
        self.sessions: dict[tuple[str, str], dict[str, Any]] = {}
        self.dispatch: dict[str, Callable[[tuple[str, str], dict[str, Any]], None]] = {
            "report_version": self.report_version,
            "report_progress": self.report_progress,
        }
        self.finished_ok = 0
        self.rejected = 0

    def start(self) -> None:
        self.transport.set_handlers(self.on_message, _no_connection_change)
        self.transport.subscribe(UP + "+/+", 1)
        self.transport.start()

    def session(self, key: tuple[str, str]) -> dict[str, Any]:
        st = self.sessions.get(key)
        if st is None:
            st = self.sessions[key] = {
                "state": "idle",
                "reported": "",
                "target": "",
                "size": 0,
                "md5": "",
                "percent": 0,
                "silence_at": 0.0,
            }
        return st

    def on_message(self, topic: str, payload: bytes) -> None:
        _, product, device = topic.rsplit("/", 2)
        doc = json.loads(payload)
        handler = self.dispatch.get(doc.get("type"))
        if handler is None:
            self.rejected += 1
            return
        handler((product, device), doc)

    def send(self, key: tuple[str, str], doc: dict[str, Any], qos: int) -> None:
        payload = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        self.transport.publish(f"{DOWN}{key[0]}/{key[1]}", payload, qos)

    def report_version(self, key: tuple[str, str], doc: dict[str, Any]) -> None:
        version = doc["report"]["version"]
        st = self.session(key)
        st["reported"] = version
        rsp = {"type": "report_version_rsp", "result_code": 0, "result_msg": "success"}
        rsp["version"] = version
        self.send(key, rsp, 0)
        if st["state"] in ("idle", "succeeded"):
            return
        if version == st["target"]:
            st["state"] = "succeeded"
            st["percent"] = 100
            self.finished_ok += 1
            return
        self.offer(key, st)

    def deploy(self, key: tuple[str, str], version: str, size: int, md5: str) -> None:
        st = self.session(key)
        st["target"], st["size"], st["md5"], st["percent"] = version, size, md5, 0
        self.offer(key, st)

    def offer(self, key: tuple[str, str], st: dict[str, Any]) -> None:
        st["state"] = "offered"
        st["silence_at"] = self.clock.now() + ota.SILENCE_TIMEOUT
        offer = {"type": "update_firmware", "file_size": st["size"], "md5sum": st["md5"]}
        offer["url"] = FAKE_URL
        offer["version"] = st["target"]
        self.send(key, offer, 0)

    def report_progress(self, key: tuple[str, str], doc: dict[str, Any]) -> None:
        st = self.session(key)
        report = doc["report"]
        progress = report["progress"]
        if report["version"] != st["target"]:
            return
        state = progress["state"]
        if state == "downloading":
            st["state"] = "downloading"
            pct = int(progress["percent"])
            st["percent"] = max(st["percent"], min(100, pct))
        elif state in ("burning", "done"):
            st["state"] = "burning" if state == "burning" else "confirming"
        else:
            st["state"] = "failed"
        st["silence_at"] = self.clock.now() + ota.SILENCE_TIMEOUT


class BaselineDevices:
    """The devices' side by hand: report the version, take a valid offer, report progress at most
    once a second (and always 100 %), burn, report done and the new version."""

    def __init__(self, transport: MemoryTransport, clock: ManualClock) -> None:
        self.transport = transport
        self.clock = clock
        self.sessions: dict[tuple[str, str], dict[str, Any]] = {}
        self.downloads: dict[tuple[str, str], int] = {}
        self.dispatch: dict[str, Callable[[tuple[str, str], dict[str, Any]], None]] = {
            "report_version_rsp": self.report_version_rsp,
            "update_firmware": self.update_firmware,
        }
        self.rejected = 0

    def start(self) -> None:
        self.transport.set_handlers(self.on_message, _no_connection_change)
        self.transport.subscribe(DOWN + "+/+", 1)
        self.transport.start()

    def add(self, key: tuple[str, str]) -> None:
        self.sessions[key] = {
            "state": "offline",
            "version": OLD,
            "target": "",
            "size": 0,
            "md5": "",
            "transfer": 0,
            "rsp_at": 0.0,
            "stall_at": 0.0,
            "last_progress_at": float("-inf"),
        }

    def send(self, key: tuple[str, str], doc: dict[str, Any], qos: int) -> None:
        payload = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        self.transport.publish(f"{UP}{key[0]}/{key[1]}", payload, qos)

    def on_message(self, topic: str, payload: bytes) -> None:
        _, product, device = topic.rsplit("/", 2)
        key = (product, device)
        if key not in self.sessions:
            raise LookupError(f"no simulated device {key}")
        doc = json.loads(payload)
        handler = self.dispatch.get(doc.get("type"))
        if handler is None:
            self.rejected += 1
            return
        handler(key, doc)

    def connect(self, key: tuple[str, str]) -> None:
        st = self.sessions[key]
        st["state"] = "reporting"
        st["rsp_at"] = self.clock.now() + ota.RSP_TIMEOUT
        self.send(key, {"type": "report_version", "report": {"version": st["version"]}}, 1)

    def report_version_rsp(self, key: tuple[str, str], doc: dict[str, Any]) -> None:
        st = self.sessions[key]
        if st["state"] == "reporting":
            st["state"] = "idle"

    def update_firmware(self, key: tuple[str, str], doc: dict[str, Any]) -> None:
        st = self.sessions[key]
        version, size, md5, url = doc["version"], doc["file_size"], doc["md5sum"], doc["url"]
        valid = (
            isinstance(version, str)
            and 1 <= len(version) <= 32
            and type(size) is int
            and size > 0
            and isinstance(md5, str)
            and ota.MD5_HEX.fullmatch(md5) is not None
            and isinstance(url, str)
            and url
        )
        if not valid or st["state"] not in ("offline", "reporting", "idle"):
            self.rejected += 1
            return
        st["state"] = "downloading"
        st["target"], st["size"], st["md5"] = version, size, md5.lower()
        st["transfer"] += 1
        self.downloads[key] = st["transfer"]
        now = self.clock.now()
        st["stall_at"] = now + ota.STALL_TIMEOUT
        st["last_progress_at"] = now
        self.report_progress(key, st, percent(0, size))

    def report_progress(self, key: tuple[str, str], st: dict[str, Any], pct: int) -> None:
        progress = {"state": "downloading", "percent": str(pct), "result_code": "0"}
        progress["result_msg"] = ""
        report = {"progress": progress, "version": st["target"]}
        self.send(key, {"type": "report_progress", "report": report}, 0)

    def report_state(self, key: tuple[str, str], state: str, version: str) -> None:
        progress = {"state": state, "result_code": "0", "result_msg": ""}
        report = {"progress": progress, "version": version}
        self.send(key, {"type": "report_progress", "report": report}, 1)

    def progress(self, pct: int) -> None:
        now = self.clock.now()
        for key in list(self.downloads):
            st = self.sessions[key]
            done = SIZE * pct // 100
            shown = percent(done, st["size"])
            st["stall_at"] = now + ota.STALL_TIMEOUT
            if progress_due(shown, st["last_progress_at"], now):
                st["last_progress_at"] = now
                self.report_progress(key, st, shown)

    def finish_downloads(self) -> None:
        downloads, self.downloads = self.downloads, {}
        for key in downloads:
            st = self.sessions[key]
            st["state"] = "burning"
            self.report_state(key, "burning", st["target"])
            # the burn step answers at once: adopt the version, report done and the new version
            st["state"] = "idle"
            st["version"], st["target"] = st["target"], ""
            self.report_state(key, "done", st["version"])
            self.send(key, {"type": "report_version", "report": {"version": st["version"]}}, 1)


class BaselineFleet:
    def __init__(self) -> None:
        self.clock = ManualClock(NOW)
        self.broker = MemoryBroker()
        self.platform = BaselinePlatform(self.broker.connect("platform"), self.clock)
        self.devices = BaselineDevices(self.broker.connect("fleet-devices"), self.clock)

    def start(self) -> None:
        self.platform.start()
        self.devices.start()

    def create_platform(self, topics: Iterable[str]) -> None:
        session = self.platform.session
        for topic in topics:
            _, product, device = topic.rsplit("/", 2)
            session((product, device))

    def create_devices(self, keys: Iterable[DeviceKey]) -> None:
        add = self.devices.add
        for key in keys:
            add((key.product, key.device))

    def connect(self, keys: Iterable[DeviceKey]) -> None:
        connect = self.devices.connect
        for key in keys:
            connect((key.product, key.device))

    def deploy(self, keys: Iterable[DeviceKey]) -> None:
        deploy = self.platform.deploy
        for key in keys:
            deploy((key.product, key.device), NEW, SIZE, MD5)

    def progress(self, pct: int) -> None:
        self.clock.advance(1.0)
        self.devices.progress(pct)

    def settle(self) -> int:
        return self.clock.advance(SETTLE)

    def finish(self) -> None:
        self.clock.advance(1.0)
        self.devices.finish_downloads()

    def drain_timers(self) -> int:
        return self.clock.advance(3600.0)

    def pending_timers(self) -> int:
        return self.clock.pending()

    def delivered(self) -> int:
        return self.broker.stats.delivered

    def outcome(self, keys: Sequence[DeviceKey]) -> dict[str, Any]:
        platform_states: dict[str, int] = {}
        for st in self.platform.sessions.values():
            platform_states[st["state"]] = platform_states.get(st["state"], 0) + 1
        device_states: dict[str, int] = {}
        versions: dict[str, int] = {}
        for key in keys:
            st = self.devices.sessions[(key.product, key.device)]
            device_states[st["state"]] = device_states.get(st["state"], 0) + 1
            versions[st["version"]] = versions.get(st["version"], 0) + 1
        return {
            "platform_states": platform_states,
            "device_states": device_states,
            "device_versions": versions,
            "finished_ok": self.platform.finished_ok,
            "finished_failed": 0,
            "rejected": self.platform.rejected + self.devices.rejected,
        }


Fleet = EngineFleet | BaselineFleet


def make_fleet(variant: str) -> Fleet:
    if variant == ENGINE:
        return EngineFleet()
    if variant == BASELINE:
        return BaselineFleet()
    raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def exchange(fleet: Fleet, keys: Sequence[DeviceKey]) -> None:
    """The whole OTA exchange for `keys`, untimed (warm-up, equivalence check, profiling)."""
    fleet.connect(keys)
    fleet.settle()
    fleet.deploy(keys)
    for pct in WAVES:
        fleet.progress(pct)
    fleet.finish()


def check_equivalent(n: int = 3) -> None:
    """Both variants must put the same bytes on the same topics, or the ratio means nothing."""
    streams: dict[str, dict[tuple[str, str], list[bytes]]] = {}
    for variant in VARIANTS:
        fleet = make_fleet(variant)
        fleet.broker.record = []
        fleet.start()
        keys = make_keys(0, n)
        fleet.create_platform(up_topics(keys))
        fleet.create_devices(keys)
        exchange(fleet, keys)
        per_topic: dict[tuple[str, str], list[bytes]] = {}
        for delivery in fleet.broker.record:
            per_topic.setdefault((delivery.client_id, delivery.topic), []).append(delivery.payload)
        streams[variant] = per_topic
        count = sum(len(v) for v in per_topic.values())
        if count != MESSAGES_PER_DEVICE * n:
            raise AssertionError(f"{variant}: {count} messages for {n} devices:\n{per_topic}")
        done = fleet.outcome(keys)
        if done["platform_states"] != {"succeeded": n} or done["device_versions"] != {NEW: n}:
            raise AssertionError(f"{variant} did not complete the exchange: {done}")
    if streams[ENGINE] != streams[BASELINE]:
        for topic in sorted(set(streams[ENGINE]) | set(streams[BASELINE])):
            a, b = streams[ENGINE].get(topic), streams[BASELINE].get(topic)
            if a != b:
                raise AssertionError(f"the variants differ on {topic}:\n{a}\n!=\n{b}")


# ---- measuring one case in a child process --------------------------------------------------


def proc_status(field: str) -> int | None:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM) in bytes; None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss() -> int:
    hwm = proc_status("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB


@dataclasses.dataclass(frozen=True)
class Case:
    variant: str
    n: int
    trace_sample: int = 0
    """Fresh idle platform sessions made under tracemalloc after the run; 0: as many as n."""


class Timer:
    """Wall and CPU seconds of one phase."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def done(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_case(case: Case) -> dict[str, Any]:
    started = time.perf_counter()
    fleet = make_fleet(case.variant)
    fleet.start()
    # first calls build cattrs hooks and warm the allocator: a small fleet of another product
    warm = make_keys(0, min(200, max(20, case.n // 50)), "PWARMUP01")
    fleet.create_platform(up_topics(warm))
    fleet.create_devices(warm)
    exchange(fleet, warm)
    warm_delivered = fleet.delivered()
    keys = make_keys(0, case.n)
    # the harness's own objects stay out of the collector's way, as in bench/engine.py
    gc.collect()
    gc.freeze()
    result: dict[str, Any] = {"variant": case.variant, "devices": case.n}
    result.update(timed_run(fleet, keys))
    result["messages"] = fleet.delivered() - warm_delivered
    result.update(summarize_case(result))
    result.update(trace_idle(case))
    result["wall_s"] = time.perf_counter() - started
    return result


def timed_run(fleet: Fleet, keys: Sequence[DeviceKey]) -> dict[str, Any]:
    """Every phase timed on its own; RSS read between phases; the outcome checked."""
    n = len(keys)
    phases: dict[str, tuple[float, float]] = {}
    rss: dict[str, int | None] = {"start": proc_status("VmRSS")}

    def phase(name: str, run: Callable[[], object]) -> None:
        t = Timer()
        run()
        phases[name] = t.done()

    # topics made one at a time, as they would arrive: the platform keeps only its key strings
    phase(
        "create_platform",
        lambda: fleet.create_platform(f"{UP}{k.product}/{k.device}" for k in keys),
    )
    rss["platform"] = proc_status("VmRSS")
    phase("create_devices", lambda: fleet.create_devices(keys))
    phase("connect", lambda: fleet.connect(keys))
    phase("settle", fleet.settle)
    phase("deploy", lambda: fleet.deploy(keys))
    phase("progress", lambda: [fleet.progress(pct) for pct in WAVES])
    phase("finish", fleet.finish)
    rss["exchanged"] = proc_status("VmRSS")
    pending = fleet.pending_timers()
    before = fleet.outcome(keys)
    fired = 0

    def drain() -> None:
        nonlocal fired
        fired = fleet.drain_timers()

    phase("timers", drain)
    after = fleet.outcome(keys)
    result: dict[str, Any] = {
        "phases": phases,
        "peak_rss": peak_rss(),
        "rss_start": rss["start"],
        "timers_pending": pending,
        "timers_fired": fired,
        "outcome": after,
        "stable": before == after,
    }
    start, platform_rss, exchanged = rss["start"], rss["platform"], rss["exchanged"]
    if start is not None and platform_rss is not None and exchanged is not None:
        result["rss_idle_platform"] = (platform_rss - start) / n
        result["rss_per_device_exchanged"] = (exchanged - start) / n
    return result


def summarize_case(r: dict[str, Any]) -> dict[str, Any]:
    n, messages, phases = r["devices"], r["messages"], r["phases"]
    exchange_wall = sum(phases[p][0] for p in PHASES)
    exchange_cpu = sum(phases[p][1] for p in PHASES)
    create_wall = phases["create_platform"][0] + phases["create_devices"][0]
    create_cpu = phases["create_platform"][1] + phases["create_devices"][1]
    return {
        "exchange_s": exchange_wall,
        "exchange_cpu_s": exchange_cpu,
        "msg_per_s": messages / exchange_wall,
        "us_per_msg": exchange_wall / messages * 1e6,
        "cpu_us_per_msg": exchange_cpu / messages * 1e6,
        "exchange_us_per_device": exchange_wall / n * 1e6,
        "exchange_cpu_us_per_device": exchange_cpu / n * 1e6,
        "create_us_per_device": create_wall / n * 1e6,
        "create_cpu_us_per_device": create_cpu / n * 1e6,
    }


class _Slot:
    """The least a session can be: one slotted object per device and role."""

    __slots__ = ("key", "state")

    def __init__(self, key: tuple[str, str]) -> None:
        self.key = key
        self.state = "idle"


def floor_build(keys: Sequence[DeviceKey]) -> float:
    """µs per device for the least any Python fleet does per device, GC paused: split the
    topic into a key, one slotted object and one dict insert per role. It grows with the size
    too (dict tables and fresh strings outgrow the CPU caches), and shows how much of the
    engine's growth is CPython's and the machine's rather than the library's."""
    topics = [f"{UP}{k.product}/{k.device}" for k in keys]
    platform: dict[tuple[str, str], _Slot] = {}
    devices: dict[tuple[str, str], _Slot] = {}
    gc.collect()
    gc.disable()
    try:
        t = time.process_time()
        for topic in topics:
            _, product, device = topic.rsplit("/", 2)
            key = (product, device)
            platform[key] = _Slot(key)
        for k in keys:
            devices[k] = _Slot(k)
        return (time.process_time() - t) / len(keys) * 1e6
    finally:
        gc.enable()


def create_gc_paused(variant: str, keys: Sequence[DeviceKey]) -> float:
    """µs per device to create both roles' sessions in a fresh fleet with the cyclic collector
    paused: the library's own creation work. With the collector running, a 100k build also pays
    for CPython's full collections, which only start once enough objects are tracked (a 10k
    build sees few): amortized linear, but they tilt a 10k/100k ratio."""
    if variant == FLOOR:
        return floor_build(keys)
    fleet = make_fleet(variant)
    topics = [f"{UP}{k.product}/{k.device}" for k in keys]
    gc.collect()
    gc.disable()
    try:
        t = time.process_time()
        fleet.create_platform(topics)
        fleet.create_devices(keys)
        return (time.process_time() - t) / len(keys) * 1e6
    finally:
        gc.enable()
        del fleet


def fresh_build(variant: str, n: int) -> float:
    """One GC-paused build of `n` devices in this (fresh) process, after a small warm-up build:
    every size then pays for its memory alike. A second build in one process reuses the first
    one's memory when it is small (10k: ~0.01 page faults per device) but maps and faults it
    afresh when it is large (100k: ~0.18 per device, pymalloc returned its arenas), which made
    a 10k/100k ratio of best-of-N builds in one process grow by ~0.4 µs per device."""
    create_gc_paused(variant, make_keys(0, 200, "PWARMUP01"))  # hooks built, imports warm
    return create_gc_paused(variant, make_keys(0, n))


def creation_by_size(
    variant: str, sizes: Sequence[int], rounds: int, timeout: float
) -> dict[int, float]:
    """Best µs per device of `rounds` fresh builds at each size, each in its own child process,
    the sizes interleaved (10k, 100k, 10k, 100k, ...): this shared VM's speed drifts between
    processes and minutes (the same 10k build measured 1.6 and 2.9 µs per device a minute
    apart), which figures taken at different times would mistake for growth."""
    best = dict.fromkeys(sizes, float("inf"))
    for _ in range(rounds):
        for n in sizes:
            spec = json.dumps({"variant": variant, "n": n})
            cmd = [sys.executable, os.path.abspath(__file__), "--creation", spec]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"fleet creation {variant} n={n} failed:\n{proc.stderr}")
            best[n] = min(best[n], float(proc.stdout.strip().splitlines()[-1]))
    return best


def trace_idle(case: Case) -> dict[str, Any]:
    """Bytes per idle platform session, by tracemalloc: fresh sessions made in a fresh platform
    (its session dict grows as they are added, as in service). Once with the key as the platform
    gets it off the wire (a DeviceKey of two strings split from a topic: the platform owns them),
    once for keys made before tracing (session, context and dict slot only, as bench/engine.py
    counts)."""
    sample = case.n if case.trace_sample <= 0 else min(case.n, case.trace_sample)
    keys = make_keys(0, sample, "PTRACE0001")
    topics = up_topics(keys)
    pairs = [(key.product, key.device) for key in keys]
    result: dict[str, Any] = {"traced_sessions": sample}
    for label in ("traced_with_key", "traced_without_key"):
        fleet = make_fleet(case.variant)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        if label == "traced_with_key":
            fleet.create_platform(topics)
        elif isinstance(fleet, EngineFleet):
            session = fleet.runtime.session
            for key in keys:
                session("ota", key)
        else:
            platform_session = fleet.platform.session
            for pair in pairs:
                platform_session(pair)
        result[label] = (tracemalloc.get_traced_memory()[0] - before) / sample
        tracemalloc.stop()
        del fleet
    return result


def profile_case(n: int, path: str, top: int) -> str:
    """cProfile the engine variant's exchange (not the creation) for n devices."""
    fleet = EngineFleet()
    fleet.start()
    warm = make_keys(0, 100, "PWARMUP01")
    fleet.create_platform(up_topics(warm))
    fleet.create_devices(warm)
    exchange(fleet, warm)
    keys = make_keys(0, n)
    fleet.create_platform(up_topics(keys))
    fleet.create_devices(keys)
    profiler = cProfile.Profile()
    t = Timer()
    profiler.enable()
    exchange(fleet, keys)
    profiler.disable()
    wall, cpu = t.done()
    profiler.dump_stats(path)
    out = io.StringIO()
    print(
        f"engine exchange of {n:,} devices under cProfile: {wall:.2f} s wall, {cpu:.2f} s CPU;"
        f" profile in {path}",
        file=out,
    )
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# ---- orchestration --------------------------------------------------------------------------


def run_child(variant: str, n: int, trace_sample: int, timeout: float) -> dict[str, Any]:
    case = Case(variant, n, trace_sample)
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--case",
        json.dumps(dataclasses.asdict(case)),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"fleet case {variant} n={n} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def facts() -> dict[str, Any]:
    cpu = cpu_model()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "transitions": transitions.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_before": os.getloadavg()[0],
    }


def _get(results: Sequence[dict[str, Any]], variant: str, n: int) -> dict[str, Any]:
    return next(r for r in results if r["variant"] == variant and r["devices"] == n)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f}"


def _b(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def check_outcome(r: dict[str, Any]) -> str:
    """'' when every device completed the exchange and the stale timers changed nothing."""
    n, out = r["devices"], r["outcome"]
    problems = []
    if r["messages"] != MESSAGES_PER_DEVICE * n:
        problems.append(f"{r['messages']:,} messages, expected {MESSAGES_PER_DEVICE * n:,}")
    if out["platform_states"].get("succeeded", 0) < n:
        problems.append(f"platform states {out['platform_states']}")
    if out["device_versions"].get(NEW, 0) != n:
        problems.append(f"device versions {out['device_versions']}")
    if out["finished_ok"] < n:
        problems.append(f"{out['finished_ok']:,} finished ok")
    if out["rejected"]:
        problems.append(f"{out['rejected']:,} rejected or logged")
    if not r["stable"]:
        problems.append("firing the pending timers changed some state")
    return "; ".join(problems)


def verdicts(
    results: Sequence[dict[str, Any]], sizes: Sequence[int], facts: dict[str, Any] | None = None
) -> list[tuple[bool, str]]:
    out: list[tuple[bool, str]] = []
    for r in results:
        problem = check_outcome(r)
        if problem:
            out.append((False, f"{r['variant']} at {r['devices']:,}: {problem}"))
    ratios = [
        (
            n,
            _get(results, ENGINE, n)["cpu_us_per_msg"]
            / _get(results, BASELINE, n)["cpu_us_per_msg"],
            _get(results, ENGINE, n)["us_per_msg"] / _get(results, BASELINE, n)["us_per_msg"],
        )
        for n in sizes
    ]
    worst_n, worst, _ = max(ratios, key=lambda p: p[1])
    out.append(
        (
            worst <= RATIO_TARGET,
            f"engine CPU µs/message <= {RATIO_TARGET:g}x the dict-dispatch baseline, codec"
            f" included: worst {worst:.2f}x (at {worst_n:,}); "
            + ", ".join(f"{n:,}: {x:.2f}x (wall {w:.2f}x)" for n, x, w in ratios),
        )
    )
    big = _get(results, ENGINE, sizes[-1])
    traced, rss = big["traced_with_key"], big.get("rss_idle_platform")
    out.append(
        (
            traced <= IDLE_TARGET_BYTES and (rss is None or rss <= IDLE_TARGET_BYTES),
            f"idle platform session <= 1 KB at {sizes[-1]:,}: {traced:,.0f} B by tracemalloc"
            f" (key included; {big['traced_without_key']:,.0f} B without), {_b(rss)} B by RSS",
        )
    )
    peak = big["peak_rss"]
    out.append(
        (
            peak <= PEAK_TARGET_BYTES,
            f"peak RSS of the whole run <= {PEAK_TARGET_BYTES / 1e6:g} MB at {sizes[-1]:,} devices:"
            f" {peak / 1e6:,.1f} MB = {peak / 2**20:,.1f} MiB (VmHWM of the process that holds the"
            " platform and the simulated devices)",
        )
    )
    if len(sizes) >= 2:
        hi, lo = big, _get(results, ENGINE, sizes[-2])
        floor = (facts or {}).get("creation_floor_us_per_device", {})
        floor_hi, floor_lo = floor.get(str(sizes[-1])), floor.get(str(sizes[-2]))
        floor_text = (
            f"; a plain Python keyed build {floor_hi / floor_lo:.2f} (floor_build)"
            if floor_hi and floor_lo
            else ""
        )
        create = hi["create_gc_off_us_per_device"] / lo["create_gc_off_us_per_device"]
        create_gc = hi["create_cpu_us_per_device"] / lo["create_cpu_us_per_device"]
        step = hi["exchange_cpu_us_per_device"] / lo["exchange_cpu_us_per_device"]
        step_wall = hi["exchange_us_per_device"] / lo["exchange_us_per_device"]
        out.append(
            (
                max(create, step) <= LINEAR_TARGET,
                f"linear: CPU µs per device at {sizes[-1]:,} / at {sizes[-2]:,} <="
                f" {LINEAR_TARGET:g}: exchange {step:.2f} (wall {step_wall:.2f}), create"
                f" {create:.2f} with the GC paused ({create_gc:.2f} with it running)"
                f"{floor_text}",
            )
        )
    else:
        out.append((False, "linear: needs two sizes"))
    return out


def report(results: Sequence[dict[str, Any]], sizes: Sequence[int], info: dict[str, Any]) -> str:
    lines = [
        f"iotfsm fleet benchmark: OTA over the memory broker, {info['implementation']}"
        f" {info['python']}, transitions {info['transitions']}, {info['nproc']} CPU"
        f" ({info['cpu']}), {info['date']}, load average {info['load_before']:.2f} before,"
        f" {info.get('load_after', 0.0):.2f} after, run {info.get('run_s', 0.0):.0f} s",
        f"exchange per device: {MESSAGES_PER_DEVICE} messages (report_version, rsp,"
        " update_firmware, progress 0/25/50/75/100 %, burning, done, report_version, rsp)",
        "",
    ]
    head = (
        f"{'variant':<35} {'devices':>8} {'messages':>10} {'wall s':>7} {'CPU s':>7}"
        f" {'msg/s':>8} {'µs/msg':>13} {'create µs/dev':>14} {'exch µs/dev':>13}"
        f" {'peak RSS':>9} {'B/idle platform':>16} {'B/idle':>7} {'B/device':>9}"
        f" {'timers':>8}"
    )
    sub = (
        f"{'':<35} {'':>8} {'':>10} {'':>7} {'':>7} {'':>8} {'wall / CPU':>13} {'wall / CPU':>14}"
        f" {'wall / CPU':>13} {'MiB':>9} {'session, traced':>16} {'RSS':>7} {'run, RSS':>9}"
        f" {'pending':>8}"
    )
    lines += [head, sub, "-" * len(head)]
    for variant in VARIANTS:
        for n in sizes:
            r = _get(results, variant, n)
            lines.append(
                f"{LABELS[variant]:<35} {n:>8,} {r['messages']:>10,} {r['exchange_s']:>7.2f}"
                f" {r['exchange_cpu_s']:>7.2f} {r['msg_per_s']:>8,.0f}"
                f" {r['us_per_msg']:>6.2f} / {r['cpu_us_per_msg']:<5.2f}"
                f" {r['create_us_per_device']:>6.2f} / {r['create_cpu_us_per_device']:<6.2f}"
                f" {r['exchange_us_per_device']:>6.0f} / {r['exchange_cpu_us_per_device']:<5.0f}"
                f" {_mb(r['peak_rss']):>9} {_b(r['traced_with_key']):>16}"
                f" {_b(r.get('rss_idle_platform')):>7} {_b(r.get('rss_per_device_exchanged')):>9}"
                f" {r['timers_pending']:>8,}"
            )
    lines.append("")
    lines.append("Phases (wall s; µs per device in brackets):")
    for variant in VARIANTS:
        for n in sizes:
            r = _get(results, variant, n)
            parts = [
                f"{name} {wall:.2f} ({wall / n * 1e6:.1f})"
                for name, (wall, _cpu) in r["phases"].items()
            ]
            paused = r.get("create_gc_off_us_per_device")
            if paused is not None:
                parts.append(f"create with GC paused {paused:.2f} µs/device")
            lines.append(f"  {variant:<8} {n:>8,}: " + ", ".join(parts))
    lines.append("")
    lines.append("Engine / baseline (µs per message; CPU is the cost, wall adds other processes):")
    for n in sizes:
        e, b = _get(results, ENGINE, n), _get(results, BASELINE, n)
        lines.append(
            f"  {n:>8,}: CPU {e['cpu_us_per_msg'] / b['cpu_us_per_msg']:.2f}x"
            f" (engine {e['cpu_us_per_msg']:.2f} µs, baseline {b['cpu_us_per_msg']:.2f} µs);"
            f" wall {e['us_per_msg'] / b['us_per_msg']:.2f}x"
            f" (engine {e['us_per_msg']:.2f} µs, baseline {b['us_per_msg']:.2f} µs)"
        )
    lines.append("")
    lines.append("CPU µs/message of every run (the cheapest is shown above):")
    for variant in VARIANTS:
        for n in sizes:
            runs = _get(results, variant, n).get("repeats_cpu_us_per_msg", [])
            lines.append(f"  {variant:<8} {n:>8,}: " + ", ".join(f"{x:.2f}" for x in runs))
    lines.append("")
    lines.append(
        "B/device run = RSS growth from before creation to the end of the exchange, per device"
        " (both roles' sessions, keys, pending timers); timers pending = clock callbacks"
        " scheduled and not yet due at the end of the exchange (all fire, stale, in `timers`)."
    )
    lines.append("")
    lines.append("Targets:")
    for ok, text in verdicts(results, sizes, info):
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {text}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = p.add_argument
    add(
        "--sizes",
        type=parse_sizes,
        default=None,
        help="devices per case; default 1000,10000,100000",
    )
    add("--quick", action="store_true", help="small sizes (smoke test)")
    add("--json", action="store_true", help="print one JSON document instead of the table")
    add("--trace-sample", type=int, default=0, help="idle sessions under tracemalloc (0: n)")
    add("--profile", metavar="PATH", help="cProfile the engine exchange at the largest size")
    add("--top", type=int, default=25, help="functions shown per profile listing")
    add("--timeout", type=float, default=900.0, help="seconds per child case")
    add(
        "--repeat",
        type=int,
        default=0,
        help="runs per (variant, size), the cheapest kept (default 3 at every size)",
    )
    add("--render", metavar="JSON", help="print the table of a run saved with --json")
    add("--case", help=argparse.SUPPRESS)
    add("--creation", help=argparse.SUPPRESS)
    return p


def main(argv: Iterable[str] | None = None) -> int:
    args = parser().parse_args(None if argv is None else list(argv))
    if args.creation:
        spec = json.loads(args.creation)
        print(fresh_build(spec["variant"], spec["n"]))
        return 0
    if args.case:
        print(json.dumps(run_case(Case(**json.loads(args.case)))))
        return 0
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        print(report(saved["results"], saved["sizes"], saved["facts"]))
        return 0
    sizes = args.sizes or ([200, 1_000] if args.quick else [1_000, 10_000, 100_000])
    if args.profile:
        print(profile_case(sizes[-1], args.profile, args.top))
        return 0
    info = facts()
    started = time.perf_counter()
    check_equivalent()
    results = []
    for n in sizes:
        # the same number of runs at every size: the cheapest of 3 against a single run would
        # tilt the linearity ratio (other processes only ever make a run slower)
        repeat = args.repeat or (1 if args.quick else 3)
        runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
        for _ in range(repeat):  # interleaved, so that a burst of load hits both variants
            for variant in VARIANTS:
                runs[variant].append(run_child(variant, n, args.trace_sample, args.timeout))
        for variant in VARIANTS:
            # other processes only ever make a run slower: keep the cheapest, note the others
            best = min(runs[variant], key=lambda r: r["exchange_cpu_s"])
            best["repeats_cpu_us_per_msg"] = [r["cpu_us_per_msg"] for r in runs[variant]]
            results.append(best)
    # creation with the GC paused: one fresh process per build, the sizes interleaved
    rounds = 1 if args.quick else 5
    for variant in VARIANTS:
        per_size = creation_by_size(variant, sizes, rounds, args.timeout)
        for r in results:
            if r["variant"] == variant:
                r["create_gc_off_us_per_device"] = per_size[r["devices"]]
    floor = creation_by_size(FLOOR, sizes, rounds, args.timeout)
    info["creation_floor_us_per_device"] = {str(n): us for n, us in floor.items()}
    info["run_s"] = time.perf_counter() - started
    info["load_after"] = os.getloadavg()[0]
    if args.json:
        doc = {
            "facts": info,
            "sizes": sizes,
            "results": results,
            "targets": [{"pass": ok, "text": text} for ok, text in verdicts(results, sizes, info)],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(report(results, sizes, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
