"""`iotfsm campaign pause|resume|cancel|next-wave|retry-failed|status`: operate the rollout
campaigns of a platform through its data directory.

The operator commands are queued as records in the platform's store (`campaign_commands`); a
running `iotfsm platform` sees another process's commit within about a second (SQLite's
data_version) and applies each command once. `status` reads the campaign snapshots from the
store directly, so it works with the platform running or stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import attrs

from ..adapters.store.session_store import SqliteStore, StoreCorruptError
from ..campaigns import ACTIONS, CampaignStatus, queue_command, stored_statuses
from ..machines.campaign import CampaignError
from .common import STORE_DAMAGED, CommandError

EXAMPLE = """examples:
  iotfsm campaign status --data-dir ./platform
  iotfsm campaign pause c-1a2b3c4d --data-dir ./platform
  iotfsm campaign resume c-1a2b3c4d --data-dir ./platform --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=(*ACTIONS, "status"))
    parser.add_argument("campaign", nargs="?", help="the campaign's id (status: all when omitted)")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def open_store(data_dir: Path) -> SqliteStore:
    path = data_dir / "platform.sqlite3"
    if not path.is_file():
        raise CommandError(f"{data_dir} holds no platform store (no platform.sqlite3)")
    try:
        return SqliteStore(path)
    except StoreCorruptError as exc:
        raise CommandError(str(exc), STORE_DAMAGED) from None


def statuses(data_dir: Path, campaign_id: str | None = None) -> list[CampaignStatus]:
    store = open_store(data_dir)
    try:
        found = stored_statuses(store)
    finally:
        store.close()
    if campaign_id is not None:
        found = [s for s in found if s.id == campaign_id]
        if not found:
            raise CommandError(f"no campaign {campaign_id!r} in {data_dir}")
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
    if args.action == "status":
        return _status(args)
    if not args.campaign:
        raise CommandError(f"campaign {args.action} needs the campaign's id")
    store = open_store(args.data_dir)
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
    found = statuses(args.data_dir, args.campaign)
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
