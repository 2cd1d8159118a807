"""A campaign as an operator declares it: one table, read from the desired-state TOML
(`[[campaigns]]`) or built from `iotfsm campaign start`'s flags, checked the same way.

    id = "spring-2.0"                # the operator's name for it; starting it twice is refused
    product = "P"
    version = "2.0"
    file = "fw-2.0.bin"              # relative to the TOML file (absolute from the command line)
    devices = ["*"]                  # or names; split by wave_counts or wave_percents,
    wave_percents = [10, 30]         # ... or give explicit groups: waves = [["D1"], ["D2", "D3"]]
    advance = "threshold"            # or "immediate", "operator"
    success_percent = 90
    rate = 60                        # per minute, or { per_minute, growth, every, max_per_minute }
    abort = [{ percent = 10, min_finished = 20, codes = [-4, -5], timeouts = false }]
    device_timeout = 3600            # seconds
    windows = [{ start = "02:00", end = "04:00", tz = "Europe/Berlin" }]
    intervals = [{ start = 2026-12-05T02:00:00Z, end = 2026-12-05T04:00:00Z }]
    burn = "wait"                    # "allow": burn whenever the image is ready
    cancel_on_abort = false
    start_at = 2026-12-05T02:00:00Z
    state = "running"                # or "paused", "cancelled" (TOML only)

Everything is checked before anything is started, and an error names the entry and the field.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from .adapters.topics import DEVICE_NAME, PRODUCT_ID
from .campaigns import CampaignSettings
from .machines.campaign import (
    ADVANCE_MODES,
    BURN_RULES,
    AbortRule,
    CampaignError,
    Firmware,
    Plan,
    Rate,
    check_plan,
    plan_waves,
)
from .machines.ota import version_problem
from .machines.windows import DailyWindow, Interval

CAMPAIGN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
STATES = ("running", "paused", "cancelled")
"""What an operator may declare a campaign to be; reconcile moves it there."""
KEYS = {
    "id",
    "product",
    "version",
    "file",
    "devices",
    "wave_counts",
    "wave_percents",
    "waves",
    "advance",
    "success_percent",
    "rate",
    "abort",
    "device_timeout",
    "windows",
    "intervals",
    "burn",
    "cancel_on_abort",
    "start_at",
    "state",
}


class CampaignSpecError(ValueError):
    """A declaration that cannot become a campaign; the message names the entry and the field."""


@attrs.frozen
class CampaignSpec:
    """A checked declaration. `devices` with `counts` or `percents` are split when the platform
    starts it (`("*",)`: every registered device of the product, in name order); `waves` are
    explicit groups."""

    id: str
    product: str
    version: str
    file: Path
    settings: CampaignSettings
    devices: tuple[str, ...] = ("*",)
    counts: tuple[int, ...] = ()
    percents: tuple[float, ...] = ()
    waves: tuple[tuple[str, ...], ...] = ()
    state: str = "running"

    def split(self, registered: Sequence[str]) -> tuple[tuple[str, ...], ...]:
        """The waves, given the product's registered devices (used for `devices = ["*"]`)."""
        if self.waves:
            return self.waves
        devices = sorted(registered) if self.devices == ("*",) else list(self.devices)
        if not devices:
            raise CampaignError(f"campaign {self.id!r}: {self.product} has no devices to update")
        if self.counts:
            return plan_waves(devices, counts=self.counts)
        if self.percents:
            return plan_waves(devices, percents=self.percents)
        return (tuple(devices),)

    def named_devices(self) -> list[str]:
        """Every device the declaration names (none for `["*"]`)."""
        if self.waves:
            return [d for wave in self.waves for d in wave]
        return [] if self.devices == ("*",) else list(self.devices)


