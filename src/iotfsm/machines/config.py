"""Remote config (seed 004 §1.5): every device of a product runs the product's JSON config.

The platform hands each device the product's current config (PROTOCOL.md "Remote config"), a JSON
object the device's application applies.

Device: asks with `get` after every (re)connect (one ask outstanding at a time, because there is
no request id to tell answers apart), has the facade persist a new config (`SaveConfig`) so that
after a reboot it knows its config before it is online, and applies it (`ApplyConfig`) once the
facade says it is saved (`ConfigSaved`). A config that cannot be saved (`ConfigNotSaved`: a full
disk) is not applied, so what the application runs and what the device finds after a reboot never
differ; the next reply or push of it tries again. It applies a config only when it differs from
the one it holds: a duplicate delivery (QoS 1 redelivery, a push crossing the reply to its own
`get`) reaches the application once. On result 1001 (disabled), 1002 (no config) or 1003
(invalid) it keeps what it has and says why, in the log and in its status. A reply that arrives
after a push the device applied since its get went out is older news than that push, and is
ignored.

A `push` whose `result` is not 0 is not applied. Tencent's C SDK ignores `result` on a push and
applies the payload anyway; we do not, because a payload the platform itself marks as failed is
the one thing a device must not install. The platform role here never sends such a push (it does
not push at all while config is disabled), so between iotfsm peers and with C SDK devices the
difference never shows.

Platform: one session per device. The product's config (its versions, the enabled switch) lives
in the platform's records, not here: the facade passes it in as a `ProductConfig` inside command
events, and a session asks for it (`LoadProductConfig`) the first time its device asks before any
command arrived. Every `get` is answered: 1001 while disabled, 1002 while there is no config,
else 0 with the payload. A new version (or switching config back on) is pushed once.

Every downlink goes at QoS 0, as PROTOCOL.md advises: the C SDK acknowledges and drops a QoS 1
message whose packet id it saw before a reconnect, which would silently lose a push; a QoS 0 push is
lost only with the connection, and a device asks again after every reconnect.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from ..fsm import (
    ANY_STATE,
    Effect,
    Event,
    Log,
    MachineSpec,
    On,
    Publish,
    SetTimer,
    State,
)
from .asking import REPLY_TIMER, backoff, connection_edges, retry_edges
from .feature import Feature
from .messages import Message, wire

OK = 0
DISABLED = 1001
"""Remote config is switched off for the product."""
NO_CONFIG = 1002
"""The product has no config yet (SDK docs)."""
INVALID = 1003
"""The platform holds a config it considers invalid (SDK docs)."""

REPLY_TIMEOUT = 5.0
"""Seconds the device waits for a reply before asking again (doubled on each retry)."""
MAX_GETS = 3
"""Asks per (re)connect or request before the device stops asking and just listens for pushes."""
REPLY_QOS = 0
PUSH_QOS = 0
"""QoS 0 downlinks (module doc): a reconnecting device asks anyway, and duplicates are harmless."""

_RESULT_TEXT = {
    DISABLED: "remote config is disabled for this product (result 1001)",
    NO_CONFIG: "the platform has no config for this product (result 1002)",
    INVALID: "the platform says the config is invalid (result 1003)",
}


def result_text(result: int) -> str:
    """Why a non-zero result came, in words for a log line or a status."""
    return _RESULT_TEXT.get(result, f"the platform answered result {result}")


# ---- messages -------------------------------------------------------------------------------


@attrs.frozen
class ConfigGet(Message):
    """up: `{"type":"get"}`. There is no id: one get is outstanding at a time."""

    TYPE = "get"


@attrs.frozen
class ConfigReply(Message):
    """down: `{"type":"reply","result":0,"payload":{…}}`, the answer to a get.

    `payload` is None when the key is absent; the platform leaves it out on a non-zero result, so
    that a device that ignores `result` finds nothing it could install."""

    TYPE = "reply"
    result: int = OK
    # hash=False: a dict is unhashable (and a message's identity never depends on it)
    payload: dict[str, Any] | None = attrs.field(
        default=None, hash=False, metadata=wire(omit_if_none=True, object_text=True)
    )


@attrs.frozen
class ConfigPush(Message):
    """down: `{"type":"push","result":0,"payload":{…}}`, sent unasked when the config changes."""

    TYPE = "push"
    result: int = OK
    payload: dict[str, Any] | None = attrs.field(
        default=None, hash=False, metadata=wire(omit_if_none=True, object_text=True)
    )


# ---- device commands and effects ------------------------------------------------------------


@attrs.frozen
class RequestConfig(Event):
    """Device command: ask the platform now (the application wants to be sure it is current)."""


@attrs.frozen
class ApplyConfig(Effect):
    """The application should now run with `payload` (only ever a config that differs from the
    one applied before)."""

    payload: dict[str, Any] = attrs.field(hash=False)


@attrs.frozen
class SaveConfig(Effect):
    """Persist `payload` as the device's config, so a rebooted device knows it offline; answer
    with `ConfigSaved` or `ConfigNotSaved`. It is applied only once saved."""

    payload: dict[str, Any] = attrs.field(hash=False)


@attrs.frozen
class ConfigSaved(Event):
    """`SaveConfig` of `payload` is durable: now it may be applied."""

    payload: dict[str, Any] = attrs.field(hash=False)


@attrs.frozen
class ConfigNotSaved(Event):
    """`SaveConfig` of `payload` failed (`reason`, e.g. no space left): it is not applied."""

    payload: dict[str, Any] = attrs.field(hash=False)
    reason: str


@attrs.frozen
class ConfigStatus:
    """What the application can read about the last exchange: the platform's `result` (None when
    it has not answered since start, or stopped answering) and why, in words."""

    result: int | None
    text: str


# ---- device ---------------------------------------------------------------------------------


@attrs.define
class DeviceContext:
    config: dict[str, Any] | None = None
    """The config last applied; seeded from the state directory at start, None if never."""
    attempts: int = 0
    """Gets sent since the last (re)connect or request."""
    result: int | None = None
    note: str = "not asked yet"
    pushed: bool = False
    """A push came after the last get went out: a reply still on its way to that get is older
    news than the push (there is no request id to tell), so it is ignored."""


def _kept(ctx: DeviceContext) -> str:
    return "no config yet" if ctx.config is None else "keeping the current config"


def _ask(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    """A fresh round of asking, after a (re)connect or the application's request."""
    ctx.attempts = 0
    return _ask_again(ctx, event, now)


