"""Device log upload (seed 004 §1.6.3): a `logging.Handler` that ships records to the platform.

The platform's log level (the `log_level` feature) decides what goes: records at or above it, none
at level 0. Each record becomes one line prefixed `ERR`, `WRN`, `INF` or `DBG`; lines are batched
and POSTed as `{"ProductId","DeviceName","Message":[…]}` to `/device/reportlog`, signed as the
Tencent SDKs sign it (below, shared with the platform's endpoint so both sides agree).

Why a background thread: logging calls happen on the application's own threads, often in paths
that must not wait for a network. `emit` formats the record and appends it under a lock; a
single sender thread batches, posts and retries with backoff. While the endpoint is unreachable
the lines wait in a bounded buffer; when it is full the oldest go, and the next batch that gets
through starts with a `WRN` line saying how many were dropped. A batch the platform refuses for
good (a 4xx, e.g. a bad signature) is dropped and counted the same way rather than retried
forever, so one bad batch never blocks every later line.

Signing (PROTOCOL.md, "Log level" and "What real devices do"):
`POST\\n{host}\\n/device/reportlog\\n\\n{algorithm}\\n{timestamp}\\n{nonce}\\n{hex digest of body}`,
HMAC keyed with the device key, base64. Both SDKs key the HMAC with the device secret *string* as
bytes, not base64-decoded, at most its first 24 characters. They differ in the hash: the Java SDK
sends `hmacsha256` with a SHA-256 body digest, the C SDK `hmacsha1` with a SHA-1 body digest.
The Java SDK also signs with the host `ap-guangzhou.gateway.tencentdevices.com` whatever URL it
posts to; this uploader signs with the host of its URL, as the C SDK does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import random
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

from ...machines.log_level import python_level

log = logging.getLogger(__name__)

REPORT_LOG_PATH = "/device/reportlog"
TENCENT_LOG_HOST = "ap-guangzhou.gateway.tencentdevices.com"
"""The host the Java SDK puts in its string to sign, whatever URL it posts to."""
KEY_CHARS = 24
"""The SDKs key the HMAC with at most this many characters of the device secret."""

Algorithm = Literal["hmacsha256", "hmacsha1"]
_HASHES: dict[str, Callable[..., Any]] = {"hmacsha256": hashlib.sha256, "hmacsha1": hashlib.sha1}
ALGORITHMS: tuple[str, ...] = tuple(_HASHES)

MAX_LINE = 4096
"""Characters kept of one line; a longer record is cut (a traceback of a deep recursion...)."""

_PREFIXES = ((logging.ERROR, "ERR"), (logging.WARNING, "WRN"), (logging.INFO, "INF"))
_RETRYABLE = frozenset({408, 425, 429})


# ---- signing (both roles) --------------------------------------------------------------------


def signing_key(psk: str) -> bytes:
    """The HMAC key of log uploads: the first 24 characters of the device secret, as bytes."""
    return psk[:KEY_CHARS].encode("utf-8")


def string_to_sign(host: str, algorithm: str, timestamp: str, nonce: str, body: bytes) -> str:
    """The canonical request the HMAC covers; the body enters as its hex digest."""
    digest = _HASHES[algorithm](body).hexdigest()
    return f"POST\n{host}\n{REPORT_LOG_PATH}\n\n{algorithm}\n{timestamp}\n{nonce}\n{digest}"


def signature(
    psk: str, host: str, *, algorithm: str, timestamp: str, nonce: str, body: bytes
) -> bytes:
    """The raw HMAC bytes (callers base64 them for the header)."""
    text = string_to_sign(host, algorithm, timestamp, nonce, body)
    return hmac.new(signing_key(psk), text.encode("utf-8"), _HASHES[algorithm]).digest()


def sign_headers(
    psk: str, host: str, body: bytes, *, algorithm: Algorithm, timestamp: int, nonce: int
) -> dict[str, str]:
    """The four X-TC headers of one upload."""
    if algorithm not in _HASHES:
        raise ValueError(f"unknown algorithm {algorithm!r}: use 'hmacsha256' or 'hmacsha1'")
    mac = signature(
        psk, host, algorithm=algorithm, timestamp=str(timestamp), nonce=str(nonce), body=body
    )
    return {
        "X-TC-Algorithm": algorithm,
        "X-TC-Timestamp": str(timestamp),
        "X-TC-Nonce": str(nonce),
        "X-TC-Signature": base64.b64encode(mac).decode("ascii"),
    }


def level_prefix(levelno: int) -> str:
    for threshold, prefix in _PREFIXES:
        if levelno >= threshold:
            return prefix
    return "DBG"


def report_url(url: str) -> str:
    """`http://host:port` (a base) or a full URL; a bare base gets `/device/reportlog`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"log upload URL {url!r} must be http(s)://host[:port][/path], e.g. the platform's"
            " `log_url`"
        )
    if parts.path in ("", "/"):
        return url.rstrip("/") + REPORT_LOG_PATH
    return url


# ---- options ---------------------------------------------------------------------------------


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


