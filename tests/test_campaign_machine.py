"""The campaign machine stepped by hand on a manual clock: every transition with its exact effects,
the rate limit and its growth, maintenance windows, abort rules, operator actions, snapshots."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from iotfsm.fsm import CancelTimer, Log, SetTimer, StepIgnoredError, Stepper, TimerFired
from iotfsm.fsm.machine import Machine
from iotfsm.fsm.snapshot import restore, snapshot
from iotfsm.machines.campaign import (
    SPEC,
    AbortRule,
    CampaignEnded,
    CampaignError,
    Cancel,
    CancelDevice,
    DeviceAttemptFailed,
    DeviceFailed,
    DeviceSucceeded,
    Firmware,
    Launch,
    NextWave,
    Pause,
    Plan,
    Rate,
    Resume,
    RetryFailed,
    StartDevice,
    check_plan,
    next_opening,
    plan_waves,
    wave_counts,
    window_open,
)
from iotfsm.machines.windows import DailyWindow, Interval

T0 = datetime(2026, 12, 3, 0, 0, tzinfo=timezone.utc).timestamp()
"""Midnight UTC, 01:00 in Berlin (CET)."""
FW = Firmware("2.0", "fw-0123", 1000, "0123456789abcdef0123456789abcdef")
TWO_WAVES = (("d1", "d2"), ("d3", "d4"))


def plan(waves: tuple[tuple[str, ...], ...] = TWO_WAVES, **kw: Any) -> Plan:
    return check_plan(Plan("P1", FW, waves, **kw))


def launched(p: Plan) -> Stepper:
    s = Stepper(SPEC, key="c1", start=T0)
    assert s.step(Launch(p)) == [SetTimer("begin", max(0.0, p.start_at - T0), 1)]
    assert s.state == "scheduled"
    return s


def armed(s: Stepper, name: str) -> int:
    """The generation of timer `name`, to step it by hand at a time of the test's choosing."""
    timers = s.session.timers
    assert timers is not None and name in timers
    return timers[name][0]


def put_in(s: Stepper, where: str) -> None:
    """Bring a launched two-device campaign (abort on any failure) into state `where`."""
    if where != "scheduled":
        s.advance(0)
    if where == "paused":
        s.step(Pause())
    if where == "aborted":
        s.step(DeviceFailed("d1", -5))
        s.advance(0)
    assert s.state == where


def states(s: Stepper) -> dict[str, str]:
    return {d: r.state for d, r in s.ctx.devices.items()}


# ---- launch, begin, waves on success ----------------------------------------------------------


def test_threshold_waves_run_in_order_and_the_campaign_succeeds() -> None:
    s = launched(plan())
    # begin: wave 1 starts at once (no rate), settle finds it all started: waiting
    assert s.advance(0) == [StartDevice("d1"), StartDevice("d2"), SetTimer("settle", 0.0, 2)]
    assert (s.state, s.ctx.wave) == ("waiting", 0)
    assert s.step(DeviceSucceeded("d1")) == [SetTimer("settle", 0.0, 3)]
    assert s.advance(0) == []  # 1 of 2 is below 100 %: stay
    assert s.state == "waiting"
    assert s.step(DeviceSucceeded("d2")) == [SetTimer("settle", 0.0, 4)]
    # threshold met: next wave (running), started at once, then waiting again
    assert s.advance(0) == [StartDevice("d3"), StartDevice("d4"), SetTimer("settle", 0.0, 5)]
    assert (s.state, s.ctx.wave) == ("waiting", 1)
    s.step(DeviceSucceeded("d3"))
    s.advance(0)
    assert s.step(DeviceSucceeded("d4")) == [SetTimer("settle", 0.0, 7)]
    assert s.advance(0) == [CampaignEnded("succeeded", "4 of 4 devices succeeded")]
    assert s.state == "succeeded"
    assert [n.text for n in s.ctx.history] == [
        "launched: 4 devices in 2 waves",
        "wave 1 started (2 devices)",
        "wave 2 started (2 devices)",
        "succeeded: 4 of 4 devices succeeded",
    ]
    assert all(r.starts == 1 for r in s.ctx.devices.values())