def _ask_again(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    ctx.attempts += 1
    ctx.pushed = False
    delay = backoff(REPLY_TIMEOUT, ctx.attempts)
    return (Publish(ConfigGet(), 0), SetTimer(REPLY_TIMER, delay))


def _may_ask_again(ctx: DeviceContext, event: Event) -> bool:
    return ctx.attempts < MAX_GETS


def _give_up(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    ctx.result = None
    ctx.note = f"no reply after {ctx.attempts} gets; {_kept(ctx)}, listening for pushes"
    return (Log.warning(ctx.note),)


def _offline(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    return (Log.info("config requested while offline: the device asks when it connects"),)


def _usable(ctx: DeviceContext, event: ConfigReply | ConfigPush) -> bool:
    return event.result == OK and event.payload is not None


def _overtaken(ctx: DeviceContext, event: ConfigReply) -> bool:
    return ctx.pushed


def _apply(ctx: DeviceContext, event: ConfigReply | ConfigPush, now: float) -> Iterable[Effect]:
    payload = event.payload
    assert payload is not None  # the guard checked it
    if isinstance(event, ConfigPush):
        ctx.pushed = True
    ctx.result = OK
    if payload == ctx.config:
        ctx.note = "up to date"
        return ()
    ctx.note = "saving"
    return (SaveConfig(payload),)


def _saved(ctx: DeviceContext, event: ConfigSaved, now: float) -> Iterable[Effect]:
    if event.payload == ctx.config:
        return ()  # a duplicate push saved twice: applied once
    ctx.config = event.payload
    ctx.note = "applied"
    return (ApplyConfig(event.payload),)


def _not_saved(ctx: DeviceContext, event: ConfigNotSaved, now: float) -> Iterable[Effect]:
    ctx.note = f"could not save the new config ({event.reason}), so it is not applied; {_kept(ctx)}"
    return (Log.warning(ctx.note),)


def _decline(ctx: DeviceContext, event: ConfigReply | ConfigPush, now: float) -> Iterable[Effect]:
    what = event.TYPE
    if event.result == OK:
        why = f"a {what} with result 0 but no payload"
    else:
        why = result_text(event.result)
    ctx.result = event.result
    ctx.note = f"{why}; {_kept(ctx)}"
    if event.result == NO_CONFIG:
        return (Log.info(f"config {what}: {ctx.note}"),)
    return (Log.warning(f"config {what} not applied: {ctx.note}"),)


DEVICE = MachineSpec(
    name="config.device",
    doc="Ask after every (re)connect; apply replies and pushes that change the config.",
    states=[
        State("offline", initial=True, doc="not connected; knows its last config from disk"),
        State("asking", doc="a get is out; its reply timer runs"),
        State("listening", doc="answered (or gave up asking): applies pushes"),
    ],
    transitions=[
        *connection_edges("asking", _ask),
        On(RequestConfig, "listening", "asking", action=_ask),
        On(RequestConfig, "asking", None, label="one get at a time"),
        On(RequestConfig, "offline", None, action=_offline),
        *retry_edges(
            "asking",
            "listening",
            may_ask_again=_may_ask_again,
            ask_again=_ask_again,
            give_up=_give_up,
        ),
        On(ConfigReply, "asking", "listening", guard=_overtaken, label="a push overtook it"),
        On(ConfigReply, ("offline", "listening"), None, guard=_overtaken, label="overtaken"),
        On(ConfigReply, "asking", "listening", guard=_usable, action=_apply),
        On(ConfigReply, "asking", "listening", action=_decline),
        On(ConfigReply, ("offline", "listening"), None, guard=_usable, action=_apply),
        On(ConfigReply, ("offline", "listening"), None, action=_decline),
        On(ConfigPush, ANY_STATE, None, guard=_usable, action=_apply),
        On(ConfigPush, ANY_STATE, None, action=_decline),
        On(ConfigSaved, ANY_STATE, None, action=_saved),
        On(ConfigNotSaved, ANY_STATE, None, action=_not_saved),
    ],
    context=lambda key: DeviceContext(),
    context_type=DeviceContext,
    inbound=[ConfigReply, ConfigPush],
)


# ---- platform commands and effects ----------------------------------------------------------


@attrs.frozen
class ProductConfig:
    """A product's config as the platform's records hold it, handed to sessions in events.

    `version` 0 means no config was ever set. `revision` counts every change of the record (a
    new version or a flip of the switch), so a session can tell stale news from fresh news when
    events from two threads overtake each other."""

    enabled: bool = True
    version: int = 0
    payload: dict[str, Any] | None = attrs.field(default=None, hash=False)
    revision: int = 0

    @property
    def servable(self) -> bool:
        return self.enabled and self.payload is not None


@attrs.frozen
class ConfigLoaded(Event):
    """Platform command: the product's config, answering `LoadProductConfig`. Never pushes."""

    config: ProductConfig


@attrs.frozen
class ConfigChanged(Event):
    """Platform command: the product's config changed (a new version, or the switch flipped).
    A new version, or config switched back on, is pushed to the device."""

    config: ProductConfig


@attrs.frozen
class PushConfig(Event):
    """Platform command: push the current config to this device now."""


@attrs.frozen
class LoadProductConfig(Effect):
    """The session needs its product's config: the facade answers with `ConfigLoaded`."""


# ---- platform -------------------------------------------------------------------------------


@attrs.define
class PlatformContext:
    config: ProductConfig | None = None
    """The product's config as last told; None until the facade has said."""
    pending: bool = False
    """The device asked before the config was known: answer when it is."""
    replies: int = 0
    pushes: int = 0


def _reply(ctx: PlatformContext) -> Publish:
    ctx.replies += 1
    config = ctx.config
    if config is not None and not config.enabled:
        return Publish(ConfigReply(DISABLED), REPLY_QOS)
    if config is None or config.payload is None:
        return Publish(ConfigReply(NO_CONFIG), REPLY_QOS)
    return Publish(ConfigReply(OK, config.payload), REPLY_QOS)


def _push(ctx: PlatformContext) -> Publish:
    assert ctx.config is not None and ctx.config.payload is not None
    ctx.pushes += 1
    return Publish(ConfigPush(OK, ctx.config.payload), PUSH_QOS)


def _load(ctx: PlatformContext, event: ConfigGet, now: float) -> Iterable[Effect]:
    ctx.pending = True
    return (LoadProductConfig(),)


def _answer(ctx: PlatformContext, event: ConfigGet, now: float) -> Iterable[Effect]:
    return (_reply(ctx),)


def _stale(ctx: PlatformContext, event: ConfigLoaded | ConfigChanged) -> bool:
    return ctx.config is not None and event.config.revision <= ctx.config.revision


def _disabled(ctx: PlatformContext, event: ConfigLoaded | ConfigChanged) -> bool:
    return not event.config.enabled


def _servable(ctx: PlatformContext, event: ConfigLoaded | ConfigChanged) -> bool:
    return event.config.servable


def _adopt(ctx: PlatformContext, event: ConfigLoaded | ConfigChanged, now: float) -> list[Effect]:
    """Take the news; a device that asked while the config was unknown is answered now."""
    ctx.config = event.config
    if ctx.pending:
        ctx.pending = False
        return [_reply(ctx)]
    return []


def _adopt_and_push(ctx: PlatformContext, event: ConfigChanged, now: float) -> Iterable[Effect]:
    before = ctx.config
    answered = _adopt(ctx, event, now)
    if answered:
        return answered  # the reply carries this very config: a push would repeat it
    if before is not None and before.enabled and before.version == event.config.version:
        return ()  # nothing the device has not been sent already
    return (_push(ctx),)


def _push_now(ctx: PlatformContext, event: PushConfig, now: float) -> Iterable[Effect]:
    return (_push(ctx),)


def _refuse_push(ctx: PlatformContext, event: PushConfig, now: float) -> Iterable[Effect]:
    config = ctx.config
    if config is None:
        why = "the product's config is not loaded"
    elif not config.enabled:
        why = "remote config is disabled"
    else:
        why = "the product has no config"
    return (Log.warning(f"config push refused: {why}"),)


PLATFORM = MachineSpec(
    name="config.platform",
    doc="One per device: answer every get from the product's config, push each new version.",
    states=[
        State("unknown", initial=True, doc="the product's config has not been handed in yet"),
        State("empty", doc="no config yet: gets are answered 1002"),
        State("serving", doc="gets are answered 0 with the payload; new versions are pushed"),
        State("disabled", doc="switched off: gets are answered 1001, nothing is pushed"),
    ],
    transitions=[
        On(ConfigGet, "unknown", None, action=_load),
        On(ConfigGet, "empty", None, action=_answer, label="reply 1002"),
        On(ConfigGet, "serving", None, action=_answer, label="reply 0 + payload"),
        On(ConfigGet, "disabled", None, action=_answer, label="reply 1001"),
        On(ConfigLoaded, ANY_STATE, None, guard=_stale, label="stale: ignored"),
        On(ConfigLoaded, ANY_STATE, "disabled", guard=_disabled, action=_adopt),
        On(ConfigLoaded, ANY_STATE, "serving", guard=_servable, action=_adopt),
        On(ConfigLoaded, ANY_STATE, "empty", action=_adopt),
        On(ConfigChanged, ANY_STATE, None, guard=_stale, label="stale: ignored"),
        On(ConfigChanged, ANY_STATE, "disabled", guard=_disabled, action=_adopt),
        On(ConfigChanged, ANY_STATE, "serving", guard=_servable, action=_adopt_and_push),
        On(ConfigChanged, ANY_STATE, "empty", action=_adopt),
        On(PushConfig, "serving", None, action=_push_now),
        On(PushConfig, ("unknown", "empty", "disabled"), None, action=_refuse_push),
    ],
    context=lambda key: PlatformContext(),
    context_type=PlatformContext,
    inbound=[ConfigGet],
)


FEATURE = Feature(
    name="config",
    up_topic="$config/operation/{product}/{device}",
    down_topic="$config/operation/result/{product}/{device}",
    up=[ConfigGet],
    down=[ConfigReply, ConfigPush],
    device=DEVICE,
    platform=PLATFORM,
    doc=__doc__ or "",
)

__all__ = [
    "DEVICE",
    "DISABLED",
    "FEATURE",
    "INVALID",
    "NO_CONFIG",
    "OK",
    "PLATFORM",
    "ApplyConfig",
    "ConfigChanged",
    "ConfigGet",
    "ConfigLoaded",
    "ConfigNotSaved",
    "ConfigPush",
    "ConfigReply",
    "ConfigSaved",
    "ConfigStatus",
    "DeviceContext",
    "LoadProductConfig",
    "PlatformContext",
    "ProductConfig",
    "PushConfig",
    "RequestConfig",
    "SaveConfig",
    "result_text",
]
