"""Device shadow (seed 004 §1.2.1.1 topics 4-5): a JSON document the platform keeps per device.

`$shadow/operation/{product}/{device}` up, `$shadow/operation/result/{product}/{device}` down
(docs/PROTOCOL-notes.md, "Device shadow"). The document holds `state.reported` (what the device
says it is), `state.desired` (what the application wants), per-key `metadata` timestamps (ms) and
a `version` that grows with every change. Where desired and reported differ, the difference is
the `delta`.

Platform: answers `get` with the whole document (with `delta` when there is a desired part),
`update` with the new version, or with VERSION_CONFLICT and the current document when the update
names a version other than the current one (0 means "do not check", as on Tencent), `delete` by
clearing the document. When desired changes (`SetDesired`, the operator) and differs from
reported, it pushes a `delta`. The document is the session's context: it is in the store and
survives a restart.

Device: keeps a local copy (reported, version). After every (re)connect it asks with `get` and
applies the delta of the answer (so an offline device catches up); it applies each pushed delta
newer than its copy (`ApplyShadowDelta`, the application's callback), and the facade reports
what the application applied. Reports go out one at a time with the version the device knows;
a conflict brings the current document, whose delta is applied before the report is sent again.
Downlinks and uplinks go at QoS 0, as Tencent's C SDK publishes them; a lost answer is covered by
the reply timers and by the `get` after each reconnect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ..fsm import (
    ANY_STATE,
    Connected,
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
from .asking import REPLY_TIMER, connection_edges, retry_edges
from .feature import DeviceKey, Feature
from .messages import Message, wire

OK = 0
VERSION_CONFLICT = 5005
"""An update named a version other than the document's (docs/PROTOCOL-notes.md: Tencent
documents the refusal; the number is iotfsm's, none of the sources read gives one)."""
INVALID_UPDATE = 5001
"""An update without a `reported` or `desired` object (iotfsm's number, as above)."""
QOS = 0
REPLY_TIMEOUT = 5.0
"""Seconds the device waits for an answer to a get or a report before sending it again."""
MAX_TRIES = 3
"""Sends of one get or report (and conflicts of one report) before the device gives up on it."""

Document = dict[str, Any]


# ---- messages -------------------------------------------------------------------------------


@attrs.frozen
class ShadowGet(Message):
    """up: `{"type":"get","clientToken":"<product>-<n>"}`."""

    TYPE = "get"
    client_token: str = attrs.field(metadata=wire(name="clientToken"))


@attrs.frozen
class ShadowUpdate(Message):
    """up: `{"type":"update","state":{"reported":{…}},"version":3,"clientToken":"…"}`;
    `version` 0 updates without checking it."""

    TYPE = "update"
    state: Document = attrs.field(hash=False)
    version: int = 0
    client_token: str = attrs.field(default="", metadata=wire(name="clientToken"))


@attrs.frozen
class ShadowDelete(Message):
    """up: `{"type":"delete","clientToken":"…"}`: clear the document."""

    TYPE = "delete"
    client_token: str = attrs.field(default="", metadata=wire(name="clientToken"))


@attrs.frozen
class _Result(Message):
    result: int = OK
    timestamp: int = 0
    client_token: str = attrs.field(default="", metadata=wire(name="clientToken"))
    payload: Document | None = attrs.field(
        default=None, hash=False, metadata=wire(omit_if_none=True)
    )


@attrs.frozen
class GetResult(_Result):
    """down: the answer to a get, `payload` the document (state with delta, metadata,
    version, timestamp)."""

    TYPE = "get"


@attrs.frozen
class UpdateResult(_Result):
    """down: the answer to an update: `payload` `{state, version, timestamp}` when accepted,
    the current document on a version conflict."""

    TYPE = "update"


@attrs.frozen
class DeleteResult(_Result):
    """down: the answer to a delete."""

    TYPE = "delete"


