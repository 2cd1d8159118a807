"""RRPC (seed 004 §1.3.2): the platform calls one device and waits for its answer.

`$rrpc/rxd/{product}/{device}/{processId}` down, `$rrpc/txd/{product}/{device}/{processId}` up
(docs/PROTOCOL-notes.md, "RRPC"). The platform picks a processId for each request; the device
answers on the up topic carrying the same processId, which is all that ties an answer to its
request. Both payloads are the application's own bytes (Tencent's C SDK hands the request to the
application untouched and publishes the application's answer as it is), so both messages are raw
and the processId rides in the topic (`RawMessage.SUFFIX`). Both sides publish at QoS 0, as the
C SDK does: a device that is offline never gets the request, and the call times out.

Platform, one session per device: each `CallDevice` gets the next processId (a decimal number,
as Tencent's MessageId; per device, since the topic names the device), is published and kept
with its deadline until its answer or its deadline comes. Many calls may be in flight; one
`deadline` timer runs for the earliest of them and is re-armed for the next. An answer whose
processId is not in flight (late, duplicate, never issued, not a number) is dropped: the
`ReplyDropped` effect says why and changes nothing in the session.

Device: each request with a well-formed processId is handed to the application
(`HandleRrpc`) and kept open until the application answers (`AnswerRrpc`), the connection drops,
or FORGET_AFTER passes. A second request with a processId that is open or was recently closed is
a duplicate and is not handed over again; an answer for a processId that is not open is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

from ..fsm import (
    ANY_STATE,
    Disconnected,
    Effect,
    Event,
    Log,
    MachineSpec,
    On,
    Publish,
    SetTimer,
    State,
    timer,
)
from .feature import Feature
from .messages import RawMessage

QOS = 0
"""Requests and answers go at QoS 0, as Tencent's C SDK subscribes and answers (module doc)."""
DEFAULT_TIMEOUT = 10.0
"""Seconds a call waits by default: seed 004's RRPC deadline ("RRPC 请求10s超时")."""
MAX_TIMEOUT = 60.0
"""The longest deadline a call may ask for."""
FORGET_AFTER = MAX_TIMEOUT
"""Seconds a device keeps a request open: no caller waits longer than MAX_TIMEOUT."""
MAX_OPEN = 64
"""Requests a device keeps open at once; more are refused (an answer would come too late)."""
RECENT = 32
"""Closed processIds a device remembers, to refuse a duplicate request (QoS redelivery)."""
PROCESS_ID = re.compile(r"[1-9][0-9]{0,15}")
"""A processId as the platform issues it: a decimal number without leading zeros, at most 16
digits (the C SDK keeps 16 bytes of it, `MAX_RRPC_PROCESS_ID_LEN`)."""
_SLACK = 1e-6
"""A deadline this close to now is due (float rounding of `now + (deadline - now)`)."""


def is_process_id(text: str) -> bool:
    return PROCESS_ID.fullmatch(text) is not None


# ---- messages -------------------------------------------------------------------------------


@attrs.frozen
class RrpcRequest(RawMessage):
    """down: the caller's payload, on the topic ending with its processId."""

    TYPE = "rrpc_request"
    SUFFIX = "process_id"
    process_id: str = ""


@attrs.frozen
class RrpcReply(RawMessage):
    """up: the device's answer, on the topic ending with the request's processId."""

    TYPE = "rrpc_reply"
    SUFFIX = "process_id"
    process_id: str = ""


# ---- commands and effects -------------------------------------------------------------------


def _bytes_repr(b: bytes) -> str:
    return f"<{len(b)} bytes>"


@attrs.frozen
class CallDevice(Event):
    """Platform command: send `payload` and wait `timeout` seconds for the answer. `call_id` is
    the caller's, returned in `RrpcAnswered` / `RrpcTimedOut`."""

    call_id: str
    payload: bytes = attrs.field(repr=_bytes_repr)
    timeout: float = DEFAULT_TIMEOUT


@attrs.frozen
class RrpcAnswered(Effect):
    """The device answered call `call_id` in time."""

    call_id: str
    process_id: str
    payload: bytes = attrs.field(repr=_bytes_repr)


@attrs.frozen
class RrpcTimedOut(Effect):
    """No answer to call `call_id` came before its deadline."""

    call_id: str
    process_id: str


@attrs.frozen
class ReplyDropped(Effect):
    """An answer matched no call in flight: `reason` is "late" (a processId issued before:
    answered already or timed out), "unknown" (never issued) or "malformed" (not a processId)."""

    process_id: str
    reason: str


@attrs.frozen
class HandleRrpc(Effect):
    """The application should answer `payload` (with `AnswerRrpc` for `process_id`)."""

    process_id: str
    payload: bytes = attrs.field(repr=_bytes_repr)


@attrs.frozen
class AnswerRrpc(Event):
    """Device command: the application's answer to request `process_id`."""

    process_id: str
    payload: bytes = attrs.field(repr=_bytes_repr)