def test_a_launch_in_the_future_waits_on_the_begin_timer() -> None:
    s = launched(plan(start_at=T0 + 600))
    assert s.advance(599) == []
    assert s.state == "scheduled"
    assert s.advance(1)[:2] == [StartDevice("d1"), StartDevice("d2")]
    assert s.ctx.devices["d1"].started == T0 + 600


def test_a_campaign_paused_before_its_first_wave_starts_nobody_until_resumed() -> None:
    s = launched(plan(start_at=T0 + 600))
    assert s.step(Pause()) == [CancelTimer("begin")]
    assert s.state == "paused" and s.ctx.wave == -1
    assert s.advance(3600) == []
    # resumed after its start time: it begins at once; before it, it waits for it again
    assert s.step(Resume()) == [SetTimer("begin", 0.0, 2)]
    assert s.state == "scheduled"
    assert s.advance(0)[:2] == [StartDevice("d1"), StartDevice("d2")]
    assert s.ctx.devices["d1"].started == T0 + 3600
    early = launched(plan(start_at=T0 + 600))
    early.step(Pause())
    assert early.step(Resume()) == [SetTimer("begin", 600.0, 2)]
    assert [n.text for n in early.ctx.history][1:] == ["paused before its first wave", "resumed"]


def test_a_second_launch_is_refused_and_changes_nothing() -> None:
    s = launched(plan())
    with pytest.raises(StepIgnoredError):
        s.step(Launch(plan(waves=(("x",),))))
    assert list(s.ctx.devices) == ["d1", "d2", "d3", "d4"]


def test_immediate_mode_starts_the_next_wave_once_the_previous_is_all_started() -> None:
    s = launched(plan(waves=(("d1",), ("d2",)), advance="immediate"))
    assert s.advance(0) == [
        StartDevice("d1"),
        SetTimer("settle", 0.0, 2),
        StartDevice("d2"),
        SetTimer("settle", 0.0, 3),
    ]
    assert (s.state, s.ctx.wave) == ("waiting", 1)


def test_operator_mode_waits_for_next_wave() -> None:
    s = launched(plan(advance="operator"))
    s.advance(0)
    for d in ("d1", "d2"):
        s.step(DeviceSucceeded(d))
        assert s.advance(0) == []
    assert s.state == "waiting"
    assert s.step(NextWave()) == [StartDevice("d3"), StartDevice("d4"), SetTimer("settle", 0.0, 5)]
    assert s.state == "running"
    assert s.advance(0) == []
    assert s.state == "waiting"
    with pytest.raises(StepIgnoredError):  # no wave after the last
        s.step(NextWave())


# ---- rate limit -------------------------------------------------------------------------------


def test_a_constant_rate_spaces_the_starts() -> None:
    s = launched(plan(waves=(("d1", "d2", "d3"),), rate=Rate(2)))
    assert s.advance(0) == [StartDevice("d1"), SetTimer("start", 30.0, 2)]
    assert s.advance(29.9) == []
    assert s.advance(0.1) == [StartDevice("d2"), SetTimer("start", 30.0, 3)]
    assert s.advance(30) == [StartDevice("d3"), SetTimer("settle", 0.0, 4)]
    assert s.state == "waiting"
    assert [r.started - T0 for r in s.ctx.devices.values()] == [0.0, 30.0, 60.0]


def test_an_exponential_rate_grows_up_to_its_cap() -> None:
    names = tuple(f"d{i}" for i in range(6))
    s = launched(plan(waves=(names,), rate=Rate(1, growth=2, every=1, max_per_minute=4)))
    s.advance(600)
    assert [r.started - T0 for r in s.ctx.devices.values()] == [0, 60, 90, 105, 120, 135]


def test_a_late_start_timer_does_not_burst() -> None:
    s = launched(plan(waves=(("d1", "d2", "d3"),), rate=Rate(1)))
    s.advance(0)
    gen = armed(s, "start")
    # the timer is stepped ten minutes late (a busy or restarted platform): one device, not ten
    late = s.machine.step(s.session, TimerFired("start", gen), T0 + 600)
    assert late == [StartDevice("d2"), SetTimer("start", 60.0, 3)]
    assert s.ctx.next_start == T0 + 660