@attrs.frozen
class ShadowDelta(Message):
    """down, unasked: `{"type":"delta","payload":{"state":{…},"version":5,"timestamp":…}}`, the
    keys whose desired value differs from the reported one."""

    TYPE = "delta"
    payload: Document = attrs.field(hash=False)
    timestamp: int = 0


# ---- commands and effects -------------------------------------------------------------------


@attrs.frozen
class SetDesired(Event):
    """Platform command: merge `state` into the desired part (a None value removes the key)."""

    state: Document = attrs.field(hash=False)


@attrs.frozen
class ReportShadow(Event):
    """Device command: report `state` (merged into reported; None removes a key)."""

    state: Document = attrs.field(hash=False)


@attrs.frozen
class ApplyShadowDelta(Effect):
    """The application should move to `state` (the keys that differ) and report what it did."""

    state: Document = attrs.field(hash=False)


def _merge(target: Document, changes: Mapping[str, Any]) -> None:
    for k, v in changes.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = v


def _version_of(payload: Document | None) -> int | None:
    version = payload.get("version") if isinstance(payload, dict) else None
    return version if type(version) is int else None


def _state_part(payload: Document | None, part: str) -> Document:
    state = payload.get("state") if isinstance(payload, dict) else None
    value = state.get(part) if isinstance(state, dict) else None
    return value if isinstance(value, dict) else {}


# ---- device ---------------------------------------------------------------------------------


@attrs.define
class DeviceContext:
    product: str
    reported: Document = attrs.field(factory=dict)
    """The device's copy of what it reported and the platform accepted."""
    version: int = 0
    """The document's version as the device last learnt it."""
    tokens: int = 0
    get_token: str = ""
    tries: int = 0
    pending: Document | None = None
    """Reported keys waiting to be sent (a report made offline, or during another)."""
    sending: Document | None = None
    """The report in flight, with its token."""
    send_token: str = ""
    send_tries: int = 0
    conflicts: int = 0


def _token(ctx: DeviceContext) -> str:
    ctx.tokens += 1
    return f"{ctx.product}-{ctx.tokens}"


