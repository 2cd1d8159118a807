"""The platform's `POST /device/reportlog`: verify a device's signed log batch and keep its lines.

It plugs into the file service's HTTP server as a POST route (`FileService.add_post_route`), so
devices reach it under the same public base as firmware and resources. Nothing here knows HTTP
beyond the request and response values of that route.

A request is accepted only when its signature checks out against the key of the device its body
names (a registry of device keys in the platform store, filled by server code), with a timestamp
within `max_skew` of the platform's clock. Anything else is answered in Tencent's error shape,
`{"Response":{"Error":{"Code","Message"},"RequestId"}}`, and stores nothing. Both SDK flavours are
accepted (PROTOCOL.md): `hmacsha256` with a SHA-256 body digest (Java) and `hmacsha1` with SHA-1
(C), the algorithm header in any case (the docs write `HmacSha256`). The host in the string to
sign may be the request's Host (with or without port) or Tencent's gateway host, which the Java
SDK signs with whatever URL it posts to.

A request repeated verbatim (same device, timestamp, nonce and body: a device retrying after a
lost answer) is answered success again without storing its lines twice; the same timestamp and
nonce with another body is refused as a replay.

Lines are kept per device in the store's records, the newest `lines_per_device` of them, each with
a sequence number so that a reader can ask for what is new since it last looked. Server code reads
them (`lines`) or follows them as they arrive (`follow`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from ...fsm.clock import Clock, RealClock
from ...machines.feature import DeviceKey
from ..store.session_store import SessionStore
from ..topics import TopicError, check_key
from .file_service import PostRequest, PostResponse
from .log_upload import ALGORITHMS, TENCENT_LOG_HOST, signature

log = logging.getLogger(__name__)

LOGS_TABLE = "device_logs"
MAX_SKEW = 300.0
"""Seconds a request's timestamp may be off the platform's clock (Tencent's API allows 5 min)."""
_TOKEN = re.compile(r"-?[0-9]{1,20}")
_LEVELS = ("ERR", "WRN", "INF", "DBG")


@attrs.frozen
class LogLine:
    """One uploaded line. `seq` grows per device; `text` keeps the device's level prefix."""

    product: str
    device: str
    seq: int
    received_at: float
    text: str

    @property
    def level(self) -> str:
        """`ERR`, `WRN`, `INF` or `DBG` as the device prefixed it ("" if it did not)."""
        prefix = self.text[:3]
        return prefix if prefix in _LEVELS else ""


LogFollower = Callable[[LogLine], None]


def _record_key(key: DeviceKey) -> str:
    return f"{key.product}/{key.device}"


class KeyLookup(Protocol):
    """Where the endpoint finds a device's key: the platform's registry, which answers only
    for devices that are registered and enabled (keys are secrets: never logged)."""

    def psk(self, key: DeviceKey) -> str | None: ...


class _RefusedError(Exception):
    """Why a request is refused: HTTP status, Tencent error code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class LogEndpoint:
    """Answers `POST /device/reportlog`; thread-safe (the HTTP server runs a thread per request)."""

    def __init__(
        self,
        store: SessionStore,
        keys: KeyLookup,
        *,
        clock: Clock | None = None,
        max_skew: float = MAX_SKEW,
        lines_per_device: int = 500,
        max_lines_per_request: int = 1000,
        max_line: int = 4096,
    ) -> None:
        self._store = store
        self._keys = keys
        self._clock: Clock = clock or RealClock()
        self.max_skew = max_skew
        self.lines_per_device = lines_per_device
        self.max_lines_per_request = max_lines_per_request
        self.max_line = max_line
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, str, str, str, str], tuple[bytes, float]] = OrderedDict()
        """(product, device, algorithm, timestamp, nonce) -> (body digest, expiry): replays."""
        self._followers: list[tuple[LogFollower, str | None, str | None]] = []
        self.refused = 0
        """Requests refused so far (bad signature, stale, malformed), for tests and metrics."""

    # ---- server code ------------------------------------------------------------------------

    def lines(self, product: str, device: str, since: int = 0) -> list[LogLine]:
        """The kept lines of a device with `seq` > `since`, oldest first."""
        key = check_key(DeviceKey(product, device))
        doc = self._store.get(LOGS_TABLE, _record_key(key))
        rows = doc.get("lines", []) if isinstance(doc, dict) else []
        return [LogLine(product, device, int(s), float(t), str(x)) for s, t, x in rows if s > since]

    def follow(
        self, callback: LogFollower, product: str | None = None, device: str | None = None
    ) -> Callable[[], None]:
        """Call `callback(line)` for each line stored from now on (of one product or device if
        given), on the HTTP server's thread, after it is stored. Returns the way to stop."""
        entry = (callback, product, device)
        with self._lock:
            self._followers.append(entry)

        def stop() -> None:
            with self._lock:
                if entry in self._followers:
                    self._followers.remove(entry)

        return stop

    # ---- the route --------------------------------------------------------------------------

    def handle(self, request: PostRequest) -> PostResponse:
        request_id = str(uuid.uuid4())
        try:
            stored = self._accept(request)
        except _RefusedError as refused:
            with self._lock:
                self.refused += 1
            log.info("reportlog from %s refused: %s", request.client, refused.message)
            error = {"Code": refused.code, "Message": refused.message}
            return _answer(refused.status, {"Error": error, "RequestId": request_id})
        self._notify(stored)
        return _answer(200, {"RequestId": request_id})

    def _accept(self, request: PostRequest) -> list[LogLine]:
        headers = request.headers
        algorithm = _header(headers, "x-tc-algorithm").lower()
        if algorithm not in ALGORITHMS:
            raise _RefusedError(
                401, "AuthFailure.InvalidAlgorithm", f"X-TC-Algorithm must be one of {ALGORITHMS}"
            )
        timestamp = _header(headers, "x-tc-timestamp")
        nonce = _header(headers, "x-tc-nonce")
        if not _TOKEN.fullmatch(timestamp) or not _TOKEN.fullmatch(nonce):
            raise _RefusedError(
                401, "AuthFailure.InvalidParameter", "bad X-TC-Timestamp or X-TC-Nonce"
            )
        now = self._clock.now()
        if abs(now - int(timestamp)) > self.max_skew:
            raise _RefusedError(
                401,
                "AuthFailure.SignatureExpire",
                f"timestamp {timestamp} is more than {self.max_skew:g} s off the platform's clock",
            )
        given = _decode_signature(_header(headers, "x-tc-signature"))
        key, messages = self._parse_body(request.body)
        psk = self._keys.psk(key)
        if psk is None or not any(
            hmac.compare_digest(
                given,
                signature(
                    psk,
                    host,
                    algorithm=algorithm,
                    timestamp=timestamp,
                    nonce=nonce,
                    body=request.body,
                ),
            )
            for host in _hosts(request.host)
        ):
            # an unknown device gets the same answer as a wrong key: no probing for names
            raise _RefusedError(401, "AuthFailure.SignatureFailure", "the signature does not match")
        digest = hashlib.sha256(request.body).digest()
        with self._lock:
            if not self._first_time(key, (algorithm, timestamp, nonce), digest, now):
                return []
            return self._store_lines(key, messages, now)

    def _parse_body(self, body: bytes) -> tuple[DeviceKey, list[str]]:
        try:
            doc: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _RefusedError(400, "InvalidParameter", "the body is not JSON") from None
        if not isinstance(doc, dict):
            raise _RefusedError(400, "InvalidParameter", "the body must be a JSON object")
        product, device, messages = doc.get("ProductId"), doc.get("DeviceName"), doc.get("Message")
        if not isinstance(product, str) or not isinstance(device, str):
            raise _RefusedError(400, "InvalidParameter", "ProductId and DeviceName must be strings")
        try:
            key = check_key(DeviceKey(product, device))
        except TopicError as exc:
            raise _RefusedError(400, "InvalidParameter", str(exc)) from None
        if not isinstance(messages, list) or not all(isinstance(m, str) for m in messages):
            raise _RefusedError(400, "InvalidParameter", "Message must be an array of strings")
        if len(messages) > self.max_lines_per_request:
            limit = self.max_lines_per_request
            raise _RefusedError(400, "InvalidParameter", f"more than {limit} lines in one request")
        return key, messages

    def _first_time(
        self, key: DeviceKey, token: tuple[str, str, str], digest: bytes, now: float
    ) -> bool:
        """False for a verbatim repeat (answered again, stored once); raises for a replay."""
        while self._seen:
            oldest = next(iter(self._seen.values()))
            if oldest[1] > now and len(self._seen) < 100_000:
                break
            self._seen.popitem(last=False)
        seen_key = (key.product, key.device, *token)
        seen = self._seen.get(seen_key)
        if seen is not None:
            if seen[0] == digest:
                return False
            raise _RefusedError(401, "AuthFailure.SignatureFailure", "nonce already used")
        self._seen[seen_key] = (digest, now + 2 * self.max_skew)
        return True

    def _store_lines(self, key: DeviceKey, messages: list[str], now: float) -> list[LogLine]:
        record = _record_key(key)
        doc = self._store.get(LOGS_TABLE, record)
        if not isinstance(doc, dict):
            doc = {"next": 1, "lines": []}
        seq = int(doc["next"])
        rows = list(doc["lines"])
        stored: list[LogLine] = []
        for text in messages:
            cut = text if len(text) <= self.max_line else text[: self.max_line - 3] + "..."
            rows.append([seq, now, cut])
            stored.append(LogLine(key.product, key.device, seq, now, cut))
            seq += 1
        self._store.put(LOGS_TABLE, record, {"next": seq, "lines": rows[-self.lines_per_device :]})
        return stored

    def _notify(self, lines: list[LogLine]) -> None:
        if not lines:
            return
        with self._lock:
            followers = list(self._followers)
        for callback, product, device in followers:
            for line in lines:
                if product not in (None, line.product) or device not in (None, line.device):
                    continue
                try:
                    callback(line)
                except Exception:
                    log.exception("a device log follower failed")


def _header(headers: Any, name: str) -> str:
    value = headers.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _RefusedError(401, "AuthFailure.MissingParameter", f"header {name} is missing")
    return value.strip()


def _decode_signature(text: str) -> bytes:
    """Base64 as the SDKs send it; hex as the documentation's example shows it."""
    if re.fullmatch(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _RefusedError(
            401, "AuthFailure.SignatureFailure", "X-TC-Signature is not base64"
        ) from None


def _hosts(host_header: str) -> list[str]:
    """Hosts a device may have signed with: the Host it sent, without its port, Tencent's."""
    hosts = [host_header.strip().lower()] if host_header.strip() else []
    bare = hosts[0].rsplit(":", 1)[0] if hosts and not hosts[0].endswith("]") else ""
    if bare and bare not in hosts:
        hosts.append(bare)
    hosts.append(TENCENT_LOG_HOST)
    return hosts


def _answer(status: int, response: dict[str, Any]) -> PostResponse:
    body = json.dumps({"Response": response}, separators=(",", ":")).encode()
    return PostResponse(status, body)


__all__ = ["LOGS_TABLE", "KeyLookup", "LogEndpoint", "LogFollower", "LogLine"]
