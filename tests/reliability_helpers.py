"""Shared pieces of the reliability tests (`test_reliability_*.py`).

- `RESTING` says, per declared machine, which non-final states wait for the other side by design
  (idle, listening, offline). Every other non-final state is *waiting*: it must have a live timer,
  or a transfer or burn in flight. `check_declarations` holds the declarations to that: each
  waiting state has a timer edge or an outcome edge to leave by.
- `World` is `iotfsm.testing.Pair` plus what the reliability tests observe: every outcome a device
  or the platform reports, ERROR records and thread exceptions (an exception is a failure even
  when the library catches and logs it), restarts of either role, and `drive`, which moves the
  virtual clock from one timer deadline to the next until nothing is pending, checking the
  invariants at every quiet moment on the way.
- `Scenario` runs one flow of one feature for a batch of devices and says how it ended, so the
  fault tests can compare a run with faults to a clean run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from iotfsm.device import Device
from iotfsm.fsm import MachineSpec, timer
from iotfsm.fsm.events import TIMER_PREFIX
from iotfsm.machines import all_features
from iotfsm.machines.feature import DeviceKey, Direction
from iotfsm.machines.ota import BurnDone, FirmwareRejected, FirmwareVerified, OtaFinished
from iotfsm.machines.transfer import TransferDone, TransferFailed
from iotfsm.platform import Platform
from iotfsm.testing import Pair

SOAK = os.environ.get("IOTFSM_SOAK", "") not in ("", "0")
"""`IOTFSM_SOAK=1` runs the long variants: more examples, more kill points, more seeds."""

PRODUCT = "REL0000001"
DIRECTIONS: tuple[Direction, ...] = ("up", "down")

# ---- waiting and resting states --------------------------------------------------------------

RESTING: dict[str, frozenset[str]] = {
    "log_level.device": frozenset({"offline", "listening"}),
    "log_level.platform": frozenset({"default", "assigned"}),
    "ota.device": frozenset({"offline", "idle"}),
    "ota.platform": frozenset({"idle", "succeeded", "failed"}),
    "resource_upload.device": frozenset({"offline", "idle"}),
    "resource_upload.platform": frozenset({"idle"}),
    "resource_download.device": frozenset({"offline", "idle"}),
    "resource_download.platform": frozenset({"idle"}),
    "config.device": frozenset({"offline", "listening"}),
    "config.platform": frozenset({"unknown", "empty", "serving", "disabled"}),
    "broadcast.device": frozenset({"offline", "listening"}),
    "broadcast.platform": frozenset({"ready"}),
    "shadow.device": frozenset({"offline", "synced"}),
    "shadow.platform": frozenset({"empty", "kept"}),
    # `answering` waits for the application (the forget timer ends it), `waiting` for answers
    # (the deadline timer ends it)
    "rrpc.device": frozenset({"idle"}),
    "rrpc.platform": frozenset({"idle"}),
}
"""States that wait for the other side (a message, a command, a connection) by design."""

IN_FLIGHT: dict[str, frozenset[str]] = {
    "ota.device": frozenset({"downloading", "verifying", "burning"}),
    "resource_upload.device": frozenset({"uploading"}),
    "resource_download.device": frozenset({"downloading"}),
}
"""Waiting states that may be left by an effect's outcome (a transfer or a burn on a thread)
rather than a timer."""

OUTCOMES = frozenset(
    e.trigger for e in (TransferDone, TransferFailed, BurnDone, FirmwareVerified, FirmwareRejected)
)


def specs() -> list[MachineSpec[Any]]:
    return [spec for f in all_features() for spec in (f.device, f.platform)]


class UndeclaredMachineError(AssertionError):
    """A declared machine the tables above do not know: says which, and what to add."""


def resting_states(spec: MachineSpec[Any]) -> frozenset[str]:
    """`RESTING[spec.name]`, or one error naming the machine when a new one is not listed (a
    new feature fails here with what to do, not with a KeyError deep in a world's checks)."""
    try:
        return RESTING[spec.name]
    except KeyError:
        raise UndeclaredMachineError(
            f"machine {spec.name!r} is not in RESTING (tests/reliability_helpers.py): add the "
            f"non-final states of {sorted(set(spec.state_names) - spec.final_states)} that wait "
            "for the other side by design; every other one must have a timer edge"
        ) from None


def waiting_states(spec: MachineSpec[Any]) -> frozenset[str]:
    rest = resting_states(spec) | spec.final_states
    return frozenset(s for s in spec.state_names if s not in rest)


def check_declarations() -> list[str]:
    """Problems with the tables above against the declarations ([] when they agree)."""
    problems: list[str] = []
    by_name = {s.name: s for s in specs()}
    for name in sorted(set(RESTING) - set(by_name)):
        problems.append(f"RESTING lists {name!r}, which no feature declares")
    for table, rows in (("RESTING", RESTING), ("IN_FLIGHT", IN_FLIGHT)):
        for name, states in rows.items():
            unknown = states - set(by_name[name].state_names) if name in by_name else set()
            if unknown:
                problems.append(f"{table}[{name!r}] names states it does not have: {unknown}")
    for spec in specs():
        try:
            resting_states(spec)
        except UndeclaredMachineError as exc:
            problems.append(str(exc))
            continue
        exits: dict[str, set[str]] = {}
        for source, on in spec.expanded():
            exits.setdefault(source, set()).add(on.trigger_name)
        for state in waiting_states(spec):
            triggers = exits.get(state, set())
            timed = any(t.startswith(TIMER_PREFIX) for t in triggers)
            outcome = bool(triggers & OUTCOMES) and state in IN_FLIGHT.get(spec.name, ())
            if not (timed or outcome):
                problems.append(f"{spec.name} {state!r} waits but has no timer or outcome edge")
    return problems


# ---- the world -------------------------------------------------------------------------------


class ErrorLog(logging.Handler):
    """Collects ERROR records of the library and exceptions escaping any thread."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []
        self._hook = threading.excepthook

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        self.records.append(f"{record.name}: {text}")

    def thread_hook(self, args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        self.records.append(f"thread {name}: {args.exc_type.__name__}: {args.exc_value}")

    def __enter__(self) -> ErrorLog:
        logging.getLogger("iotfsm").addHandler(self)
        threading.excepthook = self.thread_hook
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("iotfsm").removeHandler(self)
        threading.excepthook = self._hook


@attrs.define
class Seen:
    """What one device and the platform reported about it."""

    finished: list[tuple[bool, str, int]] = attrs.Factory(list)
    """OtaFinished: (ok, version, code)."""
    delivered: list[tuple[str, str]] = attrs.Factory(list)
    """on_resource: (name, md5 of the file's bytes)."""
    uploaded: list[tuple[str, bool, int]] = attrs.Factory(list)
    """on_upload_finished: (name, ok, code)."""
    configs: list[dict[str, Any]] = attrs.Factory(list)
    levels: list[int] = attrs.Factory(list)


class World(Pair):
    """A platform and devices on the memory broker and a manual clock, observed closely."""

    def __init__(self, root: Path, **platform_options: Any) -> None:
        self.root = Path(root)
        self.seen: dict[str, Seen] = {}
        self.errors = ErrorLog().__enter__()
        self.success_without_report: list[str] = []
        self._platform_options = platform_options
        super().__init__(root, product=PRODUCT, on_ota_finished=self._finished, **platform_options)
        self._options: dict[str, dict[str, Any]] = {}
        self._quiet_for = 0.003  # the memory broker delivers synchronously: a glance suffices

    # -- roles --

    def device(self, name: str, version: str = "1.0", **options: Any) -> Device:
        seen = self.seen.setdefault(name, Seen())
        hooks: dict[str, Any] = {
            "on_resource": lambda path, res: seen.delivered.append((res, md5_of(path))),
            "on_upload_finished": lambda res, ok, code, msg: seen.uploaded.append((res, ok, code)),
            "on_config": seen.configs.append,
            "on_log_level": seen.levels.append,
        }
        hooks.update(options)
        self._options[name] = {"version": version, **hooks}
        return super().device(name, version, **hooks)

    def find(self, name: str) -> Device:
        return next(d for d in reversed(self.devices) if d.key.device == name)

    def restart_device(self, name: str) -> Device:
        """Stop the device and start a new one on the same state directory, as after a reboot
        (the version it adopted comes back from the state directory)."""
        old = self.find(name)
        old.stop()
        self.devices.remove(old)
        options = dict(self._options[name])
        version = options.pop("version")
        return super().device(name, version, **options).start()

    def restart_platform(self) -> Platform:
        """Stop the platform and start a new one on the same data directory."""
        self.platform.stop()
        self.platform = Platform(
            self._target,
            data_dir=self.root / "platform",
            clock=self.clock,
            mqtt=self._mqtt,
            on_ota_finished=self._finished,
            **self._platform_options,
        ).start()
        return self.platform

    def _finished(self, key: DeviceKey, effect: OtaFinished) -> None:
        self.seen.setdefault(key.device, Seen()).finished.append(
            (effect.ok, effect.version, effect.code)
        )
        if effect.ok and not self.reported_version(key.device, effect.version):
            self.success_without_report.append(f"{key.device} {effect.version}")

    def reported_version(self, device: str, version: str) -> bool:
        """Whether the platform has received report_version `version` from `device`."""
        topic = f"$ota/report/{self.product}/{device}"
        for delivery in list(self.broker.record or []):
            payload = delivery.payload
            if delivery.topic == topic and b'"report_version"' in payload:  # noqa: SIM102
                if f'"version":"{version}"'.encode() in payload:
                    return True
        return False

    # -- driving --

    def drive(
        self,
        until: Callable[[], bool] | None = None,
        *,
        max_jumps: int = 400,
        check: bool = True,
        timeout: float = 60.0,
    ) -> None:
        """Let everything run; whenever all is quiet, check the invariants and jump the clock
        to the next timer deadline. Ends when `until()` holds, or (without `until`) when
        nothing is pending any more. Fails on a broken invariant or a stuck world."""
        deadline = time.monotonic() + timeout
        jumps = 0
        while True:
            while not self.quiet():
                if time.monotonic() > deadline:
                    raise AssertionError(f"the world never became quiet in {timeout:g} s")
                time.sleep(0.002)
            if check:
                self.check()
            if until is not None and until():
                return
            due = self.clock.next_deadline()
            if due is None:
                if until is None:
                    return
                raise AssertionError("nothing is pending any more, yet the goal was not reached")
            jumps += 1
            if jumps > max_jumps or time.monotonic() > deadline:
                raise AssertionError(f"still not at rest after {jumps} clock jumps")
            self.clock.advance(max(0.0, due - self.clock.now()))

    # -- invariants --

    def check(self) -> None:
        problems = [*self.stuck(), *self.stray_files()]
        problems += [f"error: {e}" for e in self.errors.records]
        problems += [f"success without report: {s}" for s in self.success_without_report]
        if problems:
            raise AssertionError("invariants broken:\n  " + "\n  ".join(problems))

    def stuck(self) -> list[str]:
        """Sessions in a waiting state with no live timer and nothing in flight (call while
        quiet: then no transfer or burn thread is running)."""
        found: list[str] = []
        now = self.clock.now()
        for runtime in self.runtimes:
            for _, session in runtime.all_sessions():
                spec = session.machine.spec
                if session.state not in waiting_states(spec):
                    continue
                live = [n for n, (_, at) in (session.timers or {}).items() if at >= now]
                if not live:
                    found.append(
                        f"{spec.name} {session.key.device} stuck in {session.state!r} "
                        f"(timers {session.timers})"
                    )
        return found

    def stray_files(self) -> list[str]:
        """Files outside the platform's data directory and the devices' state directories."""
        allowed = {str(self.root / d) for d in ("platform", "devices", "sources")}
        stray = []
        # checked after every step: the allowed directories, where every file is allowed, are
        # not walked at all (they hold most of the files)
        for top, dirs, files in os.walk(self.root.parent):
            dirs[:] = [d for d in dirs if os.path.join(top, d) not in allowed]
            stray += [f"stray file {Path(top, name)}" for name in files]
        return stray

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.errors.__exit__()


def md5_of(path: Path) -> str:
    return md5(Path(path).read_bytes())


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# ---- scenarios -------------------------------------------------------------------------------

OTA_IMAGE = blob(150_000, 1)
RESOURCE = blob(120_000, 2)
UPLOAD = blob(90_000, 3)
CONFIG_V1 = {"server": "10.0.0.1", "port": 8080}
LEVEL = 3


@attrs.frozen
class Scenario:
    """One flow of one feature, for a batch of devices.

    `connect` starts the devices, `trigger` sets the flow off once they are connected and quiet,
    `outcome` says how it ended for one device (comparable between devices), `failed` whether it
    ended in a failure that was clearly reported. `lost_push` names the downlink types that have
    no acknowledgement in Tencent's protocol: when one is dropped, the device keeps what it had
    until it asks again after its next reconnect."""

    feature: str
    connect: Callable[[World, Sequence[str]], None]
    trigger: Callable[[World, Sequence[str]], None]
    outcome: Callable[[World, str], tuple[Any, ...]]
    failed: Callable[[World, str], bool]
    lost_push: frozenset[str] = frozenset()


def _start(world: World, names: Sequence[str]) -> None:
    for name in names:
        world.device(name).start()


def _nothing(world: World, names: Sequence[str]) -> None:
    pass


def _deploy(world: World, names: Sequence[str]) -> None:
    world.platform.deploy_firmware(world.product, list(names), "2.0", OTA_IMAGE)


def own_image(name: str) -> bytes:
    """A firmware image of this device's own, so that a fault hook can cut its download alone."""
    return blob(150_000, zlib.crc32(name.encode()))


def _deploy_own_and_cut(world: World, names: Sequence[str]) -> None:
    """Each device's own image, cut at 60 kB on its first download. The cut is set before the
    offer goes out: a device already connected starts its download on a thread the moment the
    offer arrives, and a GET that begins before `cut_at` never meets the cut."""
    for name in names:
        ref = world.platform.publish_image(own_image(name))
        world.platform.files.hooks.cut_at(ref.file_id, [60_000])
        world.platform.deploy_firmware(
            world.product, [name], "2.0", world.platform.image_path(ref.file_id)
        )


def _start_with_a_failing_burn(world: World, names: Sequence[str]) -> None:
    for name in names:
        burns: list[str] = []

        def burn(image: Path, version: str, burns: list[str] = burns) -> None:
            burns.append(version)
            if len(burns) == 1:
                raise RuntimeError("flash busy")

        world.device(name, burn=burn).start()


def _ota_outcome(world: World, name: str) -> tuple[Any, ...]:
    device = world.find(name)
    status = world.platform.firmware_status(world.product, name)
    image = device.state_dir / "ota" / "firmware-2.0.bin"
    kept = md5_of(image) in (md5(OTA_IMAGE), md5(own_image(name))) if image.exists() else None
    return (
        device.version,
        device.state("ota"),
        status.state,
        status.percent,
        world.seen[name].finished,
        kept,
    )


def _ota_failed(world: World, name: str) -> bool:
    status = world.platform.firmware_status(world.product, name)
    return status.state == "failed" and [f[0] for f in world.seen[name].finished] == [False]


def _offer(world: World, names: Sequence[str]) -> None:
    for name in names:  # offered before the devices start: register them first
        world.platform.register_device(world.product, name)
    world.platform.offer_resource(world.product, list(names), "faces.db", RESOURCE)


def _start_then_nothing_offered(world: World, names: Sequence[str]) -> None:
    _offer(world, names)
    _start(world, names)


def _delivery_outcome(world: World, name: str) -> tuple[Any, ...]:
    device = world.find(name)
    [delivery] = world.platform.deliveries(world.product, name)
    return (
        world.seen[name].delivered,
        device.state("resource_download"),
        world.platform.runtime.session("resource_download", device.key).state,
        (delivery.state, delivery.code),
    )


def _delivery_failed(world: World, name: str) -> bool:
    [delivery] = world.platform.deliveries(world.product, name)
    return delivery.state == "fail" and delivery.code != 0


def _upload(world: World, names: Sequence[str]) -> None:
    source = world.root / "sources" / "capture.bin"
    if not source.exists():
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(UPLOAD)
    for name in names:
        world.find(name).upload(source, "capture.bin")


def _upload_outcome(world: World, name: str) -> tuple[Any, ...]:
    device = world.find(name)
    infos = world.platform.uploads(world.product, name)
    stored = [(i.state, i.stored, md5_of(Path(i.path)) if i.stored else None) for i in infos]
    return (
        world.seen[name].uploaded,
        device.state("resource_upload"),
        world.platform.runtime.session("resource_upload", device.key).state,
        stored,
    )


def _upload_failed(world: World, name: str) -> bool:
    uploaded = world.seen[name].uploaded
    return bool(uploaded) and not uploaded[-1][1]


def _set_config(world: World, names: Sequence[str]) -> None:
    world.platform.set_config(world.product, CONFIG_V1)


def _config_outcome(world: World, name: str) -> tuple[Any, ...]:
    device = world.find(name)
    return (device.config, world.seen[name].configs, device.config_status.result)


def _never(world: World, name: str) -> bool:
    return False


def _set_level(world: World, names: Sequence[str]) -> None:
    for name in names:
        world.platform.set_log_level(world.product, name, LEVEL)


def _level_outcome(world: World, name: str) -> tuple[Any, ...]:
    device = world.find(name)
    return (device.log_level, world.platform.log_level(world.product, name))


SCENARIOS: dict[str, Scenario] = {
    "ota": Scenario("ota", _start, _deploy, _ota_outcome, _ota_failed),
    "ota_cut_once": Scenario("ota", _start, _deploy_own_and_cut, _ota_outcome, _ota_failed),
    "ota_burn_fails_once": Scenario(
        "ota", _start_with_a_failing_burn, _deploy, _ota_outcome, _ota_failed
    ),
    "resource_download": Scenario(
        "resource_download", _start, _offer, _delivery_outcome, _delivery_failed
    ),
    "resource_download_asked": Scenario(
        "resource_download",
        _start_then_nothing_offered,
        _nothing,
        _delivery_outcome,
        _delivery_failed,
    ),
    "resource_upload": Scenario(
        "resource_upload", _start, _upload, _upload_outcome, _upload_failed
    ),
    "config": Scenario("config", _start, _set_config, _config_outcome, _never, frozenset({"push"})),
    "log_level": Scenario(
        "log_level",
        _start,
        _set_level,
        _level_outcome,
        _never,
        frozenset({"get_log_level"}),
    ),
}


def run_scenario(world: World, scenario: Scenario, names: Sequence[str]) -> None:
    scenario.connect(world, names)
    world.drive(until=lambda: True)
    scenario.trigger(world, names)
    world.drive()


def topics(feature: str, device: str, product: str = PRODUCT) -> dict[str, str]:
    """The concrete up and down topics of a feature for one device."""
    spec = next(f for f in all_features() if f.name == feature)
    return {
        "up": spec.up_topic.format(product=product, device=device),
        "down": spec.down_topic.format(product=product, device=device),
    }


def occurrences(world: World, feature: str, device: str) -> dict[tuple[str, str], int]:
    """How many messages of each (direction, type) went between the device and the platform."""
    import json

    counts: dict[tuple[str, str], int] = {}
    wanted = {v: k for k, v in topics(feature, device, world.product).items()}
    types: dict[str, set[str]] = {
        d: {m.TYPE for f in all_features() if f.name == feature for m in f.messages(d)}
        for d in DIRECTIONS
    }
    for delivery in world.broker.record or []:
        direction = wanted.get(delivery.topic)
        if direction is None:
            continue
        kind = json.loads(delivery.payload).get("type")
        if kind in types[direction]:
            counts[(direction, kind)] = counts.get((direction, kind), 0) + 1
    return counts


__all__ = [
    "IN_FLIGHT",
    "PRODUCT",
    "RESTING",
    "SCENARIOS",
    "SOAK",
    "ErrorLog",
    "Scenario",
    "Seen",
    "UndeclaredMachineError",
    "World",
    "blob",
    "check_declarations",
    "md5_of",
    "occurrences",
    "resting_states",
    "run_scenario",
    "timer",
    "topics",
    "waiting_states",
]