# ---- maintenance windows ----------------------------------------------------------------------


def test_nobody_starts_outside_a_daily_window() -> None:
    berlin = DailyWindow("02:00", "03:00", "Europe/Berlin")
    names = tuple(f"d{i:03}" for i in range(100))
    p = plan(waves=(names,), rate=Rate(1), daily_windows=(berlin,))
    s = launched(p)
    assert s.advance(0) == [SetTimer("start", 3600.0, 2)]  # 01:00 in Berlin: wait an hour
    assert s.state == "running" and not [r for r in s.ctx.devices.values() if r.starts]
    s.advance(2 * 86400)
    started = sorted(r.started for r in s.ctx.devices.values() if r.starts)
    assert len(started) == 100
    for at in started:
        local = datetime.fromtimestamp(at, ZoneInfo("Europe/Berlin"))
        assert local.hour == 2, local
        assert window_open(p, at)
    assert started[0] == T0 + 3600
    assert started[59] == T0 + 3600 + 59 * 60  # 60 in the first window
    assert started[60] == T0 + 86400 + 3600  # the 61st at the next day's opening


def test_explicit_windows_and_a_window_across_midnight() -> None:
    p = plan(intervals=(Interval(T0 + 100, T0 + 200),))
    assert not window_open(p, T0 + 99) and window_open(p, T0 + 100)
    assert not window_open(p, T0 + 200)
    assert next_opening(p, T0) == T0 + 100 and next_opening(p, T0 + 150) is None
    night = plan(daily_windows=(DailyWindow("23:30", "00:30"),))
    assert window_open(night, T0 + 600) and window_open(night, T0 - 600)
    assert not window_open(night, T0 + 3600)
    assert next_opening(night, T0 + 3600) == T0 + 86400 - 1800
    assert window_open(plan(daily_windows=(DailyWindow("04:00", "04:00"),)), T0)


def test_an_explicit_window_starts_its_devices_and_the_last_window_passes() -> None:
    p = plan(waves=(("d1", "d2"),), rate=Rate(1), intervals=(Interval(T0 + 100, T0 + 130),))
    s = launched(p)
    assert s.advance(0) == [SetTimer("start", 100.0, 2)]
    assert s.advance(100) == [StartDevice("d1"), SetTimer("start", 60.0, 3)]
    assert s.advance(60) == [Log.warning("campaign c1: no maintenance window left; cancel it")]
    assert states(s) == {"d1": "running", "d2": "pending"}


# ---- abort rules ------------------------------------------------------------------------------


def test_failures_with_counted_codes_abort_and_the_next_wave_never_starts() -> None:
    rule = AbortRule(50, min_finished=3, codes=(-4, -5))
    s = launched(plan(waves=(("d1", "d2", "d3", "d4"), ("d5",)), abort=(rule,)))
    s.advance(0)
    assert s.step(DeviceFailed("d1", -1, "timeout")) == [SetTimer("settle", 0.0, 3)]
    assert s.advance(0) == []  # -1 does not count
    s.step(DeviceFailed("d2", -5, "burn failed"))
    assert s.advance(0) == []  # 2 finished: below min_finished
    assert s.step(DeviceFailed("d3", -5, "burn failed")) == [SetTimer("settle", 0.0, 5)]
    reason = "2 of 3 finished devices failed with codes [-4, -5] (limit 50%)"
    assert s.advance(0) == [CampaignEnded("aborted", reason)]
    assert (s.state, s.ctx.reason) == ("aborted", reason)
    # the device left running may still finish; it is counted, nothing more happens
    assert s.step(DeviceSucceeded("d4")) == []
    assert s.advance(3600) == []
    assert states(s)["d5"] == "pending"
    assert wave_counts(s.ctx)[0] == {
        "pending": 0,
        "running": 0,
        "succeeded": 1,
        "failed": 3,
        "timed_out": 0,
        "cancelled": 0,
    }


