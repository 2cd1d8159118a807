"""`iotfsm status`: devices by feature with state, percent and version, read from a platform's
data directory or its PostgreSQL store (`--store`), while the platform runs or after."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..adapters.store.session_store import SessionStore
from ..campaigns import stored_statuses
from .campaign import open_store, wave_summary
from .store_option import add_store_argument, describe_store, open_dsn

EXAMPLE = """example:
  iotfsm status --data-dir ./platform --json
  PGPASSFILE=~/.pgpass iotfsm status --store postgresql://iotfsm@db:5432/iotfsm
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=Path, help="a platform's data directory (SQLite)")
    add_store_argument(where)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")


def _row(feature: str, product: str, device: str, doc: dict[str, Any]) -> dict[str, Any]:
    ctx = doc.get("context") or {}
    row: dict[str, Any] = {
        "feature": feature,
        "product": product,
        "device": device,
        "state": doc.get("state"),
    }
    if feature == "ota":
        row.update(
            target=ctx.get("target"),
            version=ctx.get("reported"),
            percent=ctx.get("percent"),
            result_code=ctx.get("result_code"),
            result_msg=ctx.get("result_msg"),
            drift=ctx.get("drift") or None,
        )
    elif feature == "log_level":
        row.update(level=ctx.get("level"))
    elif feature == "resource_download":
        row.update(
            queued=[t.get("name") for t in ctx.get("queue") or []], percent=ctx.get("percent")
        )
    elif feature == "resource_upload":
        row.update(
            name=ctx.get("name"), percent=ctx.get("percent"), result_code=ctx.get("result_code")
        )
    else:
        row.update({k: v for k, v in ctx.items() if isinstance(v, (str, int, float, bool))})
    return row


def rows(data_dir: Path | None, dsn: str | None = None) -> list[dict[str, Any]]:
    store: SessionStore = open_dsn(dsn) if dsn else open_store(data_dir or Path("."))
    try:
        found = [_row(f, k.product, k.device, doc) for f, k, doc in store.load()]
        deliveries = store.items("deliveries")
        uploads = store.items("uploads")
        campaigns = stored_statuses(store)
    finally:
        store.close()
    found.sort(key=lambda r: (r["product"], r["device"], r["feature"]))
    for _, d in deliveries:
        found.append(
            {
                "feature": "delivery",
                "product": d["product"],
                "device": d["device"],
                "state": d["state"],
                "name": d["name"],
                "md5": d["md5"],
            }
        )
    for _, u in uploads:
        found.append(
            {
                "feature": "upload",
                "product": u["product"],
                "device": u["device"],
                "state": u["state"],
                "name": u["name"],
                "stored": u["stored"],
            }
        )
    found.extend(
        {
            "feature": "campaign",
            "product": c.product,
            "device": c.id,
            "state": c.state,
            "version": c.version,
            "waves": wave_summary(c),
        }
        for c in campaigns
    )
    return found


def run(args: argparse.Namespace) -> int:
    table = rows(args.data_dir, args.store)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    where = args.data_dir or describe_store(args.store)
    view = Table(title=f"iotfsm status: {where}")
    for column in ("product", "device", "feature", "state", "details"):
        view.add_column(column)
    for r in table:
        details = ", ".join(
            f"{k}={v}"
            for k, v in r.items()
            if k not in ("product", "device", "feature", "state") and v not in (None, "", [])
        )
        view.add_row(r["product"], r["device"], r["feature"], str(r["state"]), details)
    Console().print(view)
    return 0
