"""Rollout campaigns: one firmware to many devices in waves, with brakes (issue 18).

A campaign is a platform-level machine, not a Tencent feature: it has no topic pair and receives
no wire messages. Its inputs are commands (Launch, Pause, Resume, NextWave, RetryFailed, Cancel),
the outcomes of the per-device OTA tasks it started (DeviceSucceeded, DeviceFailed) and its own
timers; its outputs are StartDevice / CancelDevice effects, which the platform turns into the
DeployFirmware / CancelFirmware commands the OTA platform machine already understands.

Why a zero-delay "settle" timer: whether the campaign moves on (next wave, succeeded, aborted)
depends on counts that change inside actions, and guards see the context before the action runs.
Every action that changes counts records them and arms `settle`; the guards on `timer("settle")`
then decide from the context alone. Starting is time-dependent (rate limit, maintenance windows),
so it happens only in actions, which get `now`; the machine never reads a clock.
Brakes that must hold at once (no start after an abort criterion is met) are checked by the start
action itself, so the short span before `settle` fires can never start a device.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import attrs

from ..fsm import ANY_STATE, Effect, Event, Log, MachineSpec, On, SetTimer, State, timer
from .windows import (
    DailyWindow,
    Interval,
    WindowError,
    Windows,
    check_windows,
    is_open,
    opening_after,
)

ADVANCE_MODES = ("threshold", "immediate", "operator")
"""When the next wave starts: its predecessor reached `success_percent`, at once once every
device of the predecessor was started, or when an operator says NextWave."""
BURN_RULES = ("allow", "wait")
"""Whether a device may burn outside the maintenance windows (`Plan.burn`)."""
MAX_HISTORY = 200
"""Notes kept per campaign (wave started, paused, aborted...): enough for an operator's story."""


class CampaignError(ValueError):
    """A campaign plan or an operator action that cannot be carried out; the message says why."""


# ---- the plan -------------------------------------------------------------------------------


@attrs.frozen
class Firmware:
    """What every device of the campaign should run (the OTA task's fields)."""

    version: str
    file_id: str
    size: int
    md5: str


@attrs.frozen
class Rate:
    """Devices started per minute, AWS IoT Jobs style: `per_minute` at first, multiplied by
    `growth` after every `every` starts (exponential rollout), never above `max_per_minute`
    (0: no cap). `growth=1` is a constant rate."""

    per_minute: float
    growth: float = 1.0
    every: int = 0
    max_per_minute: float = 0.0


@attrs.frozen
class AbortRule:
    """Abort when the devices matching this rule reach `percent` of the finished devices, once at
    least `min_finished` devices finished. `codes` picks the failure codes that count (e.g. -4,
    -5 but not -1); empty, every failure counts. `timeouts`: in-progress timeouts count too
    (always when `codes` is empty)."""

    percent: float
    min_finished: int = 1
    codes: tuple[int, ...] = ()
    timeouts: bool = False


@attrs.frozen
class Plan:
    """Everything a campaign was told at launch. Frozen: operators act by commands, not edits."""

    product: str
    firmware: Firmware
    waves: tuple[tuple[str, ...], ...]
    advance: str = "threshold"
    success_percent: float = 100.0
    """Of a wave's devices that must succeed before the next wave starts (`threshold` mode); a
    wave that finishes below it aborts the campaign."""
    rate: Rate | None = None
    abort: tuple[AbortRule, ...] = ()
    device_timeout: float = 0.0
    """Seconds a started device may take to finish (0: no limit); then it counts as timed out."""
    daily_windows: tuple[DailyWindow, ...] = ()
    intervals: tuple[Interval, ...] = ()
    """Maintenance windows: devices start only inside one (none given: always)."""
    fail_fast: tuple[int, ...] = (-4, -5)
    """Codes for which one failed attempt ends a device's part (its task is cancelled): a bad
    image fails to verify or burn the same way every time, while a -1 (timeout) is left to the
    OTA machine's retries and counts only if the task finally gives up."""
    cancel_on_abort: bool = False
    """On abort also cancel the devices still in progress (else they may finish)."""
    start_at: float = 0.0
    """Epoch seconds before which nothing starts (0: at once)."""
    burn: str = "allow"
    """Outside a window a started device's download goes on; may it also burn there? `allow`:
    yes, whenever the image is ready; `wait`: the offer names the windows and an iotfsm device
    burns only inside one (docs/PROTOCOL-extensions.md, "Burn windows")."""