def test_an_abort_mid_wave_cancels_the_start_timer_and_optionally_the_running_devices() -> None:
    rule = AbortRule(100, min_finished=1)
    p = plan(waves=(("d1", "d2", "d3"),), rate=Rate(60), abort=(rule,), cancel_on_abort=True)
    s = launched(p)
    s.advance(1)
    assert states(s) == {"d1": "running", "d2": "running", "d3": "pending"}
    assert s.step(DeviceFailed("d1", -5)) == [SetTimer("settle", 0.0, 4)]
    reason = "1 of 1 finished devices failed (limit 100%)"
    assert s.advance(0) == [
        CancelTimer("start"),
        CancelDevice("d2"),
        CampaignEnded("aborted", reason),
    ]
    assert states(s) == {"d1": "failed", "d2": "cancelled", "d3": "pending"}
    assert s.advance(600) == []


def test_the_start_action_starts_nobody_while_an_abort_rule_holds() -> None:
    s = launched(plan(waves=(("d1", "d2"),), rate=Rate(1), abort=(AbortRule(100),)))
    s.advance(0)
    s.step(DeviceFailed("d1", -5))
    start = armed(s, "start")
    # the start timer comes due before settle is stepped
    due = s.machine.step(s.session, TimerFired("start", start), T0 + 60)
    assert due == [SetTimer("settle", 0.0, 4)]
    assert states(s)["d2"] == "pending"


def test_a_wave_that_ends_below_its_threshold_aborts() -> None:
    s = launched(plan(success_percent=50))
    s.advance(0)
    s.step(DeviceFailed("d1", -1))
    assert s.advance(0) == []
    s.step(DeviceFailed("d2", -1))
    reason = "wave 1 ended with 0 of 2 succeeded, below its threshold of 50%"
    assert s.advance(0) == [CampaignEnded("aborted", reason)]


def test_in_progress_timeouts_count_and_cancel_the_device() -> None:
    p = plan(waves=(("d1", "d2"),), device_timeout=100, abort=(AbortRule(50),))
    s = launched(p)
    assert s.advance(0) == [
        StartDevice("d1"),
        StartDevice("d2"),
        SetTimer("settle", 0.0, 2),
        SetTimer("in_progress", 100.0, 3),
        # running -> waiting leaves the state: the engine cancels, the action re-arms
        CancelTimer("in_progress"),
        SetTimer("in_progress", 100.0, 4),
    ]
    s.clock.advance(50)
    assert s.step(DeviceSucceeded("d1")) == [SetTimer("settle", 0.0, 5)]
    assert s.advance(0) == []
    assert s.advance(50) == [
        CancelDevice("d2"),
        SetTimer("settle", 0.0, 6),
        CampaignEnded("aborted", "1 of 2 finished devices failed (limit 50%)"),
    ]
    assert states(s) == {"d1": "succeeded", "d2": "timed_out"}


def test_timeouts_after_an_abort_still_cancel_the_devices_left_running() -> None:
    p = plan(waves=(("d1", "d2"),), device_timeout=100, abort=(AbortRule(100, codes=(-5,)),))
    s = launched(p)
    s.advance(0)
    s.clock.advance(10)
    s.step(DeviceFailed("d1", -5))
    assert s.advance(0) == [
        CancelTimer("in_progress"),
        SetTimer("in_progress", 90.0, 6),
        CampaignEnded("aborted", "1 of 1 finished devices failed with codes [-5] (limit 100%)"),
    ]
    assert s.advance(90) == [CancelDevice("d2")]
    assert states(s)["d2"] == "timed_out"


def test_late_failure_after_an_abort_is_counted() -> None:
    s = launched(plan(waves=(("d1", "d2"),), abort=(AbortRule(100),)))
    s.advance(0)
    s.step(DeviceFailed("d1", -5))
    s.advance(0)
    assert s.state == "aborted"
    assert s.step(DeviceFailed("d2", -4)) == []
    assert (s.ctx.devices["d2"].state, s.ctx.devices["d2"].code) == ("failed", -4)


# ---- operator actions -------------------------------------------------------------------------