def _get(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    if isinstance(event, Connected):
        ctx.tries = 0
        if ctx.sending is not None:  # its answer is lost with the connection: send it again
            ctx.pending = {**ctx.sending, **(ctx.pending or {})}
            ctx.sending = None
    ctx.tries += 1
    ctx.get_token = _token(ctx)
    return (Publish(ShadowGet(ctx.get_token), QOS), SetTimer(REPLY_TIMER, REPLY_TIMEOUT))


def _may_retry(ctx: DeviceContext, event: Event) -> bool:
    return ctx.tries < MAX_TRIES


def _give_up_get(ctx: DeviceContext, event: Event, now: float) -> list[Effect]:
    text = f"no shadow get answer after {ctx.tries} tries; keeping version {ctx.version}"
    return [Log.warning(text), *_send_pending(ctx)]


def _send_pending(ctx: DeviceContext) -> list[Effect]:
    if ctx.sending is not None or not ctx.pending:
        return []
    ctx.sending, ctx.pending = ctx.pending, None
    ctx.send_token = _token(ctx)
    ctx.send_tries = 1
    update = ShadowUpdate({"reported": ctx.sending}, ctx.version, ctx.send_token)
    return [Publish(update, QOS), SetTimer("report", REPLY_TIMEOUT)]


def _answers_get(ctx: DeviceContext, event: GetResult) -> bool:
    return event.client_token == ctx.get_token and event.result == OK


def _adopt(ctx: DeviceContext, payload: Document | None) -> list[Effect]:
    """Take the platform's document: its version, reported part, and apply its delta."""
    version = _version_of(payload)
    if version is not None:
        ctx.version = version
    ctx.reported = _state_part(payload, "reported")
    delta = _state_part(payload, "delta")
    return [ApplyShadowDelta(delta)] if delta else []


def _synced(ctx: DeviceContext, event: GetResult, now: float) -> list[Effect]:
    ctx.get_token = ""
    return [*_adopt(ctx, event.payload), *_send_pending(ctx)]


def _not_ours(ctx: DeviceContext, event: Message, now: float) -> Iterable[Effect]:
    token = getattr(event, "client_token", "")
    result = getattr(event, "result", OK)
    return (Log.info(f"ignored a shadow {event.TYPE} (token {token!r}, result {result})"),)


def _newer_delta(ctx: DeviceContext, event: ShadowDelta) -> bool:
    version = _version_of(event.payload)
    return version is not None and version > ctx.version


def _apply_delta(ctx: DeviceContext, event: ShadowDelta, now: float) -> Iterable[Effect]:
    ctx.version = _version_of(event.payload) or ctx.version
    state = event.payload.get("state")
    return (ApplyShadowDelta(state),) if isinstance(state, dict) and state else ()


def _stale_delta(ctx: DeviceContext, event: ShadowDelta, now: float) -> Iterable[Effect]:
    version = _version_of(event.payload)
    return (Log.info(f"ignored a shadow delta of version {version}: the copy is {ctx.version}"),)


def _queue_report(ctx: DeviceContext, event: ReportShadow, now: float) -> list[Effect]:
    ctx.pending = {**(ctx.pending or {}), **event.state}
    ctx.conflicts = 0
    return []


def _report(ctx: DeviceContext, event: ReportShadow, now: float) -> list[Effect]:
    return [*_queue_report(ctx, event, now), *_send_pending(ctx)]


def _answers_report(ctx: DeviceContext, event: UpdateResult) -> bool:
    return bool(ctx.send_token) and event.client_token == ctx.send_token


def _accepted(ctx: DeviceContext, event: UpdateResult) -> bool:
    return _answers_report(ctx, event) and event.result == OK


def _conflict(ctx: DeviceContext, event: UpdateResult) -> bool:
    return _answers_report(ctx, event) and event.result == VERSION_CONFLICT


def _reported(ctx: DeviceContext, event: UpdateResult, now: float) -> list[Effect]:
    assert ctx.sending is not None  # a token is set only with a report in flight
    _merge(ctx.reported, ctx.sending)
    ctx.version = _version_of(event.payload) or ctx.version
    ctx.sending, ctx.send_token = None, ""
    return _send_pending(ctx)


def _resend_after_conflict(ctx: DeviceContext, event: UpdateResult, now: float) -> list[Effect]:
    """The document moved on: take it (and its delta), then send the report again on it."""
    assert ctx.sending is not None
    ctx.conflicts += 1
    ctx.pending = {**ctx.sending, **(ctx.pending or {})}
    ctx.sending, ctx.send_token = None, ""
    effects = _adopt(ctx, event.payload)
    if ctx.conflicts >= MAX_TRIES:
        dropped, ctx.pending = ctx.pending, None
        return [
            *effects,
            Log.warning(f"shadow report {sorted(dropped)} dropped: {MAX_TRIES} conflicts"),
        ]
    return [*effects, *_send_pending(ctx)]


def _refused(ctx: DeviceContext, event: UpdateResult, now: float) -> Iterable[Effect]:
    dropped = sorted(ctx.sending or {})
    ctx.sending, ctx.send_token = None, ""
    return (Log.warning(f"shadow report {dropped} refused with result {event.result}"),)


def _may_resend(ctx: DeviceContext, event: Event) -> bool:
    return ctx.sending is not None and ctx.send_tries < MAX_TRIES


def _resend(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    assert ctx.sending is not None
    ctx.send_tries += 1
    update = ShadowUpdate({"reported": ctx.sending}, ctx.version, ctx.send_token)
    return (Publish(update, QOS), SetTimer("report", REPLY_TIMEOUT))


def _drop_report(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    dropped = sorted(ctx.sending or {})
    ctx.sending, ctx.send_token = None, ""
    return (Log.warning(f"shadow report {dropped} unanswered after {MAX_TRIES} sends; dropped"),)


DEVICE = MachineSpec(
    name="shadow.device",
    doc="Sync the local copy after every (re)connect; apply deltas; report one at a time.",
    states=[
        State("offline", initial=True, doc="not connected: reports wait"),
        State("syncing", doc="a get is out; its reply timer runs"),
        State("synced", doc="the copy is current: deltas applied, reports sent"),
    ],
    transitions=[
        *connection_edges("syncing", _get),
        *retry_edges(
            "syncing", "synced", may_ask_again=_may_retry, ask_again=_get, give_up=_give_up_get
        ),
        On(GetResult, "syncing", "synced", guard=_answers_get, action=_synced),
        On(GetResult, ANY_STATE, None, action=_not_ours),
        On(ShadowDelta, ANY_STATE, None, guard=_newer_delta, action=_apply_delta),
        On(ShadowDelta, ANY_STATE, None, action=_stale_delta),
        On(ReportShadow, "synced", None, action=_report),
        On(ReportShadow, ("offline", "syncing"), None, action=_queue_report),
        On(UpdateResult, "synced", None, guard=_accepted, action=_reported),
        On(UpdateResult, "synced", None, guard=_conflict, action=_resend_after_conflict),
        On(UpdateResult, "synced", None, guard=_answers_report, action=_refused),
        On(UpdateResult, ANY_STATE, None, action=_not_ours),
        On(DeleteResult, ANY_STATE, None, action=_not_ours),
        On(timer("report"), "synced", None, guard=_may_resend, action=_resend),
        On(timer("report"), "synced", None, action=_drop_report),
    ],
    context=lambda key: DeviceContext(key.product),
    context_type=DeviceContext,
    inbound=[GetResult, UpdateResult, DeleteResult, ShadowDelta],
)


# ---- platform -------------------------------------------------------------------------------


@attrs.define
class PlatformContext:
    reported: Document = attrs.field(factory=dict)
    desired: Document = attrs.field(factory=dict)
    reported_meta: dict[str, int] = attrs.field(factory=dict)
    """Per reported key, when it was last set (ms since the epoch)."""
    desired_meta: dict[str, int] = attrs.field(factory=dict)
    version: int = 0
    timestamp: int = 0
    """When the document last changed (ms)."""
    deltas: int = 0


def delta_of(ctx: PlatformContext) -> Document:
    """The desired keys whose value the device has not reported."""
    return {k: v for k, v in ctx.desired.items() if k not in ctx.reported or ctx.reported[k] != v}


def document(ctx: PlatformContext) -> Document:
    """The document as a get returns it: desired and delta only when there is a desired part."""
    state: Document = {"reported": dict(ctx.reported)}
    metadata: Document = {"reported": {k: {"timestamp": t} for k, t in ctx.reported_meta.items()}}
    if ctx.desired:
        state["desired"] = dict(ctx.desired)
        state["delta"] = delta_of(ctx)
        metadata["desired"] = {k: {"timestamp": t} for k, t in ctx.desired_meta.items()}
    return {
        "state": state,
        "metadata": metadata,
        "version": ctx.version,
        "timestamp": ctx.timestamp,
    }


def _ms(now: float) -> int:
    return int(now * 1000)


def _change(ctx: PlatformContext, part: str, changes: Mapping[str, Any], now: float) -> None:
    target, meta = (
        (ctx.reported, ctx.reported_meta) if part == "reported" else (ctx.desired, ctx.desired_meta)
    )
    _merge(target, changes)
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = _ms(now)
    ctx.timestamp = _ms(now)


def _delta_push(ctx: PlatformContext, now: float) -> list[Effect]:
    delta = delta_of(ctx)
    if not delta:
        return []
    ctx.deltas += 1
    payload = {"state": delta, "version": ctx.version, "timestamp": ctx.timestamp}
    return [Publish(ShadowDelta(payload, int(now)), QOS)]


def _answer_get(ctx: PlatformContext, event: ShadowGet, now: float) -> Iterable[Effect]:
    return (Publish(GetResult(OK, int(now), event.client_token, document(ctx)), QOS),)


def _invalid_update(ctx: PlatformContext, event: ShadowUpdate) -> bool:
    parts = [event.state.get(p) for p in ("reported", "desired") if p in event.state]
    return not parts or not all(isinstance(p, dict) for p in parts)


def _refuse_invalid(ctx: PlatformContext, event: ShadowUpdate, now: float) -> Iterable[Effect]:
    answer = UpdateResult(INVALID_UPDATE, int(now), event.client_token)
    return (Publish(answer, QOS), Log.warning("refused a shadow update without reported/desired"))


def _version_conflict(ctx: PlatformContext, event: ShadowUpdate) -> bool:
    return event.version not in (0, ctx.version)


def _refuse_conflict(ctx: PlatformContext, event: ShadowUpdate, now: float) -> Iterable[Effect]:
    answer = UpdateResult(VERSION_CONFLICT, int(now), event.client_token, document(ctx))
    return (Publish(answer, QOS),)


def _update(ctx: PlatformContext, event: ShadowUpdate, now: float) -> list[Effect]:
    for part in ("reported", "desired"):
        if part in event.state:
            _change(ctx, part, event.state[part], now)
    ctx.version += 1
    accepted = {"state": event.state, "version": ctx.version, "timestamp": ctx.timestamp}
    answer = UpdateResult(OK, int(now), event.client_token, accepted)
    pushed = _delta_push(ctx, now) if "desired" in event.state else []
    return [Publish(answer, QOS), *pushed]


def _delete(ctx: PlatformContext, event: ShadowDelete, now: float) -> Iterable[Effect]:
    for part in (ctx.reported, ctx.desired, ctx.reported_meta, ctx.desired_meta):
        part.clear()
    ctx.version += 1  # a report naming the old version is refused: the device must get first
    ctx.timestamp = _ms(now)
    payload = {"version": ctx.version, "timestamp": ctx.timestamp}
    return (Publish(DeleteResult(OK, int(now), event.client_token, payload), QOS),)


def _set_desired(ctx: PlatformContext, event: SetDesired, now: float) -> list[Effect]:
    _change(ctx, "desired", event.state, now)
    ctx.version += 1
    return _delta_push(ctx, now)


PLATFORM = MachineSpec(
    name="shadow.platform",
    doc="One document per device: answer get/update/delete, push a delta when desired changes.",
    states=[
        State("empty", initial=True, doc="no document yet (or deleted): get answers version 0"),
        State("kept", doc="a document with reported and/or desired state"),
    ],
    transitions=[
        On(ShadowGet, ANY_STATE, None, action=_answer_get),
        On(ShadowUpdate, ANY_STATE, None, guard=_invalid_update, action=_refuse_invalid),
        On(ShadowUpdate, ANY_STATE, None, guard=_version_conflict, action=_refuse_conflict),
        On(ShadowUpdate, ANY_STATE, "kept", action=_update),
        On(ShadowDelete, ANY_STATE, "empty", action=_delete),
        On(SetDesired, ANY_STATE, "kept", action=_set_desired),
    ],
    context=lambda key: PlatformContext(),
    context_type=PlatformContext,
    inbound=[ShadowGet, ShadowUpdate, ShadowDelete],
)


FEATURE = Feature(
    name="shadow",
    up_topic="$shadow/operation/{product}/{device}",
    down_topic="$shadow/operation/result/{product}/{device}",
    up=[ShadowGet, ShadowUpdate, ShadowDelete],
    down=[GetResult, UpdateResult, DeleteResult, ShadowDelta],
    device=DEVICE,
    platform=PLATFORM,
    doc=__doc__ or "",
)

__all__ = [
    "DEVICE",
    "FEATURE",
    "INVALID_UPDATE",
    "OK",
    "PLATFORM",
    "VERSION_CONFLICT",
    "ApplyShadowDelta",
    "DeleteResult",
    "DeviceContext",
    "DeviceKey",
    "GetResult",
    "PlatformContext",
    "ReportShadow",
    "SetDesired",
    "ShadowDelete",
    "ShadowDelta",
    "ShadowGet",
    "ShadowUpdate",
    "UpdateResult",
    "delta_of",
    "document",
]
