"""The platform's side of broadcast, device shadow and RRPC (issue 19), mixed into `Platform`.

Kept apart from platform.py so each feature's operator calls read in one place: what they check,
which session event they post, and how an effect comes back to the caller.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import secrets
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from .adapters.identity.registry import Registry
from .adapters.limits import MAX_PAYLOAD_BYTES
from .adapters.runtime import Runtime
from .adapters.topics import check_key
from .fsm.effects import Effect
from .machines import DeviceKey
from .machines.broadcast import SendBroadcast
from .machines.rrpc import (
    DEFAULT_TIMEOUT,
    MAX_TIMEOUT,
    CallDevice,
    ReplyDropped,
    RrpcAnswered,
    RrpcTimedOut,
)
from .machines.shadow import SetDesired, document

log = logging.getLogger(__name__)

GRACE = 1.0
"""Seconds `call` waits past the deadline for the machine's own timeout before it gives up by
itself (a runtime that no longer steps: stopped, or its scheduler stalled)."""


class RrpcTimeout(TimeoutError):  # noqa: N818  the name issue 19 gives it, like TimeoutError
    """No answer to an RRPC call came before its deadline (the device is offline, did not
    answer, or answered too late). `key` and `timeout` say which call."""

    def __init__(self, key: DeviceKey, timeout: float, why: str = "") -> None:
        self.key = key
        self.timeout = timeout
        text = why or f"no answer within {timeout:g} s"
        super().__init__(
            f"RRPC to {key.product}/{key.device}: {text}; check that the device is online and"
            " answers RRPC (Device(on_rrpc=...) or `iotfsm device --rrpc-commands`)"
        )


def _payload_bytes(payload: bytes | str, what: str) -> bytes:
    if isinstance(payload, str):
        return payload.encode("utf-8")
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    raise TypeError(f"{what} payload must be bytes or str, got {type(payload).__name__}")


class PlatformMessaging:
    """Broadcast, shadow and RRPC calls of a `Platform` (which provides these attributes)."""

    runtime: Runtime
    registry: Registry
    _device: Callable[[str, str], DeviceKey]
    """Platform's: the key of a registered device (RegistryError for an unknown name)."""

    def _messaging_init(self) -> None:
        self._calls: dict[str, tuple[DeviceKey, float, Future[bytes]]] = {}
        """call id -> (device, timeout, the caller's future), until answered or timed out."""
        self._calls_lock = threading.Lock()
        self._call_ids = itertools.count(1)
        self._call_prefix = secrets.token_hex(4)
        """Call ids of this Platform object only: a call restored from the store (its
        session's pending call, from before a restart) never resolves one of today's."""
        self.rrpc_dropped: Counter[str] = Counter()
        """Answers that matched no call in flight, by reason: late, unknown, malformed."""

    def _messaging_handlers(
        self,
    ) -> dict[type[Effect] | tuple[str, type[Effect]], Callable[[DeviceKey, Any], None]]:
        return {
            RrpcAnswered: self._rrpc_answered,
            RrpcTimedOut: self._rrpc_timed_out,
            ReplyDropped: self._rrpc_dropped,
        }

    # ---- rrpc -------------------------------------------------------------------------------

    def call(self, key: DeviceKey, payload: bytes | str, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Send `payload` to the device and return its answer (the bytes it sent), or raise
        RrpcTimeout when none comes within `timeout` seconds (at most 60; default seed 004's
        10). Blocks the calling thread only; many calls may be in flight, from any threads.
        From inside the platform's own steps (an effect hook) use `call_async`: waiting there
        would stop the very steps that deliver the answer, so it raises RuntimeError."""
        if self.runtime.stepping_here:
            raise RuntimeError(
                "Platform.call would block the platform's own runtime thread (called from a"
                " hook); use Platform.call_async and take the answer from its future"
            )
        future = self.call_async(key, payload, timeout)
        try:
            return future.result(timeout=timeout + GRACE)
        except RrpcTimeout:  # a TimeoutError too: the machine's own, at the deadline
            raise
        except FutureTimeout:
            raise RrpcTimeout(DeviceKey(*key), timeout, "the platform did not step") from None

    def call_async(
        self, key: DeviceKey, payload: bytes | str, timeout: float = DEFAULT_TIMEOUT
    ) -> Future[bytes]:
        """Like `call`, without waiting: the future holds the answer or an RrpcTimeout
        (its done-callbacks run on the platform's runtime thread: keep them short).
        Raises at once for an unregistered device (RegistryError), a payload that is not
        bytes/str or is over 16 KB, or a timeout outside (0, 60] seconds."""
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(p, str) for p in key)):
            raise TypeError(f"key is a DeviceKey(product, device), got {type(key).__name__}")
        device = self._device(key[0], key[1])
        data = _payload_bytes(payload, "RRPC")
        if len(data) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"RRPC payload of {len(data)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or not 0 < timeout <= MAX_TIMEOUT
        ):
            raise ValueError(f"RRPC timeout must be in (0, {MAX_TIMEOUT:g}] seconds, got {timeout}")
        call_id = f"{self._call_prefix}-{next(self._call_ids)}"
        future: Future[bytes] = Future()
        with self._calls_lock:
            self._calls[call_id] = (device, float(timeout), future)
        self.runtime.post("rrpc", device, CallDevice(call_id, data, float(timeout)))
        return future

    def _take_call(self, call_id: str) -> tuple[DeviceKey, float, Future[bytes]] | None:
        with self._calls_lock:
            return self._calls.pop(call_id, None)

    def _rrpc_answered(self, key: DeviceKey, effect: RrpcAnswered) -> None:
        call = self._take_call(effect.call_id)
        if call is None:  # a call from before a restart: no one waits for it
            log.info("RRPC %s/%s %s: answer to a call no one waits for", *key, effect.process_id)
            return
        call[2].set_result(effect.payload)

    def _rrpc_timed_out(self, key: DeviceKey, effect: RrpcTimedOut) -> None:
        call = self._take_call(effect.call_id)
        if call is not None:
            call[2].set_exception(RrpcTimeout(key, call[1]))

    def _rrpc_dropped(self, key: DeviceKey, effect: ReplyDropped) -> None:
        with self._calls_lock:
            self.rrpc_dropped[effect.reason] += 1
        level = logging.INFO if effect.reason == "late" else logging.WARNING
        log.log(
            level,
            "RRPC %s/%s: dropped an answer on processId %r (%s)",
            *key,
            effect.process_id,
            {"late": "answered already or timed out", "unknown": "never issued"}.get(
                effect.reason, "not a processId"
            ),
        )

    def _fail_calls(self) -> None:
        """At stop: every call still waiting ends with RrpcTimeout now, not at its deadline."""
        with self._calls_lock:
            calls, self._calls = self._calls, {}
        for key, timeout, future in calls.values():
            future.set_exception(RrpcTimeout(key, timeout, "the platform stopped"))

    # ---- broadcast --------------------------------------------------------------------------

    def broadcast(self, product_id: str, payload: bytes | str) -> int:
        """Send `payload` once to every device of the product that is online now (QoS 0: an
        offline device never gets it, as on Tencent). Returns how many devices it was published
        to: the registered ones (or, under an open registry, the ones seen so far)."""
        check_key(DeviceKey(product_id, "x"))
        data = _payload_bytes(payload, "broadcast")
        if self.registry.open:
            keys = sorted(
                {s.key for _, s in self.runtime.all_sessions() if s.key.product == product_id}
            )
        else:
            keys = [d.key for d in self.registry.devices(product_id) if d.enabled]
        for key in keys:
            self.runtime.post("broadcast", key, SendBroadcast(data))
        return len(keys)

    # ---- device shadow ----------------------------------------------------------------------

    def shadow(self, product_id: str, device_name: str) -> dict[str, Any]:
        """The device's shadow document as a get returns it: `state` (reported, and desired
        and delta when set), `metadata` timestamps (ms), `version`, `timestamp`."""
        key = self._device(product_id, device_name)
        return copy.deepcopy(document(self.runtime.session("shadow", key).ctx))

    def set_desired(self, product_id: str, device_name: str, state: dict[str, Any]) -> None:
        """Merge `state` into the desired part (None removes a key); a new version, and a delta
        pushed to the device where desired differs from reported. An offline device gets it
        with its next get. TypeError/ValueError for a state that is not a JSON object."""
        key = self._device(product_id, device_name)
        if not isinstance(state, dict) or not state or not all(isinstance(k, str) for k in state):
            raise TypeError("desired state is a non-empty JSON object, e.g. {'color': 'red'}")
        json.dumps(state, allow_nan=False)
        self.runtime.post("shadow", key, SetDesired(copy.deepcopy(state)))


__all__ = ["GRACE", "PlatformMessaging", "RrpcTimeout"]