def test_a_paused_campaign_starts_nobody_until_resumed() -> None:
    s = launched(plan(waves=(("d1", "d2", "d3"),), rate=Rate(1)))
    s.advance(10)
    assert s.step(Pause()) == [CancelTimer("start")]
    assert s.state == "paused"
    assert s.advance(600) == []
    assert s.step(DeviceSucceeded("d1")) == [SetTimer("settle", 0.0, 3)]
    assert s.advance(0) == []  # counted; paused stays paused
    assert states(s) == {"d1": "succeeded", "d2": "pending", "d3": "pending"}
    assert s.step(Resume()) == [StartDevice("d2"), SetTimer("start", 60.0, 4)]
    assert s.state == "running"
    assert s.ctx.devices["d2"].started == T0 + 610
    with pytest.raises(StepIgnoredError):
        s.step(Resume())


def test_an_abort_rule_still_holds_while_paused() -> None:
    s = launched(plan(waves=(("d1", "d2"),), abort=(AbortRule(100),)))
    s.advance(0)
    s.step(Pause())
    s.step(DeviceFailed("d1", -5))
    assert s.advance(0) == [CampaignEnded("aborted", "1 of 1 finished devices failed (limit 100%)")]
    assert s.state == "aborted"


def test_retry_failed_lifts_an_abort_and_starts_them_again() -> None:
    s = launched(plan(waves=(("d1", "d2"), ("d3",)), abort=(AbortRule(100),)))
    s.advance(0)
    s.step(DeviceFailed("d1", -5))
    s.advance(0)
    assert s.state == "aborted"
    assert s.step(RetryFailed()) == [StartDevice("d1"), SetTimer("settle", 0.0, 4)]
    assert (s.state, s.ctx.reason, s.ctx.devices["d1"].starts) == ("running", "", 2)
    assert s.advance(0) == []
    assert s.state == "waiting"
    s.step(DeviceSucceeded("d1"))
    s.step(DeviceSucceeded("d2"))
    assert s.advance(0) == [StartDevice("d3"), SetTimer("settle", 0.0, 7)]


def test_retry_failed_while_paused_queues_them_for_resume() -> None:
    s = launched(plan(waves=(("d1", "d2"),)))
    s.advance(0)
    s.step(DeviceFailed("d1", -1))
    s.advance(0)
    s.step(Pause())
    assert s.step(RetryFailed()) == []
    assert (s.state, s.ctx.queue) == ("paused", ["d1"])
    assert s.step(Resume()) == [StartDevice("d1"), SetTimer("settle", 0.0, 4)]
    with pytest.raises(StepIgnoredError):  # nothing failed now: nothing to retry
        s.step(RetryFailed())


def test_cancel_ends_the_campaign_and_cancels_the_devices_in_progress() -> None:
    s = launched(plan(waves=(("d1", "d2"),), rate=Rate(1)))
    s.advance(0)
    assert s.step(Cancel()) == [
        CancelTimer("start"),
        CancelDevice("d1"),
        CampaignEnded("cancelled", "cancelled by an operator"),
    ]
    assert states(s) == {"d1": "cancelled", "d2": "pending"}
    assert s.advance(600) == []
    assert s.step(DeviceSucceeded("d1"), must_fire=False) == []  # final: nothing reacts


def test_cancel_before_the_start() -> None:
    s = launched(plan(start_at=T0 + 60))
    assert s.step(Cancel()) == [
        CancelTimer("begin"),
        CampaignEnded("cancelled", "cancelled by an operator"),
    ]
    assert s.advance(60) == []


def test_outcomes_of_devices_not_running_are_logged_and_change_nothing() -> None:
    s = launched(plan())
    s.advance(0)
    s.step(DeviceSucceeded("d1"))
    before = states(s)
    assert s.step(DeviceFailed("d1", -5)) == [
        Log.info("campaign c1: ignored DeviceFailed of d1: it is succeeded, not running")
    ]
    assert s.step(DeviceSucceeded("zz")) == [
        Log.info("campaign c1: ignored DeviceSucceeded of zz: it is not in this campaign")
    ]
    assert s.step(DeviceSucceeded("d3")) == [
        Log.info("campaign c1: ignored DeviceSucceeded of d3: it is pending, not running")
    ]
    assert states(s) == before