def check_plan(plan: Plan) -> Plan:
    """Refuse a plan that could not run as meant; returns it unchanged."""
    if not plan.waves or not all(plan.waves):
        raise CampaignError("a campaign needs at least one wave, and no wave may be empty")
    seen: set[str] = set()
    for wave in plan.waves:
        for device in wave:
            if device in seen:
                raise CampaignError(f"device {device!r} is in more than one wave; list it once")
            seen.add(device)
    if plan.advance not in ADVANCE_MODES:
        raise CampaignError(f"advance {plan.advance!r} must be one of {', '.join(ADVANCE_MODES)}")
    if not 0 <= plan.success_percent <= 100:
        raise CampaignError(f"success_percent {plan.success_percent} must be 0-100")
    rate = plan.rate
    if rate is not None and not (
        rate.per_minute > 0 and rate.growth >= 1 and rate.every >= 0 and rate.max_per_minute >= 0
    ):
        raise CampaignError(
            f"rate {rate} needs per_minute > 0, growth >= 1, every >= 0 and max_per_minute >= 0"
        )
    for rule in plan.abort:
        if not (0 < rule.percent <= 100 and rule.min_finished >= 1):
            raise CampaignError(f"abort rule {rule} needs 0 < percent <= 100, min_finished >= 1")
    if plan.device_timeout < 0:
        raise CampaignError("device_timeout must be >= 0 seconds (0: no limit)")
    try:
        check_windows(windows_of(plan))
    except WindowError as exc:
        raise CampaignError(str(exc)) from None
    if plan.burn not in BURN_RULES:
        raise CampaignError(f"burn {plan.burn!r} must be one of {', '.join(BURN_RULES)}")
    if plan.burn == "wait" and not windows_of(plan):
        raise CampaignError('burn "wait" needs maintenance windows to wait for')
    return plan


def plan_waves(
    devices: Sequence[str],
    *,
    counts: Sequence[int] | None = None,
    percents: Sequence[float] | None = None,
) -> tuple[tuple[str, ...], ...]:
    """Split `devices` (in order) into waves by counts or by percentages of the whole; what is
    left after the last size forms a last wave. For explicit groups, pass them as waves."""
    if (counts is None) == (percents is None):
        raise CampaignError("give wave sizes as counts or as percents, one of the two")
    if percents is not None:
        if any(p <= 0 for p in percents) or sum(percents) > 100:
            raise CampaignError(f"wave percents {list(percents)} must be > 0 and sum to <= 100")
        sizes = [max(1, math.ceil(len(devices) * p / 100)) for p in percents]
    else:
        sizes = list(counts or ())
    if any(c <= 0 for c in sizes):
        raise CampaignError(f"wave counts {sizes} must be > 0")
    waves: list[tuple[str, ...]] = []
    at = 0
    for count in sizes:
        if at >= len(devices):
            break
        waves.append(tuple(devices[at : at + count]))
        at += count
    if at < len(devices):
        waves.append(tuple(devices[at:]))
    return tuple(waves)


# ---- windows --------------------------------------------------------------------------------


def windows_of(plan: Plan) -> Windows:
    return Windows(plan.daily_windows, plan.intervals)


def window_open(plan: Plan, now: float) -> bool:
    """May a device start at `now`? Always, when the plan has no windows."""
    return is_open(windows_of(plan), now)


def next_opening(plan: Plan, now: float) -> float | None:
    """When the next window opens after `now`; None when no window is left."""
    return opening_after(windows_of(plan), now)


def burn_windows(plan: Plan) -> Windows:
    """The windows a started device is told to burn in (rule `wait`), or none (`allow`)."""
    return windows_of(plan) if plan.burn == "wait" else Windows()


# ---- commands, outcomes, effects ------------------------------------------------------------


@attrs.frozen
class Launch(Event):
    """Operator: run this plan (checked with `check_plan` before it is stepped)."""

    plan: Plan


