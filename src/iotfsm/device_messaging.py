"""The device's side of broadcast, device shadow and RRPC (issue 19), mixed into `Device`.

The machines decide; these handlers only hand payloads to the application's callbacks and post
what the application answers back to the machines.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from typing import Any

from .adapters.limits import MAX_PAYLOAD_BYTES
from .adapters.runtime import Runtime
from .fsm.effects import Effect
from .machines import DeviceKey
from .machines.broadcast import DeliverBroadcast
from .machines.rrpc import AnswerRrpc, HandleRrpc, is_process_id
from .machines.shadow import ApplyShadowDelta, ReportShadow

log = logging.getLogger(__name__)

BroadcastHook = Callable[[bytes], None]
"""`on_broadcast(payload)`: a broadcast of the product, its bytes as the server sent them."""
ShadowDeltaHook = Callable[[dict[str, Any]], "dict[str, Any] | None"]
"""`on_shadow_delta(delta)`: move to the desired values in `delta`; return what was applied
(reported back; None reports `delta` as it is, {} reports nothing)."""
RrpcHook = Callable[[bytes, str], "bytes | str | None"]
"""`on_rrpc(payload, process_id)`: the answer to an RRPC request (bytes, or str sent as
UTF-8). It runs on the device's runtime thread, so it must be quick: return None and answer
later with `Device.answer_rrpc(process_id, answer)` from another thread for slow work."""


class DeviceMessaging:
    """Broadcast, shadow and RRPC of a `Device` (which provides `runtime` and `key`)."""

    runtime: Runtime
    key: DeviceKey
    _on_broadcast: BroadcastHook | None = None
    _on_shadow_delta: ShadowDeltaHook | None = None
    _on_rrpc: RrpcHook | None = None

    def _messaging_handlers(
        self,
    ) -> dict[type[Effect] | tuple[str, type[Effect]], Callable[[DeviceKey, Any], None]]:
        return {
            DeliverBroadcast: self._deliver_broadcast,
            ApplyShadowDelta: self._apply_shadow_delta,
            HandleRrpc: self._handle_rrpc,
        }

    # ---- shadow -----------------------------------------------------------------------------

    def report(self, state: dict[str, Any]) -> None:
        """Report `state` into the shadow's reported part (None removes a key). Offline, it is
        sent after the next sync; reports go one at a time. TypeError/ValueError for a state
        that is not a JSON object."""
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise TypeError(f"a shadow report is a JSON object, got {type(state).__name__}")
        json.dumps(state, allow_nan=False)  # ValueError now, not a failed publish later
        self.runtime.post("shadow", self.key, ReportShadow(copy.deepcopy(state)))

    @property
    def shadow(self) -> dict[str, Any]:
        """The device's copy of its shadow: `reported` (as the platform accepted it) and the
        `version` it knows."""
        ctx = self.runtime.session("shadow", self.key).ctx
        return {"reported": copy.deepcopy(ctx.reported), "version": ctx.version}

    def _apply_shadow_delta(self, key: DeviceKey, effect: ApplyShadowDelta) -> None:
        delta = copy.deepcopy(effect.state)
        if self._on_shadow_delta is None:
            log.info("shadow delta %s came; no on_shadow_delta applies it", sorted(delta))
            return
        applied = self._on_shadow_delta(delta)
        state = effect.state if applied is None else applied
        if state:
            self.runtime.post("shadow", key, ReportShadow(copy.deepcopy(state)))

    # ---- rrpc -------------------------------------------------------------------------------

    def answer_rrpc(self, process_id: str, answer: bytes | str) -> None:
        """Answer RRPC request `process_id` (the one given to `on_rrpc`), from any thread. An
        answer to a request that is not open (answered already, or older than 60 s) is
        dropped and logged. TypeError/ValueError for an answer that cannot be sent."""
        if not isinstance(process_id, str) or not is_process_id(process_id):
            raise ValueError(f"{str(process_id)[:20]!r} is not an RRPC processId")
        self.runtime.post("rrpc", self.key, AnswerRrpc(process_id, _answer_bytes(answer)))

    def _handle_rrpc(self, key: DeviceKey, effect: HandleRrpc) -> None:
        if self._on_rrpc is None:
            log.info("RRPC request %s came; no on_rrpc answers it", effect.process_id)
            return
        try:
            answer = self._on_rrpc(effect.payload, effect.process_id)
            if answer is not None:
                self.runtime.post("rrpc", key, AnswerRrpc(effect.process_id, _answer_bytes(answer)))
        except Exception:  # the application's bug: this request goes unanswered, nothing else
            log.exception("on_rrpc failed on request %s; it goes unanswered", effect.process_id)

    def _deliver_broadcast(self, key: DeviceKey, effect: DeliverBroadcast) -> None:
        if self._on_broadcast is None:
            log.info("a broadcast of %d bytes came; no on_broadcast takes it", len(effect.payload))
            return
        self._on_broadcast(effect.payload)


def _answer_bytes(answer: bytes | str) -> bytes:
    if isinstance(answer, str):
        data = answer.encode("utf-8")
    elif isinstance(answer, bytes | bytearray):
        data = bytes(answer)
    else:
        raise TypeError(f"an RRPC answer is bytes or str, got {type(answer).__name__}")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"an RRPC answer of {len(data)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    return data


__all__ = ["BroadcastHook", "DeviceMessaging", "RrpcHook", "ShadowDeltaHook"]
