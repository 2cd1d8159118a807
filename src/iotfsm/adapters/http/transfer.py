"""The device side of HTTP transfers: resumable downloads and streamed uploads.

A device machine never does I/O; its StartDownload / StartUpload effects end up here, and what
happens here comes back as events (progress, done with md5, failed with a Tencent code). So every
failure is a `TransferError` carrying the code a device reports (PROTOCOL.md, OTA and Resources):
-1 timeout, lost connection, cancel or an unexpected status; -2 file does not exist (404); -3
signature invalid or expired (403); -4 md5 mismatch.

Breakpoint resume follows PROTOCOL.md and avoids what the SDKs get wrong:

- The checkpoint records the offer's identity (version or name, as the caller chooses) with its
  size and md5, and an offset. A download resumes only when all of them are equal and the partial
  file exists; otherwise the partial is deleted first, so firmware A is never completed with B.
- The checkpoint never runs ahead of the data: the partial file is written (to the OS) before the
  checkpoint is replaced (temporary file, rename), so a killed process at any point leaves an
  offset whose bytes are in the file. Checkpoints are bounded by bytes *and* time: one when
  `checkpoint_every` bytes arrived and `checkpoint_interval` seconds passed since the last (the
  first of a run needs only the bytes), an fsynced one when `sync_every` bytes and
  `sync_interval` seconds passed, and always an fsynced one at the end. A checkpoint per 64 KiB
  chunk cost 60 % of the throughput on loopback (bench/RESULTS.md); on a slow link the time floor
  is shorter than a chunk and changes nothing. After a power cut either the partial is shorter
  than its checkpoint (the download starts over) or the final md5 check fails (-4, the partial is
  deleted), so nothing corrupt is ever installed.
- Resume re-hashes the partial (no SDK persists an MD5 state, and neither does this one). It
  continues from the partial file's own length, when that is longer than the checkpoint and the
  checkpoint was written during the current boot (Linux `boot_id`): without a reboot in between,
  the page cache holds every byte a killed process wrote, and the file is only ever appended to
  in order, so its bytes are the offer's prefix. A process kill therefore costs only the chunk in
  flight, whatever the time floor. After a reboot (another boot id, or none known) bytes past the
  checkpoint may never have reached the disk: the partial is truncated to the checkpoint.
- A resumed request asks `Range: bytes={offset}-{size-1}` and must get 206 with a Content-Range
  starting at the offset. A 200 means the range was ignored: the partial is truncated and the
  full body used from byte 0, never appended.
- Never more than `size` bytes are read, whatever the server sends.
- The md5 is computed on a helper thread, a block (`HASH_BLOCK`) at a time, while the download
  thread receives and writes the next one: on a fast link md5 is the largest single cost, and
  overlapped it no longer adds to the receive time. Two blocks are in use at most, so memory
  stays flat; the partial file is written in the download thread before a block is handed over,
  so what the file and the checkpoints hold does not depend on the hashing.
- The disk works while the network does: a helper thread fdatasyncs the partial every
  `sync_every` bytes, so the page cache is written back during the download instead of in one
  long fsync at the end. It claims nothing: only an fsync in the download's own thread makes a
  checkpoint durable, and the last one, before the md5 check and the rename, is always there.
  An error of the helper's fdatasync fails the download (a writeback error is reported to one
  fsync only, so it must not be lost), as does any error writing the partial: `DiskError`.

Plain `http.client` is used (not urllib) to control Range, streaming and redirects exactly:
redirects are followed at most three times, only to http/https and never from https down to http;
https verifies certificates by default. Logs and error messages name the host and path of a URL,
never its query string: a signed URL is a credential until it expires.
"""

from __future__ import annotations

import base64
import enum
import errno
import hashlib
import http.client
import json
import logging
import os
import queue
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

import attrs

from ..durable import fsync_dir

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes done, total size) after every chunk; throttling is the caller's business."""

DEFAULT_CHUNK = 64 * 1024
DEFAULT_CHECKPOINT_EVERY = 256 * 1024
DEFAULT_CHECKPOINT_INTERVAL = 0.25
"""Seconds between checkpoints, at least (the first one of a run excepted)."""
DEFAULT_SYNC_EVERY = 4 * 1024 * 1024
"""Bytes between fsyncs of the partial file and its checkpoint, at least."""
DEFAULT_SYNC_INTERVAL = 1.0
"""Seconds between fsyncs of the partial file and its checkpoint, at least (the end excepted)."""
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
DEFAULT_TIMEOUT = 30.0
HASH_BLOCK = 512 * 1024
"""Bytes handed to the md5 thread at a time (or one chunk, if chunks are larger)."""
HASH_BLOCKS = 2
"""Blocks in use at most: one being filled from the network, one being hashed."""
MAX_REDIRECTS = 3
_CHECKPOINT_FORMAT = 1
_HEX_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)