@attrs.frozen
class Pause(Event):
    """Operator: start nobody until Resume; devices in progress go on and are counted."""


@attrs.frozen
class Resume(Event):
    """Operator: go on where the campaign paused."""


@attrs.frozen
class NextWave(Event):
    """Operator: start the next wave now (the `operator` mode's trigger; overrides a threshold)."""


@attrs.frozen
class RetryFailed(Event):
    """Operator: start the failed and timed-out devices again (an abort is lifted)."""


@attrs.frozen
class Cancel(Event):
    """Operator: end the campaign; devices in progress are cancelled."""


@attrs.frozen
class DeviceSucceeded(Event):
    """The OTA task of `device` ended with the target version running."""

    device: str


@attrs.frozen
class DeviceFailed(Event):
    """The OTA task of `device` gave up with Tencent's `code` (-1 timeout ... -5 burn failed)."""

    device: str
    code: int
    message: str = ""


@attrs.frozen
class DeviceAttemptFailed(Event):
    """One attempt of `device`'s OTA task failed with `code`; the OTA machine retries it."""

    device: str
    code: int
    message: str = ""


@attrs.frozen
class StartDevice(Effect):
    """Give `device` the campaign's firmware task (the platform posts DeployFirmware)."""

    device: str


@attrs.frozen
class CancelDevice(Effect):
    """Drop `device`'s task (the platform posts CancelFirmware)."""

    device: str


@attrs.frozen
class CampaignEnded(Effect):
    """The campaign reached `state` (succeeded, aborted or cancelled), for hooks and logs."""

    state: str
    reason: str


# ---- context --------------------------------------------------------------------------------

PENDING, RUNNING, SUCCEEDED, FAILED, TIMED_OUT, CANCELLED = (
    "pending",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
)
DEVICE_STATES = (PENDING, RUNNING, SUCCEEDED, FAILED, TIMED_OUT, CANCELLED)


@attrs.define
class DeviceRun:
    """One device's part: its wave, where it stands, when it started and how it ended."""

    wave: int
    state: str = PENDING
    started: float = 0.0
    code: int = 0
    starts: int = 0
    """How often the campaign started it: 1, or more after RetryFailed (never twice otherwise)."""


@attrs.define
class Note:
    at: float
    text: str


@attrs.define
class CampaignContext:
    id: str
    plan: Plan | None = None
    wave: int = -1
    """The wave being started or awaited; -1 before the first."""
    queue: list[str] = attrs.Factory(list)
    """Devices to start, in order (the current wave's, then retried ones)."""
    devices: dict[str, DeviceRun] = attrs.Factory(dict)
    next_start: float = 0.0
    """Earliest time the rate limit lets the next device start."""
    rate: float = 0.0
    """Current devices per minute (grows exponentially when the plan says so)."""
    started: int = 0
    """Starts so far, for the rate's growth."""
    reason: str = ""
    """Why the campaign was aborted or cancelled."""
    history: list[Note] = attrs.Factory(list)


def _note(ctx: CampaignContext, now: float, text: str) -> None:
    ctx.history.append(Note(now, text))
    del ctx.history[:-MAX_HISTORY]


def _plan(ctx: CampaignContext) -> Plan:
    if ctx.plan is None:  # pragma: no cover - Launch sets it before any other transition fires
        raise CampaignError(f"campaign {ctx.id!r} has no plan")
    return ctx.plan


def wave_counts(ctx: CampaignContext) -> list[dict[str, int]]:
    """Per wave: how many devices are in each device state (status pages, thresholds)."""
    waves = [dict.fromkeys(DEVICE_STATES, 0) for _ in _plan(ctx).waves]
    for run in ctx.devices.values():
        waves[run.wave][run.state] += 1
    return waves


def _finished(run: DeviceRun) -> bool:
    return run.state in (SUCCEEDED, FAILED, TIMED_OUT)


