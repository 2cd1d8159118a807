"""Log level (seed 004 §1.6): the platform decides how much each device uploads of its log.

The device asks with `get_log_level` after every (re)connect and applies the level it is answered,
and any level the platform pushes later. A reply tells itself apart from a push by its
`clientToken` (the ask's own); a reply to an ask already answered, or overtaken by a push, is
older news and is ignored, so a delayed answer never undoes a newer push. The platform keeps one
level per device, answers every ask, and pushes a change at once; a device offline during the
push gets it on its next ask.
Levels: 0 upload nothing, 1 error, 2 warning, 3 info, 4 debug.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import attrs

from ..fsm import (
    Connected,
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
from .feature import DeviceKey, Feature
from .messages import Message, wire

LEVELS = range(0, 5)
REPLY_TIMEOUT = 5.0
"""Seconds the device waits for an answer before asking again (doubled on each retry)."""
MAX_ASKS = 3
"""Asks per (re)connect before the device stops asking and just listens for pushes."""

_PYTHON_LEVELS = {
    0: logging.CRITICAL + 10,
    1: logging.ERROR,
    2: logging.WARNING,
    3: logging.INFO,
    4: logging.DEBUG,
}


def python_level(level: int) -> int:
    """The `logging` level that keeps exactly the records a remote level asks for.

    Level 0 means "upload nothing", so it maps above CRITICAL: no record passes.
    """
    return _PYTHON_LEVELS[level]


# ---- messages -------------------------------------------------------------------------------


@attrs.frozen
class GetLogLevel(Message):
    """up, QoS 0: `{"type":"get_log_level","clientToken":"<pid>-<n>"}`."""

    TYPE = "get_log_level"
    client_token: str = attrs.field(metadata=wire(name="clientToken"))


@attrs.frozen
class LogLevelReply(Message):
    """down: the answer to an ask, and the same shape pushed when the platform changes the level."""

    TYPE = "get_log_level"
    client_token: str = attrs.field(metadata=wire(name="clientToken"))
    log_level: int
    result: int = 0
    timestamp: int = 0


# ---- commands and effects -------------------------------------------------------------------


@attrs.frozen
class SetLogLevel(Event):
    """Platform command: set this device's level and push it."""

    level: int


@attrs.frozen
class ApplyLogLevel(Effect):
    """Device effect: the application's logger should now keep records at `level` and above."""

    level: int


# ---- device ---------------------------------------------------------------------------------


@attrs.define
class DeviceContext:
    product: str
    asked: int = 0
    """Asks sent so far; numbers the clientToken."""
    attempts: int = 0
    """Asks sent since the last (re)connect."""
    level: int | None = None
    """The level last applied; None until the platform has said."""
    answered: int = 0
    """Asks numbered up to this one were answered, or overtaken by a push: a reply to one of
    them that arrives now is older news than the level applied, and is ignored."""