# Errors -----------------------------------------------------------------------------------------


class TransferCode(enum.IntEnum):
    """Result codes shared by OTA (`result_code`) and resource transfers."""

    FAILED = -1
    """Timeout, lost connection, cancel, unexpected HTTP status: try again later."""
    NOT_FOUND = -2
    SIGNATURE = -3
    MD5_MISMATCH = -4


class TransferError(Exception):
    """A transfer failed; `code` is what the device reports, `status` the HTTP status if any."""

    def __init__(self, code: TransferCode | int, message: str, *, status: int | None = None):
        super().__init__(message)
        self.code = TransferCode(code)
        self.message = message
        self.status = status


class _CodedError(TransferError):
    """A TransferError whose code is fixed by its class."""

    CODE = TransferCode.FAILED

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(self.CODE, message, status=status)


class TransferTimeoutError(_CodedError):
    """No data within the timeout; the checkpoint is kept so the next offer resumes."""


class ConnectionLostError(_CodedError):
    """The connection failed or ended early; the checkpoint is kept so the next offer resumes."""


class TransferCancelledError(_CodedError):
    """The cancel event was set; the checkpoint is kept so the next offer resumes."""


class UnsupportedUrlError(_CodedError):
    """The URL (or a redirect) is not http/https, or cannot be parsed; nothing was fetched."""


class HttpStatusError(_CodedError):
    """An HTTP status the protocol has no code for (500, 416, too many redirects...)."""


class RemoteNotFoundError(_CodedError):
    """HTTP 404: the platform does not have the file (any more)."""

    CODE = TransferCode.NOT_FOUND


class SignatureRejectedError(_CodedError):
    """HTTP 403: the signed URL expired or was altered; the platform must offer a fresh one."""

    CODE = TransferCode.SIGNATURE


class DiskError(_CodedError):
    """Writing or syncing the partial file failed. After an I/O error the checkpoint still names
    only bytes that were written, so the next offer resumes once the disk is fixed; when the
    disk is full (ENOSPC, EDQUOT) the partial and its checkpoint are removed instead, so the
    device has room again for everything else it writes."""


class Md5MismatchError(_CodedError):
    """The data does not match the md5 (download: partial deleted; upload: HTTP 400)."""

    CODE = TransferCode.MD5_MISMATCH


# Data -------------------------------------------------------------------------------------------


@attrs.frozen
class DownloadResult:
    """A verified download: `path` holds `size` bytes with this md5."""

    path: Path
    size: int
    md5: str
    resumed_from: int
    """Offset the download continued from (0 for a fresh start)."""
    fetched: int
    """Bytes received over the network by this call."""
    restarts: int
    """How often a server ignored the Range and the download started over from 0."""


@attrs.frozen
class Checkpoint:
    """What a partial download is, and how many of its bytes are safely on disk."""

    identity: dict[str, str | int]
    size: int
    md5: str
    offset: int
    partial: str
    boot: str | None = None
    """The boot during which the checkpoint was written (`current_boot_id`), if known."""

    def matches(
        self, identity: Mapping[str, str | int], size: int, md5: str, partial: Path
    ) -> bool:
        return (
            self.identity == dict(identity)
            and self.size == size
            and self.md5.lower() == md5.lower()
            and self.partial == str(partial)
            and 0 <= self.offset <= size
        )