def breach(ctx: CampaignContext) -> str:
    """Why the campaign must abort now, or "" while it may go on."""
    plan = _plan(ctx)
    done = [r for r in ctx.devices.values() if _finished(r)]
    for rule in plan.abort:
        if len(done) < rule.min_finished:
            continue
        matching = sum(
            1
            for r in done
            if (r.state == FAILED and (not rule.codes or r.code in rule.codes))
            or (r.state == TIMED_OUT and (not rule.codes or rule.timeouts))
        )
        if matching * 100 >= rule.percent * len(done):
            codes = f" with codes {list(rule.codes)}" if rule.codes else ""
            return (
                f"{matching} of {len(done)} finished devices failed{codes} (limit {rule.percent}%)"
            )
    if plan.advance == "threshold" and 0 <= ctx.wave < len(plan.waves) - 1 and not ctx.queue:
        counts = wave_counts(ctx)[ctx.wave]
        size = len(plan.waves[ctx.wave])
        open_ = counts[PENDING] + counts[RUNNING]
        if open_ == 0 and counts[SUCCEEDED] * 100 < plan.success_percent * size:
            return (
                f"wave {ctx.wave + 1} ended with {counts[SUCCEEDED]} of {size} succeeded, below "
                f"its threshold of {plan.success_percent}%"
            )
    return ""


def _wave_threshold_met(ctx: CampaignContext) -> bool:
    plan = _plan(ctx)
    counts = wave_counts(ctx)[ctx.wave]
    return counts[SUCCEEDED] * 100 >= plan.success_percent * len(plan.waves[ctx.wave])


# ---- starting ---------------------------------------------------------------------------------


def _in_progress_timer(ctx: CampaignContext, now: float) -> list[Effect]:
    timeout = _plan(ctx).device_timeout
    running = [r.started for r in ctx.devices.values() if r.state == RUNNING]
    if not timeout or not running:
        return []
    return [SetTimer("in_progress", max(0.0, min(running) + timeout - now))]


def _start_due(ctx: CampaignContext, now: float) -> list[Effect]:
    """Start what the rate and the windows allow now; arm `start` for the rest, `settle` when
    the queue is empty. Starts nobody while an abort criterion holds."""
    plan = _plan(ctx)
    if not ctx.queue or breach(ctx):
        return [SetTimer("settle", 0.0)]
    if not window_open(plan, now):
        opens = next_opening(plan, now)
        if opens is None:
            return [Log.warning(f"campaign {ctx.id}: no maintenance window left; cancel it")]
        return [SetTimer("start", opens - now)]
    out: list[Effect] = []
    if plan.rate is None:
        while ctx.queue:
            out.append(_start_one(ctx, now))
    else:
        ctx.next_start = max(ctx.next_start, now)
        while ctx.queue and ctx.next_start <= now:
            out.append(_start_one(ctx, now))
            ctx.next_start += 60.0 / ctx.rate
            _grow(ctx, plan.rate)
    if ctx.queue:
        out.append(SetTimer("start", max(0.0, ctx.next_start - now)))
    else:
        out.append(SetTimer("settle", 0.0))
    return out


def _start_one(ctx: CampaignContext, now: float) -> Effect:
    device = ctx.queue.pop(0)
    run = ctx.devices[device]
    run.state, run.started, run.code = RUNNING, now, 0
    run.starts += 1
    ctx.started += 1
    return StartDevice(device)


def _grow(ctx: CampaignContext, rate: Rate) -> None:
    if rate.every and rate.growth > 1 and ctx.started % rate.every == 0:
        grown = ctx.rate * rate.growth
        ctx.rate = min(grown, rate.max_per_minute) if rate.max_per_minute else grown


def _starting(ctx: CampaignContext, now: float) -> list[Effect]:
    """Effects of (re)entering `running`: starts, and the in-progress timer the state change
    cancelled."""
    starts = _start_due(ctx, now)
    return [*starts, *_in_progress_timer(ctx, now)]


def _open_wave(ctx: CampaignContext, now: float) -> None:
    ctx.wave += 1
    wave = _plan(ctx).waves[ctx.wave]
    ctx.queue.extend(d for d in wave if ctx.devices[d].state == PENDING)
    _note(ctx, now, f"wave {ctx.wave + 1} started ({len(wave)} devices)")


# ---- guards -----------------------------------------------------------------------------------


def _unplanned(ctx: CampaignContext, event: Launch) -> bool:
    return ctx.plan is None