def parse(entry: dict[str, Any], where: str, base: Path) -> CampaignSpec:
    """Check one declaration (a TOML table or the command line's equivalent)."""
    f = _Fields(entry, where)
    extra = sorted(set(entry) - KEYS)
    if extra:
        raise CampaignSpecError(f"{where}: unknown key(s) {extra}; expected {sorted(KEYS)}")
    cid = f.text("id")
    if not CAMPAIGN_ID.fullmatch(cid):
        f.fail("id", f"{cid!r} must be 1-64 letters, digits, '.', '_', ':' or '-'")
    product = f.text("product")
    if not PRODUCT_ID.fullmatch(product):
        f.fail("product", f"{product!r} must be 1-32 letters or digits")
    version = f.text("version")
    problem = version_problem(version)
    if problem is not None:
        f.fail("version", f"{version[:40]!r} is refused: {problem}")
    file = (base / f.text("file")).resolve()
    if not file.is_file():
        f.fail("file", f"{file} does not exist")
    devices, counts, percents, waves = _waves(f)
    rate = _rate(f)
    settings = CampaignSettings(
        advance=f.choice("advance", ADVANCE_MODES, "threshold"),
        success_percent=f.number("success_percent", 100.0, 0, 100),
        rate=rate,
        abort=tuple(_abort(f, i, t) for i, t in enumerate(f.tables("abort"))),
        device_timeout=f.number("device_timeout", 0.0, 0),
        daily_windows=tuple(_daily(f, i, t) for i, t in enumerate(f.tables("windows"))),
        intervals=tuple(_interval(f, i, t) for i, t in enumerate(f.tables("intervals"))),
        cancel_on_abort=f.flag("cancel_on_abort", False),
        start_at=f.time("start_at", entry.get("start_at", 0.0)),
        burn=f.choice("burn", BURN_RULES, "allow"),
    )
    state = f.choice("state", STATES, "running")
    spec = CampaignSpec(cid, product, version, file, settings, devices, counts, percents, waves)
    spec = attrs.evolve(spec, state=state)
    _check_whole(spec, where)
    return spec


def plan_of(spec: CampaignSpec, waves: tuple[tuple[str, ...], ...], firmware: Firmware) -> Plan:
    options = attrs.asdict(spec.settings, recurse=False)
    return Plan(spec.product, firmware, waves, **options)


def _check_whole(spec: CampaignSpec, where: str) -> None:
    """What only the fields together can say (a device in two waves, `wait` without windows)."""
    waves = spec.split(["x"])  # a stand-in for "every registered device"
    try:
        check_plan(plan_of(spec, waves, Firmware(spec.version, "-", 1, "0" * 32)))
    except CampaignError as exc:
        raise CampaignSpecError(f"{where}: {exc}") from None


