"""`iotfsm campaign start|pause|resume|cancel|next-wave|retry-failed|status`: operate the rollout
campaigns of a platform through its data directory.

`start` turns its flags into the declaration a `[[campaigns]]` table would be (checked by
`campaign_spec`, the same checks), picks the id (or takes `--id`), queues it and prints the id;
the running platform starts it once.

The operator commands are queued as records in the platform's store (`campaign_commands`, the
SQLite file of `--data-dir` or the PostgreSQL of `--store`); a running `iotfsm platform` sees
another process's commit within about a second (the store's change counter) and applies each
command once. `status` reads the campaign snapshots from the
store directly, so it works with the platform running or stopped.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from pathlib import Path
from typing import Any

import attrs

from ..adapters.store.session_store import SessionStore, SqliteStore
from ..campaign_spec import CampaignSpecError
from ..campaign_spec import parse as parse_campaign
from ..campaigns import ACTIONS, START, CampaignStatus, queue_command, queue_start, stored_statuses
from ..machines.campaign import CampaignError
from .common import CommandError
from .store_option import add_store_argument, describe_store, open_dsn

EXAMPLE = """examples:
  iotfsm campaign start --data-dir ./platform --product P --version 2.0 --image fw-2.0.bin \\
      --wave-percents 10,30 --rate 60 --abort-percent 10 --abort-codes=-4,-5 \\
      --window 02:00-04:00@Europe/Berlin --burn wait
  iotfsm campaign status --data-dir ./platform
  iotfsm campaign pause c-1a2b3c4d --data-dir ./platform
  iotfsm campaign resume c-1a2b3c4d --data-dir ./platform --json
  PGPASSFILE=~/.pgpass iotfsm campaign status --store postgresql://iotfsm@db:5432/iotfsm
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=(START, *ACTIONS, "status"))
    parser.add_argument("campaign", nargs="?", help="the campaign's id (status: all when omitted)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=Path, help="a platform's data directory (SQLite)")
    add_store_argument(where)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    start = parser.add_argument_group("start (the fields of a [[campaigns]] table)")
    add = start.add_argument
    add("--id", help="the campaign's id (default: c-<random>)")
    add("--product")
    add("--version", help="the firmware version to roll out")
    add("--image", type=Path, help="the firmware image file")
    add(
        "--devices",
        dest="wave_devices",
        help="D1,D2,... to split into waves (default: every registered device)",
    )
    add("--wave-counts", help="wave sizes, e.g. 10,100 (the rest is a last wave)")
    add("--wave-percents", help="wave sizes in percent of the devices, e.g. 10,30")
    add("--wave", action="append", help="an explicit wave D1,D2 (repeat for each wave)")
    add("--advance", help="threshold (default), immediate or operator")
    add("--success-percent", type=float, help="of a wave that must succeed (default 100)")
    add("--rate", type=float, help="devices started per minute")
    add("--rate-growth", type=float, help="multiply the rate by this ...")
    add("--rate-every", type=int, help="... after every N starts")
    add("--rate-max", type=float, help="never above this per minute")
    add("--abort-percent", type=float, help="abort at this failure percentage ...")
    add("--abort-min-finished", type=int, help="... once this many devices finished")
    add("--abort-codes", help="only these failure codes count, e.g. --abort-codes=-4,-5")
    add("--abort-timeouts", action="store_true", help="in-progress timeouts count too")
    add("--device-timeout", type=float, help="seconds a started device may take")
    add("--window", action="append", help="daily HH:MM-HH:MM[@ZONE] (repeatable)")
    add("--interval", action="append", help="START/END, ISO 8601 with offset (repeatable)")
    add("--burn", help="allow (default): burn whenever ready; wait: only inside a window")
    add("--cancel-on-abort", action="store_true", help="on abort cancel devices in progress")
    add("--start-at", help="ISO 8601 time with offset before which nobody starts")
    add("--paused", action="store_true", help="start it paused (resume it later)")


START_FLAGS = (
    "id", "product", "version", "image", "wave_devices", "wave_counts", "wave_percents", "wave",
    "advance", "success_percent", "rate", "rate_growth", "rate_every", "rate_max",
    "abort_percent", "abort_min_finished", "abort_codes", "abort_timeouts", "device_timeout",
    "window", "interval", "burn", "cancel_on_abort", "start_at", "paused",
)  # fmt: skip


def declaration(args: argparse.Namespace) -> dict[str, Any]:
    """The `[[campaigns]]` table the flags describe (unchecked: `campaign_spec.parse` checks)."""
    doc: dict[str, Any] = {"id": args.id or f"c-{secrets.token_hex(4)}"}
    for key in ("product", "version", "advance", "success_percent", "device_timeout", "burn"):
        if getattr(args, key) is not None:
            doc[key] = getattr(args, key)
    if args.image is not None:
        doc["file"] = str(args.image.resolve())
    if args.wave_devices:
        doc["devices"] = _names(args.wave_devices)
    if args.wave_counts:
        doc["wave_counts"] = _numbers(args.wave_counts, "--wave-counts", int)
    if args.wave_percents:
        doc["wave_percents"] = _numbers(args.wave_percents, "--wave-percents", float)
    if args.wave:
        doc["waves"] = [_names(w) for w in args.wave]
    if args.rate is not None:
        rate = {"per_minute": args.rate, "growth": args.rate_growth, "every": args.rate_every}
        rate["max_per_minute"] = args.rate_max
        doc["rate"] = {k: v for k, v in rate.items() if v is not None}
    if args.abort_percent is not None:
        rule: dict[str, Any] = {"percent": args.abort_percent, "timeouts": args.abort_timeouts}
        if args.abort_min_finished is not None:
            rule["min_finished"] = args.abort_min_finished
        if args.abort_codes:
            rule["codes"] = _numbers(args.abort_codes, "--abort-codes", int)
        doc["abort"] = [rule]
    if args.window:
        doc["windows"] = [_window(w) for w in args.window]
    if args.interval:
        doc["intervals"] = [_interval(i) for i in args.interval]
    if args.start_at:
        doc["start_at"] = args.start_at
    if args.cancel_on_abort:
        doc["cancel_on_abort"] = True
    if args.paused:
        doc["state"] = "paused"
    return doc


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _numbers(text: str, flag: str, kind: type) -> list[Any]:
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        raise CommandError(f"{flag} {text!r} must be numbers separated by commas") from None


def _window(text: str) -> dict[str, str]:
    times, _, tz = text.partition("@")
    start, sep, end = times.partition("-")
    if not sep:
        raise CommandError(f"--window {text!r} must be HH:MM-HH:MM or HH:MM-HH:MM@ZONE")
    return {"start": start, "end": end, **({"tz": tz} if tz else {})}


def _interval(text: str) -> dict[str, str]:
    start, sep, end = text.partition("/")
    if not sep:
        raise CommandError(f"--interval {text!r} must be START/END, e.g. 2026-12-05T02:00Z/...")
    return {"start": start, "end": end}


def _start(args: argparse.Namespace) -> int:
    doc = declaration(args)
    try:
        spec = parse_campaign(doc, "campaign start", Path.cwd())
    except CampaignSpecError as exc:
        raise CommandError(str(exc)) from None
    store = open_store(args.data_dir, args.store)
    try:
        key = queue_start(store, doc, time.time())
    except CampaignError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    if args.json:
        print(json.dumps({"queued": key, "campaign": spec.id, "action": START}))
    else:
        print(spec.id)
    return 0


def open_store(data_dir: Path | None, dsn: str | None = None) -> SessionStore:
    """The platform's store: its PostgreSQL (`--store`) or the SQLite file in `data_dir`."""
    if dsn:
        return open_dsn(dsn)
    data_dir = data_dir or Path(".")
    path = data_dir / "platform.sqlite3"
    if not path.is_file():
        raise CommandError(f"{data_dir} holds no platform store (no platform.sqlite3)")
    return SqliteStore(path)


def statuses(
    data_dir: Path | None, campaign_id: str | None = None, dsn: str | None = None
) -> list[CampaignStatus]:
    store = open_store(data_dir, dsn)
    try:
        found = stored_statuses(store)
    finally:
        store.close()
    if campaign_id is not None:
        found = [s for s in found if s.id == campaign_id]
        if not found:
            where = describe_store(dsn) if dsn else data_dir
            raise CommandError(f"no campaign {campaign_id!r} in {where}")
    return found


def wave_summary(status: CampaignStatus) -> str:
    """One compact line per campaign's waves, e.g. `1: 2/2 ok · 2: 1 failed 1 pending`."""
    parts = []
    for w in status.waves:
        counts = attrs.asdict(w)
        shown = " ".join(
            f"{v} {k.replace('_', ' ')}"
            for k, v in counts.items()
            if k not in ("number", "size") and v
        )
        parts.append(f"{w.number}: {shown or 'empty'}")
    return " · ".join(parts)


def run(args: argparse.Namespace) -> int:
    if args.action == START:
        if args.campaign:
            raise CommandError("campaign start takes no id argument; give it with --id")
        return _start(args)
    given = [
        f"--{k.replace('_', '-')}" for k in START_FLAGS if getattr(args, k) not in (None, False)
    ]
    if given:
        raise CommandError(f"{', '.join(given)}: only for campaign start")
    if args.action == "status":
        return _status(args)
    if not args.campaign:
        raise CommandError(f"campaign {args.action} needs the campaign's id")
    store = open_store(args.data_dir, args.store)
    try:
        key = queue_command(store, args.campaign, args.action, time.time())
    except CampaignError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    doc = {"queued": key, "campaign": args.campaign, "action": args.action}
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"queued {args.action} for campaign {args.campaign}: a running platform applies it")
    return 0


def _status(args: argparse.Namespace) -> int:
    found = statuses(args.data_dir, args.campaign, args.store)
    if args.json:
        docs: list[dict[str, Any]] = [attrs.asdict(s) for s in found]
        print(json.dumps(docs, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for s in found:
        view = Table(title=f"campaign {s.id}: {s.product} → {s.version}, {s.state}")
        for column in ("wave", "size", "pending", "running", "ok", "failed", "timed out", "cxl"):
            view.add_column(column)
        for w in s.waves:
            marker = "▶ " if w.number == s.wave else ""
            counts = (w.size, w.pending, w.running, w.succeeded, w.failed, w.timed_out)
            view.add_row(f"{marker}{w.number}", *(str(v) for v in (*counts, w.cancelled)))
        console.print(view)
        if s.reason:
            console.print(f"reason: {s.reason}")
    if not found:
        console.print("no campaigns")
    return 0