def read_checkpoint(path: Path) -> Checkpoint | None:
    """Load a checkpoint; a missing or damaged one is None (the download starts over)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        identity = raw["identity"]
        if (
            raw.get("format") != _CHECKPOINT_FORMAT
            or not isinstance(identity, dict)
            or not all(isinstance(v, str | int) for v in identity.values())
        ):
            raise ValueError("unexpected checkpoint layout")
        return Checkpoint(
            identity={str(k): v for k, v in identity.items()},
            size=int(raw["size"]),
            md5=str(raw["md5"]),
            offset=int(raw["offset"]),
            partial=str(raw["partial"]),
            boot=raw["boot"] if isinstance(raw.get("boot"), str) else None,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None


def _write_checkpoint(path: Path, checkpoint: Checkpoint, durable: bool = True) -> None:
    """Replace the checkpoint atomically: a crash leaves the old one or the new one, whole."""
    data = json.dumps(
        {
            "format": _CHECKPOINT_FORMAT,
            "identity": checkpoint.identity,
            "size": checkpoint.size,
            "md5": checkpoint.md5,
            "offset": checkpoint.offset,
            "partial": checkpoint.partial,
            **({"boot": checkpoint.boot} if checkpoint.boot is not None else {}),
        },
        sort_keys=True,
    ).encode()
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            if durable:
                os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


# Helpers ----------------------------------------------------------------------------------------


class _Hasher:
    """md5 on a helper thread: the caller fills blocks (`space`, then `filled`), the thread
    hashes each full block and gives it back. `close` hashes the rest and joins."""

    def __init__(self, digest: hashlib._Hash, block: int, name: str) -> None:
        self._digest = digest
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        self._full: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
        for _ in range(HASH_BLOCKS):
            self._free.put(memoryview(bytearray(block)))
        self._block = self._free.get()
        self._used = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"iotfsm-md5-{name}", daemon=True)
        self._thread.start()

    def space(self, want: int) -> memoryview:
        """Room for `want` (<= block) more bytes; waits for a free block when this one is full."""
        if self._used + want > len(self._block):
            self._hand_over()
        return self._block[self._used : self._used + want]

    def filled(self, got: int) -> None:
        self._used += got

    def close(self) -> None:
        """Hash what is left and wait for the thread; raises what the thread raised."""
        self._hand_over()
        self._full.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _hand_over(self) -> None:
        if self._used:
            self._full.put((self._block, self._used))
            self._block = self._free.get()
            self._used = 0

    def _run(self) -> None:
        while (item := self._full.get()) is not None:
            block, used = item
            if self.error is None:
                try:
                    self._digest.update(block[:used])
                except BaseException as exc:  # re-raised by close()
                    self.error = exc
            self._free.put(block)  # always: the download thread may be waiting for it


class _Writeback:
    """fdatasync of the partial file on a helper thread, asked for every `every` bytes.

    The download thread goes on receiving meanwhile (fdatasync releases the GIL), so most of the
    image reaches the disk before the final fsync. The thread holds nothing but the fd, which
    the download keeps open until `close` has joined it. Every fsync of the fd, the download's
    own included (`fsync`), runs under one lock: Linux reports a writeback error to one fsync
    of a file only, so an error the helper saw is recorded before any other fsync can start
    and claim that the same bytes are on disk."""

    def __init__(self, fd: int, every: int, name: str) -> None:
        self._fd = fd
        self._every = every
        self._cond = threading.Condition()
        self._asked = 0
        self._wanted = 0
        self._done = 0
        self._closing = False
        self._sync_lock = threading.Lock()
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name=f"iotfsm-writeback-{name}")
        self._thread.daemon = True
        self._thread.start()

    def written(self, offset: int) -> None:
        """The partial holds `offset` bytes: start their writeback if `every` bytes piled up."""
        if offset - self._asked < self._every:
            return
        self._asked = offset
        with self._cond:
            self._wanted = offset
            self._cond.notify()

    def fsync(self) -> None:
        """A full fsync for a durable checkpoint; raises the helper's error if it had one."""
        with self._sync_lock:
            if self.error is not None:
                raise self.error
            os.fsync(self._fd)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        sync = getattr(os, "fdatasync", os.fsync)
        while True:
            with self._cond:
                while self._wanted <= self._done and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                target = self._wanted
            with self._sync_lock:
                try:
                    sync(self._fd)
                except OSError as exc:
                    self.error = exc
                    return
            self._done = target