class _Fields:
    """Typed reads of one table, each error naming the entry and the field."""

    def __init__(self, entry: dict[str, Any], where: str) -> None:
        self.entry, self.where = entry, where

    def fail(self, key: str, problem: str) -> None:
        raise CampaignSpecError(f"{self.where}: {key!r}: {problem}")

    def text(self, key: str) -> str:
        if key not in self.entry:
            raise CampaignSpecError(f"{self.where}: missing {key!r}")
        value = self.entry[key]
        if not isinstance(value, str):
            self.fail(key, f"must be a string, got {value!r}")
        return str(value)

    def choice(self, key: str, allowed: Sequence[str], default: str) -> str:
        value = self.entry.get(key, default)
        if value not in allowed:
            self.fail(key, f"must be one of {', '.join(allowed)}, got {value!r}")
        return str(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.entry.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {value!r}")
        return bool(value)

    def number(self, key: str, default: float, low: float, high: float | None = None) -> float:
        return self.value_number(self.entry.get(key, default), key, low, high)

    def value_number(self, value: Any, key: str, low: float, high: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, f"must be a number, got {value!r}")
        if value < low or (high is not None and value > high):
            span = f"{low}-{high}" if high is not None else f">= {low}"
            self.fail(key, f"must be {span}, got {value!r}")
        return float(value)

    def whole(self, key: str, default: int, low: int) -> int:
        value = self.entry.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            self.fail(key, f"must be a whole number >= {low}, got {value!r}")
        return int(value)

    def time(self, key: str, value: Any) -> float:
        """A TOML offset date-time, an ISO 8601 string with an offset, or epoch seconds."""
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                self.fail(key, f"{value!r} is not an ISO 8601 time like 2026-12-05T02:00:00Z")
        if isinstance(value, datetime):
            if value.tzinfo is None:
                self.fail(key, f"{value.isoformat()} needs an offset (Z or +01:00)")
            return value.timestamp()
        return self.value_number(value, key, 0)

    def tables(self, key: str) -> list[dict[str, Any]]:
        value = self.entry.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.fail(key, "must be a list of tables, e.g. [{ ... }, { ... }]")
        return list(value)

    def names(self, key: str, value: Any, allow_all: bool) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self.fail(key, "must be a non-empty list of device names")
        if value == ["*"] and allow_all:
            return ("*",)
        for name in value:
            if not DEVICE_NAME.fullmatch(name):
                self.fail(key, f"device name {name!r} must be 1-48 letters, digits, ':', '_', '-'")
        return tuple(value)

    def sizes(self, key: str, kinds: tuple[type, ...], what: str) -> tuple[Any, ...]:
        value: Any = self.entry[key]
        if not isinstance(value, list) or not value or not all(_positive(v, kinds) for v in value):
            self.fail(key, f"must be a non-empty list of {what} > 0, got {value!r}")
        return tuple(value)


def _table(
    value: dict[str, Any], where: str, keys: Sequence[str], required: Sequence[str]
) -> _Fields:
    """A nested table (a rate, an abort rule, a window): only `keys`, `required` present."""
    sub = _Fields(value, where)
    extra = sorted(set(value) - set(keys))
    if extra:
        sub.fail(extra[0], f"unknown; use {', '.join(keys)}")
    for key in required:
        if key not in value:
            raise CampaignSpecError(f"{where}: missing {key!r}")
    return sub


def _positive(value: Any, kinds: tuple[type, ...]) -> bool:
    if not isinstance(value, kinds) or isinstance(value, bool):
        return False
    number: float = value  # type: ignore[assignment]  # int or float: kinds says so
    return number > 0


def _waves(
    f: _Fields,
) -> tuple[tuple[str, ...], tuple[int, ...], tuple[float, ...], tuple[tuple[str, ...], ...]]:
    given = [k for k in ("wave_counts", "wave_percents", "waves") if k in f.entry]
    if len(given) > 1:
        f.fail(given[1], f"give one of wave_counts, wave_percents, waves (also got {given[0]})")
    if "waves" in f.entry:
        if "devices" in f.entry:
            f.fail("devices", "explicit waves name their devices; leave devices out")
        groups = f.entry["waves"]
        if not isinstance(groups, list) or not groups:
            f.fail("waves", "must be a non-empty list of device lists")
        return (), (), (), tuple(f.names(f"waves[{i}]", g, False) for i, g in enumerate(groups))
    devices = f.names("devices", f.entry.get("devices", ["*"]), True)
    counts: tuple[int, ...] = (
        f.sizes("wave_counts", (int,), "whole numbers") if "wave_counts" in f.entry else ()
    )
    percents: tuple[float, ...] = ()
    if "wave_percents" in f.entry:
        percents = tuple(float(p) for p in f.sizes("wave_percents", (int, float), "numbers"))
        if sum(percents) > 100:
            f.fail("wave_percents", f"{list(percents)} sum to more than 100")
    return devices, counts, percents, ()


def _rate(f: _Fields) -> Rate | None:
    value = f.entry.get("rate")
    if value is None:
        return None
    if not isinstance(value, dict):
        return Rate(f.value_number(value, "rate", 0.001))
    keys = ("per_minute", "growth", "every", "max_per_minute")
    sub = _table(value, f"{f.where}: rate", keys, ("per_minute",))
    return Rate(
        sub.number("per_minute", 0, 0.001),
        sub.number("growth", 1.0, 1),
        sub.whole("every", 0, 0),
        sub.number("max_per_minute", 0.0, 0),
    )


def _abort(f: _Fields, i: int, table: dict[str, Any]) -> AbortRule:
    keys = ("percent", "min_finished", "codes", "timeouts")
    sub = _table(table, f"{f.where}: abort[{i}]", keys, ("percent",))
    minimum = sub.whole("min_finished", 1, 1)
    codes = table.get("codes", [])
    if not isinstance(codes, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in codes
    ):
        sub.fail("codes", f"must be a list of failure codes like [-4, -5], got {codes!r}")
    return AbortRule(
        sub.number("percent", 0, 0.001, 100), minimum, tuple(codes), sub.flag("timeouts", False)
    )


def _daily(f: _Fields, i: int, table: dict[str, Any]) -> DailyWindow:
    sub = _table(table, f"{f.where}: windows[{i}]", ("start", "end", "tz"), ("start", "end"))
    window = DailyWindow(sub.text("start"), sub.text("end"), table.get("tz", "UTC"))
    if not isinstance(window.tz, str):
        sub.fail("tz", f"must be a time zone name like Europe/Berlin, got {window.tz!r}")
    try:
        check_plan(_probe(daily_windows=(window,)))
    except CampaignError as exc:
        raise CampaignSpecError(f"{sub.where}: {exc}") from None
    return window


def _interval(f: _Fields, i: int, table: dict[str, Any]) -> Interval:
    sub = _table(table, f"{f.where}: intervals[{i}]", ("start", "end"), ("start", "end"))
    start, end = sub.time("start", table["start"]), sub.time("end", table["end"])
    if not end > start:
        sub.fail("end", "must be after start")
    return Interval(start, end)


def _probe(**options: Any) -> Plan:
    return Plan("P", Firmware("1", "-", 1, "0" * 32), (("x",),), **options)