def _launched(ctx: CampaignContext, event: Event) -> bool:
    return ctx.plan is not None


def _breached(ctx: CampaignContext, event: Event) -> bool:
    return bool(breach(ctx))


def _all_done(ctx: CampaignContext, event: Event) -> bool:
    plan = _plan(ctx)
    return (
        ctx.wave == len(plan.waves) - 1
        and not ctx.queue
        and all(r.state not in (PENDING, RUNNING) for r in ctx.devices.values())
    )


def _next_wave_due(ctx: CampaignContext, event: Event) -> bool:
    plan = _plan(ctx)
    if ctx.queue or ctx.wave >= len(plan.waves) - 1:
        return False
    if plan.advance == "immediate":
        return True
    return plan.advance == "threshold" and _wave_threshold_met(ctx)


def _wave_started(ctx: CampaignContext, event: Event) -> bool:
    return not ctx.queue


def _has_next_wave(ctx: CampaignContext, event: NextWave) -> bool:
    return not ctx.queue and ctx.wave < len(_plan(ctx).waves) - 1


def _in_flight(
    ctx: CampaignContext, event: DeviceSucceeded | DeviceFailed | DeviceAttemptFailed
) -> bool:
    run = ctx.devices.get(event.device)
    return run is not None and run.state == RUNNING


def _fails_fast(ctx: CampaignContext, event: DeviceAttemptFailed) -> bool:
    return _in_flight(ctx, event) and event.code in _plan(ctx).fail_fast


def _has_failed(ctx: CampaignContext, event: RetryFailed) -> bool:
    return any(r.state in (FAILED, TIMED_OUT) for r in ctx.devices.values())


# ---- actions ----------------------------------------------------------------------------------


def _launch(ctx: CampaignContext, event: Launch, now: float) -> Iterable[Effect]:
    plan = ctx.plan = event.plan
    ctx.devices = {d: DeviceRun(i) for i, wave in enumerate(plan.waves) for d in wave}
    ctx.rate = plan.rate.per_minute if plan.rate else 0.0
    _note(ctx, now, f"launched: {len(ctx.devices)} devices in {len(plan.waves)} waves")
    return (SetTimer("begin", max(0.0, plan.start_at - now)),)


def _begin(ctx: CampaignContext, event: Event, now: float) -> Iterable[Effect]:
    _open_wave(ctx, now)
    return _starting(ctx, now)


def _start_more(ctx: CampaignContext, event: Event, now: float) -> Iterable[Effect]:
    return _start_due(ctx, now)


def _next_wave(ctx: CampaignContext, event: Event, now: float) -> Iterable[Effect]:
    _open_wave(ctx, now)
    return _starting(ctx, now)


def _wait(ctx: CampaignContext, event: Event, now: float) -> Iterable[Effect]:
    return _in_progress_timer(ctx, now)


def _stay(ctx: CampaignContext, event: Event, now: float) -> Iterable[Effect]:
    return ()


def _cancel_running(ctx: CampaignContext) -> list[Effect]:
    out: list[Effect] = []
    for device, run in ctx.devices.items():
        if run.state == RUNNING:
            run.state = CANCELLED
            out.append(CancelDevice(device))
    return out


def _abort(ctx: CampaignContext, event: Event, now: float) -> Iterable[Effect]:
    ctx.reason = breach(ctx)
    ctx.queue.clear()
    _note(ctx, now, f"aborted: {ctx.reason}")
    plan = _plan(ctx)
    out = _cancel_running(ctx) if plan.cancel_on_abort else _in_progress_timer(ctx, now)
    return [*out, CampaignEnded("aborted", ctx.reason)]


def _succeed(ctx: CampaignContext, event: Event, now: float) -> Iterable[Effect]:
    counts = [r.state for r in ctx.devices.values()]
    text = f"{counts.count(SUCCEEDED)} of {len(counts)} devices succeeded"
    _note(ctx, now, f"succeeded: {text}")
    return (CampaignEnded("succeeded", text),)


def _pause(ctx: CampaignContext, event: Pause, now: float) -> Iterable[Effect]:
    _note(ctx, now, "paused")
    return _in_progress_timer(ctx, now)