def _no_space(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from, is a full disk or an exhausted quota."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def current_boot_id() -> str | None:
    """An id that changes with every boot (Linux), or None where there is none: then a partial
    is never trusted past its checkpoint."""
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def content_md5(hex_md5: str) -> str:
    """The `Content-MD5` header for a hex md5: base64 of the 16 raw digest bytes (RFC 1864)."""
    if not _HEX_MD5.fullmatch(hex_md5):
        raise ValueError(f"md5 {hex_md5[:40]!r} is not 32 hexadecimal digits")
    return base64.b64encode(bytes.fromhex(hex_md5)).decode("ascii")


def file_md5(path: Path, chunk_size: int = 1024 * 1024) -> str:
    """The lowercase hex md5 of a file, read in chunks so memory stays flat."""
    digest = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as source:
        while chunk := source.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def partial_path(dest: Path) -> Path:
    """Where a download of `dest` accumulates until its md5 is verified."""
    return dest.with_name(dest.name + ".part")


def _describe(url: str) -> str:
    """Host and path of a URL, for logs and messages: never the query (signature) or userinfo."""
    parts = urlsplit(url)
    return f"{parts.hostname or ''}{parts.path or '/'}"


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise UnsupportedUrlError(
            f"refusing {parts.scheme or 'scheme-less'} URL {_describe(url)!r}: only http and https "
            "are fetched; the platform must offer an http(s) URL"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise UnsupportedUrlError(f"URL {_describe(url)!r} has an invalid port: {exc}") from None
    if not parts.hostname or port == 0:
        raise UnsupportedUrlError(f"URL {_describe(url)!r} has no usable host or port")


def _redirect(url: str, location: str) -> str:
    """Where a redirect leads, if it may be followed: http or https only, and never from https
    down to http, where anyone on the path could read or swap what comes back."""
    target = urljoin(url, location)
    _check_url(target)
    if urlsplit(url).scheme.lower() == "https" and urlsplit(target).scheme.lower() != "https":
        raise UnsupportedUrlError(
            f"refusing a redirect from https {_describe(url)!r} down to http "
            f"{_describe(target)!r}; the platform must keep downloads on https"
        )
    return target


def _connect(
    url: str, timeout: float, ssl_context: ssl.SSLContext | None
) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    conn: http.client.HTTPConnection
    if parts.scheme.lower() == "https":
        context = ssl_context if ssl_context is not None else ssl.create_default_context()
        conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return conn, target


def _io_error(exc: BaseException, what: str, timeout: float) -> TransferError:
    """Map a socket/http.client failure to the -1 family, keeping the cause in the message."""
    if isinstance(exc, TimeoutError):
        return TransferTimeoutError(f"{what}: no data for {timeout:g} s")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectionLostError(f"{what}: TLS certificate not trusted ({exc.verify_message})")
    return ConnectionLostError(f"{what}: {type(exc).__name__}: {exc}")


def _status_error(status: int, what: str) -> TransferError:
    if status == 404:
        return RemoteNotFoundError(f"{what}: HTTP 404, the file does not exist", status=status)
    if status == 403:
        return SignatureRejectedError(
            f"{what}: HTTP 403, the URL's signature expired or is invalid; ask for a new URL",
            status=status,
        )
    return HttpStatusError(f"{what}: unexpected HTTP {status}", status=status)


def _content_range_start(header: str | None) -> int | None:
    match = _CONTENT_RANGE.fullmatch(header or "")
    return int(match.group(1)) if match else None


# Download ---------------------------------------------------------------------------------------


def download(
    url: str,
    dest: Path,
    *,
    size: int,
    md5: str,
    identity: Mapping[str, str | int],
    checkpoint: Path,
    chunk_size: int = DEFAULT_CHUNK,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
    sync_every: int = DEFAULT_SYNC_EVERY,
    sync_interval: float = DEFAULT_SYNC_INTERVAL,
    timeout: float = DEFAULT_TIMEOUT,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    ssl_context: ssl.SSLContext | None = None,
    clock: Callable[[], float] = time.monotonic,
    boot_id: Callable[[], str | None] = current_boot_id,
    url_check: Callable[[str], None] | None = None,
) -> DownloadResult:
    """Fetch `url` into `dest`, resuming from `checkpoint` when it describes the same offer.

    The bytes go to `partial_path(dest)` first and are renamed to `dest` only after the md5
    matched. `identity` names the offer (e.g. `{"version": "0.2"}` or `{"name": "cfg.bin"}`);
    size and md5 are always part of it. On a -1 failure (timeout, lost connection, cancel, odd
    status) and on 403/404 the partial and its checkpoint stay, so the next offer of the same file
    continues; on an md5 mismatch (or a server file shorter than `size`) both are deleted.
    `cancel` is checked between chunks, so it takes effect at the latest after `timeout` seconds.
    `clock` (seconds, monotonic) times the checkpoint floors; `boot_id` says which boot this is
    (see the module's notes on resume). Both are injectable for tests. `url_check(url)` raises a
    TransferError for a URL (the first one or a redirect target) the caller must not fetch.
    """
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if not _HEX_MD5.fullmatch(md5):
        raise ValueError(f"md5 {md5[:40]!r} is not 32 hexadecimal digits")
    if chunk_size <= 0 or checkpoint_every <= 0 or sync_every <= 0:
        raise ValueError("chunk_size, checkpoint_every and sync_every must be positive")
    if checkpoint_interval < 0 or sync_interval < 0:
        raise ValueError("checkpoint_interval and sync_interval must not be negative")
    _check_url(url)
    if url_check is not None:
        url_check(url)
    job = _Download(
        url=url,
        dest=Path(dest),
        size=size,
        md5=md5.lower(),
        identity={str(k): v for k, v in identity.items()},
        checkpoint=Path(checkpoint),
        chunk_size=chunk_size,
        checkpoint_every=checkpoint_every,
        checkpoint_interval=checkpoint_interval,
        sync_every=sync_every,
        sync_interval=sync_interval,
        timeout=timeout,
        on_progress=on_progress,
        cancel=cancel,
        ssl_context=ssl_context,
        clock=clock,
        boot=boot_id(),
        url_check=url_check,
    )
    return job.run()


@attrs.define
class _Download:
    """One call of `download`: the open partial file, its running md5 and offsets."""

    url: str
    dest: Path
    size: int
    md5: str
    identity: dict[str, str | int]
    checkpoint: Path
    chunk_size: int
    checkpoint_every: int
    checkpoint_interval: float
    sync_every: int
    sync_interval: float
    timeout: float
    on_progress: ProgressCallback | None
    cancel: threading.Event | None
    ssl_context: ssl.SSLContext | None
    clock: Callable[[], float]
    boot: str | None
    url_check: Callable[[str], None] | None = None
    partial: Path = attrs.field(init=False)
    file: BinaryIO | None = None
    """The partial, unbuffered: chunks go straight to the OS, nothing is left to flush later."""
    writeback: _Writeback | None = None
    digest: hashlib._Hash = attrs.field(factory=lambda: hashlib.md5(usedforsecurity=False))
    offset: int = 0
    synced: int = 0
    durable: int = 0
    """Offset of the last fsynced checkpoint."""
    saved_at: float = float("-inf")
    """Clock of the last checkpoint written while streaming (-inf: the first needs only bytes)."""
    durable_at: float = 0.0
    """Clock of the last fsync while streaming, or of the start of the run."""
    fetched: int = 0
    restarts: int = 0

    def __attrs_post_init__(self) -> None:
        self.partial = partial_path(self.dest)

    def run(self) -> DownloadResult:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        self.durable_at = self.clock()
        try:
            resumed_from = self._open_partial()
            self._progress()
            if self.offset < self.size:
                self._fetch()
            self._save()
        except Md5MismatchError:
            self._close(save=False)
            self._discard()
            raise
        except BaseException as exc:
            if not _no_space(exc):
                self._close(save=True)
                raise
            # A partial kept on a full disk keeps the disk full: everything else the device
            # must write (its config, a checkpoint) fails too. Give the room back.
            self._close(save=False)
            self._discard()
            raise DiskError(
                f"no space left for {self.partial.name} at byte {self.offset} of {self.size}:"
                " the partial file was removed; the next offer starts over"
            ) from exc
        self._close(save=False)
        return self._finish(resumed_from)

    def _discard(self) -> None:
        """The bytes cannot become the offered file: next time starts from 0."""
        self.partial.unlink(missing_ok=True)
        self.checkpoint.unlink(missing_ok=True)

    # Partial file and checkpoint ----------------------------------------------------------------

    def _open_partial(self) -> int:
        """Open the partial file at the offset to continue from; 0 unless it is the same offer."""
        saved = read_checkpoint(self.checkpoint)
        length = self.partial.stat().st_size if self.partial.is_file() else -1
        if (
            saved is not None
            and saved.matches(self.identity, self.size, self.md5, self.partial)
            and length >= saved.offset
        ):
            start = saved.offset
            if self.boot is not None and saved.boot == self.boot and length <= self.size:
                # No reboot since the checkpoint: the page cache kept every byte written.
                start = length
            handle = self.partial.open("r+b", buffering=0)
            try:
                # Bytes past the start may never have reached the disk: drop them.
                handle.truncate(start)
                self._rehash(handle, start)
            except BaseException:
                handle.close()
                raise
            self.file = handle
            self.offset = self.synced = start
            self.durable = saved.offset
            if start != saved.offset or saved.boot != self.boot:
                # Stamp this boot: every byte past `start` from now on is written during it.
                self._save(durable=False)
            logger.info(
                "resuming %s at byte %d of %d (checkpoint at %d)",
                _describe(self.url),
                start,
                self.size,
                saved.offset,
            )
            return start
        if saved is not None:
            logger.info(
                "checkpoint %s is for another file or its partial is gone: starting over",
                self.checkpoint,
            )
        # Forget the old offer durably before its partial is touched, so a crash in between
        # can never pair the old checkpoint with new bytes.
        self.checkpoint.unlink(missing_ok=True)
        fsync_dir(self.checkpoint.parent)
        self.partial.unlink(missing_ok=True)
        self.file = self.partial.open("w+b", buffering=0)
        self._save()
        return 0

    def _rehash(self, handle: BinaryIO, length: int) -> None:
        handle.seek(0)
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(1024 * 1024, remaining))
            if not chunk:
                raise OSError(f"partial file {self.partial} is shorter than its checkpoint")
            self.digest.update(chunk)
            remaining -= len(chunk)
        handle.seek(length)

    def _save(self, durable: bool = True) -> None:
        """Write the partial out, then record its length: the checkpoint never runs ahead.
        `durable` adds the fsyncs (every DEFAULT_SYNC_EVERY bytes and at the end)."""
        assert self.file is not None
        if self.writeback is not None and self.writeback.error is not None:
            raise self._disk_error("syncing", self.writeback.error)
        if durable:
            try:
                if self.writeback is not None:
                    self.writeback.fsync()
                else:
                    os.fsync(self.file.fileno())
            except OSError as exc:
                raise self._disk_error("syncing", exc) from exc
        _write_checkpoint(
            self.checkpoint,
            Checkpoint(
                dict(self.identity),
                self.size,
                self.md5,
                self.offset,
                str(self.partial),
                self.boot,
            ),
            durable=durable,
        )
        self.synced = self.offset
        if durable:
            self.durable = self.offset

    def _close(self, *, save: bool) -> None:
        if self.file is None:
            return
        if self.writeback is not None:
            self.writeback.close()
        try:
            if save and self.offset != self.synced:
                self._save()
        except (OSError, DiskError):
            logger.exception("could not save the checkpoint of %s", self.partial)
        finally:
            self.file.close()
            self.file = None

    def _restart(self) -> None:
        """The server sent the file from byte 0: throw away the partial, never append."""
        assert self.file is not None
        logger.warning(
            "%s: server ignored the range from byte %d; starting over from 0",
            _describe(self.url),
            self.offset,
        )
        self.file.seek(0)
        self.file.truncate(0)
        self.digest = hashlib.md5(usedforsecurity=False)
        self.offset = 0
        self.restarts += 1
        self._save()

    def _finish(self, resumed_from: int) -> DownloadResult:
        actual = self.digest.hexdigest()
        if actual != self.md5:
            self._discard()
            raise Md5MismatchError(
                f"{_describe(self.url)}: md5 of the {self.size} bytes is {actual}, the offer says "
                f"{self.md5}; the partial file was deleted"
            )
        os.replace(self.partial, self.dest)
        fsync_dir(self.dest.parent)
        self.checkpoint.unlink(missing_ok=True)
        logger.info("downloaded %s: %d bytes, md5 ok", _describe(self.url), self.size)
        return DownloadResult(
            self.dest, self.size, actual, resumed_from, self.fetched, self.restarts
        )

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.offset, self.size)

    # HTTP ---------------------------------------------------------------------------------------

    def _fetch(self) -> None:
        url = self.url
        redirects = 0
        range_retry_left = 1
        while True:
            what = f"download of {_describe(url)}"
            headers = {"Accept-Encoding": "identity", "User-Agent": "iotfsm"}
            if self.offset > 0:
                headers["Range"] = f"bytes={self.offset}-{self.size - 1}"
            conn, target = _connect(url, self.timeout, self.ssl_context)
            response: http.client.HTTPResponse | None = None
            try:
                try:
                    conn.request("GET", target, headers=headers)
                    response = conn.getresponse()
                except (OSError, http.client.HTTPException) as exc:
                    raise _io_error(exc, what, self.timeout) from exc
                status = response.status
                if status in _REDIRECTS:
                    location = response.getheader("Location")
                    redirects += 1
                    if location is None or redirects > MAX_REDIRECTS:
                        raise HttpStatusError(
                            f"{what}: HTTP {status} redirect without Location or more than "
                            f"{MAX_REDIRECTS} redirects",
                            status=status,
                        )
                    url = _redirect(url, location)
                    if self.url_check is not None:
                        self.url_check(url)
                    logger.info("%s redirected to %s", what, _describe(url))
                    continue
                if status == 200:
                    if self.offset > 0:
                        self._restart()
                elif status == 206:
                    start = _content_range_start(response.getheader("Content-Range"))
                    if start != self.offset:
                        if range_retry_left == 0:
                            raise HttpStatusError(
                                f"{what}: HTTP 206 from byte {start}, asked from {self.offset}",
                                status=status,
                            )
                        range_retry_left -= 1
                        self._restart()
                        continue
                elif status == 416 and self.offset > 0 and range_retry_left > 0:
                    # The server's file is shorter than our offset: it is not the file the
                    # checkpoint was made from. Start over; the md5 check has the last word.
                    range_retry_left -= 1
                    self._restart()
                    continue
                else:
                    raise _status_error(status, what)
                self._stream(response, what)
                return
            finally:
                # The response owns the socket once the connection has let go of it.
                if response is not None:
                    response.close()
                conn.close()

    def _disk_error(self, doing: str, exc: OSError) -> DiskError:
        error = DiskError(
            f"{doing} the partial file {self.partial} failed at byte {self.offset} of {self.size}: "
            f"{exc.strerror or exc}; the checkpoint is kept, the next offer resumes once the disk "
            "has room and works"
        )
        error.__cause__ = exc  # kept even where raised without `from` (a writeback thread's)
        return error

    def _write(self, data: memoryview) -> None:
        """All of `data` to the partial (a raw file may take less per call), or a DiskError."""
        assert self.file is not None
        try:
            while data:
                done = self.file.write(data)
                data = data[done:]
        except OSError as exc:
            raise self._disk_error("writing", exc) from exc

    def _stream(self, response: http.client.HTTPResponse, what: str) -> None:
        assert self.file is not None
        if self.writeback is None and self.size - self.offset > self.sync_every:
            self.writeback = _Writeback(self.file.fileno(), self.sync_every, self.partial.name)
        hasher = _Hasher(self.digest, max(self.chunk_size, HASH_BLOCK), self.partial.name)
        try:
            self._receive(response, what, hasher)
        finally:
            hasher.close()

    def _receive(self, response: http.client.HTTPResponse, what: str, hasher: _Hasher) -> None:
        """Chunk by chunk: read, write to the partial, hand to the md5, checkpoint, report."""
        while self.offset < self.size:
            if self.cancel is not None and self.cancel.is_set():
                raise TransferCancelledError(
                    f"{what}: cancelled at byte {self.offset} of {self.size}"
                )
            buffer = hasher.space(min(self.chunk_size, self.size - self.offset))
            try:
                got = response.readinto(buffer)
            except (OSError, http.client.HTTPException) as exc:
                raise _io_error(exc, what, self.timeout) from exc
            if got == 0 and response.length == 0:
                # The body was complete by its Content-Length: the server's file is shorter
                # than the offer, and no retry will change that.
                raise Md5MismatchError(
                    f"{what}: the server's file ended at byte {self.offset}, the offer says "
                    f"{self.size} bytes; the partial file was deleted"
                )
            if got == 0:
                raise ConnectionLostError(
                    f"{what}: the body ended at byte {self.offset} of {self.size}; "
                    "the checkpoint is kept, the next offer resumes"
                )
            self._write(buffer[:got])
            hasher.filled(got)
            self.offset += got
            self.fetched += got
            if self.writeback is not None:
                if self.writeback.error is not None:
                    raise self._disk_error("syncing", self.writeback.error)
                self.writeback.written(self.offset)
            if self.offset - self.synced >= self.checkpoint_every:
                self._checkpoint_if_due()
            self._progress()

    def _checkpoint_if_due(self) -> None:
        """Enough bytes for a checkpoint arrived: write one if the time floors allow it too."""
        now = self.clock()
        if now - self.saved_at < self.checkpoint_interval:
            return
        durable = (
            self.offset - self.durable >= self.sync_every
            and now - self.durable_at >= self.sync_interval
        )
        self._save(durable=durable)
        self.saved_at = now
        if durable:
            self.durable_at = now