def _ask(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    ctx.attempts = 0 if isinstance(event, Connected) else ctx.attempts
    ctx.attempts += 1
    ctx.asked += 1
    delay = backoff(REPLY_TIMEOUT, ctx.attempts)
    return (Publish(GetLogLevel(f"{ctx.product}-{ctx.asked}"), 0), SetTimer(REPLY_TIMER, delay))


def _may_ask_again(ctx: DeviceContext, event: Event) -> bool:
    return ctx.attempts < MAX_ASKS


def _give_up(ctx: DeviceContext, event: Event, now: float) -> Iterable[Effect]:
    kept = "no level yet" if ctx.level is None else f"keeping level {ctx.level}"
    text = f"no log level reply after {ctx.attempts} asks; {kept}, listening for pushes"
    return (Log.warning(text),)


def _valid_reply(ctx: DeviceContext, event: LogLevelReply) -> bool:
    return event.result == 0 and event.log_level in LEVELS


def _ask_number(ctx: DeviceContext, event: LogLevelReply) -> int | None:
    """Which of this device's asks the message answers; None for a push (another token)."""
    prefix = f"{ctx.product}-"
    number = event.client_token[len(prefix) :]
    if not event.client_token.startswith(prefix) or not (number.isascii() and number.isdigit()):
        return None
    n = int(number)
    return n if 1 <= n <= ctx.asked else None


def _stale(ctx: DeviceContext, event: LogLevelReply) -> bool:
    n = _ask_number(ctx, event)
    return n is not None and n <= ctx.answered and _valid_reply(ctx, event)


def _ignore_stale(ctx: DeviceContext, event: LogLevelReply, now: float) -> Iterable[Effect]:
    return (Log.info(f"ignored a late reply to {event.client_token}: a newer level was applied"),)


def _apply(ctx: DeviceContext, event: LogLevelReply, now: float) -> Iterable[Effect]:
    n = _ask_number(ctx, event)
    ctx.answered = ctx.asked if n is None else n
    ctx.level = event.log_level
    return (ApplyLogLevel(event.log_level),)


def _ignore_invalid(ctx: DeviceContext, event: LogLevelReply, now: float) -> Iterable[Effect]:
    if event.result != 0:
        why = f"the platform answered result {event.result}"
    else:
        why = f"log_level {event.log_level} is outside 0-4"
    kept = "no level yet" if ctx.level is None else f"keeping level {ctx.level}"
    return (Log.warning(f"ignored a log level message: {why}; {kept}"),)


DEVICE = MachineSpec(
    name="log_level.device",
    doc="Ask for the level after every (re)connect; apply answers and pushes.",
    states=[
        State("offline", initial=True, doc="not connected: nothing to ask yet"),
        State("asking", doc="an ask is out; its reply timer runs"),
        State("listening", doc="answered (or gave up asking): applies pushed levels"),
    ],
    transitions=[
        *connection_edges("asking", _ask),
        On(LogLevelReply, ("asking", "listening"), None, guard=_stale, action=_ignore_stale),
        On(LogLevelReply, ("asking", "listening"), "listening", guard=_valid_reply, action=_apply),
        On(LogLevelReply, ("asking", "listening"), None, action=_ignore_invalid),
        *retry_edges(
            "asking", "listening", may_ask_again=_may_ask_again, ask_again=_ask, give_up=_give_up
        ),
    ],
    context=lambda key: DeviceContext(key.product),
    context_type=DeviceContext,
    inbound=[LogLevelReply],
)


# ---- platform -------------------------------------------------------------------------------


@attrs.define
class PlatformContext:
    product: str
    level: int = 0
    """Level 0 (upload nothing) until someone sets one, as on Tencent's console."""
    pushes: int = 0


def _answer(ctx: PlatformContext, event: GetLogLevel, now: float) -> Iterable[Effect]:
    return (Publish(LogLevelReply(event.client_token, ctx.level, 0, int(now)), 0),)


def _valid_level(ctx: PlatformContext, event: SetLogLevel) -> bool:
    return event.level in LEVELS


def _push(ctx: PlatformContext, event: SetLogLevel, now: float) -> Iterable[Effect]:
    ctx.level = event.level
    ctx.pushes += 1
    token = f"{ctx.product}-push-{ctx.pushes}"
    return (Publish(LogLevelReply(token, event.level, 0, int(now)), 0),)


def _refuse_level(ctx: PlatformContext, event: SetLogLevel, now: float) -> Iterable[Effect]:
    return (Log.warning(f"refused log level {event.level}: levels are 0-4; keeping {ctx.level}"),)


PLATFORM = MachineSpec(
    name="log_level.platform",
    doc="One per device: remember its level, answer every ask, push every change.",
    states=[
        State("default", initial=True, doc="never set: answers level 0"),
        State("assigned", doc="set by the platform: answers and pushed that level"),
    ],
    transitions=[
        On(GetLogLevel, ("default", "assigned"), None, action=_answer),
        On(SetLogLevel, ("default", "assigned"), "assigned", guard=_valid_level, action=_push),
        On(SetLogLevel, ("default", "assigned"), None, action=_refuse_level),
    ],
    context=lambda key: PlatformContext(key.product),
    context_type=PlatformContext,
    inbound=[GetLogLevel],
)


FEATURE = Feature(
    name="log_level",
    up_topic="$log/operation/{product}/{device}",
    down_topic="$log/operation/result/{product}/{device}",
    up=[GetLogLevel],
    down=[LogLevelReply],
    device=DEVICE,
    platform=PLATFORM,
    doc=__doc__ or "",
)

__all__ = [
    "DEVICE",
    "FEATURE",
    "PLATFORM",
    "ApplyLogLevel",
    "DeviceContext",
    "DeviceKey",
    "GetLogLevel",
    "LogLevelReply",
    "PlatformContext",
    "SetLogLevel",
    "python_level",
]
