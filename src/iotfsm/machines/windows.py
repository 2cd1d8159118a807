"""Maintenance windows: daily times in a time zone, or explicit intervals (issue 18).

Shared by the campaign machine (devices start only inside a window) and the OTA offer (a device
told to wait burns only inside one), so both read the same windows the same way. Pure functions
of the windows and a time: no clock is read here.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs


class WindowError(ValueError):
    """A window that cannot be read (bad time of day, unknown zone, end before start)."""


@attrs.frozen
class DailyWindow:
    """Every day from `start` to `end` ("HH:MM", local time of `tz`); an end before the start
    crosses midnight, equal ends mean all day."""

    start: str
    end: str
    tz: str = "UTC"


@attrs.frozen
class Interval:
    """One explicit window, `start` <= t < `end`, in epoch seconds."""

    start: float
    end: float


@attrs.frozen
class Windows:
    """A set of windows; none at all means "always open"."""

    daily: tuple[DailyWindow, ...] = ()
    intervals: tuple[Interval, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.daily or self.intervals)


def hhmm(text: str) -> time:
    hours, sep, minutes = text.partition(":")
    if not (sep and hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise WindowError(f"window time {text!r} must be HH:MM, e.g. 02:30")
    h, m = int(hours), int(minutes)
    if h > 23 or m > 59:
        raise WindowError(f"window time {text!r} is not a time of day")
    return time(h, m)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise WindowError(
            f"time zone {name!r} is unknown; use an IANA name like Europe/Berlin"
        ) from exc


def check_windows(windows: Windows) -> Windows:
    """Refuse windows that cannot be read; returns them unchanged."""
    for w in windows.daily:
        hhmm(w.start)
        hhmm(w.end)
        zone(w.tz)
    for i in windows.intervals:
        if not i.end > i.start:
            raise WindowError(f"window {i} ends before it starts")
    return windows


def _daily_bounds(w: DailyWindow, now: float, days: int) -> list[tuple[float, float]]:
    """The window's occurrences from yesterday's (which may still be open) for `days` days."""
    tz = zone(w.tz)
    start, end = hhmm(w.start), hhmm(w.end)
    today = datetime.fromtimestamp(now, tz).date()
    out = []
    for offset in range(-1, days + 1):
        day = today + timedelta(days=offset)
        opens = datetime.combine(day, start, tz)
        closes_day = day if end > start else day + timedelta(days=1)
        closes = datetime.combine(closes_day, end, tz)
        out.append((opens.timestamp(), closes.timestamp()))
    return out


def occurrences(windows: Windows, now: float, days: int = 1) -> list[tuple[float, float]]:
    """Every window occurrence that may contain or follow `now` within `days` days, sorted."""
    found = [(i.start, i.end) for i in windows.intervals]
    for w in windows.daily:
        found.extend(_daily_bounds(w, now, days))
    return sorted(found)


def is_open(windows: Windows, now: float) -> bool:
    """Is `now` inside a window? Always, when there are none."""
    if not windows:
        return True
    return any(opens <= now < closes for opens, closes in occurrences(windows, now))


def opening_after(windows: Windows, now: float) -> float | None:
    """When the next window opens after `now`; None when no window is left."""
    later = [opens for opens, _ in occurrences(windows, now) if opens > now]
    return min(later) if later else None


def upcoming(windows: Windows, now: float, limit: int = 8) -> tuple[tuple[int, int], ...]:
    """The open and coming occurrences (whole epoch seconds, at most `limit`): what an offer
    carries, so that the device needs neither a zone database nor the platform's rules."""
    later = [
        (int(opens), int(closes))
        for opens, closes in occurrences(windows, now, days=limit)
        if closes > now
    ]
    return tuple(later[:limit])