@attrs.frozen
class LogUploadOptions:
    """Where and how a device uploads its log. The defaults follow the SDKs: a batch every few
    seconds, a bounded offline cache, retries that back off to a minute."""

    url: str = attrs.field(converter=report_url)
    algorithm: Algorithm = "hmacsha256"
    interval: float = attrs.field(default=3.0, validator=_positive)
    """Seconds between batches while lines trickle in (a full batch goes at once)."""
    batch_lines: int = attrs.field(default=100, validator=_positive)
    batch_bytes: int = attrs.field(default=16 * 1024, validator=_positive)
    buffer_lines: int = attrs.field(default=1000, validator=_positive)
    """Lines kept while the endpoint is unreachable; beyond it the oldest are dropped."""
    retry_min: float = attrs.field(default=1.0, validator=_positive)
    retry_max: float = attrs.field(default=60.0, validator=_positive)
    timeout: float = attrs.field(default=10.0, validator=_positive)
    """Seconds for one HTTP request."""
    close_timeout: float = attrs.field(default=2.0, validator=_positive)
    """How long `close()` (and `logging.shutdown` at exit) tries to deliver what is left."""


# ---- the handler -----------------------------------------------------------------------------


class LogUploader(logging.Handler):
    """Uploads the records it is handed; attach it to the application's logger.

    The remote level starts at 0 (upload nothing), as a device does until the platform says;
    `set_remote_level` follows the `log_level` feature. `now` gives the signing timestamp (the
    device's clock, so a test's manual clock and the platform's agree)."""

    def __init__(
        self,
        options: LogUploadOptions | str,
        product_id: str,
        device_name: str,
        psk: str,
        *,
        now: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(level=python_level(0))
        if not isinstance(options, LogUploadOptions):
            options = LogUploadOptions(options)
        self.options = options
        if not psk:
            raise ValueError("log upload needs the device key (psk) to sign its requests")
        self.product_id = product_id
        self.device_name = device_name
        self._psk = psk
        self._now = now
        self._ssl_context = ssl_context
        parts = urlsplit(self.options.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.setFormatter(logging.Formatter("|%(asctime)s|%(name)s|%(message)s"))
        self.remote_level = 0
        self._cond = threading.Condition(threading.Lock())
        self._buffer: deque[str] = deque()
        self._dropped = 0
        self._inflight = 0
        """Lines of the batch that is out (taken from the buffer, not delivered or put back)."""
        self._urgent = False
        self._stopping = False
        self._failures = 0
        """Failed attempts in a row: the backoff grows with them."""
        self._retry_at = 0.0
        self._rng = random.Random()
        self.failed_attempts = 0
        self.sent_lines = 0
        """Lines delivered so far, dropped-lines notices included."""
        self.sent_batches = 0
        self.dropped_lines = 0
        """Lines lost so far (buffer overflow or refused batches), for the application to see."""
        self._thread = threading.Thread(target=self._run, name="iotfsm-log-upload", daemon=True)
        self._thread.start()

    # ---- what the application and the device facade call -----------------------------------

    def set_remote_level(self, level: int) -> None:
        """Follow the platform's log level: 0 uploads nothing, 1 errors ... 4 debug."""
        self.setLevel(python_level(level))
        self.remote_level = level

    @property
    def pending(self) -> int:
        """Lines waiting to go (in the buffer or in a batch that is out)."""
        with self._cond:
            return len(self._buffer) + self._inflight

    @property
    def sending(self) -> bool:
        """A batch is out to the endpoint right now."""
        with self._cond:
            return self._inflight > 0

    def emit(self, record: logging.LogRecord) -> None:
        # Our own records (and anything the sender thread logs, e.g. http.client) must not feed
        # back into the buffer: an unreachable endpoint would log about itself forever.
        if record.name == __name__ or threading.current_thread() is self._thread:
            return
        try:
            line = level_prefix(record.levelno) + self.format(record)
        except Exception:
            self.handleError(record)
            return
        if len(line) > MAX_LINE:
            line = line[: MAX_LINE - 3] + "..."
        with self._cond:
            if self._stopping:
                return
            if len(self._buffer) >= self.options.buffer_lines:
                self._buffer.popleft()
                self._dropped += 1
                self.dropped_lines += 1
            self._buffer.append(line)
            # wake the sender for the first line (its interval starts) and when a batch fills
            # (not for every line after: a full buffer must not wake it per record)
            if len(self._buffer) in (1, self.options.batch_lines):
                self._cond.notify_all()

    def flush(self) -> None:
        """Send what is buffered now and wait (at most `close_timeout`) for it to go."""
        self.drain(self.options.close_timeout)

    def drain(self, timeout: float) -> bool:
        """Send now; True once every buffered line was delivered, False if the endpoint failed
        or `timeout` seconds passed first (the lines stay buffered and are retried)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            failures = self.failed_attempts
            self._urgent = True
            self._cond.notify_all()
            while self._buffer or self._inflight:
                remaining = deadline - time.monotonic()
                failed = self.failed_attempts > failures
                if remaining <= 0 or failed or not self._thread.is_alive():
                    return False
                self._cond.wait(remaining)
            return True

    def close(self) -> None:
        """Deliver what is left (bounded by `close_timeout`), stop the sender, detach."""
        if self._thread.is_alive() and not self._stopping:
            self.drain(self.options.close_timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(self.options.close_timeout + self.options.timeout)
        super().close()

    # ---- the sender thread ------------------------------------------------------------------

    def _run(self) -> None:
        last_sent = time.monotonic()
        while True:
            with self._cond:
                batch = self._next_batch(last_sent)
                if batch is None:
                    return
                lines, reported = batch
                self._inflight = len(lines)
            try:
                outcome = self._post(lines)
            except Exception:  # a bug here must not silently end every later upload
                log.exception("log upload failed unexpectedly; retrying")
                outcome = "retry"
            last_sent = time.monotonic()
            with self._cond:
                self._inflight = 0
                if outcome == "sent":
                    self._failures = 0
                    self.sent_lines += len(lines)
                    self.sent_batches += 1
                elif outcome == "refused":
                    self._failures = 0
                    lost = len(lines) - (1 if reported else 0)
                    self._dropped += lost + reported
                    self.dropped_lines += lost
                else:
                    self._failures += 1
                    self.failed_attempts += 1
                    self._retry_at = time.monotonic() + self._backoff()
                    self._put_back(lines, reported)
                self._cond.notify_all()

    def _next_batch(self, last_sent: float) -> tuple[list[str], int] | None:
        """Wait (holding the lock) until a batch is due; None when stopping with nothing to do.

        The batch starts with the dropped-lines notice when lines were lost since the last one
        that got through; `reported` is that count, so a failed batch can restore it."""
        opts = self.options
        while True:
            if self._stopping:
                return None
            backoff = self._retry_at - time.monotonic()
            if backoff > 0:
                self._cond.wait(backoff)  # not even a flush shortens it: the endpoint is down
                continue
            if self._buffer and (
                self._urgent
                or len(self._buffer) >= opts.batch_lines
                or time.monotonic() - last_sent >= opts.interval
            ):
                break
            if not self._buffer:
                self._urgent = False
                self._cond.wait()
            else:
                self._cond.wait(max(0.0, opts.interval - (time.monotonic() - last_sent)))
        reported, self._dropped = self._dropped, 0
        lines: list[str] = []
        size = 0
        if reported:
            lines.append(f"WRN{reported} log lines dropped (offline buffer full or refused)")
        while self._buffer and len(lines) < opts.batch_lines:
            line = self._buffer[0]
            if lines and size + len(line) > opts.batch_bytes:
                break
            lines.append(self._buffer.popleft())
            size += len(line)
        if not self._buffer:
            self._urgent = False
        return lines, reported

    def _put_back(self, lines: list[str], reported: int) -> None:
        """A batch that did not go returns to the front, then the bound drops the oldest."""
        self._dropped += reported
        self._buffer.extendleft(reversed(lines[1:] if reported else lines))
        while len(self._buffer) > self.options.buffer_lines:
            self._buffer.popleft()
            self._dropped += 1
            self.dropped_lines += 1

    def _backoff(self) -> float:
        opts = self.options
        delay = min(opts.retry_max, opts.retry_min * 2.0 ** max(0, self._failures - 1))
        return float(delay * self._rng.uniform(0.5, 1.0))

    def _post(self, lines: list[str]) -> Literal["sent", "refused", "retry"]:
        doc = {"ProductId": self.product_id, "DeviceName": self.device_name, "Message": lines}
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        headers = sign_headers(
            self._psk,
            self._host,
            body,
            algorithm=self.options.algorithm,
            timestamp=int(self._now()),
            nonce=1 + secrets.randbelow(2**31 - 2),
        )
        headers["Content-Type"] = "application/json;charset=utf-8"
        headers["Content-Length"] = str(len(body))
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.options.timeout, context=self._ssl_context
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.options.timeout)
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            response = conn.getresponse()
            status, answer = response.status, response.read(64 * 1024)
        except (OSError, http.client.HTTPException) as exc:
            log.debug("log upload to %s failed: %s", self.options.url, exc)
            return "retry"
        finally:
            conn.close()
        error = _error_of(answer)
        if 200 <= status < 300 and error is None:
            return "sent"
        if status >= 500 or status in _RETRYABLE:
            log.debug("log upload answered %d; retrying", status)
            return "retry"
        log.warning("log upload refused (%d %s): %d lines dropped", status, error or "", len(lines))
        return "refused"


def _error_of(answer: bytes) -> str | None:
    """The `Response.Error` of a Tencent-style answer, as `Code: Message`, or None."""
    try:
        doc = json.loads(answer)
    except ValueError:
        return None
    response = doc.get("Response") if isinstance(doc, dict) else None
    error = response.get("Error") if isinstance(response, dict) else None
    if not isinstance(error, dict):
        return None
    return f"{error.get('Code', '')}: {error.get('Message', '')}"


__all__ = [
    "ALGORITHMS",
    "REPORT_LOG_PATH",
    "TENCENT_LOG_HOST",
    "Algorithm",
    "LogUploadOptions",
    "LogUploader",
    "level_prefix",
    "report_url",
    "sign_headers",
    "signature",
    "signing_key",
    "string_to_sign",
]