def _due(deadline: float, now: float) -> bool:
    return deadline <= now + _SLACK


# ---- device ---------------------------------------------------------------------------------


@attrs.define
class DeviceContext:
    open: dict[str, float] = attrs.field(factory=dict)
    """processId -> when the device forgets the request if it is still unanswered."""
    recent: list[str] = attrs.field(factory=list)
    """The last RECENT processIds answered or forgotten: a request for one is a duplicate."""
    timer_at: float = 0.0
    """The deadline the `forget` timer was last armed for: what it forgets when it fires."""
    answered: int = 0


def _malformed_request(ctx: DeviceContext, event: RrpcRequest) -> bool:
    return not is_process_id(event.process_id)


def _refuse_malformed(ctx: DeviceContext, event: RrpcRequest, now: float) -> Iterable[Effect]:
    return (Log.warning(f"refused an RRPC request: processId {event.process_id[:20]!r}"),)


def _duplicate(ctx: DeviceContext, event: RrpcRequest) -> bool:
    return event.process_id in ctx.open or event.process_id in ctx.recent


def _refuse_duplicate(ctx: DeviceContext, event: RrpcRequest, now: float) -> Iterable[Effect]:
    return (Log.info(f"dropped a duplicate RRPC request {event.process_id}"),)


def _full(ctx: DeviceContext, event: RrpcRequest) -> bool:
    return len(ctx.open) >= MAX_OPEN


def _refuse_full(ctx: DeviceContext, event: RrpcRequest, now: float) -> Iterable[Effect]:
    text = f"refused RRPC request {event.process_id}: {MAX_OPEN} requests are open"
    return (Log.warning(text),)


def _forget_timer(ctx: DeviceContext, now: float) -> SetTimer:
    ctx.timer_at = min(ctx.open.values())
    return SetTimer("forget", max(0.0, ctx.timer_at - now))


def _open(ctx: DeviceContext, event: RrpcRequest, now: float) -> Iterable[Effect]:
    ctx.open[event.process_id] = now + FORGET_AFTER
    return (HandleRrpc(event.process_id, event.payload), _forget_timer(ctx, now))


def _close(ctx: DeviceContext, process_id: str) -> None:
    ctx.open.pop(process_id, None)
    ctx.recent.append(process_id)
    del ctx.recent[:-RECENT]


def _answers_open(ctx: DeviceContext, event: AnswerRrpc) -> bool:
    return event.process_id in ctx.open


def _answers_last(ctx: DeviceContext, event: AnswerRrpc) -> bool:
    return len(ctx.open) == 1 and event.process_id in ctx.open


def _send_answer(ctx: DeviceContext, event: AnswerRrpc, now: float) -> Iterable[Effect]:
    _close(ctx, event.process_id)
    ctx.answered += 1
    return (Publish(RrpcReply(payload=event.payload, process_id=event.process_id), QOS),)


def _late_answer(ctx: DeviceContext, event: AnswerRrpc, now: float) -> Iterable[Effect]:
    text = f"dropped the answer to RRPC {event.process_id[:20]!r}: no such request is open"
    return (Log.info(text),)


def _forget_all_due(ctx: DeviceContext, event: Event) -> bool:
    return all(_due(t, ctx.timer_at) for t in ctx.open.values())


