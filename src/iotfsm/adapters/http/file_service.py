"""The platform's HTTP file service: firmware and resource downloads, device uploads, signed URLs.

Devices fetch firmware and resources with plain HTTP GET and push resources with one PUT, to URLs
the platform hands out in `update_firmware`, `get_download_task_rsp` and `create_upload_task_rsp`.
This module is that server, built on `http.server` so that it needs nothing beyond the standard
library.

What real devices force on it (PROTOCOL.md, "What real devices do that a platform must absorb"):

- Every answer has a `Content-Length` and is never chunked, and an error is never a 2xx: the C SDK
  cannot read chunked bodies and saves any status other than 403/404 as firmware data.
- A Range whose end is one past the file (`bytes=0-307200` for 307200 bytes) is clamped and answered
  206, as RFC 9110 says, not 416.
- URLs are handed out under a configurable public base (`http://files.example`), because the C SDK
  cannot parse a port; the service itself may listen on `127.0.0.1:8080` behind a reverse proxy.
- Uploads are idempotent by (key, md5): a device whose final progress report went unanswered uploads
  the whole file again.

URLs are signed, not stored: `?expires={unix}&signature={hex HMAC-SHA256}` over the method, the
path, the expiry and, for PUT, the size and md5 the platform agreed to. The service therefore keeps
no per-URL state, cannot be talked into a later expiry or another file, and restarts without
losing links it handed out (given the same secret).

Names come from the other side (a device picks its upload names), so every file id and upload key is
checked before it touches the file system: no `/`, `\\`, `..`, control characters or leading dot, at
most 64 characters. Nothing is ever written outside the data directory; uploads are streamed to a
temporary file and renamed into place only when size and md5 match.

Other platform endpoints that devices reach over HTTP (the device log upload, `POST
/device/reportlog`) plug in with `add_post_route(path, handler)`: the service reads the bounded
body and answers what the handler returns; what the endpoint means stays in its own module.

Multi-range requests (`bytes=0-9,20-29`) are answered with the full body (200): no device asks for
them, and RFC 9110 lets a server ignore a Range header.

`FaultHooks` (on `FileService.hooks`) injects faults for tests: cut a response after some bytes,
ignore Range headers. They are off by default and sit beside the main path, not inside its logic.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

import attrs

from iotfsm.fsm.clock import Clock, RealClock

from ...machines.names import MAX_NAME_LENGTH, check_name, name_problem
from ..durable import fsync_dir
from .blobs import BlobStore, DirectoryBlobs, FileRef
from .bounded_server import (
    DEFAULT_BACKLOG,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_WORKERS,
    BoundedHTTPServer,
    PooledRequestHandler,
)

logger = logging.getLogger(__name__)


_CHUNK = 256 * 1024
_SLOW_PIECE = 4 * 1024
"""What a rate-limited GET (`FaultHooks.rate_limit`) sends at a time."""
_DRAIN_LIMIT = 16 * 1024 * 1024
"""How much of an unwanted request body is read and discarded so that the client sees our error
response instead of a connection reset. Larger bodies are cut off."""
_DRAIN_TIMEOUT = 2.0
_HEX_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_DIGITS = re.compile(r"[0-9]+")
_RANGE_SPEC = re.compile(r"[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*")
_MAX_DIGITS = 19
_HUGE: int = 10**_MAX_DIGITS
"""What a number of more than `_MAX_DIGITS` digits counts as: larger than any real size."""
_ROUTE = re.compile(r"/(files|uploads)/([^/]+)")
_SIGNATURE_IN_TEXT = re.compile(r"(signature=)[^&\s'\"]*", re.IGNORECASE)
_LOADED_AT = time.time()
"""No earlier than this process started: a temporary file older than it is an orphan of an
earlier process (killed in the middle of a PUT), never a body this process is receiving."""


# Data -------------------------------------------------------------------------------------------


@attrs.frozen
class UploadRecord:
    """One upload stored under `key`, its agreed size and md5, and where it lives on disk."""

    key: str
    size: int
    md5: str
    path: Path


@attrs.frozen
class ByteRange:
    """An inclusive byte range `start..end` of a file, already clamped to the file's size."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@attrs.frozen