# Upload -----------------------------------------------------------------------------------------


def upload(
    url: str,
    source: Path,
    *,
    md5: str,
    size: int,
    chunk_size: int = DEFAULT_CHUNK,
    timeout: float = DEFAULT_TIMEOUT,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """PUT `source` to a signed URL as one body with Content-Length and Content-MD5.

    The file is streamed from disk, never loaded. A status of 200, 201 or 204 is success; 400
    (size or md5 rejected) raises Md5MismatchError, 403 SignatureRejectedError, 404
    RemoteNotFoundError and anything else the -1 family. Redirects are not followed: a PUT body
    cannot be replayed safely, and the platform's signed upload URLs point at the service
    directly.
    """
    header_md5 = content_md5(md5)
    _check_url(url)
    source = Path(source)
    what = f"upload to {_describe(url)}"
    on_disk = source.stat().st_size
    if on_disk != size:
        raise Md5MismatchError(
            f"{what}: {source} has {on_disk} bytes but the task says {size}; "
            "create a new upload task for the file as it is now"
        )
    conn, target = _connect(url, timeout, ssl_context)
    response: http.client.HTTPResponse | None = None
    try:
        send_error: BaseException | None = None
        try:
            conn.putrequest("PUT", target, skip_accept_encoding=True)
            conn.putheader("Content-Length", str(size))
            conn.putheader("Content-MD5", header_md5)
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("User-Agent", "iotfsm")
            conn.endheaders()
        except (OSError, http.client.HTTPException) as exc:
            raise _io_error(exc, what, timeout) from exc
        try:
            _send_body(
                conn,
                source,
                size=size,
                chunk_size=chunk_size,
                on_progress=on_progress,
                cancel=cancel,
                what=what,
            )
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, TimeoutError):
                raise _io_error(exc, what, timeout) from exc
            # The server may have answered and closed early (e.g. 400): read its verdict.
            send_error = exc
        try:
            response = conn.getresponse()
            response.read(64 * 1024)
        except (OSError, http.client.HTTPException) as exc:
            cause = send_error if send_error is not None else exc
            raise _io_error(cause, what, timeout) from cause
    finally:
        if response is not None:
            response.close()
        conn.close()
    status = response.status
    if status in (200, 201, 204):
        if send_error is not None:
            raise ConnectionLostError(f"{what}: HTTP {status} before the whole body was sent")
        logger.info("uploaded %s (%d bytes)", _describe(url), size)
        return
    if status == 400:
        raise Md5MismatchError(
            f"{what}: HTTP 400, the service rejected the size or md5 of the body", status=status
        )
    raise _status_error(status, what)