def _forget_due(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    """Forget the requests due by the deadline the timer was armed for (the guard's measure,
    so the state and the open requests agree); a later one comes with the re-armed timer."""
    due = sorted(p for p, t in ctx.open.items() if _due(t, ctx.timer_at))
    for process_id in due:
        _close(ctx, process_id)
    effects: list[Effect] = []
    if due:
        effects.append(Log.info(f"forgot unanswered RRPC requests {due}"))
    if ctx.open:
        effects.append(_forget_timer(ctx, now))
    return effects


def _forget_all(ctx: DeviceContext, event: Disconnected, now: float) -> Iterable[Effect]:
    dropped = sorted(ctx.open)
    for process_id in dropped:
        _close(ctx, process_id)
    return (Log.info(f"connection lost: RRPC requests {dropped} go unanswered"),)


DEVICE = MachineSpec(
    name="rrpc.device",
    doc="Hand each request to the application; send its answer on the request's processId.",
    states=[
        State("idle", initial=True, doc="no request open"),
        State("answering", doc="requests wait for the application's answers"),
    ],
    transitions=[
        On(RrpcRequest, ANY_STATE, None, guard=_malformed_request, action=_refuse_malformed),
        On(RrpcRequest, ANY_STATE, None, guard=_duplicate, action=_refuse_duplicate),
        On(RrpcRequest, "answering", None, guard=_full, action=_refuse_full),
        On(RrpcRequest, ANY_STATE, "answering", action=_open),
        On(AnswerRrpc, "answering", "idle", guard=_answers_last, action=_send_answer),
        On(AnswerRrpc, "answering", None, guard=_answers_open, action=_send_answer),
        On(AnswerRrpc, ANY_STATE, None, action=_late_answer),
        On(timer("forget"), "answering", "idle", guard=_forget_all_due, action=_forget_due),
        On(timer("forget"), "answering", None, action=_forget_due),
        On(Disconnected, "answering", "idle", action=_forget_all),
    ],
    context=lambda key: DeviceContext(),
    context_type=DeviceContext,
    inbound=[RrpcRequest],
)


# ---- platform -------------------------------------------------------------------------------


@attrs.define
class PendingCall:
    call_id: str
    deadline: float


@attrs.define
class PlatformContext:
    last_id: int = 0
    """The last processId issued to this device."""
    pending: dict[str, PendingCall] = attrs.field(factory=dict)
    """processId -> the call waiting for its answer."""
    timer_at: float = 0.0
    """The deadline the `deadline` timer was last armed for: what it expires when it fires."""
    answered: int = 0
    timed_out: int = 0


def _deadline_timer(ctx: PlatformContext, now: float) -> SetTimer:
    ctx.timer_at = min(c.deadline for c in ctx.pending.values())
    return SetTimer("deadline", max(0.0, ctx.timer_at - now))


def _call(ctx: PlatformContext, event: CallDevice, now: float) -> Iterable[Effect]:
    ctx.last_id += 1
    process_id = str(ctx.last_id)
    ctx.pending[process_id] = PendingCall(event.call_id, now + event.timeout)
    request = RrpcRequest(payload=event.payload, process_id=process_id)
    return (Publish(request, QOS), _deadline_timer(ctx, now))


def _answers_pending(ctx: PlatformContext, event: RrpcReply) -> bool:
    return event.process_id in ctx.pending


def _answers_last_call(ctx: PlatformContext, event: RrpcReply) -> bool:
    return len(ctx.pending) == 1 and event.process_id in ctx.pending


def _answer(ctx: PlatformContext, event: RrpcReply, now: float) -> Iterable[Effect]:
    call = ctx.pending.pop(event.process_id)
    ctx.answered += 1
    return (RrpcAnswered(call.call_id, event.process_id, event.payload),)


def _drop_reply(ctx: PlatformContext, event: RrpcReply, now: float) -> Iterable[Effect]:
    process_id = event.process_id
    if not is_process_id(process_id):
        reason = "malformed"
    elif int(process_id) <= ctx.last_id:
        reason = "late"
    else:
        reason = "unknown"
    return (ReplyDropped(process_id[:20], reason),)


def _all_expired(ctx: PlatformContext, event: Event) -> bool:
    return all(_due(c.deadline, ctx.timer_at) for c in ctx.pending.values())


def _expire(ctx: PlatformContext, event: Event, now: float) -> Iterable[Effect]:
    """Time out the calls due by the deadline the timer was armed for (the guard's measure);
    a later one comes with the re-armed timer."""
    due = sorted((p for p, c in ctx.pending.items() if _due(c.deadline, ctx.timer_at)), key=int)
    effects: list[Effect] = []
    for process_id in due:
        call = ctx.pending.pop(process_id)
        ctx.timed_out += 1
        effects.append(RrpcTimedOut(call.call_id, process_id))
    if ctx.pending:
        effects.append(_deadline_timer(ctx, now))
    return effects


PLATFORM = MachineSpec(
    name="rrpc.platform",
    doc="One per device: publish each call with a new processId, match answers, time out.",
    states=[
        State("idle", initial=True, doc="no call in flight"),
        State("waiting", doc="calls wait for answers; the deadline timer runs for the earliest"),
    ],
    transitions=[
        On(CallDevice, ANY_STATE, "waiting", action=_call),
        On(RrpcReply, "waiting", "idle", guard=_answers_last_call, action=_answer),
        On(RrpcReply, "waiting", None, guard=_answers_pending, action=_answer),
        On(RrpcReply, ANY_STATE, None, action=_drop_reply),
        On(timer("deadline"), "waiting", "idle", guard=_all_expired, action=_expire),
        On(timer("deadline"), "waiting", None, action=_expire),
    ],
    context=lambda key: PlatformContext(),
    context_type=PlatformContext,
    inbound=[RrpcReply],
)


FEATURE = Feature(
    name="rrpc",
    up_topic="$rrpc/txd/{product}/{device}/{process_id}",
    down_topic="$rrpc/rxd/{product}/{device}/{process_id}",
    up=[RrpcReply],
    down=[RrpcRequest],
    device=DEVICE,
    platform=PLATFORM,
    doc=__doc__ or "",
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEVICE",
    "FEATURE",
    "FORGET_AFTER",
    "MAX_OPEN",
    "MAX_TIMEOUT",
    "PLATFORM",
    "QOS",
    "AnswerRrpc",
    "CallDevice",
    "DeviceContext",
    "HandleRrpc",
    "PendingCall",
    "PlatformContext",
    "ReplyDropped",
    "RrpcAnswered",
    "RrpcReply",
    "RrpcRequest",
    "RrpcTimedOut",
    "is_process_id",
]
