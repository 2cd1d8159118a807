"""Durability helpers for files that must survive a power cut (checkpoints, uploads, firmware)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, doc: Any) -> None:
    """Replace `path` with `doc` as JSON so that a power cut leaves the old file or the new one:
    a temporary file beside it, fsynced, renamed over it, and the rename made durable. A write
    that fails (no space left) removes its temporary file and raises, leaving the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # a half-written temporary file on a full disk would keep the disk full
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_json(path: Path) -> Any | None:
    """The JSON document in `path`, or None when it is missing or unreadable (never raises for
    a damaged file: callers fall back to what they would do without it)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