# ---- plans, snapshots -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"waves": ()}, "at least one wave"),
        ({"waves": (("a",), ())}, "no wave may be empty"),
        ({"waves": (("a",), ("a",))}, "more than one wave"),
        ({"advance": "later"}, "advance 'later'"),
        ({"success_percent": 101}, "0-100"),
        ({"rate": Rate(0)}, "per_minute > 0"),
        ({"abort": (AbortRule(0),)}, "0 < percent"),
        ({"device_timeout": -1}, "device_timeout"),
        ({"daily_windows": (DailyWindow("2:5", "03:00"),)}, "HH:MM"),
        ({"daily_windows": (DailyWindow("25:00", "03:00"),)}, "not a time of day"),
        ({"daily_windows": (DailyWindow("01:00", "03:00", "Mars/Olympus"),)}, "time zone"),
        ({"intervals": (Interval(5, 5),)}, "ends before it starts"),
    ],
)
def test_bad_plans_are_refused_with_what_to_fix(kw: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"waves": TWO_WAVES, **kw}
    with pytest.raises(CampaignError, match=match):
        check_plan(Plan("P1", FW, **args))


def test_waves_by_count_and_by_percent() -> None:
    devices = [f"d{i}" for i in range(10)]
    assert plan_waves(devices, counts=[1, 3]) == (("d0",), ("d1", "d2", "d3"), tuple(devices[4:]))
    assert [len(w) for w in plan_waves(devices, percents=[10, 40, 50])] == [1, 4, 5]
    assert [len(w) for w in plan_waves(devices, percents=[25])] == [3, 7]
    with pytest.raises(CampaignError, match="one of the two"):
        plan_waves(devices)
    with pytest.raises(CampaignError, match="sum to <= 100"):
        plan_waves(devices, percents=[60, 60])
    with pytest.raises(CampaignError, match="> 0"):
        plan_waves(devices, counts=[0])


def test_a_snapshot_restores_mid_campaign_with_its_timers() -> None:
    p = plan(
        rate=Rate(2, growth=1.5, every=2),
        abort=(AbortRule(30, 2, (-5,), True),),
        daily_windows=(DailyWindow("00:00", "06:00", "Europe/Berlin"),),
        intervals=(Interval(T0, T0 + 86400),),
        device_timeout=300,
    )
    s = launched(p)
    s.advance(0)
    doc = json.loads(json.dumps(snapshot(s.session)))
    back = restore(Machine(SPEC), "c1", doc)
    assert (back.state, back.ctx, back.timers, back.gen) == (
        s.state,
        s.ctx,
        s.session.timers,
        s.session.gen,
    )


# ---- the remaining (source state, transition) pairs -----------------------------------------


def test_a_wave_that_finishes_before_settle_succeeds_straight_from_running() -> None:
    s = launched(plan(waves=(("d1", "d2"),), rate=Rate(1)))
    s.advance(0)
    assert s.step(DeviceSucceeded("d1")) == [SetTimer("settle", 0.0, 3)]
    assert s.advance(0) == []  # settle in running with devices still queued: stay
    assert s.state == "running"
    start = armed(s, "start")
    s.machine.step(s.session, TimerFired("start", start), T0 + 60)
    s.step(DeviceSucceeded("d2"))
    assert s.advance(0) == [CampaignEnded("succeeded", "2 of 2 devices succeeded")]
    assert s.state == "succeeded"


@pytest.mark.parametrize("where", ["scheduled", "running", "paused", "aborted"])
def test_an_outcome_of_a_stranger_is_logged_in_every_state(where: str) -> None:
    s = launched(plan(waves=(("d1", "d2"),), rate=Rate(1), abort=(AbortRule(100),)))
    put_in(s, where)
    for event in (DeviceSucceeded("zz"), DeviceFailed("zz", -5)):
        assert s.step(event) == [
            Log.info(f"campaign c1: ignored {event.trigger} of zz: it is not in this campaign")
        ]


