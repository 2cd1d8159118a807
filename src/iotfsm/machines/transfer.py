"""File transfers as machines see them: effects that start or stop one, events that report on it.

OTA and resource download share one resumable HTTP transfer; only the declarations differ. Every
transfer carries a number chosen by its session, and every outcome event carries it back, so the
outcome of a transfer that was cancelled or superseded can never be mistaken for the current one.
"""

from __future__ import annotations

import attrs

from ..fsm.effects import Effect
from ..fsm.events import Event
from .messages import url_repr

# Tencent result codes for transfers (PROTOCOL.md): OTA and resources agree on -1..-4.
TIMEOUT = -1
"""Timeout or lost connection; the checkpoint is kept so the next offer resumes."""
NOT_FOUND = -2
"""HTTP 404, or a URL that cannot be fetched at all."""
SIGNATURE_EXPIRED = -3
"""HTTP 403: the signed URL expired or was refused."""
MD5_MISMATCH = -4
"""The whole file arrived but its md5 differs; the partial file is deleted."""
BURN_FAILED = -5
"""OTA only: the application could not install the image."""


@attrs.frozen
class StartDownload(Effect):
    """Fetch `url` into the session's `slot` ("firmware", or a resource name), resuming a partial
    download when its identity (`label`, `size` and `md5`) matches the checkpoint."""

    transfer: int
    url: str = attrs.field(repr=url_repr)
    size: int
    md5: str
    label: str
    slot: str


@attrs.frozen
class StartUpload(Effect):
    """PUT the file at `path` to `url` with its size and Content-MD5."""

    transfer: int
    url: str = attrs.field(repr=url_repr)
    path: str
    size: int
    md5: str


@attrs.frozen
class CancelTransfer(Effect):
    transfer: int


@attrs.frozen
class TransferStarted(Event):
    """The transfer is under way from `offset` (0 for a fresh download, > 0 when resumed)."""

    transfer: int
    offset: int
    size: int


@attrs.frozen
class TransferProgress(Event):
    transfer: int
    done: int
    size: int


@attrs.frozen
class TransferDone(Event):
    """Every byte arrived (or was sent) and the md5 matched. `path` is the finished file."""

    transfer: int
    path: str


@attrs.frozen
class TransferFailed(Event):
    transfer: int
    code: int
    reason: str


PROGRESS_INTERVAL = 1.0
"""Progress reports go out at most once a second (Tencent's SDKs), and always at 100 %."""


def progress_due(pct: int, last_at: float, now: float) -> bool:
    """Whether a progress report of `pct` should go out now, given the last one at `last_at`."""
    return pct >= 100 or now - last_at >= PROGRESS_INTERVAL


def percent(done: int, size: int) -> int:
    """floor(done * 100 / size) in integers, so sizes over 4 GB cannot overflow or round up."""
    return 100 if size <= 0 else min(100, done * 100 // size)