def _resume(ctx: CampaignContext, event: Resume, now: float) -> Iterable[Effect]:
    _note(ctx, now, "resumed")
    return _starting(ctx, now)


def _pause_early(ctx: CampaignContext, event: Pause, now: float) -> Iterable[Effect]:
    """Paused before its first wave (declared paused, or a start time not yet reached)."""
    _note(ctx, now, "paused before its first wave")
    return ()


def _never_begun(ctx: CampaignContext, event: Resume) -> bool:
    return ctx.wave < 0


def _resume_early(ctx: CampaignContext, event: Resume, now: float) -> Iterable[Effect]:
    _note(ctx, now, "resumed")
    return (SetTimer("begin", max(0.0, _plan(ctx).start_at - now)),)


def _cancel(ctx: CampaignContext, event: Cancel, now: float) -> Iterable[Effect]:
    ctx.reason = "cancelled by an operator"
    ctx.queue.clear()
    _note(ctx, now, "cancelled")
    return [*_cancel_running(ctx), CampaignEnded("cancelled", ctx.reason)]


def _record_success(ctx: CampaignContext, event: DeviceSucceeded, now: float) -> Iterable[Effect]:
    ctx.devices[event.device].state = SUCCEEDED
    return (SetTimer("settle", 0.0),)


def _record_failure(ctx: CampaignContext, event: DeviceFailed, now: float) -> Iterable[Effect]:
    run = ctx.devices[event.device]
    run.state, run.code = FAILED, event.code
    return (SetTimer("settle", 0.0),)


def _late_success(ctx: CampaignContext, event: DeviceSucceeded, now: float) -> Iterable[Effect]:
    """After an abort the devices left running may still finish: count them, decide nothing."""
    ctx.devices[event.device].state = SUCCEEDED
    return _in_progress_timer(ctx, now)


def _late_failure(ctx: CampaignContext, event: DeviceFailed, now: float) -> Iterable[Effect]:
    run = ctx.devices[event.device]
    run.state, run.code = FAILED, event.code
    return _in_progress_timer(ctx, now)


def _give_up_fast(ctx: CampaignContext, event: DeviceAttemptFailed, now: float) -> list[Effect]:
    run = ctx.devices[event.device]
    run.state, run.code = FAILED, event.code
    return [CancelDevice(event.device)]


def _failed_fast(ctx: CampaignContext, event: DeviceAttemptFailed, now: float) -> Iterable[Effect]:
    return [*_give_up_fast(ctx, event, now), SetTimer("settle", 0.0)]


def _late_failed_fast(
    ctx: CampaignContext, event: DeviceAttemptFailed, now: float
) -> Iterable[Effect]:
    return [*_give_up_fast(ctx, event, now), *_in_progress_timer(ctx, now)]


def _ignore_outcome(
    ctx: CampaignContext, event: DeviceSucceeded | DeviceFailed, now: float
) -> Iterable[Effect]:
    run = ctx.devices.get(event.device)
    why = "is not in this campaign" if run is None else f"is {run.state}, not running"
    return (Log.info(f"campaign {ctx.id}: ignored {event.trigger} of {event.device}: it {why}"),)


def _time_out(ctx: CampaignContext, now: float) -> list[Effect]:
    timeout = _plan(ctx).device_timeout
    out: list[Effect] = []
    for device, run in ctx.devices.items():
        if run.state == RUNNING and run.started + timeout <= now:
            run.state = TIMED_OUT
            out.append(CancelDevice(device))
    return out


def _timed_out(ctx: CampaignContext, event: Event, now: float) -> Iterable[Effect]:
    out = _time_out(ctx, now)
    return [*out, *_in_progress_timer(ctx, now), SetTimer("settle", 0.0)]


def _late_timed_out(ctx: CampaignContext, event: Event, now: float) -> Iterable[Effect]:
    return [*_time_out(ctx, now), *_in_progress_timer(ctx, now)]