def _send_body(
    conn: http.client.HTTPConnection,
    source: Path,
    *,
    size: int,
    chunk_size: int,
    on_progress: ProgressCallback | None,
    cancel: threading.Event | None,
    what: str,
) -> None:
    buffer = memoryview(bytearray(chunk_size))
    sent = 0
    with source.open("rb") as body:
        while sent < size:
            if cancel is not None and cancel.is_set():
                raise TransferCancelledError(f"{what}: cancelled after {sent} of {size} bytes")
            got = body.readinto(buffer[: min(chunk_size, size - sent)])
            if not got:
                raise Md5MismatchError(f"{what}: {source} shrank to {sent} bytes while uploading")
            conn.send(buffer[:got])
            sent += got
            if on_progress is not None:
                on_progress(sent, size)


__all__ = [
    "DEFAULT_CHECKPOINT_EVERY",
    "DEFAULT_CHECKPOINT_INTERVAL",
    "DEFAULT_CHUNK",
    "DEFAULT_SYNC_EVERY",
    "DEFAULT_SYNC_INTERVAL",
    "DEFAULT_TIMEOUT",
    "MAX_REDIRECTS",
    "Checkpoint",
    "ConnectionLostError",
    "DiskError",
    "DownloadResult",
    "HttpStatusError",
    "Md5MismatchError",
    "ProgressCallback",
    "RemoteNotFoundError",
    "SignatureRejectedError",
    "TransferCancelledError",
    "TransferCode",
    "TransferError",
    "TransferTimeoutError",
    "UnsupportedUrlError",
    "content_md5",
    "current_boot_id",
    "download",
    "file_md5",
    "partial_path",
    "read_checkpoint",
    "upload",
]