class PostRequest:
    """A POST to a registered route, its body read in full (within the route's bound)."""

    path: str
    headers: Mapping[str, str]
    """Header names in lower case; a repeated header keeps its first value."""
    body: bytes
    host: str
    """The Host header as the client sent it ("" when absent)."""
    client: str


@attrs.frozen
class PostResponse:
    """What a route answers; always sent with a Content-Length, never chunked."""

    status: int
    body: bytes
    content_type: str = "application/json"


PostHandler = Callable[[PostRequest], PostResponse]
"""Answers one POST; runs on a server thread, so it must be thread-safe. An exception is a 500."""

DEFAULT_POST_BODY = 64 * 1024


class RangeNotSatisfiableError(Exception):
    """The Range starts at or past the end of the file: answered 416 `bytes */size`."""


@attrs.frozen
class RequestRecord:
    """What the service saw for one request, for tests; the query string is never kept."""

    method: str
    name: str
    range: str | None
    status: int


# Pure helpers -----------------------------------------------------------------------------------


def check_md5(md5: str) -> str:
    """Return `md5` in lowercase after checking that it is 32 hex digits."""
    if not _HEX_MD5.fullmatch(md5):
        raise ValueError(f"md5 {md5[:40]!r} is not 32 hexadecimal digits")
    return md5.lower()


