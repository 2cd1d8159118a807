"""Durability helpers for files that must survive a power cut (checkpoints, uploads, firmware)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
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


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    """A new file beside `path` holding `data`, fsynced, with exactly `mode` from its creation
    (O_EXCL with the mode given to open(), so it is never readable by others even for a moment;
    fchmod only widens what the umask narrowed, before a byte is written)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o600)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def write_file_atomic(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that it is never half-written and never more readable than
    `mode` (default 0600: secrets, keys), not even for a moment: a temporary file created with
    that mode, fsynced, renamed over `path`, the rename made durable."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path, raw, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def create_file_exclusive(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Create `path` holding `data`, or raise FileExistsError and leave the existing file alone
    (a key made on first use must not be overwritten, nor made twice by two processes racing).
    The file appears whole (a fsynced temporary file hard-linked into place, which fails when
    the name is taken) and with `mode` from the start."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path, raw, mode)
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def read_json(path: Path) -> Any | None:
    """The JSON document in `path`, or None when it is missing or unreadable (never raises for
    a damaged file: callers fall back to what they would do without it)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