def _requeue_failed(ctx: CampaignContext) -> list[str]:
    """Failed and timed-out devices become pending; those of waves already opened are queued
    (a later wave's devices start with their wave)."""
    retried = [d for d, r in ctx.devices.items() if r.state in (FAILED, TIMED_OUT)]
    for device in retried:
        ctx.devices[device].state = PENDING
        if ctx.devices[device].wave <= ctx.wave:
            ctx.queue.append(device)
    return retried


def _retry(ctx: CampaignContext, event: RetryFailed, now: float) -> Iterable[Effect]:
    retried = _requeue_failed(ctx)
    ctx.reason = ""
    _note(ctx, now, f"retrying {len(retried)} failed devices")
    return _starting(ctx, now)


def _retry_paused(ctx: CampaignContext, event: RetryFailed, now: float) -> Iterable[Effect]:
    """Paused: queue them; they start on Resume."""
    retried = _requeue_failed(ctx)
    _note(ctx, now, f"queued {len(retried)} failed devices for a retry")
    return ()


ACTIVE = ("running", "waiting")
COUNTING = ("running", "waiting", "paused")

SPEC: MachineSpec[CampaignContext] = MachineSpec(
    name="campaign",
    doc="One rollout: waves started at a rate inside maintenance windows, braked by thresholds.",
    states=[
        State("scheduled", initial=True, doc="launched (or about to be); waits for its start"),
        State("running", doc="starting a wave's devices at the rate, inside the windows"),
        State(
            "waiting", doc="a wave is all started: awaits its threshold, the operator or the end"
        ),
        State("paused", doc="an operator paused it: starts nobody, counts outcomes"),
        State("succeeded", final=True, doc="every wave ran and no abort rule held"),
        State("aborted", doc="an abort rule held: starts nobody; a retry may lift it"),
        State("cancelled", final=True, doc="an operator ended it; devices in progress cancelled"),
    ],
    transitions=[
        On(Launch, "scheduled", None, guard=_unplanned, action=_launch),
        On(timer("begin"), "scheduled", "running", action=_begin),
        On(timer("start"), "running", None, action=_start_more),
        On(timer("settle"), (*ACTIVE, "paused"), "aborted", guard=_breached, action=_abort),
        On(timer("settle"), ACTIVE, "succeeded", guard=_all_done, action=_succeed),
        On(timer("settle"), ACTIVE, "running", guard=_next_wave_due, action=_next_wave),
        On(timer("settle"), "running", "waiting", guard=_wave_started, action=_wait),
        On(timer("settle"), (*ACTIVE, "paused"), None, action=_stay),
        On(NextWave, "waiting", "running", guard=_has_next_wave, action=_next_wave),
        On(DeviceSucceeded, COUNTING, None, guard=_in_flight, action=_record_success),
        On(DeviceFailed, COUNTING, None, guard=_in_flight, action=_record_failure),
        On(DeviceSucceeded, "aborted", None, guard=_in_flight, action=_late_success),
        On(DeviceFailed, "aborted", None, guard=_in_flight, action=_late_failure),
        On(DeviceAttemptFailed, COUNTING, None, guard=_fails_fast, action=_failed_fast),
        On(DeviceAttemptFailed, "aborted", None, guard=_fails_fast, action=_late_failed_fast),
        On(DeviceAttemptFailed, ANY_STATE, None, label="retried by the OTA task"),
        On(DeviceSucceeded, ANY_STATE, None, action=_ignore_outcome),
        On(DeviceFailed, ANY_STATE, None, action=_ignore_outcome),
        On(timer("in_progress"), COUNTING, None, action=_timed_out),
        On(timer("in_progress"), "aborted", None, action=_late_timed_out),
        On(Pause, ACTIVE, "paused", action=_pause),
        On(Pause, "scheduled", "paused", guard=_launched, action=_pause_early),
        On(Resume, "paused", "scheduled", guard=_never_begun, action=_resume_early),
        On(Resume, "paused", "running", action=_resume),
        On(RetryFailed, "paused", None, guard=_has_failed, action=_retry_paused),
        On(RetryFailed, (*ACTIVE, "aborted"), "running", guard=_has_failed, action=_retry),
        On(Cancel, ANY_STATE, "cancelled", action=_cancel),
    ],
    context=lambda key: CampaignContext(str(key)),
    context_type=CampaignContext,
)