@pytest.mark.parametrize("paused", [False, True])
def test_in_progress_timeouts_while_starting_and_while_paused(paused: bool) -> None:
    s = launched(plan(waves=(("d1", "d2", "d3"),), rate=Rate(1), device_timeout=90))
    assert s.advance(0) == [
        StartDevice("d1"),
        SetTimer("start", 60.0, 2),
        SetTimer("in_progress", 90.0, 3),
    ]
    if paused:
        s.advance(61)
        assert s.step(Pause()) == [
            CancelTimer("in_progress"),
            CancelTimer("start"),
            SetTimer("in_progress", 29.0, 5),
        ]
        # d1 times out at T0+90; d2 (started at T0+60) is next; settle keeps it paused
        assert s.advance(29) == [
            CancelDevice("d1"),
            SetTimer("in_progress", 60.0, 6),
            SetTimer("settle", 0.0, 7),
        ]
        assert s.state == "paused"
    else:
        s.advance(60)
        assert s.advance(30) == [
            CancelDevice("d1"),
            SetTimer("in_progress", 60.0, 5),
            SetTimer("settle", 0.0, 6),
        ]
        assert s.state == "running"
    assert states(s)["d1"] == "timed_out"


def test_retry_failed_while_starting_and_while_waiting() -> None:
    s = launched(plan(waves=(("d1", "d2"),), rate=Rate(1)))
    s.advance(0)
    s.step(DeviceFailed("d1", -1))
    assert s.state == "running"
    # running: d1 goes to the back of the queue; the start timer keeps its pace
    assert s.step(RetryFailed()) == [SetTimer("start", 60.0, 4)]
    assert s.ctx.queue == ["d2", "d1"]
    s.advance(120)
    assert s.state == "waiting"
    s.step(DeviceFailed("d1", -1))
    s.advance(0)
    # waiting -> running; the rate still holds: d2 started at T0+60, d1 a minute later
    assert s.step(RetryFailed()) == [SetTimer("start", 60.0, 8)]
    assert s.state == "running"
    assert s.advance(60)[0] == StartDevice("d1")
    assert (s.ctx.devices["d1"].starts, s.ctx.devices["d1"].started) == (3, T0 + 180)


@pytest.mark.parametrize("where", ["waiting", "paused", "aborted"])
def test_cancel_from_waiting_paused_and_aborted(where: str) -> None:
    s = launched(plan(waves=(("d1", "d2"),), abort=(AbortRule(100),)))
    put_in(s, where)
    running = [CancelDevice(d) for d, r in s.ctx.devices.items() if r.state == "running"]
    assert s.step(Cancel()) == [*running, CampaignEnded("cancelled", "cancelled by an operator")]
    assert s.state == "cancelled"


@pytest.mark.parametrize("where", ["running", "waiting", "paused"])
def test_a_fail_fast_code_ends_a_device_at_its_first_failed_attempt(where: str) -> None:
    s = launched(plan(waves=(("d1", "d2"),), rate=None if where == "waiting" else Rate(1)))
    put_in(s, where)
    # -1 is left to the OTA task's retries; -5 (a bad image) ends the device's part at once
    assert s.step(DeviceAttemptFailed("d1", -1, "time_out")) == []
    assert states(s)["d1"] == "running"
    assert s.step(DeviceAttemptFailed("d1", -5, "burn failed")) == [
        CancelDevice("d1"),
        SetTimer("settle", 0.0, 3),
    ]
    assert (s.ctx.devices["d1"].state, s.ctx.devices["d1"].code) == ("failed", -5)
    assert s.step(DeviceAttemptFailed("zz", -5)) == []  # a stranger: nothing


def test_an_attempt_failure_before_the_start_changes_nothing() -> None:
    s = launched(plan())
    assert s.step(DeviceAttemptFailed("d1", -5)) == []
    assert (s.state, states(s)["d1"]) == ("scheduled", "pending")


def test_a_fail_fast_code_after_an_abort_cancels_the_device() -> None:
    s = launched(plan(waves=(("d1", "d2"),), abort=(AbortRule(100),)))
    put_in(s, "aborted")
    assert s.step(DeviceAttemptFailed("d2", -4, "md5")) == [CancelDevice("d2")]
    assert states(s) == {"d1": "failed", "d2": "failed"}
    assert s.step(DeviceAttemptFailed("d2", -4, "md5")) == []