def parse_decimal(text: str) -> int | None:
    """`text` as a non-negative decimal integer, or None when it is not one.

    Only ASCII digits count (`int()` also takes other scripts' digits, spaces and `_`). Leading
    zeros are dropped and a number longer than `_MAX_DIGITS` digits comes back as `_HUGE`: it is
    past any file, expiry or length this service handles, and parsing it would meet Python's
    int-string limit (4,300 digits) with a ValueError, or cost time quadratic in its length."""
    if not text or not _DIGITS.fullmatch(text):
        return None
    significant = text.lstrip("0")
    if len(significant) > _MAX_DIGITS:
        return _HUGE
    return int(significant or "0")


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Interpret a Range header for a file of `size` bytes (RFC 9110 §14).

    Returns None when the whole file should be sent: no header, another unit, a malformed or
    inverted range, or several ranges. An end past the file is clamped (the C SDK asks for
    `bytes=0-{size}`). Raises RangeNotSatisfiableError when the start is at or past the end.
    Never raises anything else, whatever the header holds (numbers of any length included).
    """
    if header is None:
        return None
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _RANGE_SPEC.fullmatch(spec)
    if match is None:
        return None
    first, last = parse_decimal(match.group(1)), parse_decimal(match.group(2))
    if first is None:
        if last is None:
            return None
        if last == 0 or size == 0:
            raise RangeNotSatisfiableError(f"suffix range of {last} bytes on {size} bytes")
        return ByteRange(max(0, size - last), size - 1)
    if last is not None and last < first:
        return None
    if first >= size:
        raise RangeNotSatisfiableError(f"range starts at {first}, the file has {size} bytes")
    end = min(last, size - 1) if last is not None else size - 1
    return ByteRange(first, end)


def _content_md5_to_hex(header: str) -> str | None:
    try:
        raw = base64.b64decode(header.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 16 else None


def _redact(text: str) -> str:
    """Hide signatures in anything logged: a signed URL is a bearer credential until it expires."""
    return _SIGNATURE_IN_TEXT.sub(r"\1<redacted>", text)


# Fault injection --------------------------------------------------------------------------------


class FaultHooks:
    """Fault injection and counters for tests; a production service leaves the faults off.

    - `cut_after(file_id, nbytes)`: the next GET of the file sends `nbytes` of its body and then
      closes the connection (one-shot; call again to queue more cuts).
    - `cut_at(file_id, offsets)`: cut whichever response first covers each absolute file offset,
      so a test can cut a download at the same places however the client resumes.
    - `ignore_range`: answer every GET 200 with the full body, as a broken proxy does.
    - `rate_limit`: bytes per second for GET bodies (None: as fast as possible), a slow link
      so a test can stop a device in the middle of a download.
    - `bytes_served(file_id)` (body bytes handed to connections) and `requests()`: what went
      over the wire, for assertions. The request log is bounded, so leaving the service running
      does not grow memory.
    """

    def __init__(self, log_limit: int = 1000) -> None:
        self._lock = threading.Lock()
        self._relative: dict[str, deque[int]] = {}
        self._absolute: dict[str, list[int]] = {}
        self._served: dict[str, int] = {}
        self._requests: deque[RequestRecord] = deque(maxlen=log_limit)
        self.ignore_range = False
        self.rate_limit: float | None = None

    def cut_after(self, file_id: str, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError(f"cut_after needs a byte count >= 0, got {nbytes}")
        with self._lock:
            self._relative.setdefault(file_id, deque()).append(nbytes)

    def cut_at(self, file_id: str, offsets: Iterable[int]) -> None:
        with self._lock:
            pending = self._absolute.setdefault(file_id, [])
            pending.extend(offsets)
            pending.sort()

    def clear(self) -> None:
        """Drop pending cuts and counters; `ignore_range` goes back to off."""
        with self._lock:
            self._relative.clear()
            self._absolute.clear()
            self._served.clear()
            self._requests.clear()
            self.ignore_range = False
            self.rate_limit = None

    def bytes_served(self, file_id: str) -> int:
        with self._lock:
            return self._served.get(file_id, 0)

    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def _take_cut(self, file_id: str, start: int, length: int) -> int | None:
        """How many body bytes to send before cutting this response, or None to send them all."""
        with self._lock:
            relative = self._relative.get(file_id)
            if relative:
                nbytes = relative.popleft()
                return nbytes if nbytes < length else None
            pending = self._absolute.get(file_id)
            if not pending:
                return None
            # Offsets the client has already passed can never trigger: forget them.
            while pending and pending[0] <= start:
                pending.pop(0)
            if pending and pending[0] < start + length:
                return pending.pop(0) - start
            return None

    def _count(self, file_id: str, nbytes: int) -> None:
        with self._lock:
            self._served[file_id] = self._served.get(file_id, 0) + nbytes

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)


# The service ------------------------------------------------------------------------------------


class FileService:
    """Serves published files and receives device uploads behind signed URLs.

    Files live under `data_dir`: `files/` (published, downloadable), `uploads/` (stored device
    uploads) and `tmp/` (bodies in flight, on the same file system so the final rename is atomic).
    Upload records are kept in memory; the files themselves survive a restart.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        public_base: str | None = None,
        secret: bytes | None = None,
        clock: Clock | None = None,
        request_timeout: float = 30.0,
        workers: int = DEFAULT_WORKERS,
        backlog: int = DEFAULT_BACKLOG,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        blobs: BlobStore | None = None,
    ) -> None:
        """`blobs` holds the published files (default: `files/` under `data_dir`; a pool of
        workers shares one in PostgreSQL). `workers` bounds the requests served at once (each
        streams one file); connections waiting for a request cost no thread and are cut after
        `idle_timeout` seconds of silence,
        or `header_timeout` seconds into an unfinished request head (`bounded_http`).
        `request_timeout` bounds each socket read or write inside a request."""
        self._data_dir = Path(data_dir).resolve()
        self._files_dir = self._data_dir / "files"
        self._uploads_dir = self._data_dir / "uploads"
        self._tmp_dir = self._data_dir / "tmp"
        for folder in (self._files_dir, self._uploads_dir, self._tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._remove_orphans()
        self.blobs: BlobStore = blobs or DirectoryBlobs(self._files_dir, self._tmp_dir)
        self._host = host
        self._port = port
        self._public_base = _check_public_base(public_base) if public_base is not None else None
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        if not self._secret:
            raise ValueError("the signing secret must not be empty")
        self._clock: Clock = clock if clock is not None else RealClock()
        self._request_timeout = request_timeout
        self._workers, self._backlog = workers, backlog
        self._header_timeout, self._idle_timeout = header_timeout, idle_timeout
        self._lock = threading.Lock()
        self._published: dict[str, FileRef] = {}
        self._uploads: dict[str, UploadRecord] = {}
        self._callbacks: list[Callable[[UploadRecord], None]] = []
        self._post_routes: dict[str, tuple[PostHandler, int]] = {}
        self._server: _Server | None = None
        self.hooks = FaultHooks()
        self.admits: Callable[[str, str], bool] | None = None
        """Asked (product, device) for every request whose URL was signed for a device: a
        device disabled or removed after its URL went out is refused at once (403), not when
        the URL expires. None: every correctly signed URL is served."""

    def _remove_orphans(self) -> None:
        """Delete bodies in flight left by an earlier process: nothing else ever would."""
        for path in self._tmp_dir.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < _LOADED_AT:
                    size = path.stat().st_size
                    path.unlink()
                    logger.info("removed %s (%d bytes), left by an earlier process", path, size)
            except OSError as exc:
                logger.warning("cannot remove the orphan %s: %s", path, exc)

    def upload_refusal(self, size: int, max_size: int | None = None) -> str | None:
        """Why an upload of `size` bytes must not be granted (None: it may be). Checked before
        handing out a PUT URL, so a device is not sent to stream a file the disk cannot hold."""
        if max_size is not None and size > max_size:
            return f"{size} bytes is over the platform's maximum upload of {max_size} bytes"
        free = shutil.disk_usage(self._tmp_dir).free
        if size > free:
            return f"{size} bytes do not fit: the platform's disk has {free} bytes free"
        return None

    # Lifecycle ----------------------------------------------------------------------------------

    def start(self) -> FileService:
        if self._server is not None:
            raise RuntimeError("the file service is already running; stop() it first")
        server = _Server(
            (self._host, self._port),
            _Handler,
            workers=self._workers,
            backlog=self._backlog,
            header_timeout=self._header_timeout,
            idle_timeout=self._idle_timeout,
            name="iotfsm-file-service",
        )
        server.service = self
        server.start()
        self._server = server
        logger.info("file service listening on %s, public base %s", self.base_url, self.public_base)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> FileService:
        return self.start() if self._server is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually listened on; port 0 was replaced by a free port."""
        if self._server is None:
            raise RuntimeError("the file service is not running; call start() first")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def base_url(self) -> str:
        """The listener's own URL, `http://host:port`."""
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def server(self) -> BoundedHTTPServer:
        """The running HTTP server (its pool size, backlog and connection count)."""
        if self._server is None:
            raise RuntimeError("the file service is not running; call start() first")
        return self._server

    @property
    def public_base(self) -> str:
        """Where devices are told the files are; the listener's own URL unless configured."""
        return self._public_base if self._public_base is not None else self.base_url

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    # Publishing and signing ---------------------------------------------------------------------

    def publish_file(self, source: Path | bytes, *, name: str) -> FileRef:
        """Store a file (or bytes) under `name` and return what an offer needs to carry; a
        download running meanwhile sees the old content or the new, never a mixture."""
        ref = self.blobs.put(check_name(name), source)
        logger.info("published %s (%d bytes, md5 %s)", name, ref.size, ref.md5)
        return ref

    def published(self, file_id: str) -> FileRef | None:
        return self.blobs.ref(file_id)

    def signed_get_url(
        self, file_id: str, expires_in: float, holder: tuple[str, str] | None = None
    ) -> str:
        """A download URL valid for `expires_in` seconds. The id need not exist (yet): 404 then.
        With a `holder` (product, device) the URL is that device's: signed with its name and
        served only while `admits` lets the device in."""
        path = "/files/" + quote(check_name(file_id), safe="")
        expires = self._expiry(expires_in)
        device = _holder_text(holder)
        signature = self._sign("GET", path, expires, device=device)
        held = _device_query(device)
        return f"{self.public_base}{path}?expires={expires}{held}&signature={signature}"

    def signed_put_url(
        self,
        upload_key: str,
        size: int,
        md5: str,
        expires_in: float,
        holder: tuple[str, str] | None = None,
    ) -> str:
        """An upload URL for exactly `size` bytes with this md5; any other body is refused.
        `holder` as for `signed_get_url`."""
        path = "/uploads/" + quote(check_name(upload_key, "upload key"), safe="")
        if size < 0:
            raise ValueError(f"upload size must be >= 0, got {size}")
        md5 = check_md5(md5)
        expires = self._expiry(expires_in)
        device = _holder_text(holder)
        signature = self._sign("PUT", path, expires, size, md5, device=device)
        return (
            f"{self.public_base}{path}?expires={expires}&size={size}&md5={md5}"
            f"{_device_query(device)}&signature={signature}"
        )

    def _expiry(self, expires_in: float) -> int:
        return int(self._clock.now() + expires_in)

    def _sign(
        self,
        method: str,
        path: str,
        expires: int,
        size: int | None = None,
        md5: str | None = None,
        *,
        device: str | None = None,
    ) -> str:
        message = f"{method}\n{path}\n{expires}"
        if size is not None:
            message += f"\n{size}\n{md5}"
        if device is not None:
            message += f"\nfor {device}"
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()

    # Uploads ------------------------------------------------------------------------------------

    def uploads(self) -> list[UploadRecord]:
        with self._lock:
            return list(self._uploads.values())

    def upload_record(self, key: str) -> UploadRecord | None:
        with self._lock:
            return self._uploads.get(key)

    def add_post_route(
        self, path: str, handler: PostHandler, *, max_body: int = DEFAULT_POST_BODY
    ) -> None:
        """Answer `POST path` (exact match, query ignored) with `handler`.

        The extension point for other device-facing endpoints, so that they share this server
        (one port, one public base) without their logic living here. Bodies must come with a
        Content-Length of at most `max_body` bytes (411 and 413 otherwise)."""
        if not path.startswith("/") or path.startswith(("/files/", "/uploads/")):
            raise ValueError(
                f"POST route {path!r} must start with '/' and lie outside /files/ and /uploads/"
            )
        if max_body <= 0:
            raise ValueError(f"max_body must be positive, got {max_body}")
        with self._lock:
            self._post_routes[path] = (handler, max_body)

    def _post_route(self, path: str) -> tuple[PostHandler, int] | None:
        with self._lock:
            return self._post_routes.get(path)

    def on_upload(self, callback: Callable[[UploadRecord], None]) -> None:
        """Call `callback` (on a server thread, before the device gets its 200) for each upload
        that stored new content; an identical repeat of an upload does not call it again."""
        with self._lock:
            self._callbacks.append(callback)

    def _store_upload(self, record: UploadRecord, tmp: Path) -> None:
        os.replace(tmp, record.path)
        fsync_dir(self._uploads_dir)
        with self._lock:
            previous = self._uploads.get(record.key)
            self._uploads[record.key] = record
            callbacks = list(self._callbacks)
        if previous is not None and previous.md5 == record.md5 and previous.size == record.size:
            logger.info("upload %s repeated with the same md5: kept", record.key)
            return
        logger.info("stored upload %s (%d bytes, md5 %s)", record.key, record.size, record.md5)
        for callback in callbacks:
            try:
                callback(record)
            except Exception:
                logger.exception("on_upload callback failed for %s", record.key)

    # Request checks (used by the handler) -------------------------------------------------------

    def _verify(self, method: str, path: str, query: str) -> tuple[str | None, int, str]:
        """Check a signed query; return (problem or None, size, md5) (size/md5 only for PUT)."""
        params = parse_qs(query, keep_blank_values=True)
        wanted = ["expires", "signature"]
        if method == "PUT":
            wanted += ["size", "md5"]
        values: dict[str, str] = {}
        for key in wanted:
            got = params.get(key, [])
            if len(got) != 1:
                return f"query parameter {key!r} missing or repeated", 0, ""
            values[key] = got[0]
        holders = params.get("device", [])
        if len(holders) > 1:
            return "query parameter 'device' repeated", 0, ""
        device = holders[0] if holders else None
        expires = parse_decimal(values["expires"])
        if expires is None:
            return "bad expires", 0, ""
        size, md5 = 0, ""
        if method == "PUT":
            parsed_size = parse_decimal(values["size"])
            if parsed_size is None:
                return "bad size", 0, ""
            size, md5 = parsed_size, values["md5"]
            if not _HEX_MD5.fullmatch(md5):
                return "bad md5", 0, ""
            expected = self._sign(method, path, expires, size, md5, device=device)
        else:
            expected = self._sign(method, path, expires, device=device)
        signature = values["signature"]
        if not signature.isascii() or not hmac.compare_digest(expected, signature.lower()):
            return "signature does not match", 0, ""
        if self._clock.now() > expires:
            return "URL expired", 0, ""
        if device is not None and self.admits is not None:
            product, _, name = device.partition("/")
            if not self.admits(product, name):
                return "the device this URL was signed for is not admitted", 0, ""
        return None, size, md5.lower()

    def _strip_prefix(self, path: str) -> str:
        """Accept paths under the public base's path too, for proxies that do not strip it."""
        if self._public_base is None:
            return path
        prefix = urlsplit(self._public_base).path.rstrip("/")
        if prefix and path.startswith(prefix + "/"):
            return path[len(prefix) :]
        return path


def _holder_text(holder: tuple[str, str] | None) -> str | None:
    if holder is None:
        return None
    product, device = holder  # names the topics already checked: no "/" in either
    return f"{product}/{device}"


def _device_query(device: str | None) -> str:
    return "" if device is None else "&device=" + quote(device, safe="")


def _check_public_base(base: str) -> str:
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(
            f"public base {base!r} must be an http or https URL without query or fragment, "
            "e.g. 'http://files.example'"
        )
    return base.rstrip("/")


class _Server(BoundedHTTPServer):
    service: FileService


class _Handler(PooledRequestHandler):
    """Routes `/files/{id}` (GET, HEAD) and `/uploads/{key}` (PUT); everything else is 404/405."""

    protocol_version = "HTTP/1.1"
    server_version = "iotfsm-file-service"
    sys_version = ""

    @property
    def service(self) -> FileService:
        return cast(_Server, self.server).service

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.service._request_timeout)
        self._body_read = False
        self._name = ""

    def parse_request(self) -> bool:
        # Called once per request; a kept-alive connection carries several.
        self._body_read = False
        self._name = ""
        return super().parse_request()

    # Logging: never the query string, which holds the signature ---------------------------------

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("%s %s %s -> %s", self.client_address[0], self.command, self._log_path(), code)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("file service: %s", _redact(format % args))

    def _log_path(self) -> str:
        return urlsplit(getattr(self, "path", "")).path

    # Responses ----------------------------------------------------------------------------------

    def _record(self, status: int) -> None:
        self.service.hooks._record(
            RequestRecord(self.command, self._name, self.headers.get("Range"), status)
        )

    def _fail(self, status: int, reason: str) -> None:
        """Answer an error with a short text body and close: never a 2xx, never chunked."""
        logger.info("%s %s refused: %d %s", self.command, self._log_path(), status, reason)
        self._record(status)
        body = f"{status} {reason}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True
        self._linger()

    def _linger(self) -> None:
        """Discard an unread request body after answering, so the client reads our error
        instead of a reset connection (Apache's "lingering close")."""
        if self._body_read or self.command not in ("PUT", "POST"):
            return
        self._body_read = True
        remaining = parse_decimal(self.headers.get("Content-Length", "0"))
        if remaining is None:
            return
        remaining = min(remaining, _DRAIN_LIMIT)
        try:
            self.wfile.flush()
            self.connection.settimeout(_DRAIN_TIMEOUT)
            while remaining > 0:
                chunk = self.rfile.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass

    def _route(self, kind: str) -> tuple[str, str] | None:
        """Resolve the request to (canonical path, name) or answer the error and return None."""
        parts = urlsplit(self.path)
        path = self.service._strip_prefix(parts.path)
        match = _ROUTE.fullmatch(path)
        if match is None:
            self._fail(404, "no such path")
            return None
        try:
            name = unquote(match.group(2), errors="strict")
        except UnicodeDecodeError:
            self._fail(400, "name is not UTF-8")
            return None
        self._name = name
        if name_problem(name) is not None:
            self._fail(400, "name refused")
            return None
        if match.group(1) != kind:
            self._fail(405, "method not allowed here")
            return None
        return f"/{kind}/" + quote(name, safe=""), name

    # GET / HEAD ---------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 (http.server names)
        self._get()

    def do_HEAD(self) -> None:  # noqa: N802 (http.server names)
        self._get()

    def _get(self) -> None:
        routed = self._route("files")
        if routed is None:
            return
        path, name = routed
        problem, _, _ = self.service._verify("GET", path, urlsplit(self.path).query)
        if problem is not None:
            self._fail(403, problem)
            return
        found = self.service.blobs.open(name)
        if found is None:
            self._fail(404, "no such file")
            return
        handle, size = found
        with handle:
            self._send_file(handle, name, size)

    def _send_file(self, handle: BinaryIO, name: str, size: int) -> None:
        hooks = self.service.hooks
        requested = None if hooks.ignore_range else self.headers.get("Range")
        try:
            byte_range = parse_range(requested, size)
        except RangeNotSatisfiableError as exc:
            self._record(416)
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            logger.info("GET %s: 416, %s", self._log_path(), exc)
            return
        if byte_range is None:
            status, start, length = 200, 0, size
        else:
            status, start, length = 206, byte_range.start, byte_range.length
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if byte_range is not None:
            self.send_header("Content-Range", f"bytes {start}-{byte_range.end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        cut = hooks._take_cut(name, start, length)
        handle.seek(start)
        try:
            self._send_body(handle, name, length if cut is None else cut)
        except OSError as exc:
            logger.info("GET %s: client went away (%s)", self._log_path(), exc)
            self.close_connection = True
            return
        if cut is not None:
            logger.info("GET %s: fault hook cut the connection after %d bytes", name, cut)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _send_body(self, handle: BinaryIO, name: str, to_send: int) -> None:
        """Copy `to_send` bytes from `handle` to the client; OSError when the client is gone.

        A slow link (`FaultHooks.rate_limit`) trickles small pieces at a steady pace rather than
        a burst and a pause, so a client dying at any moment leaves little in flight and
        `bytes_served` measures what it fetched, within a piece and the socket's buffer."""
        hooks = self.service.hooks
        piece = _SLOW_PIECE if hooks.rate_limit else _CHUNK
        began, sent = time.monotonic(), 0
        while to_send > 0:
            chunk = handle.read(min(piece, to_send))
            if not chunk:
                break  # the file shrank under us: the client sees a short body
            # Counted before the write, so a client that has the bytes sees them counted;
            # taken back if the connection refuses them (the client is gone).
            hooks._count(name, len(chunk))
            try:
                self.wfile.write(chunk)
            except OSError:
                hooks._count(name, -len(chunk))
                raise
            to_send -= len(chunk)
            sent += len(chunk)
            rate = hooks.rate_limit
            if rate:
                time.sleep(max(0.0, began + sent / rate - time.monotonic()))

    # POST (registered routes) ------------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802 (http.server names)
        path = self.service._strip_prefix(urlsplit(self.path).path)
        self._name = path
        route = self.service._post_route(path)
        if route is None:
            self._fail(404, "no such path")
            return
        handler, max_body = route
        if "Transfer-Encoding" in self.headers or "Content-Length" not in self.headers:
            self._fail(411, "Content-Length required, chunked bodies are not accepted")
            return
        length = parse_decimal(self.headers["Content-Length"].strip())
        if length is None:
            self._fail(400, "bad Content-Length")
            return
        if not 0 <= length <= max_body:
            self._fail(413, f"body over {max_body} bytes")
            return
        self._body_read = True
        try:
            body = self.rfile.read(length)
        except OSError as exc:
            logger.info("POST %s: client went away (%s)", path, exc)
            self.close_connection = True
            return
        if len(body) != length:
            logger.info("POST %s: body ended %d bytes short", path, length - len(body))
            self.close_connection = True
            self._record(400)
            return
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), value)
        request = PostRequest(path, headers, body, headers.get("host", ""), self.client_address[0])
        try:
            response = handler(request)
        except Exception:
            logger.exception("POST %s: the route's handler failed", path)
            self._fail(500, "internal error")
            return
        self._record(response.status)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    # PUT ----------------------------------------------------------------------------------------

    def do_PUT(self) -> None:  # noqa: N802 (http.server names)
        routed = self._route("uploads")
        if routed is None:
            return
        path, key = routed
        problem, size, md5 = self.service._verify("PUT", path, urlsplit(self.path).query)
        if problem is not None:
            self._fail(403, problem)
            return
        if "Transfer-Encoding" in self.headers or "Content-Length" not in self.headers:
            self._fail(411, "Content-Length required, chunked bodies are not accepted")
            return
        length = parse_decimal(self.headers["Content-Length"].strip())
        if length is None:
            self._fail(400, "bad Content-Length")
            return
        if length != size:
            self._fail(400, f"Content-Length {length} differs from the agreed size {size}")
            return
        header_md5 = _content_md5_to_hex(self.headers.get("Content-MD5", ""))
        if header_md5 is None:
            self._fail(400, "Content-MD5 missing or not base64 of 16 bytes")
            return
        if header_md5 != md5:
            self._fail(400, "Content-MD5 differs from the agreed md5")
            return
        self._receive(key, size, md5)

    def _receive(self, key: str, size: int, md5: str) -> None:
        service = self.service
        self._body_read = True
        digest = hashlib.md5(usedforsecurity=False)
        fd, tmp_name = tempfile.mkstemp(dir=service._tmp_dir, prefix="upload-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                remaining = size
                while remaining > 0:
                    chunk = self.rfile.read(min(_CHUNK, remaining))
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    remaining -= len(chunk)
                if remaining:
                    logger.info("PUT %s: body ended %d bytes short", key, remaining)
                    self.close_connection = True
                    self._record(400)
                    return
                out.flush()
                os.fsync(out.fileno())
            actual = digest.hexdigest()
            if actual != md5:
                self._fail(400, f"body md5 {actual} differs from the agreed md5")
                return
            service._store_upload(UploadRecord(key, size, md5, service._uploads_dir / key), tmp)
        except OSError as exc:
            logger.info("PUT %s: aborted (%s)", key, exc)
            self.close_connection = True
            return
        finally:
            tmp.unlink(missing_ok=True)
        self._record(200)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


__all__ = [
    "MAX_NAME_LENGTH",
    "ByteRange",
    "FaultHooks",
    "FileRef",
    "FileService",
    "PostHandler",
    "PostRequest",
    "PostResponse",
    "RangeNotSatisfiableError",
    "RequestRecord",
    "UploadRecord",
    "check_md5",
    "check_name",
    "parse_decimal",
    "parse_range",
]
